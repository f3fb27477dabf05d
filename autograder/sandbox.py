"""The kernel sandbox: a Jupyter kernelspec whose kernel runs inside bubblewrap, with resource limits.

Inside, the kernel sees the whole file system read-only, except:
- the repository is hidden (solutions with their hidden tests, a gradebook), but for `vitlab/` and `data/`;
- the grading folder is hidden (gradebook, source notebooks, other students), but for the submission's
  own scratch folder, which is writable, and the folder of its kernel sockets;
- `/tmp` is an empty tmpfs (HOME points there);
- no network (its own network namespace: kernel and nbgrader talk over unix sockets, the `ipc` transport);
- its own process namespace: when the kernel is stopped, everything it started goes with it.
Limits: address space (memory), file size, number of processes (the kernel runs as an unprivileged uid
of its own when graded as root, so the limit holds; as another user the limit counts that user's
processes). Time per cell and per notebook are nbgrader's side (`preprocessors.GuardedExecute`).
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

KERNEL_NAME = "vitlab-sandbox"
REPO = Path(__file__).resolve().parent.parent
UID_BASE, UID_COUNT = 61000, 1000  # kernel uids, one per running kernel on this machine


@dataclass(frozen=True)
class Limits:
    memory_bytes: int = 6 * 1024**3
    file_bytes: int = 256 * 1024**2
    processes: int = 256


def missing() -> str | None:
    """Why the sandbox cannot run here, or None when it can."""
    for tool in ("bwrap", "prlimit"):
        if shutil.which(tool) is None:
            package = "bubblewrap" if tool == "bwrap" else "util-linux"
            return f"`{tool}` is not installed (Debian: apt-get install {package})"
    return None


def _dirs_for(path: Path, hidden: list[Path]) -> list[str]:
    """bwrap arguments that create the ancestors of `path` lying under a hidden (tmpfs) root, traversable.

    bwrap makes missing mount points with mode 0700, which an unprivileged kernel cannot walk through.
    """
    args: list[str] = []
    for ancestor in reversed(path.parents):
        if any(ancestor != root and ancestor.is_relative_to(root) for root in hidden):
            args += ["--perms", "0755", "--dir", str(ancestor)]
    return args


def bwrap_argv(scratch: Path, sockets: Path, runtime: Path, course: Path, limits: Limits, uid: int | None) -> list[str]:
    """The kernel command line: prlimit, then bwrap, then (as root) a drop to `uid`, then ipykernel."""
    hidden = [Path("/tmp"), REPO, course]
    visible = [p for p in (REPO / "vitlab", REPO / "data", Path(sys.prefix)) if p.exists()]
    cache = Path.home() / ".cache" / "matplotlib"  # the font cache: without it every kernel rebuilds it
    argv = ["prlimit", f"--as={limits.memory_bytes}", f"--fsize={limits.file_bytes}",
            f"--nproc={limits.processes}", "--",
            "bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            "--perms", "1777", "--tmpfs", "/tmp"]
    for i, root in enumerate(hidden[1:], 1):
        argv += [*_dirs_for(root, hidden[:i]), "--perms", "0755", "--tmpfs", str(root)]
    for path in visible:
        argv += [*_dirs_for(path, hidden), "--ro-bind", str(path), str(path)]
    if cache.is_dir():
        argv += ["--perms", "0755", "--dir", "/tmp/.cache", "--ro-bind", str(cache), "/tmp/.cache/matplotlib"]
    for path in (scratch, sockets):
        argv += [*_dirs_for(path, hidden), "--bind", str(path), str(path)]
    argv += [*_dirs_for(runtime, hidden), "--ro-bind", str(runtime), str(runtime)]  # the connection file
    argv += ["--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-pid", "--die-with-parent", "--new-session",
             "--setenv", "HOME", "/tmp", "--setenv", "MPLCONFIGDIR", "/tmp/.config/matplotlib",
             "--unsetenv", "JPY_PARENT_PID",  # ipykernel would take bwrap's pid for its parent dying
             "--chdir", str(scratch)]
    kernel = [sys.executable, "-m", "ipykernel_launcher", "-f", "/tmp/kernel.json"]
    drop = f"setpriv --reuid={uid} --regid={uid} --clear-groups -- " if uid is not None else ""
    # The connection file lies in a folder only the grader can read: copy it in before dropping privileges.
    script = f'cp "$0" /tmp/kernel.json && chmod 644 /tmp/kernel.json && exec {drop}' + " ".join(kernel)
    return argv + ["/bin/sh", "-c", script, "{connection_file}"]


@contextmanager
def kernel_uid() -> Iterator[int | None]:
    """A uid that no other sandboxed kernel on this machine has now (grading runs in parallel or side by side
    each take their own, held by a lock file), or None when not grading as root. Afterwards every process
    left under that uid is killed."""
    if os.geteuid() != 0:
        yield None
        return
    locks = Path(tempfile.gettempdir()) / "vitlab-sandbox-uids"
    locks.mkdir(exist_ok=True)
    for uid in range(UID_BASE, UID_BASE + UID_COUNT):
        with (locks / str(uid)).open("w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            try:
                yield uid
            finally:
                if shutil.which("pkill"):
                    subprocess.run(["pkill", "-KILL", "-u", str(uid)], capture_output=True)
            return
    raise RuntimeError(f"all {UID_COUNT} sandbox uids from {UID_BASE} are in use")


def prepare(course: Path, student: str, chapter: str, uid: int | None, limits: Limits) -> dict[str, str]:
    """Write the sandbox kernelspec for one submission; returns the environment and nbgrader options to use.

    The scratch folder is nbgrader's autograded/STUDENT/CHAPTER (where the kernel starts); `uid` is the
    kernel's (from `kernel_uid`).
    """
    base = course / ".sandbox" / f"{student}-{chapter}"
    scratch = course / "autograded" / student / chapter
    runtime, spec = base / "runtime", base / "kernels" / KERNEL_NAME
    # a unix socket's path must stay under 108 bytes, whatever the grading folder's: keep them in a short one
    sockets = Path(tempfile.mkdtemp(prefix="vitlab-k-"))
    for path in (scratch, runtime, spec):
        path.mkdir(parents=True, exist_ok=True)
    for path in (scratch, sockets):
        os.chmod(path, 0o777)
    argv = bwrap_argv(scratch, sockets, runtime, course, limits, uid)
    # interrupts as a message: a signal would reach bwrap, not the kernel inside it
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "vitlab sandbox", "language": "python",
                                                  "interrupt_mode": "message"}, indent=1), encoding="utf-8")
    return {
        "JUPYTER_PATH": str(base),
        "JUPYTER_RUNTIME_DIR": str(runtime),
        "TMPDIR": str(runtime),  # where jupyter_client writes the connection file
        **({"VITLAB_SANDBOX_UID": str(uid)} if uid is not None else {}),  # GuardedExecute cleans up after it
        "--Execute.kernel_name": KERNEL_NAME,
        "--KernelManager.transport": "ipc",
        "--KernelManager.ip": str(sockets / "k"),
    }
