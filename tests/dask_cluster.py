"""A Dask cluster of real processes on loopback for the tests and the grading benchmark: a `dask scheduler` and
`dask worker`s, each in a folder and process session of its own."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from distributed import Client

DASK = str(Path(sys.executable).with_name("dask"))


@dataclass
class Cluster:
    address: str
    folder: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)  # name -> its process group leader

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        """Start `dask ARGS` in a folder and session of its own (so that killing it takes its children too)."""
        where = self.folder / name
        where.mkdir(parents=True)
        with (where / "dask.log").open("w") as log:
            self.processes[name] = subprocess.Popen([DASK, *args], cwd=where, env=env, stdout=log,
                                                    stderr=subprocess.STDOUT, start_new_session=True)

    def start_worker(self, name: str, env: dict[str, str] | None = None) -> None:
        self.start(name, "worker", self.address, "--name", name, "--nthreads", "1", "--no-dashboard",
                   "--local-directory", str(self.folder / name), env=env)

    def kill(self, name: str) -> None:
        """Kill a process and its children at once (SIGKILL to its session), as a machine that dies would."""
        process = self.processes.pop(name)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def wait_for(self, workers: int, timeout: float = 120) -> None:
        with Client(self.address, timeout=30) as client:
            client.wait_for_workers(workers, timeout=timeout)

    def address_of(self, name: str, timeout: float = 120) -> str:
        """The address of the worker called `name`, once it has joined."""
        deadline = time.monotonic() + timeout
        with Client(self.address, timeout=30) as client:
            while time.monotonic() < deadline:
                found = [a for a, w in client.scheduler_info()["workers"].items() if w["name"] == name]
                if found:
                    return found[0]
                time.sleep(0.5)
        raise TimeoutError(f"worker {name} did not join the cluster in {timeout} s")

    def stop(self, name: str) -> None:
        """Stop a process gracefully (SIGTERM) and wait for it, so that its CPU time counts as a reaped child's."""
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    @classmethod
    @contextmanager
    def on_loopback(cls, folder: Path, workers: int) -> Iterator[Cluster]:
        """A scheduler on a free loopback port and `workers` workers (one thread each), stopped on exit."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        running = cls(f"tcp://127.0.0.1:{port}", folder)
        running.start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard")
        try:
            # the workers share this machine's cores: each kernel gets its share (see cli.kernel_threads)
            share = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // workers)))
            for i in range(workers):
                running.start_worker(f"w{i}", env=share)
            running.wait_for(workers)
            yield running
        finally:
            for name in [n for n in running.processes if n != "scheduler"] + ["scheduler"]:
                if name in running.processes:
                    running.stop(name)
