"""The UI as a real server on loopback, driven by Debian's chromium through Playwright: for the end-to-end test
and the README screenshots. Nothing here downloads a browser (never `playwright install`)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Page

APP = Path(__file__).resolve().parent / "streamlit_app.py"
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--headless",
)
STARTUP_SECONDS = 90
VIEWPORT = {"width": 1400, "height": 1000}


def server_command(port: int, address: str, *options: str) -> list[str]:
    """The Streamlit server of the UI, as `lbsearch ui` and the tests start it. ``toolbarMode=viewer`` hides
    Streamlit's developer toolbar and Deploy button: a user of lbsearch has nothing to deploy."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        f"--server.address={address}",
        f"--server.port={port}",
        "--browser.gatherUsageStats=false",
        "--client.toolbarMode=viewer",
        *options,
    ]


def chromium() -> str | None:
    """Debian's chromium, when installed."""
    return shutil.which("chromium")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def running_app(index: str | Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """Serve the UI on a free loopback port for the library at ``index``; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = server_command(
        port, "127.0.0.1", "--server.headless=true", "--server.fileWatcherType=none", "--", "--index", str(index)
    )
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=APP.parent.parent
        )
        try:
            deadline = time.monotonic() + STARTUP_SECONDS
            while not _healthy(url):
                if server.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"the UI server did not start:\n{log.read().decode(errors='replace')[-4000:]}")
                time.sleep(0.3)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


@contextmanager
def browser_page() -> Iterator[Page]:
    """A page of headless Debian chromium."""
    from playwright.sync_api import sync_playwright

    executable = chromium()
    if executable is None:
        raise RuntimeError("chromium is not installed (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=list(CHROMIUM_ARGS), headless=True)
        try:
            yield browser.new_page(viewport=VIEWPORT)
        finally:
            browser.close()


def settle(page: Page, timeout_ms: float = 180_000) -> None:
    """Wait until the app has finished its current script run."""
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=timeout_ms)


def screenshot(page: Page, path: str | Path) -> Path:
    """The whole page: the window is stretched to the content's height (the content scrolls inside the app, so
    a plain full-page screenshot would stop at the window)."""
    settle(page)
    page.wait_for_selector('[data-testid="stSkeleton"]', state="detached")  # placeholders of elements to come
    main_height = "document.querySelector('[data-testid=\"stMain\"]').scrollHeight"
    height = VIEWPORT["height"]
    while (needed := int(page.evaluate(main_height))) > height:
        height = needed
        page.set_viewport_size({"width": VIEWPORT["width"], "height": height})
        page.wait_for_timeout(300)  # let the taller layout paint
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path))
    finally:
        page.set_viewport_size(VIEWPORT)
    return Path(path)
