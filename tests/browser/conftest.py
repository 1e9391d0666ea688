"""Fixtures for the browser tests: a real JupyterLab on 127.0.0.1 and headless Chromium."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("TML_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "browser"
BUILT_EXTENSION = REPO / "training_manager_lab" / "labextension"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip every browser test, with the reason, when Chromium is not installed."""
    if Path(CHROMIUM).exists():
        return
    reason = (
        f"Chromium not found at {CHROMIUM}; install Debian's package with "
        "`apt-get install -y --no-install-recommends chromium` or set TML_CHROMIUM"
    )
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LabServer:
    """A running JupyterLab: where it listens, its token, and its folders."""

    url: str
    base_url: str
    token: str
    root_dir: Path
    state_dir: Path
    process: subprocess.Popen
    log_path: Path
    _log: Any = field(repr=False, default=None)

    @property
    def lab_url(self) -> str:
        return f"{self.url}lab?token={self.token}"

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """Call the training-manager REST API with the token; return the decoded JSON."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}training-manager/api/{path}",
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read().decode()
        return json.loads(text) if text else None

    def stop(self) -> None:
        """Stop the server (SIGTERM is Jupyter's clean shutdown), then close its log."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self._log is not None:
            self._log.close()


def _extension_path_dir(tmp: Path) -> Path | None:
    """A Jupyter data dir that makes the freshly built extension win over an installed one."""
    if not (BUILT_EXTENSION / "package.json").exists():
        return None
    data = tmp / "jupyter-data"
    target = data / "labextensions" / "training-manager-lab"
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.is_symlink():
        target.symlink_to(BUILT_EXTENSION, target_is_directory=True)
    return data


def start_lab(
    tmp: Path,
    *,
    base_url: str = "/",
    server_extension: bool = True,
    extra_args: list[str] | None = None,
    timeout: float = 90.0,
    port: int | None = None,
    token: str | None = None,
    theme: str | None = None,
) -> LabServer:
    """Start JupyterLab on 127.0.0.1 with a token, a temp root dir and TML_STATE_DIR in tmp.

    Args:
        tmp: a fresh folder for the root dir, state dir, settings and log.
        base_url: the server's base URL, e.g. ``/user/tester/``.
        server_extension: ``False`` disables the training-manager server extension.
        extra_args: more command line arguments for ``jupyter lab``.
        timeout: seconds to wait for the server to answer.
        port: the port; a free one when left out (give the old one to restart a server).
        token: the token; a new random one when left out.
        theme: a JupyterLab theme name, e.g. ``"JupyterLab Dark"``; the default theme if None.
    """
    token = token or secrets.token_hex(16)
    port = port or _free_port()
    root = tmp / "root"
    state = tmp / "state"
    settings = tmp / "settings"
    for folder in (root, state, settings, tmp / "workspaces", tmp / "runtime"):
        folder.mkdir(parents=True, exist_ok=True)
    # No news pop-up and no "check for updates" toast over the panel.
    notification = settings / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True, exist_ok=True)
    (notification / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    if theme is not None:
        (notification / "themes.jupyterlab-settings").write_text(json.dumps({"theme": theme}))

    env = dict(os.environ)
    env["TML_STATE_DIR"] = str(state)
    env["JUPYTER_RUNTIME_DIR"] = str(tmp / "runtime")
    env.pop("MLFLOW_TRACKING_URI", None)
    # The server, the job supervisors and their ranks import this checkout's package.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    data_dir = _extension_path_dir(tmp)
    if data_dir is not None:
        env["JUPYTER_PATH"] = os.pathsep.join(
            [str(data_dir), *filter(None, [os.environ.get("JUPYTER_PATH")])]
        )

    args = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--allow-root",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        f"--ServerApp.base_url={base_url}",
        f"--LabApp.user_settings_dir={settings}",
        f"--LabApp.workspaces_dir={tmp / 'workspaces'}",
        "--LabServerApp.open_browser=False",
    ]
    # Explicit either way, so the tests do not depend on how the package was installed.
    config = tmp / "jupyter_server_config.json"
    config.write_text(
        json.dumps(
            {"ServerApp": {"jpserver_extensions": {"training_manager_lab": server_extension}}}
        )
    )
    args.append(f"--config={config}")
    args.extend(extra_args or [])

    log_path = tmp / "jupyter.log"
    log = log_path.open("a")
    process = subprocess.Popen(
        args, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}{base_url}"
    server = LabServer(url, base_url, token, root, state, process, log_path, log)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            server.stop()
            raise RuntimeError(f"JupyterLab exited early:\n{log_path.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"{url}api/status?token={token}", timeout=2).read()
            return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"JupyterLab did not answer in {timeout}s:\n{log_path.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright (no downloaded browser)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    """One JupyterLab with the training manager, shared by the tests of a module."""
    server = start_lab(tmp_path_factory.mktemp("lab"))
    yield server
    server.stop()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser page; on failure a screenshot lands in test-artifacts/browser/."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    yield page
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"FAILED-{request.node.name}.png"))
    context.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Keep each phase's report on the item so fixtures can see whether the test failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def screenshot(page: Any, name: str) -> Path:
    """Save a screenshot of the page as test-artifacts/browser/<name>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def open_panel(page: Any, server: LabServer) -> Any:
    """Load JupyterLab and open the Training panel by clicking its sidebar tab."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.goto(server.lab_url)
    page.wait_for_selector("#jp-main-dock-panel", timeout=60_000)
    tab = page.locator('.jp-SideBar [data-id="training-manager-lab-panel"]')
    tab.wait_for(timeout=60_000)
    panel = page.locator("#training-manager-lab-panel")
    # JupyterLab restores the saved layout asynchronously, possibly after the tab appears, and
    # clicking the current tab collapses the side area. So click only while the tab is not
    # current, and look again until the panel shows: a restore that lands after a click can
    # neither hide the panel for good nor be toggled shut by that click.
    deadline = time.monotonic() + 90
    while not panel.is_visible():
        if time.monotonic() > deadline:
            raise AssertionError("the Training panel did not open within 90 s")
        if "lm-mod-current" not in (tab.get_attribute("class") or ""):
            tab.click()
        try:
            panel.wait_for(state="visible", timeout=5_000)
        except PlaywrightTimeout:
            continue
    return panel


def copy_to_docs(path: Path) -> None:
    """Put a representative screenshot where the README links it.

    Only when docs/sidebar.png is missing or TML_UPDATE_SCREENSHOTS=1 is set, so that a test
    run does not rewrite a tracked file every time.
    """
    target = REPO / "docs" / "sidebar.png"
    if not target.exists() or os.environ.get("TML_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(path, target)
