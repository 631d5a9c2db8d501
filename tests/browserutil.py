"""Running `medsam serve` for the browser tests, and driving Gradio pages with Playwright.

Chromium is Debian's (`apt-get install -y chromium`), never a Playwright download.
"""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.workerutil import serve_dies_with_parent

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("MEDSAM_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = REPO / "docs" / "screenshots"


def app_mounts_ui() -> bool:
    import portal.web.app

    return "mount_ui" in inspect.getsource(portal.web.app)


def serve_with_ui() -> int:
    """`medsam serve`, with the UI mounted by us if create_app does not mount it yet."""
    import portal.web.app
    from portal.cli import main

    if not app_mounts_ui():
        original = portal.web.app.create_app

        def create_app(*args, **kwargs):
            app = original(*args, **kwargs)
            if not any(getattr(r, "path", None) in ("", "/") for r in app.routes):
                from portal.web.ui import mount_ui

                mount_ui(app)
            return app

        portal.web.app.create_app = create_app
    return main(["serve", *sys.argv[1:]])


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


class Server:
    def __init__(self, data_dir: Path, port: int, env: dict[str, str] | None = None):
        self.data_dir, self.port = data_dir, port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {
            **os.environ,
            "MEDSAM_DATA_DIR": str(data_dir),
            "MEDSAM_PORT": str(port),
            "MEDSAM_HOST": "127.0.0.1",
            **(env or {}),
        }
        self.log = data_dir / "serve.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> Server:
        if app_mounts_ui():
            cmd = [sys.executable, "-m", "portal.cli", "serve"]  # exactly `medsam serve`
        else:
            cmd = [
                sys.executable,
                "-c",
                "import sys; from tests.browserutil import serve_with_ui; sys.exit(serve_with_ui())",
            ]
        self.proc = subprocess.Popen(
            cmd,
            env=self.env,
            cwd=REPO,
            stdout=open(self.log, "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=serve_dies_with_parent,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"medsam serve exited:\n{self.log.read_text()[-3000:]}")
            if (
                _status(f"{self.url}/healthz") == 200
                and _status(f"{self.url}/demo/") in (200, 404)
                and _status(f"{self.url}/config") in (200, 401, 403)
            ):
                return self
            time.sleep(0.5)
        self.stop()  # a server that never answered must not outlive the test that gave up on it
        raise TimeoutError(f"medsam serve did not answer:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


# ---------------------------------------------------------------------------- page helpers
def open_page(context, url: str):
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    page.goto(url, wait_until="load")
    page.wait_for_selector(".gradio-container", timeout=60_000)
    return page


def login(context, base: str, username: str, password: str):
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.goto(base + "/", wait_until="load")
    page.wait_for_selector(".gradio-container", timeout=60_000)
    page.locator("input[type=text], input:not([type])").first.fill(username)
    page.locator("input[type=password]").first.fill(password)
    page.get_by_role("button", name="Login").click()
    page.wait_for_selector("#who", timeout=60_000)
    page.locator("#who").get_by_text(username).wait_for(timeout=60_000)
    return page


def toast_texts(page) -> list[str]:
    return page.locator(".toast-body").all_inner_texts()


def wait_toast(page, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for body in toast_texts(page):
            if text in body:
                return body
        time.sleep(0.2)
    raise AssertionError(f"no message containing {text!r}; messages: {toast_texts(page)}")


def image_frame(page, selector: str, width: int, height: int):
    """Map original pixel coordinates to page coordinates for an image drawn fitted and centred in a canvas."""
    canvas = page.locator(f"{selector} canvas").first
    canvas.wait_for(timeout=60_000)
    box = canvas.bounding_box()
    scale = min(box["width"] / width, box["height"] / height)
    ox = box["x"] + (box["width"] - width * scale) / 2
    oy = box["y"] + (box["height"] - height * scale) / 2
    return lambda x, y: (ox + x * scale, oy + y * scale)


def drag(page, start: tuple[float, float], end: tuple[float, float], steps: int = 8) -> None:
    page.mouse.move(*start)
    page.mouse.down()
    mid = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)
    page.mouse.move(*mid, steps=steps)
    page.mouse.move(*end, steps=steps)
    page.mouse.up()


def choose(page, selector: str, option_text: str) -> None:
    """Pick a Gradio dropdown option by (part of) its text."""
    page.locator(f"{selector} input").first.click()
    page.get_by_role("option").filter(has_text=option_text).first.click()


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=False)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def browser_folder(tmp_path_factory, data_dir: Path, name: str) -> Path:
    """A module's own MEDSAM_DATA_DIR, sharing the run's exported ONNX graphs; chromium and playwright required."""
    from tests.conftest import require

    require(Path(CHROMIUM).exists(), f"chromium not found at {CHROMIUM} (apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        require(False, f"playwright is not installed ({exc})")
    folder = tmp_path_factory.mktemp(name)
    (data_dir / "onnx").mkdir(exist_ok=True)
    (folder / "onnx").symlink_to(data_dir / "onnx", target_is_directory=True)  # export once per run
    return folder


@contextmanager
def served(folder: Path, env: dict[str, str]) -> Iterator[tuple[Server, Any]]:
    """`medsam serve` on ``folder`` and a headless chromium, both stopped however the module ends."""
    from playwright.sync_api import sync_playwright

    server = Server(folder, free_port(), env).start()
    pw = sync_playwright().start()
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    try:
        yield server, browser
    finally:
        browser.close()
        pw.stop()
        server.stop()
