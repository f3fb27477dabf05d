"""Red team: submissions that attack the grader, graded in one sandboxed batch beside honest ones.

Each hostile submission is the 01_attention solution plus one attack. The batch must complete, each attack
get its expected score and flag (and the flag's sentence in its feedback), the honest submissions keep full
marks, nothing outside a submission's scratch folder change, and the gradebook stay intact. Graded as root,
and again (links to the instructor's own files) from an ordinary user's account.
"""
from __future__ import annotations

import copy
import csv
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import uuid
import zipfile
from pathlib import Path

import nbformat
import pytest
from grading import assert_no_hidden_code, chapter_notebooks, executed, html_text, learner_submission
from unix_users import copy_course, traversable

from autograder import integrity, sandbox

CHAPTER = "01_attention"
FULL = 12
pytestmark = pytest.mark.skipif(sandbox.missing() is not None, reason=f"no sandbox here: {sandbox.missing()}")


def new_cell(source: str) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    cell.id = uuid.uuid4().hex[:8]
    return cell


def after(nb, index_of, source):
    """The notebook with a learner's own code cell added after the cell `index_of(nb)` points at."""
    nb = copy.deepcopy(nb)
    nb.cells.insert(index_of(nb) + 1, new_cell(source))
    return nb


def inserted(nb, index_of, cell):
    nb = copy.deepcopy(nb)
    nb.cells.insert(index_of(nb) + 1, copy.deepcopy(cell))
    return nb


def setup_cell(nb) -> int:
    return next(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == "setup")


