"""JupyterHub for the vitlab course on one machine: local Unix users, nbgrader's exchange, the course's environment.

Start it as root (it logs users in with PAM and starts each user's JupyterLab as that user), from a folder where
it may keep its state (jupyterhub.sqlite, jupyterhub_cookie_secret):

    cd /srv/jupyterhub && /srv/vitlab/.venv/bin/jupyterhub -f /srv/vitlab/deploy/jupyterhub/jupyterhub_config.py

Who is who comes from two Unix groups, named as nbgrader's docs name a course's hub groups:
`formgrade-vitlab` (instructors) and `nbgrader-vitlab` (learners). Only their members may log in; at each
login the hub puts the user in the hub group of the same name, and the group picks the Jupyter configuration
their server starts with (deploy/jupyterhub/instructor or deploy/jupyterhub/learner, through
JUPYTER_CONFIG_PATH): learners get the Assignments tab and Validate without the formgrader, the course list or
Create Assignment; instructors get all of nbgrader.

Settings from the environment: VITLAB_EXCHANGE (the shared exchange folder, default /srv/nbgrader/exchange)
and VITLAB_HUB_URL (where the hub listens, default http://:8000, every interface).
"""
import grp
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
COURSE = HERE.parent.parent  # the repository: chapters/, vitlab/, autograder/ and .venv
VENV = COURSE / ".venv"
COURSE_GROUPS = ("formgrade-vitlab", "nbgrader-vitlab")  # instructors, learners
EXCHANGE = os.environ.get("VITLAB_EXCHANGE", "/srv/nbgrader/exchange")

c = get_config()  # noqa: F821 - defined by traitlets when JupyterHub loads this file

c.JupyterHub.bind_url = os.environ.get("VITLAB_HUB_URL", "http://:8000")
# configurable-http-proxy as `bash setup.sh --hub` installs it (npm, in the course's environment).
c.ConfigurableHTTPProxy.command = [str(VENV / "bin" / "configurable-http-proxy")]

# Local Unix users, logged in with their password (PAM), if they are in one of the course's groups.
c.JupyterHub.authenticator_class = "pam"
c.Authenticator.allowed_groups = set(COURSE_GROUPS)
c.Authenticator.manage_groups = True


def course_groups(authenticator, handler, authentication):
    """Put the user in the hub groups named like the course's Unix groups they belong to (at every login)."""
    name = authentication["name"]
    authentication["groups"] = [g for g in COURSE_GROUPS if name in grp.getgrnam(g).gr_mem]
    return authentication


c.Authenticator.post_auth_hook = course_groups

# Every server is JupyterLab from the course's environment (its kernel, nbgrader, vitlab), run as the user in
# their home folder, with the environment's tools (nbgrader, alembic) on PATH.
c.Spawner.cmd = [str(VENV / "bin" / "jupyterhub-singleuser")]
c.Spawner.default_url = "/lab"
c.Spawner.environment = {
    "PATH": os.pathsep.join([str(VENV / "bin"), "/usr/local/bin", "/usr/bin", "/bin"]),
    "VITLAB_EXCHANGE": EXCHANGE,  # read by autograder/nbgrader_config.py
}
c.Spawner.group_overrides = {
    "1-learners": {"groups": ["nbgrader-vitlab"],
                   "spawner_override": {"environment": {"JUPYTER_CONFIG_PATH": str(HERE / "learner")}}},
    # Listed second, so that someone in both groups gets the instructor's set-up.
    "2-instructors": {"groups": ["formgrade-vitlab"],
                      "spawner_override": {"environment": {"JUPYTER_CONFIG_PATH": str(HERE / "instructor")}}},
}
