"""JupyterLab server settings for the course, loaded by the JupyterLab of .venv (setup.sh points it here).

Terminals get the course's environment, as the notebooks promise: .venv/bin first on PATH (`nbgrader validate`
works in them), a plain interactive shell (a login shell would read /etc/profile, which resets PATH), and they
open in the folder JupyterLab serves (chapters/ with the README's command), not where the server was started.
"""
import os
import sys

c = get_config()  # noqa: F821 - provided by Jupyter when it loads this file

os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
os.environ["VITLAB_SERVER_CWD"] = os.getcwd()
# JupyterLab asks for a terminal in the server's own folder unless it names another (a launcher in a subfolder):
# move from there to the root JupyterLab serves ($JUPYTER_SERVER_ROOT, set by jupyter_server_terminals).
c.ServerApp.terminado_settings = {"shell_command": [
    "/bin/sh", "-c",
    'if [ "$(pwd)" = "$VITLAB_SERVER_CWD" ]; then cd "$JUPYTER_SERVER_ROOT"; fi; exec "${SHELL:-/bin/sh}"']}
