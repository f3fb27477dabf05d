"""The course on a real JupyterHub (deploy/jupyterhub), end to end, as local Unix users.

An instructor and two learners are created as Unix users with deploy/jupyterhub/add-user.sh, and the hub runs on
loopback from a world-readable copy of the course (as an admin would install it in /srv/vitlab), with the
exchange in a shared folder. The instructor releases 01_attention from a terminal in their JupyterLab. Ada logs
in with a real browser and fetches, submits and later fetches her feedback in the Assignments tab; Bob uses
nbgrader's commands in a terminal of his own server and hands in after the due date. The instructor grades with
`python -m autograder grade --exchange --due ...` and releases the feedback; each learner fetches theirs.
Needs root (it creates users) and `bash setup.sh --hub` (or --test); skips otherwise.
"""
from __future__ import annotations

import contextlib
import csv
import grp
import html
import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib.util import find_spec
from pathlib import Path

import pytest
from grading import HIDDEN, chapter_notebooks, learner_submission
from lab_browser import CHROMIUM_ARGS, chromium_path, free_port
from test_autograder import NO_SCALE
from unix_users import copy_course, sh, traversable

from autograder import sandbox

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(sys.prefix)
CHAPTER = "01_attention"
GROUPS = ("formgrade-vitlab", "nbgrader-vitlab")