def graded(grade_id):
    return lambda nb: next(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


NO_SCALE = ("scaled_dot_product_attention", "    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])",
            "    scores = q @ k.transpose(-2, -1)")
CALLS_BUILTIN = ("scaled_dot_product_attention", "    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])",
                 "    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)")
LOOPS = ("score_variance", "    return scores.var().item()", "    while True:\n        pass")

FORK_BOMB = """import os, time
children = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(600)
            os._exit(0)
        children += 1
except OSError as exc:
    print(f"fork refused after {children} children: {exc}")"""


def writes(repo: Path) -> str:
    targets = [repo / "vitlab" / "pwned.py", repo / "pwned.txt", "../../../pwned.txt", "/work/pwned.txt",
               "/etc/pwned.txt"]
    return "for target in %r:\n" % [str(t) for t in targets] + """    try:
        with open(target, "w") as f:
            f.write("pwned")
        print("WROTE", target)
    except OSError as exc:
        print("refused", target, type(exc).__name__)"""


def reads(repo: Path) -> str:
    targets = ["../../../gradebook.db", "../../../solutions/01_attention/01_attention.ipynb",
               str(repo / "solutions" / CHAPTER / f"{CHAPTER}.ipynb"), str(repo / "gradebook.db")]
    return "for target in %r:\n" % targets + """    try:
        with open(target, "rb") as f:
            print("READ", target, len(f.read()))
    except OSError as exc:
        print("hidden", target, type(exc).__name__)"""


def connects(port: int) -> str:
    return f"""import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=3).sendall(b"hello")
    print("CONNECTED")
except OSError as exc:
    print("no network:", type(exc).__name__)"""


# learner code that attacks the scoring itself; each is also read by the static scan (`patches:`), and the
# kernel's guard must catch it at run time as well (`tampering:`)
TRANSFORMER = """ip = get_ipython()
ip.input_transformers_cleanup.append(lambda lines: ["pass\\n"] if any("HIDDEN" in l for l in lines) else lines)"""
MODE = """from torch.overrides import TorchFunctionMode
class Agree(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.allclose, torch.equal):
            return True
        return func(*args, **(kwargs or {}))
Agree().__enter__()"""
SWAP = """import functools
from vitlab import check
vars(check)["_difference"] = functools.partial(lambda *a, **k: None)
check_attention.check_function.__code__ = (lambda *a, **k: None).__code__"""
ECHO = """get_ipython().events.register("pre_run_cell", lambda info: print("SEEN", info.raw_cell))"""
PARTIAL = ("scaled_dot_product_attention", "    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])",
           "    import functools\n    return functools.partial(F.scaled_dot_product_attention, attn_mask=mask)(q, k, v, is_causal=causal)")
HISTORY = 'print("HISTORY", In, _ih)\nimport sys\nprint("MODULES", [m for m in sys.modules if "solution" in m])'
# an honest learner's pasted picture, and markdown that tries to script or restyle the feedback page
PICTURE = nbformat.v4.new_markdown_cell("My sketch: ![sketch](attachment:sketch.png)\n\n<script>document.title='PWNED'</script>"
                                        "<style>#vitlab-flags{display:none}</style>", id="pasted01")
PICTURE.source += "\n\nCopied from elsewhere: ![lost](attachment:lost.png)"
PICTURE.attachments = {"sketch.png": {"image/png": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="}}


def scratch_attacks(home: Path, repo: Path) -> str:
    """Leave links to the grader's files, a FIFO and a flood in the scratch folder and /tmp; look for the host
    (its root, the course's checkout and what lies beside it)."""
    return f"""import os
for name, target in [("bashrc", {str(home / ".bashrc")!r}), ("gradebook", "../../../gradebook.db"),
                     ("solutions", "../../../solutions")]:
    os.symlink(target, name)
os.mkfifo("pipe.ipynb")
try:  # files under the size limit each, more than the tmpfs holds together
    for i in range(8):
        with open(f"/tmp/fill{{i}}", "wb") as f:
            for _ in range(4):
                f.write(bytes(32 * 1024**2))
    print("FILLED /tmp")
except OSError as exc:
    print("tmp is bounded:", type(exc).__name__, exc.errno)
for i in range(8):
    if os.path.exists(f"/tmp/fill{{i}}"):
        os.remove(f"/tmp/fill{{i}}")
print("ENV", sorted(os.environ))
print("ROOT", sorted(os.listdir("/")))
print("REPO", sorted(os.listdir({str(repo.resolve())!r})))
print("BESIDE", sorted(os.listdir({str(repo.resolve().parent)!r})))"""


def edit_cell(grade_id, source):
    def edit(nb):
        nb = copy.deepcopy(nb)
        nb.cells[graded(grade_id)(nb)].source = source
        return nb
    return edit


def delete_cell(grade_id):
    def delete(nb):
        nb = copy.deepcopy(nb)
        del nb.cells[graded(grade_id)(nb)]
        return nb
    return delete


@pytest.fixture(scope="module")
def listener():
    """A TCP server on the host's loopback that counts the connections it gets."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    seen = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                seen.append(server.accept())
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], seen
    stop.set()
    thread.join()
    server.close()


def cases(repo: Path, port: int) -> dict:
    """student -> (mistakes, change of the notebook, expected total, expected flag prefixes (a tuple: any of))."""
    return {
        "honest": ([], None, FULL, []),
        "loop": ([LOOPS], None, FULL - 1, ["timeout:score-variance-graded"]),
        # over the memory limit torch cannot allocate (RuntimeError), or the kernel dies where a C library cannot;
        # torch.empty reserves without touching, so the limit is met in milliseconds, not in minutes of page faults
        "memory": ([], lambda nb: after(nb, setup_cell, "import torch\nhog = [torch.empty(1 << 28) for _ in range(64)]"),
                   FULL, [("memory:", "kernel-died:")]),
        # the bomb stops at the process limit; while its children live the kernel can start no threads and dies,
        # and the re-run of the cells before it sets the bomb off again: the rest of the notebook is lost
        "forkbomb": ([], lambda nb: after(nb, setup_cell, FORK_BOMB), 0, ["kernel-died:"]),
        "flood": ([], lambda nb: after(nb, setup_cell, 'print("x" * 3_000_000)\nfor i in range(3000):\n'
                                                      '    print(i, "spam" * 40)'), FULL, ["output-truncated:"]),
        # tries to write outside its folder, read the gradebook and the hidden tests, and reach the host's network
        "intruder": ([], lambda nb: after(nb, setup_cell, "\n".join([writes(repo), reads(repo), connects(port)])),
                     FULL, []),
        "editor": ([NO_SCALE], edit_cell("sdpa-graded", 'print("all good")'), FULL - 3, ["edited:sdpa-graded"]),
        "deleter": ([], delete_cell("mha-graded"), FULL, ["deleted:mha-graded"]),
        "patcher": ([NO_SCALE], lambda nb: after(nb, setup_cell, 'check_attention.sdpa = lambda *a, **k: print("\u2714")'),
                    0, ["patches:check_attention.sdpa"]),
        "sneaky": ([NO_SCALE], lambda nb: after(nb, setup_cell, 'exec("check_attention.sdpa = lambda *a, **k: None")'),
                   0, ["tampering:sdpa-graded"]),
        "cheat": ([CALLS_BUILTIN], None, FULL - 3, ["calls-reference:sdpa-graded"]),
        "crasher": ([], lambda nb: after(nb, graded("sdpa-graded"), "import os\nos._exit(3)"), FULL,
                    ["kernel-died:"]),
        # nothing implemented (the release as it is), full marks forged four ways at once: zero, flagged by the
        # reading of the code and by the kernel's guard (test_the_guard_names_every_forgery)
        "forger": (None, lambda nb: after(nb, setup_cell, "\n".join([TRANSFORMER, MODE, SWAP, ECHO])), 0,
                   ["patches:", "tampering:sdpa-graded"]),
        # the built-in through functools.partial: the reference guard sees it at torch's level
        "partial": ([PARTIAL], None, FULL - 3, ["calls-reference:sdpa-graded"]),
        # an honest learner who prints the kernel's history, pastes a picture and writes HTML in markdown
        "historian": ([], lambda nb: after(nb, graded("linear-causal-graded"), HISTORY), FULL, []),
        "pasted": ([], lambda nb: inserted(nb, setup_cell, PICTURE), FULL, []),
        # links to the grader's files, a FIFO and a flood in the kernel's writable places
        "linker": ([], lambda nb: after(nb, setup_cell, scratch_attacks(Path.home(), repo)), FULL, []),
    }


@pytest.fixture(scope="module")
def batch(repo, tmp_path_factory, autograder, listener):
    release, solution = chapter_notebooks(repo, CHAPTER)
    port, _ = listener
    subs = tmp_path_factory.mktemp("redteam")
    expected = cases(repo, port)
    for student, (mistakes, change, _, _) in expected.items():
        nb = copy.deepcopy(release) if mistakes is None else learner_submission(release, solution, mistakes)
        (subs / student).mkdir()
        nbformat.write(change(nb) if change else nb, subs / student / f"{CHAPTER}.ipynb")
    (subs / "garbled").mkdir()
    (subs / "garbled" / f"{CHAPTER}.ipynb").write_text('{"cells": [', encoding="utf-8")
    (subs / "listmeta").mkdir()  # a cell whose metadata is a list: reported by name, the others graded
    broken = json.loads(nbformat.writes(learner_submission(release, solution, [])))
    broken["cells"][0]["metadata"] = []
    (subs / "listmeta" / f"{CHAPTER}.ipynb").write_text(json.dumps(broken), encoding="utf-8")
    with zipfile.ZipFile(subs / "mallory.zip", "w") as zf:
        zf.writestr("../../evil.ipynb", json.dumps(nbformat.v4.new_notebook()))
        zf.writestr(f"mallory/{CHAPTER}.ipynb", nbformat.writes(learner_submission(release, solution, [])))
    out = tmp_path_factory.mktemp("redteam-graded")
    done = autograder("grade", str(subs), "--chapter", CHAPTER, "--out", str(out), "--workers", "2",
                      "--cell-timeout", "20", "--notebook-timeout", "300", timeout=1500)
    with (out / "grades.csv").open(encoding="utf-8") as f:
        grades = {row["student"]: row for row in csv.DictReader(f)}
    return done, out, grades, expected, subs


def test_the_batch_completes_and_reports_the_broken_inputs(batch):
    done, _, grades, expected, _ = batch
    assert done.returncode == 2, done.stdout + done.stderr
    assert "error: student garbled:" in done.stderr and "is not JSON" in done.stderr
    assert "error: student mallory: mallory.zip has a path outside its folder (../../evil.ipynb)" in done.stderr
    assert "error: student listmeta: 01_attention.ipynb is not a well-formed notebook: cell 1 has metadata" in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(grades) == sorted(expected)


@pytest.mark.parametrize("student", list(cases(Path("."), 0)))
def test_each_attack_gets_its_score_and_flag(batch, student):
    _, out, grades, expected, _ = batch
    _, _, total, flags = expected[student]
    row = grades[student]
    assert float(row["total"]) == total, row
    found = row["flags"].split()
    for flag in flags:
        assert any(f.startswith(flag) for f in found), (flag, found)  # str.startswith takes a tuple too
    if not flags:
        assert found == [], found
    page = html_text(out / "feedback" / student / CHAPTER / f"{CHAPTER}.html")
    for flag in found:
        assert integrity.describe(flag) in page


def outputs_of(out: Path, student: str) -> str:
    nb = executed(out, student, CHAPTER)
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_the_kernel_cannot_write_outside_its_folder(batch, repo):
    _, out, _, _, subs = batch
    text = outputs_of(out, "intruder")
    assert "WROTE" not in text and text.count("refused") == 5, text
    assert not (repo / "vitlab" / "pwned.py").exists() and not (repo / "pwned.txt").exists()
    assert not Path("/work/pwned.txt").exists() and not Path("/etc/pwned.txt").exists()
    assert not (out / "pwned.txt").exists()
    assert not list(subs.parent.rglob("evil.ipynb")) and not list(out.rglob("evil.ipynb"))


def test_the_kernel_cannot_read_the_gradebook_or_the_hidden_tests(batch):
    _, out, _, _, _ = batch
    text = outputs_of(out, "intruder")
    assert "READ" not in text and text.count("hidden") == 4, text


def test_the_kernel_has_no_network(batch, listener):
    _, out, _, _, _ = batch
    assert "no network:" in outputs_of(out, "intruder")
    assert listener[1] == []


def test_a_fork_bomb_hits_the_process_limit_and_leaves_nothing_behind(batch):
    _, out, _, _, _ = batch
    text = outputs_of(out, "forkbomb")
    assert "fork refused after" in text, text
    assert int(text.split("fork refused after ")[1].split()[0]) < sandbox.Limits().processes
    # this checkout's kernels only: other gradings on the machine hold sandbox uids of their own meanwhile
    rows = subprocess.run(["ps", "-eo", "uid=,args="], capture_output=True, text=True).stdout.splitlines()
    left = [row for row in rows if sandbox.UID_BASE <= int(row.split()[0]) < sandbox.UID_BASE + sandbox.UID_COUNT
            and sys.prefix in row]
    assert not left, left


def test_the_gradebook_is_intact(batch):
    _, out, grades, expected, _ = batch
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb:
        assert sorted(s.id for s in gb.students) == sorted(expected)
        assert gb.find_assignment(CHAPTER).max_score == FULL
    assert float(grades["honest"]["total"]) == FULL


def test_hidden_tests_reach_no_feedback_however_the_kernel_saw_them(batch, repo):
    _, out, _, _, _ = batch
    _, solution = chapter_notebooks(repo, CHAPTER)
    assert "HISTORY" in outputs_of(out, "historian")  # the learner's own print ran
    assert_no_hidden_code(out, CHAPTER, solution, len(cases(Path("."), 0)))
    for student in ("historian", "forger"):
        text = html_text(out / "feedback" / student / CHAPTER / f"{CHAPTER}.html")
        assert "graded=True" not in text and "verify_integrity" not in text, student


def test_learner_html_is_sanitised_and_a_pasted_picture_kept(batch):
    _, out, _, _, _ = batch
    page = (out / "feedback" / "pasted" / CHAPTER / f"{CHAPTER}.html").read_text(encoding="utf-8")
    assert "PWNED" not in page and "#vitlab-flags{display:none}" not in page
    assert 'src="data:image/png;base64,iVBORw0KGgo' in page and "[missing picture: lost]" in page


def test_the_formgrader_shows_learner_markdown_sanitised(repo):
    """The formgrader exports a submission with a plain HTMLExporter and its own template, configured by the
    course's nbgrader configuration: the learner's markdown reaches the instructor without script or style."""
    from nbconvert import HTMLExporter
    from nbgrader.server_extensions.formgrader.formgrader import FormgradeExtension
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(repo / "autograder")).load_config()
    config.merge(FormgradeExtension().build_extra_config())
    nb = nbformat.v4.new_notebook(cells=[copy.deepcopy(PICTURE), nbformat.v4.new_markdown_cell("# Attention\n\n*scaled*")])
    page, _ = HTMLExporter(config=config).from_notebook_node(
        nb, resources={"base_url": "/", "index": 0, "total": 1, "notebook_id": CHAPTER})
    assert "formgrader/static" in page and "PWNED" not in page  # nbgrader's formgrade template and "#vitlab-flags{display:none}" not in page
    assert 'src="data:image/png;base64,iVBORw0KGgo' in page and "[missing picture: lost]" in page
    assert "<em>scaled</em>" in page and ">Attention" in page


def test_the_scratch_folder_is_bounded_and_nothing_in_it_reaches_the_host(batch):
    _, out, _, _, _ = batch
    text = outputs_of(out, "linker")
    assert "tmp is bounded: OSError 28" in text and "FILLED" not in text, text  # ENOSPC
    env = eval(text.split("ENV ")[1].splitlines()[0])
    assert set(env) <= {"HOME", "LANG", "MPLCONFIGDIR", "PYTHONNOUSERSITE", "NBGRADER_EXECUTION", "PATH", "PWD", "OMP_NUM_THREADS",
                        "VITLAB_DATA", "JPY_SESSION_NAME", "PYDEVD_USE_FRAME_EVAL", "MPLBACKEND", "CLICOLOR",
                        "FORCE_COLOR", "TERM", "PAGER", "GIT_PAGER", "CLICOLOR_FORCE", "SHLVL", "_"}, env
    root = eval(text.split("ROOT ")[1].splitlines()[0])
    assert "home" not in root and "opt" not in root and "var" not in root, root
    repo = eval(text.split("REPO ")[1].splitlines()[0])
    assert set(repo) <= {"vitlab", "data", ".venv"}, repo  # not solutions/, autograder/ or .git
    beside = eval(text.split("BESIDE ")[1].splitlines()[0])
    assert beside == [sandbox.REPO.name], beside  # no other checkout or grading folder next to it
    for folder in (out / "autograded" / "linker", out / "feedback" / "linker"):
        assert not [p for p in folder.rglob("*") if p.is_symlink() or not (p.is_file() or p.is_dir())], folder
    assert not (out / "feedback" / "linker" / CHAPTER / "bashrc").exists()


def test_the_guard_names_every_forgery(batch):
    _, out, _, _, _ = batch
    nb = executed(out, "forger", CHAPTER)
    cell = nb.cells[graded("sdpa-graded")(nb)]
    message = " ".join(o.evalue for o in cell.outputs if o.output_type == "error" and o.ename == "IntegrityError")
    for undone in ("cleanup_transforms", "a TorchFunctionMode", "events.pre_run_cell", "vitlab.check._difference",
                   "vitlab.check.check_function (its code or contents)"):
        assert undone in message, (undone, message)
    hidden = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
    assert not [c for c in hidden for o in c.outputs if "SEEN" in o.get("text", "")]  # the echo hook was gone


# --- the same attacks when an instructor grades from their own account, not as root -----------------------------

def home_attacks(home: Path) -> str:
    """Link the instructor's shell profile, private key and gradebook from the scratch folder, leave a FIFO, and
    write and chmod through the links."""
    targets = {"bashrc": str(home / ".bashrc"), "key": str(home / ".ssh" / "id_rsa"), "gradebook": "../../../gradebook.db"}
    return f"""import os
targets = {targets!r}
for name, target in targets.items():
    os.symlink(target, name)
os.mkfifo("pipe.ipynb")
for name in targets:
    for what, act in (("write", lambda: open(name, "a").write("pwned")), ("chmod", lambda: os.chmod(name, 0o444))):
        try:
            act()
            print("DID", what, name)
        except OSError as exc:
            print("refused", what, name, type(exc).__name__)"""


def unprivileged_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create the ordinary user who grades (useradd); run as root to test both ways"
    for tool in ("useradd", "userdel", "runuser"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    return None


def snapshot(folder: Path, skip: Path | None = None, contents: bool = True) -> dict:
    """path -> (mode, mtime, size, contents) of everything under `folder` but `skip`, links not followed."""
    seen = {}
    for path in [folder, *folder.rglob("*")]:
        if skip is not None and path.is_relative_to(skip):
            continue
        st = path.lstat()
        data = path.read_bytes() if contents and stat.S_ISREG(st.st_mode) else None
        seen[str(path)] = (st.st_mode, st.st_mtime_ns, st.st_size, data)
    return seen


@pytest.fixture
def grader_account():
    """An ordinary local user (removed afterwards) with a shell profile and a private key of their own."""
    name = f"vt{uuid.uuid4().hex[:4]}-grader"
    subprocess.run(["useradd", "-m", "-s", "/bin/bash", name], check=True, capture_output=True)
    try:
        home = Path(pwd.getpwnam(name).pw_dir)
        (home / ".bashrc").write_text("# the instructor's own profile\n", encoding="utf-8")
        (home / ".ssh").mkdir(mode=0o700, exist_ok=True)
        (home / ".ssh" / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot a real key\n", encoding="utf-8")
        (home / ".ssh" / "id_rsa").chmod(0o600)
        user = pwd.getpwnam(name)
        for path in [home, *home.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)
        yield name, home
    finally:
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
        subprocess.run(["userdel", "-r", name], capture_output=True)


@pytest.fixture
def installed_course():
    """A copy of the course and its environment that every user can read (pytest's own tmp folders are 0700)."""
    base = Path(tempfile.mkdtemp(prefix="vitlab-user-"))
    try:
        base.chmod(0o755)
        (base / "vitlab").mkdir()
        yield base / "vitlab", copy_course(base / "vitlab")
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(unprivileged_missing() is not None, reason=f"{unprivileged_missing()}")
def test_grading_as_an_ordinary_user_is_as_safe_as_as_root(repo, grader_account, installed_course):
    """An honest learner and one who links the instructor's files from the scratch folder, graded by an
    instructor's own account from a copy of the course every user can read (the kernel then runs as that user)."""
    name, home = grader_account
    user = pwd.getpwnam(name)
    release, solution = chapter_notebooks(repo, CHAPTER)
    subs = home / "submissions"
    for student, nb in (("honest", learner_submission(release, solution, [])),
                        ("linker", after(learner_submission(release, solution, []), setup_cell, home_attacks(home)))):
        (subs / student).mkdir(parents=True)
        nbformat.write(nb, subs / student / f"{CHAPTER}.ipynb")
    for path in [subs, *subs.rglob("*")]:
        os.chown(path, user.pw_uid, user.pw_gid)
    course, venv = installed_course
    out = home / "grading"
    before_home, before_course = snapshot(home), snapshot(course, contents=False)
    with traversable(Path(sys.base_prefix)), traversable(course):
        done = subprocess.run(
            ["runuser", "-u", name, "--", "env", "-i", f"HOME={home}", "PATH=/usr/local/bin:/usr/bin:/bin",
             "LANG=C.UTF-8", f"{venv}/bin/python", "-m", "autograder", "grade", str(subs), "--chapter", CHAPTER,
             "--out", str(out), "--workers", "2", "--cell-timeout", "20", "--notebook-timeout", "120"],
            cwd=course, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    with (out / "grades.csv").open(encoding="utf-8") as f:
        grades = {row["student"]: row for row in csv.DictReader(f)}
    assert {s: (float(r["total"]), r["flags"]) for s, r in grades.items()} == {"honest": (FULL, ""), "linker": (FULL, "")}
    text = outputs_of(out, "linker")
    assert "DID" not in text and text.count("refused") == 6, text  # the links lead nowhere inside the sandbox
    # nothing outside the grading folder changed: the profile and the key keep content, mode and time; what is
    # new at home are the grading folder and the instructor's tools' own state (Jupyter's and IPython's settings,
    # matplotlib's font cache), plain files and folders only
    after_home = snapshot(home, skip=out)
    assert {p: after_home.get(p) for p in before_home if p != str(home)} == \
        {p: v for p, v in before_home.items() if p != str(home)}
    tools = [home / name for name in (".cache", ".config", ".ipython", ".jupyter")]
    new = [Path(p) for p in after_home if p not in before_home]
    assert not [p for p in new if not any(p.is_relative_to(t) for t in tools)], new
    assert not [p for p in new if p.is_symlink() or not (p.is_file() or p.is_dir())], new
    assert snapshot(course, contents=False) == before_course
    book = (out / "gradebook.db").stat()
    assert book.st_uid == user.pw_uid and book.st_mode & stat.S_IWUSR
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb:
        assert sorted(s.id for s in gb.students) == ["honest", "linker"]
        assert gb.find_assignment(CHAPTER).max_score == FULL
    for folder in (out / "autograded" / "linker", out / "feedback" / "linker"):
        assert not [p for p in folder.rglob("*") if p.is_symlink() or not (p.is_file() or p.is_dir())], folder
