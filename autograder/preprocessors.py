"""nbgrader preprocessors: feedback that keeps hidden tests hidden, and execution with budgets."""
import ast
import copy
import html
import json
import os
import re
import subprocess
import time

from jupyter_core.utils import run_sync
from nbclient.exceptions import DeadKernelError
from nbformat import NotebookNode
from nbformat.v4 import new_output
from nbgrader import utils
from nbgrader.preprocessors import Execute, NbGraderPreprocessor
from traitlets import Integer

from autograder.integrity import TAMPERED

HIDDEN_TESTS = "BEGIN HIDDEN TESTS"
HIDDEN_BLOCK = ("### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS")


class HideHiddenTestTracebacks(NbGraderPreprocessor):
    """In graded cells holding hidden tests, shorten each error output's traceback to "ename: evalue".

    IPython's tracebacks quote the cell's code, so an error raised by a hidden test (a NameError, say)
    would show that test in the feedback even after ClearHiddenTests removed it from the cell's source.
    Run it before ClearHiddenTests, which removes the marker this looks for.
    """

    def preprocess_cell(self, cell: NotebookNode, resources: dict, index: int) -> tuple[NotebookNode, dict]:
        if cell.cell_type == "code" and utils.is_grade(cell) and HIDDEN_TESTS in cell.source:
            for output in cell.outputs:
                if output.output_type == "error":
                    output.traceback = [f"{output.ename}: {output.evalue}"]
        return cell, resources


class RedactHiddenTests(NbGraderPreprocessor):
    """Cut every line of the hidden tests out of every output, however the kernel got hold of it (printing
    `In`, a hook that echoed each cell, a file it wrote and read back): each becomes "[hidden test]".
    Run before ClearHiddenTests, which removes the tests this reads."""

    def preprocess(self, nb: NotebookNode, resources: dict) -> tuple[NotebookNode, dict]:
        lines = {HIDDEN_BLOCK[0], HIDDEN_BLOCK[1]}
        for cell in nb.cells:
            for block in re.findall(rf"{HIDDEN_BLOCK[0]}(.*?){HIDDEN_BLOCK[1]}", cell.source, re.S):
                lines |= {line.strip() for line in block.splitlines() if len(line.strip()) >= 8}
        # as printed, inside a repr (a printed list of cells), and HTML-escaped
        variants = sorted({v for line in lines for v in (line, repr(line)[1:-1], html.escape(line))}, key=len,
                          reverse=True)
        pattern = re.compile("|".join(map(re.escape, variants)))
        for cell in nb.cells:
            for output in cell.get("outputs", []):
                for key in ("text", "evalue"):
                    if isinstance(output.get(key), str):
                        output[key] = pattern.sub("[hidden test]", output[key])
                if isinstance(output.get("traceback"), list):
                    output.traceback = [pattern.sub("[hidden test]", str(line)) for line in output.traceback]
                for mime, value in output.get("data", {}).items():
                    if isinstance(value, str):
                        output.data[mime] = pattern.sub("[hidden test]", value)
        return nb, resources