def missing() -> str | None:
    """Why the hub cannot be tested here, or None."""
    if os.geteuid() != 0:
        return "needs root: it creates local users and runs the hub, which starts servers as them"
    if find_spec("jupyterhub") is None or not (VENV / "bin" / "configurable-http-proxy").exists():
        return "JupyterHub or configurable-http-proxy is not installed (bash setup.sh --hub)"
    for tool in ("useradd", "userdel", "chpasswd", "groupadd"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    if find_spec("playwright") is None or chromium_path() is None:
        return "no browser: Playwright or Chromium is missing (bash setup.sh --test)"
    return sandbox.missing()


pytestmark = pytest.mark.skipif(missing() is not None, reason=f"no hub test here: {missing()}")


def install_course(dest: Path) -> Path:
    """A copy of the course and its environment in `dest` (`copy_course`), readable by every user except
    solutions/ (the hidden tests: instructors only)."""
    venv = copy_course(dest)
    instructors = grp.getgrnam(GROUPS[0]).gr_gid
    for path in [dest / "solutions", *(dest / "solutions").rglob("*")]:
        os.chown(path, 0, instructors)
        path.chmod(0o750 if path.is_dir() else 0o640)
    return venv


class Hub:
    """JupyterHub from deploy/jupyterhub on a loopback port, with a test service that may act for every user."""

    def __init__(self, course: Path, state: Path, exchange: Path) -> None:
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{free_port()}"
        config = state / "test_config.py"
        config.write_text(
            f"load_subconfig({str(course / 'deploy' / 'jupyterhub' / 'jupyterhub_config.py')!r})\n"
            f"c.JupyterHub.services = [{{'name': 'e2e', 'api_token': {self.token!r}}}]\n"
            "c.JupyterHub.load_roles = [{'name': 'admin', 'services': ['e2e']}]\n")
        self.log = state / "jupyterhub.log"
        env = dict(os.environ, VITLAB_EXCHANGE=str(exchange), VITLAB_HUB_URL=self.url)
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [str(course / ".venv" / "bin" / "jupyterhub"), "-f", str(config), f"--JupyterHub.hub_port={free_port()}",
                 f"--ConfigurableHTTPProxy.api_url=http://127.0.0.1:{free_port()}"],
                cwd=state, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.wait(lambda: self.api("GET", "hub/api/").ok, 90, "the hub did not answer")

    def api(self, method: str, path: str, token: str | None = None, **kwargs):
        import requests
        return requests.request(method, f"{self.url}/{path}", timeout=30,
                                headers={"Authorization": f"token {token or self.token}"}, **kwargs)

    def wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the hub exited:\n{self.log.read_text()[-4000:]}"
            try:
                if ready():
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"{what} in {timeout} s:\n{self.log.read_text()[-4000:]}")

    def log_in(self, name: str, password: str):
        """Log in through the hub's login form (PAM); returns the session."""
        import requests
        session = requests.Session()
        session.get(f"{self.url}/hub/login", timeout=30)
        done = session.post(f"{self.url}/hub/login", timeout=30, allow_redirects=False,
                            data={"username": name, "password": password, "_xsrf": session.cookies.get("_xsrf")})
        assert done.status_code == 302, f"{name} could not log in: {done.status_code} {done.text[:500]}"
        return session

    def user_token(self, name: str) -> str:
        done = self.api("POST", f"hub/api/users/{name}/tokens", json={"note": "e2e", "expires_in": 3600})
        assert done.ok, done.text
        return done.json()["token"]

    def start_server(self, name: str) -> None:
        done = self.api("POST", f"hub/api/users/{name}/server")
        assert done.status_code in (201, 202), f"{done.text}\n{self.log.read_text()[-4000:]}"
        self.wait(lambda: self.api("GET", f"hub/api/users/{name}").json()["servers"].get("", {}).get("ready"),
                  120, f"{name}'s server did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def terminal(hub: Hub, name: str, token: str, command: str, timeout: float = 600) -> str:
    """Run `command` in a new terminal of `name`'s JupyterLab (bash, in their home folder, with their server's
    environment); returns what it printed. Fails if it exits non-zero."""
    import websocket
    opened = hub.api("POST", f"user/{name}/api/terminals", token=token)
    assert opened.ok, opened.text
    ws = websocket.create_connection(
        f"{hub.url.replace('http', 'ws')}/user/{name}/terminals/websocket/{opened.json()['name']}",
        header=[f"Authorization: token {token}"], timeout=timeout)
    try:
        ws.send(json.dumps(["stdin", f"{command}; echo __EXIT__$?\r"]))
        out, deadline = "", time.monotonic() + timeout
        while not (end := re.search(r"__EXIT__(\d+)", out)):
            assert time.monotonic() < deadline, f"{name}$ {command}: no end in {timeout} s:\n{out[-3000:]}"
            kind, *text = json.loads(ws.recv())
            out += "".join(text) if kind == "stdout" else ""
    finally:
        ws.close()
        hub.api("DELETE", f"user/{name}/api/terminals/{opened.json()['name']}", token=token)
    assert end.group(1) == "0", f"{name}$ {command}: exit code {end.group(1)}\n{out[-5000:]}"
    return out


def readable_by(name: str, path: Path) -> bool:
    """Whether Unix user `name` can read the file `path` (or list it, for a folder)."""
    test = ["test", "-r", str(path), "-a", "-x" if path.is_dir() else "-r", str(path)]
    return subprocess.run(["runuser", "-u", name, "--", *test]).returncode == 0


@contextlib.contextmanager
def assignment_list(hub: Hub, name: str, password: str, shots: Path):
    """A browser logged in to the hub as `name`, with the Assignments tab open in their JupyterLab; its page.
    The learner's Nbgrader menu has no formgrader. A screenshot is saved if the block fails."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        try:
            page.goto(f"{hub.url}/hub/login")
            page.fill("#username_input", name)
            page.fill("#password_input", password)
            page.click("#login_submit")
            page.wait_for_url(re.compile(rf".*/user/{name}/lab.*"), timeout=180_000)
            page.click(".lm-MenuBar-itemLabel:text-is('Nbgrader')", timeout=120_000)
            items = page.locator(".lm-Menu-content .lm-Menu-itemLabel").all_inner_texts()
            assert "Assignment List" in items and not any("Formgrader" in i for i in items), items
            page.click(".lm-Menu-content .lm-Menu-itemLabel:text-is('Assignment List')")
            yield page
        except Exception:
            page.screenshot(path=str(shots / "hub-learner-failed.png"))
            raise
        finally:
            browser.close()


def browser_fetch_and_submit(hub: Hub, name: str, password: str, answer, token: str, shots: Path) -> None:
    """In the Assignments tab: fetch the chapter, answer it (saved through the learner's server), submit it."""
    with assignment_list(hub, name, password, shots) as page:
        released = page.locator(f"#released_assignments_list .list_item:has-text('{CHAPTER}')")
        released.locator("button:has-text('Fetch')").click(timeout=60_000)
        fetched = page.locator(f"#fetched_assignments_list .list_item:has-text('{CHAPTER}')").first
        fetched.wait_for(timeout=60_000)
        page.screenshot(path=str(shots / "hub-learner-fetched.png"))
        saved = hub.api("PUT", f"user/{name}/api/contents/{CHAPTER}/{CHAPTER}.ipynb", token=token,
                        json={"type": "notebook", "format": "json", "content": answer})
        assert saved.ok, saved.text
        fetched.locator("button:has-text('Submit')").click()
        page.locator(f"#submitted_assignments_list .list_item:has-text('{CHAPTER}')").first.wait_for(timeout=60_000)
        page.screenshot(path=str(shots / "hub-learner-submitted.png"))


def browser_fetch_feedback(hub: Hub, name: str, password: str, shots: Path) -> None:
    """In the Assignments tab: Fetch Feedback on the submitted chapter, until its feedback is in the learner's home."""
    with assignment_list(hub, name, password, shots) as page:
        submitted = page.locator(f"#submitted_assignments_list .list_item:has-text('{CHAPTER}')").first
        submitted.locator("button:has-text('Fetch Feedback')").click(timeout=60_000)
        home = Path(pwd.getpwnam(name).pw_dir)
        deadline = time.monotonic() + 60
        while not list((home / CHAPTER / "feedback").glob(f"*/{CHAPTER}.html")):
            assert time.monotonic() < deadline, f"{name}: Fetch Feedback brought no feedback in 60 s"
            page.wait_for_timeout(500)
        page.screenshot(path=str(shots / "hub-learner-feedback.png"))


def feedback_page(home: Path) -> str:
    pages = list((home / CHAPTER / "feedback").glob(f"*/{CHAPTER}.html"))
    assert len(pages) == 1, f"fetched feedback in {home}: {pages}"
    return html.unescape(re.sub(r"<[^>]+>", " ", pages[0].read_text()))


@pytest.fixture
def cohort():
    """An instructor and two learners as Unix users (removed afterwards), named so as not to clash."""
    tag = secrets.token_hex(2)
    people = {"instructor": f"vt{tag}-teach", "ada": f"vt{tag}-ada", "bob": f"vt{tag}-bob"}
    made_groups = [g for g in GROUPS if not any(g == e.gr_name for e in grp.getgrall())]
    password = secrets.token_urlsafe(12)
    try:
        for role, name in people.items():
            sh("bash", str(ROOT / "deploy" / "jupyterhub" / "add-user.sh"),
               "instructor" if role == "instructor" else "learner", name, stdin=subprocess.DEVNULL)
            sh("chpasswd", input=f"{name}:{password}\n")
        yield people, password
    finally:
        for name in people.values():
            subprocess.run(["pkill", "-u", name], capture_output=True)
            subprocess.run(["userdel", "-r", name], capture_output=True)
        for group in made_groups:
            subprocess.run(["groupdel", group], capture_output=True)


def test_a_cohort_on_the_hub(cohort, tmp_path):
    with traversable(Path(sys.base_prefix)):
        a_cohort_on_the_hub(*cohort, tmp_path)


def a_cohort_on_the_hub(people, password, tmp_path):
    teacher, ada, bob = people["instructor"], people["ada"], people["bob"]
    base = Path(tempfile.mkdtemp(prefix="vitlab-hub-"))
    base.chmod(0o755)
    hub = None
    try:
        course = base / "vitlab"
        course.mkdir()
        install_course(course)
        exchange = base / "exchange"
        exchange.mkdir()
        exchange.chmod(0o777)  # as nbgrader's docs set it up: every user writes there
        state = base / "hub"
        state.mkdir(mode=0o700)
        hub = Hub(course, state, exchange)
        tokens = {}
        for name in (teacher, bob):
            hub.log_in(name, password)
            tokens[name] = hub.user_token(name)
            hub.start_server(name)
        groups = {name: hub.api("GET", f"hub/api/users/{name}").json()["groups"] for name in (teacher, bob)}
        assert groups == {teacher: ["formgrade-vitlab"], bob: ["nbgrader-vitlab"]}

        # The formgrader answers in the instructor's server only, and only the instructor's JupyterLab loads
        # nbgrader's instructor extensions.
        for name, disabled in ((teacher, False), (bob, True)):
            page = hub.api("GET", f"user/{name}/lab", token=tokens[name]).text
            lab = json.loads(re.search(r'id="jupyter-config-data"[^>]*>(.*?)</script>', page, re.S).group(1))
            for plugin in ("formgrader", "course-list", "create-assignment"):
                assert (f"@jupyter/nbgrader:{plugin}" in lab["disabledExtensions"]) is disabled, (name, plugin)
        assert hub.api("GET", f"user/{teacher}/formgrader", token=tokens[teacher]).status_code == 200
        assert hub.api("GET", f"user/{bob}/formgrader", token=tokens[bob]).status_code == 404

        config = f"--NbGrader.config_file={course}/autograder/nbgrader_config"
        terminal(hub, teacher, tokens[teacher], f"cd {course} && nbgrader release_assignment {CHAPTER} {config}")

        release, solution = chapter_notebooks(ROOT, CHAPTER)
        assert hub.api("POST", f"hub/api/users/{ada}").status_code == 201  # to have a token before the browser logs in
        tokens[ada] = hub.user_token(ada)
        browser_fetch_and_submit(hub, ada, password, learner_submission(release, solution, []), tokens[ada], tmp_path)
        due = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f UTC")  # ada was on time, bob will be late

        # Learners' kernels and terminals run the course's environment: its Python, vitlab from the course.
        kernel = hub.api("POST", f"user/{bob}/api/kernels", token=tokens[bob], json={"name": "python3"}).json()["id"]
        hub.wait(lambda: "ipykernel_launcher" in sh("ps", "-u", bob, "-o", "args="), 60, "no kernel process")
        launched = [line for line in sh("ps", "-u", bob, "-o", "args=").splitlines() if "ipykernel_launcher" in line]
        assert re.match(rf"{re.escape(str(course / '.venv' / 'bin'))}/python3? ", launched[0]), launched
        hub.api("DELETE", f"user/{bob}/api/kernels/{kernel}", token=tokens[bob])
        out = terminal(hub, bob, tokens[bob], "python -c 'import vitlab; print(\"vitlab at\", vitlab.__file__)'")
        assert f"vitlab at {course / 'vitlab' / '__init__.py'}" in out, out[-2000:]
        terminal(hub, bob, tokens[bob], f"nbgrader fetch_assignment {CHAPTER} --course=vitlab")
        answer = learner_submission(release, solution, [NO_SCALE])
        saved = hub.api("PUT", f"user/{bob}/api/contents/{CHAPTER}/{CHAPTER}.ipynb", token=tokens[bob],
                        json={"type": "notebook", "format": "json", "content": answer})
        assert saved.ok, saved.text
        terminal(hub, bob, tokens[bob], f"nbgrader submit {CHAPTER} --course=vitlab")

        # Neither learner reads the other's submission (in the exchange or at home) nor the instructor's files.
        inbound = exchange / "vitlab" / "inbound"
        for learner, other in ((ada, bob), (bob, ada)):
            theirs = [p for p in inbound.iterdir() if p.name.startswith(f"{other}+")]
            assert len(theirs) == 1
            assert not readable_by(learner, inbound)
            assert not readable_by(learner, Path(pwd.getpwnam(other).pw_dir) / CHAPTER / f"{CHAPTER}.ipynb")
            assert not readable_by(learner, Path(pwd.getpwnam(teacher).pw_dir))
            assert not readable_by(learner, course / "solutions" / CHAPTER / f"{CHAPTER}.ipynb")
        assert readable_by(teacher, course / "solutions" / CHAPTER / f"{CHAPTER}.ipynb")

        terminal(hub, teacher, tokens[teacher],
                 f"cd {course} && python -m autograder grade --exchange --chapter {CHAPTER} --out ~/grading --due '{due}' "
                 f"&& bash deploy/jupyterhub/release-feedback.sh {CHAPTER} ~/grading")
        grading = Path(pwd.getpwnam(teacher).pw_dir) / "grading"
        with (grading / "grades.csv").open(encoding="utf-8") as f:
            rows = {r["student"]: r for r in csv.DictReader(f)}
        assert set(rows) == {ada, bob}
        assert rows[ada]["total"] == rows[ada]["max"] and float(rows[bob]["total"]) < float(rows[bob]["max"])
        assert rows[ada]["flags"] == "" and re.fullmatch(r"late:\d+h\d\dm\d\ds", rows[bob]["flags"]), rows
        # The instructor's formgrader reads that grading folder: ~/grading's gradebook, both learners graded.
        listed = hub.api("GET", f"user/{teacher}/formgrader/api/assignments", token=tokens[teacher])
        assert listed.ok, listed.text
        assert [(a["name"], a["average_score"] * 2) for a in listed.json()] == [
            (CHAPTER, float(rows[ada]["total"]) + float(rows[bob]["total"]))]

        hidden = {line.strip() for cell in solution.cells for block in HIDDEN.findall(cell.source)
                  for line in block.splitlines() if line.strip()}
        for name in (ada, bob):
            if name == ada:
                browser_fetch_feedback(hub, name, password, tmp_path)
            else:
                terminal(hub, name, tokens[name], f"nbgrader fetch_feedback {CHAPTER} --course=vitlab")
            text = feedback_page(Path(pwd.getpwnam(name).pw_dir))
            score = re.search(r"Score:\s*([\d.]+)\s*/\s*([\d.]+)", text)
            assert score, text[:2000]
            assert float(score.group(1)) == float(rows[name]["total"]), (name, score.group(0), rows[name])
            assert "HIDDEN TESTS" not in text and not [line for line in hidden if line in text]
            assert (name == bob) == ("forgot the 1/sqrt(d_k) scale" in text) == ("after the due date" in text)
            print(f"{name}: grades.csv {rows[name]['total']}/{rows[name]['max']} flags {rows[name]['flags']!r}, "
                  f"fetched feedback '{score.group(0)}'")
    finally:
        if hub is not None:
            hub.stop()
        shutil.rmtree(base, ignore_errors=True)
