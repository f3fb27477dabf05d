"""Drive JupyterLab in headless Chromium (Playwright): a server on a copy of some notebooks, and a notebook page.

The browser is the system's Chromium (`apt-get install chromium`), started through PyPI's `playwright` with
`executable_path`; `playwright install` is never needed. Used by tests/test_browser.py.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# JupyterLab user settings for the test's own settings folder: every cell stays in the page (no windowing, so a
# locator reaches any cell), no "Jupyter news" question, and no autosave (whose write, racing the test's own
# save, can make JupyterLab ask "File Changed").
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]

# The input prompt of every code cell, in order: "[3]:" once run, "[*]:" while queued or running, "[ ]:" never run.
PROMPTS_JS = """() => Array.from(document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell'))
    .map(c => (c.querySelector('.jp-InputPrompt') || {textContent: ''}).textContent.trim())"""

# For the first ipywidgets slider: its readout and the image shown by the widget box that holds it.
WIDGET_STATE_JS = """() => {
    const slider = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .widget-slider');
    if (!slider) return null;
    let box = slider.parentElement;
    while (box && !box.querySelector('.widget-output img')) box = box.parentElement;
    const img = box ? box.querySelector('.widget-output img') : null;
    const readout = slider.querySelector('.widget-readout');
    return {readout: readout ? (readout.value || readout.textContent) : null,
            image: img ? img.src.length + ':' + img.src.slice(-64) : null,
            loaded: img ? img.naturalWidth : 0};
}"""

IMAGES_JS = """() => Array.from(document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-RenderedImage img'))
    .map(img => img.naturalWidth)"""


def chromium_path() -> str | None:
    """The system Chromium: $VITLAB_CHROMIUM, else chromium / chromium-browser / google-chrome on PATH."""
    if os.environ.get("VITLAB_CHROMIUM"):
        return os.environ["VITLAB_CHROMIUM"]
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    return None


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """`python -m jupyter lab` serving `root_dir` on 127.0.0.1 with a token, its config and state kept in `home`.

    `env` is added to the server's environment, which its kernels inherit (VITLAB_PROFILE, for one).
    """

    def __init__(self, root_dir: Path, home: Path, env: dict[str, str] | None = None) -> None:
        self.root_dir, self.home = root_dir, home
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.log_path = home / "jupyterlab.log"
        self.env = dict(os.environ, JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
                        JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
                        JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"), **(env or {}))
        self.process: subprocess.Popen | None = None
        for plugin, settings in LAB_SETTINGS.items():
            package, name = plugin.rsplit("/", 1)
            folder = home / "settings" / package
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{name}.jupyterlab-settings").write_text(json.dumps(settings))

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}{'&' if '?' in path else '?'}token={self.token}"

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(self.url(f"api/{path}"), method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def start(self, timeout: float = 90) -> LabServer:
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
                 f"--port={self.port}", f"--ServerApp.token={self.token}", f"--ServerApp.root_dir={self.root_dir}",
                 "--ServerApp.port_retries=0"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.home)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited ({self.process.returncode}):\n{self.log_path.read_text()}")
            try:
                self.api("status")
                return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"jupyter lab did not answer in {timeout} s:\n{self.log_path.read_text()}")

    def shutdown_kernels(self) -> None:
        for kernel in self.api("kernels"):
            self.api(f"kernels/{kernel['id']}", method="DELETE")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class NotebookPage:
    """One notebook opened in JupyterLab, driven through the menus, the mouse and the keyboard."""

    def __init__(self, page, server: LabServer, path: str, shots: Path, name: str) -> None:
        self.page, self.server, self.path, self.shots, self.name = page, server, path, shots, name

    def open(self, timeout: float = 90) -> None:
        self.page.goto(self.server.url(f"lab/tree/{self.path}?reset"))  # reset: no tabs restored from earlier pages
        self.page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=timeout * 1000)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # the "Select Kernel" dialog may come late; no kernel starts before it
            self.accept_dialogs()
            if self.kernel_status() == "idle" and self.has_kernel():
                break
            self.page.wait_for_timeout(300)
        else:
            raise AssertionError(f"{self.path}: the kernel did not become idle in {timeout} s "
                                 f"(status {self.kernel_status()!r})")
        toast_no = self.page.locator(".jp-toast-button:text-is('No')")
        if toast_no.count():
            toast_no.first.click()

    def accept_dialogs(self) -> None:
        """Accept any open dialog (JupyterLab's "Select Kernel" on some first opens), saying what it asked."""
        while self.page.locator(".jp-Dialog .jp-mod-accept").count():
            print(f"{self.path}: accepting dialog {self.page.locator('.jp-Dialog').first.inner_text()!r}")
            self.page.locator(".jp-Dialog .jp-mod-accept").first.click()
            self.page.wait_for_timeout(300)

    def has_kernel(self) -> bool:
        """Whether the server has a session with a kernel for this notebook."""
        return any(s["path"] == self.path and s.get("kernel") for s in self.server.api("sessions"))

    def kernel_status(self) -> str | None:
        indicator = self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator")
        return indicator.first.get_attribute("data-status") if indicator.count() else None

    def menu(self, top: str, item: str) -> None:
        """Click menu `top` in the menu bar, then its entry `item`."""
        self.accept_dialogs()
        self.page.click(f".lm-MenuBar-itemLabel:text-is('{top}')")
        self.page.click(f".lm-Menu-content .lm-Menu-itemLabel:text-is('{item}')")

    def prompts(self) -> list[str]:
        return self.page.evaluate(PROMPTS_JS)

    def wait_idle(self, timeout: float) -> None:
        """Wait until no cell is queued or running and the kernel is idle (seen twice, 0.5 s apart)."""
        deadline, calm = time.monotonic() + timeout, 0
        self.page.wait_for_timeout(500)
        while time.monotonic() < deadline:
            busy = any("*" in p for p in self.prompts()) or self.kernel_status() != "idle"
            calm = 0 if busy else calm + 1
            if calm >= 2:
                return
            self.page.wait_for_timeout(500)
        raise AssertionError(f"{self.path}: still running after {timeout} s; prompts {self.prompts()}")

    def run_all(self, timeout: float = 300) -> int:
        """Run All Cells; after an error stops the run, select the first cell not yet run and run it and all below.

        Returns how many times the run had to be resumed after an error.
        """
        start = time.monotonic()
        deadline = start + timeout
        self.menu("Run", "Run All Cells")
        self.wait_idle(deadline - time.monotonic())
        resumed, last = 0, -1
        while True:
            prompts = self.prompts()
            todo = [i for i, p in enumerate(prompts) if p == "[ ]:" and i > last]
            if not todo:
                print(f"{self.path}: ran in {time.monotonic() - start:.1f} s, resumed {resumed} times after errors")
                return resumed
            last = todo[0]
            cell = self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell").nth(last)
            cell.locator(".jp-InputPrompt").click()
            self.menu("Run", "Run Selected Cell and All Below")
            self.wait_idle(deadline - time.monotonic())
            resumed += 1

    def save(self, timeout: float = 60) -> dict:
        """Save through the File menu; return the notebook JSON once the file on disk is rewritten and whole."""
        file = self.server.root_dir / self.path
        before = file.stat().st_mtime_ns
        self.menu("File", "Save Notebook")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.page.wait_for_timeout(300)
            dirty = self.page.locator(".lm-DockPanel .lm-TabBar-tab.jp-mod-dirty").count()
            if file.stat().st_mtime_ns != before and not dirty:
                try:
                    return json.loads(file.read_text())
                except ValueError:  # still being written
                    continue
        raise AssertionError(f"{self.path}: File > Save Notebook did not write the notebook in {timeout} s")

    def images(self) -> list[int]:
        """Natural widths of the images in rendered outputs (0: not decoded)."""
        return self.page.evaluate(IMAGES_JS)

    def widget_state(self) -> dict | None:
        return self.page.evaluate(WIDGET_STATE_JS)

    def nudge_first_slider(self, presses: int = 1, timeout: float = 30) -> tuple[dict, dict]:
        """Focus the first slider's handle, press ArrowRight; wait until the widget's picture changes.

        Returns the widget state (readout, image) before and after.
        """
        before = self.widget_state()
        assert before is not None, f"{self.path}: no ipywidgets slider in the page"
        slider = self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .widget-slider").first
        slider.scroll_into_view_if_needed()
        handle = slider.locator(".noUi-handle").first
        handle.focus()
        for _ in range(presses):
            handle.press("ArrowRight")
        deadline = time.monotonic() + timeout
        after = self.widget_state()
        while (after["image"] == before["image"] or not after["loaded"]) and time.monotonic() < deadline:
            self.page.wait_for_timeout(300)
            after = self.widget_state()
        return before, after

    def screenshot(self, what: str, locator=None) -> Path:
        """A viewport screenshot, scrolled to `locator` if given, saved as NAME-WHAT.png."""
        if locator is not None:
            locator.scroll_into_view_if_needed()
            self.page.wait_for_timeout(300)
        path = self.shots / f"{self.name}-{what}.png"
        self.page.screenshot(path=str(path))
        return path