class GuardedExecute(Execute):
    """nbgrader's Execute with a time budget for the whole notebook, a cap on each cell's output, and
    recovery from a kernel that dies.

    - Once `notebook_timeout` seconds are used up, the remaining cells are not run: each gets a
      `NotebookTimeout` error. A cell never gets more time than what is left.
    - A cell's output beyond `max_output_bytes` of text (pictures count a tenth of their size) is dropped,
      with one line saying so: a flood of output cannot fill the grader's memory or the feedback.
    - When the kernel dies (out of memory, a crash, `os._exit`) or stops answering properly (a fork bomb
      leaves it no threads), the cell gets a `KernelDied` error, a fresh
      kernel re-runs the code cells before it (their outputs are kept from the first run), and grading goes
      on: the crash costs the cell that crashed, not the rest of the notebook. The replays count against
      the notebook's budget.
    - Around every hidden-test cell, `vitlab.guard` (run as a user expression, out of reach of the learner's
      input transformers) puts IPython's transformers, hooks and torch's modes back as they were when the
      kernel started, and compares vitlab's, torch's and the builtins' functions with that start by
      identity: whatever it had to undo or found changed is an `IntegrityError` on the cell (zero, and the
      `tampering` flag). Hidden-test cells run without history, so `In` never holds them.
    """

    notebook_timeout = Integer(900, help="seconds for the whole notebook").tag(config=True)
    max_output_bytes = Integer(200_000, help="bytes of output kept per cell").tag(config=True)

    def preprocess(self, nb, resources=None, km=None):
        self._started = None  # set at the first code cell: starting the kernel is not the learner's time
        self._needs_snapshot = True  # the kernel has run no cell yet: the guard takes its snapshot before the first
        self._snapshot: list[str] | None = []
        self._output_bytes: dict[int, int] = {}
        return super().preprocess(nb, resources, km)

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code":
            return cell, resources
        self._started = self._started or time.monotonic()
        left = self.notebook_timeout - (time.monotonic() - self._started)
        if left <= 1:
            cell.outputs = [error_output("NotebookTimeout",
                                         f"not run: the notebook used up its {self.notebook_timeout} s")]
            return cell, resources
        per_cell = self.timeout
        self.timeout = int(min(per_cell or left, left))
        hidden = HIDDEN_TESTS in cell.source
        try:
            if self._needs_snapshot:
                self._snapshot, self._needs_snapshot = self._guard("snapshot"), False
            undone = self._guard("reset") if hidden else []
            self._check_assign_resources(resources)
            # hidden tests stay out of the kernel's history (In, _ih), so a later cell cannot print them
            cell = self.execute_cell(cell, index, store_history=not hidden)
            if hidden:
                self._flag_tampering(cell, [*(self._snapshot if self._snapshot is not None else [None]),
                                            *(undone if undone is not None else [None]), *(self._guard("verify") or [])])
            return cell, self.resources
        except Exception as exc:  # noqa: BLE001 - errors in the cell are outputs; this is the kernel failing
            dead = isinstance(exc, DeadKernelError)
            cell.outputs.append(error_output(
                "KernelDied", f"the kernel {'died' if dead else 'stopped answering'} while running this cell "
                f"({'out of memory, a crash, or an exit' if dead else type(exc).__name__}); "
                "the cells after it ran in a fresh kernel"))
            self._restart(index)
            return cell, resources
        finally:
            self.timeout = per_cell

    def _guard(self, action: str) -> list[str] | None:
        """Run `vitlab.guard.ACTION()` in the kernel as a user expression, which IPython evaluates without the
        learner's input transformers; its list (what it undid or found), or None when the kernel gave none."""
        expression = f"__import__('vitlab.guard', fromlist=['guard']).{action}()"
        msg_id = self.kc.execute("", silent=True, store_history=False, user_expressions={"guard": expression})
        reply = run_sync(self.async_wait_for_reply)(msg_id)
        result = ((reply or {}).get("content", {}).get("user_expressions") or {}).get("guard", {})
        try:
            found = json.loads(ast.literal_eval(result["data"]["text/plain"]))
        except (KeyError, TypeError, ValueError, SyntaxError):
            return None
        return [str(x) for x in found] if isinstance(found, list) else None

    def _flag_tampering(self, cell, found: list[str | None]) -> None:
        """An error on a hidden-test cell (zero, and a `tampering` flag) when the guard undid or found something."""
        found = ["the kernel's guard gave no answer" if x is None else x for x in found]
        if found:
            shown = ", ".join(dict.fromkeys(found[:6])) + (f" and {len(found) - 6} more" if len(found) > 6 else "")
            cell.outputs.append(error_output("IntegrityError", f"this notebook {TAMPERED}: {shown}"))

    def _restart(self, index: int) -> None:
        """A fresh kernel that has run the code cells before `index` again (their outputs unchanged), within
        what is left of the notebook's time budget."""
        self._fresh_kernel()
        per_cell = self.timeout
        try:
            for number, before in enumerate(self.nb.cells[:index]):
                left = self.notebook_timeout - (time.monotonic() - self._started)
                if left <= 1:
                    return  # the cells after this one get NotebookTimeout
                if before.cell_type == "code":
                    self.timeout = int(min(per_cell or left, left))
                    replay = copy.deepcopy(before)
                    try:
                        self.execute_cell(replay, number, store_history=False)
                    except Exception:  # noqa: BLE001 - it failed the first time round too: start clean again
                        self._fresh_kernel()
        finally:
            self.timeout = per_cell

    def _fresh_kernel(self) -> None:
        """Stop the kernel, wait until the processes it left are gone (a fork bomb's children hold the sandbox
        uid's process limit), start a new one."""
        run_sync(self.km.shutdown_kernel)(now=True, restart=True)
        uid = os.environ.get("VITLAB_SANDBOX_UID")
        for _ in range(100):
            if not uid or subprocess.run(["pkill", "-KILL", "-u", uid], capture_output=True).returncode == 1:
                break  # pkill found nothing left to kill
            time.sleep(0.1)
        run_sync(self.km.start_kernel)(**self.km._launch_args)
        run_sync(self.kc.wait_for_ready)(timeout=self.startup_timeout)
        self._snapshot = self._guard("snapshot")

    def output(self, outs, msg, display_id, cell_index):
        # printed text counts in full; pictures and other rich output count a tenth (a figure is ~100 kB)
        content = msg.get("content", {})
        size = len(content.get("text", "")) if msg.get("msg_type") == "stream" else \
            len(json.dumps(content, default=str)) // 10
        used = self._output_bytes.get(cell_index, 0)
        self._output_bytes[cell_index] = used + size
        if used + size <= self.max_output_bytes:
            return super().output(outs, msg, display_id, cell_index)
        if used <= self.max_output_bytes:  # the first output over the cap: say so once
            outs.append(new_output("stream", name="stderr",
                                   text=f"\n[output truncated: this cell printed more than "
                                        f"{self.max_output_bytes // 1000} kB]\n"))
        return None


def error_output(ename: str, evalue: str) -> NotebookNode:
    return new_output("error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])
