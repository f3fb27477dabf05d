"""The kernel sandbox: a Jupyter kernelspec whose kernel runs inside bubblewrap, with resource limits.

Inside, the kernel sees an empty root with only what it needs, read-only: the system (`/usr`, the `/bin` and
`/lib` links, a few files of `/etc`), the Python environment, and the repository's `vitlab/` and `data/`.
Nothing else of the host is there: no other checkout, no grading folder, no home. Writable, and nowhere else:
- the submission's scratch folder (where the kernel starts, at nbgrader's autograded/STUDENT/CHAPTER path) and
  `/tmp` (HOME points there): two fresh tmpfs of `Limits.scratch_bytes` each, gone with the kernel, so
  nothing the kernel writes (a link, a FIFO, a copy of anything) ever reaches the host or the feedback;
- the folder of its kernel sockets.
No network (its own network namespace: kernel and nbgrader talk over unix sockets, the `ipc` transport); its own
process namespace (when the kernel stops, everything it started goes with it); a fixed environment (`ENV`).
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
    scratch_bytes: int = 512 * 1024**2  # each of the two tmpfs (/tmp and the scratch folder)


SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC = ("passwd", "group", "nsswitch.conf", "hosts", "localtime", "ld.so.cache", "ld.so.conf", "ld.so.conf.d",
       "alternatives", "fonts", "mime.types")
ENV = {"HOME": "/tmp", "LANG": "C.UTF-8", "MPLCONFIGDIR": "/tmp/.config/matplotlib", "PYTHONNOUSERSITE": "1",
       "NBGRADER_EXECUTION": "autograde"}


def missing() -> str | None:
    """Why the sandbox cannot run here, or None when it can."""
    for tool in ("bwrap", "prlimit"):
        if shutil.which(tool) is None:
            package = "bubblewrap" if tool == "bwrap" else "util-linux"
            return f"`{tool}` is not installed (Debian: apt-get install {package})"
    return None


class _Root:
    """bwrap arguments that build the kernel's file tree from an empty root, one mount at a time."""

    def __init__(self) -> None:
        self.argv: list[str] = []
        self.made: set[Path] = {Path("/")}  # folders that exist inside: made, or mount points
        self.readonly: list[Path] = []  # read-only mounts: what lies below them is there already

    def _visible(self, path: Path) -> bool:
        return any(path.is_relative_to(m) for m in self.readonly)

    def mount(self, *how: str, path: Path, source: Path | None = None) -> None:
        """Mount `source` (default `path`) at `path`; `how` ends with the bwrap option ("--ro-bind", "--bind",
        or "--tmpfs", which takes no source). A read-only path already inside a read-only mount is skipped."""
        if how[-1] == "--ro-bind" and self._visible(path):
            return
        # bwrap makes missing mount points with mode 0700, which an unprivileged kernel cannot walk through
        for ancestor in reversed(path.parents):
            if ancestor not in self.made and not self._visible(ancestor):
                self.argv += ["--perms", "0755", "--dir", str(ancestor)]
                self.made.add(ancestor)
        self.argv += [*how, *([] if how[-1] == "--tmpfs" else [str(source or path)]), str(path)]
        self.made.add(path)
        if how[-1] == "--ro-bind":
            self.readonly.append(path)


def bwrap_argv(scratch: Path, sockets: Path, runtime: Path, limits: Limits, uid: int | None,
               kernel_env: dict[str, str] | None = None) -> list[str]:
    """The kernel command line: prlimit, then bwrap, then (as root) a drop to `uid`, then ipykernel."""
    root = _Root()
    for name in SYSTEM:
        path = Path(name)
        if path.is_symlink():
            root.argv += ["--symlink", os.readlink(path), name]
        elif path.is_dir():
            root.mount("--ro-bind", path=path)
    for name in ETC:
        if (Path("/etc") / name).exists():
            root.mount("--ro-bind", path=Path("/etc") / name)
    root.mount("--perms", "1777", "--size", str(limits.scratch_bytes), "--tmpfs", path=Path("/tmp"))
    data = os.environ.get("VITLAB_DATA", "").strip()
    for path in (Path(sys.base_prefix), Path(sys.prefix), REPO / "vitlab", REPO / "data", *([Path(data)] if data else [])):
        if path.exists():
            root.mount("--ro-bind", path=path.resolve())
    cache = Path.home() / ".cache" / "matplotlib"  # the font cache: without it every kernel rebuilds it
    if cache.is_dir():
        root.mount("--ro-bind", path=Path("/tmp/.cache/matplotlib"), source=cache)
    root.mount("--perms", "1777", "--size", str(limits.scratch_bytes), "--tmpfs", path=scratch)
    root.mount("--bind", path=sockets)
    root.mount("--ro-bind", path=runtime)  # the connection file
    env = dict(ENV, PATH=f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin", **({"VITLAB_DATA": data} if data else {}),
               **(kernel_env or {}))
    argv = ["prlimit", f"--as={limits.memory_bytes}", f"--fsize={limits.file_bytes}",
            f"--nproc={limits.processes}", "--",
            "bwrap", *root.argv, "--dev", "/dev", "--proc", "/proc", "--remount-ro", "/",  # the tmpfs root too
            "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-pid", "--die-with-parent", "--new-session",
            "--clearenv", *[a for k, v in env.items() for a in ("--setenv", k, v)],
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


def prepare(course: Path, student: str, chapter: str, uid: int | None, limits: Limits,
            kernel_env: dict[str, str] | None = None) -> dict[str, str]:
    """Write the sandbox kernelspec for one submission; returns the environment and nbgrader options to use.

    The scratch folder is nbgrader's autograded/STUDENT/CHAPTER (where the kernel starts); `uid` is the
    kernel's (from `kernel_uid`); `kernel_env` is added to the kernel's fixed environment (its thread count).
    """
    base = course / ".sandbox" / f"{student}-{chapter}"
    scratch = course / "autograded" / student / chapter
    runtime, spec = base / "runtime", base / "kernels" / KERNEL_NAME
    # a unix socket's path must stay under 108 bytes, whatever the grading folder's: keep them in a short one
    sockets = Path(tempfile.mkdtemp(prefix="vitlab-k-"))
    for path in (runtime, spec):
        path.mkdir(parents=True, exist_ok=True)
    os.chmod(sockets, 0o777)
    argv = bwrap_argv(scratch, sockets, runtime, limits, uid, kernel_env)
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
