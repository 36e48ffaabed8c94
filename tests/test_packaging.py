"""A wheel of lbsearch, installed into a fresh virtual environment, runs from outside the repository.

The wheel is built from this checkout (`pip wheel`, not an editable install) and installed without its
dependencies into a venv that sees this interpreter's packages (torch and friends are large and already here).
Every command runs with the venv's interpreter from a folder outside the checkout, so what it imports is the wheel.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import copy_checkout

from lbsearch.app.live import free_port

pytestmark = pytest.mark.slow
UI_START_SECONDS = 90


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A virtual environment with the wheel of this checkout installed; yields its bin folder."""
    root = tmp_path_factory.mktemp("wheel")
    # Built from a copy of the checkout's files: pip builds in the source folder and would leave build/ in the repo.
    source = copy_checkout(root / "source")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(source), "-w", str(root / "dist")],
        check=True, cwd=root,
    )
    (wheel,) = (root / "dist").glob("lbsearch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if "dist-info" not in name}
    assert top_level == {"lbsearch"}, f"the wheel installs more than the lbsearch package: {sorted(top_level)}"
    assert "lbsearch/app/streamlit_app.py" in names and "lbsearch/cli/__init__.py" in names
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(root / "venv")], check=True)
    bin_dir = root / "venv" / "bin"
    subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, cwd=root
    )
    yield bin_dir


def run_outside(command: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LBSEARCH_INDEX")}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, **kwargs)


def test_the_installed_package_is_the_wheel(venv: Path, tmp_path: Path) -> None:
    found = run_outside([str(venv / "python"), "-c", "import lbsearch.app, lbsearch.cli; print(lbsearch.__file__)"],
                        tmp_path)
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()).is_relative_to(venv.parent), found.stdout


def test_lbsearch_help_runs_from_the_wheel(venv: Path, tmp_path: Path) -> None:
    result = run_outside([str(venv / "lbsearch"), "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    for command in ("index", "search", "ui", "demo", "verify"):
        assert command in result.stdout


def test_lbsearch_ui_serves_from_the_wheel(venv: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    server = subprocess.Popen(
        [str(venv / "lbsearch"), "ui", "--port", str(port), "--index", str(tmp_path / "index")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + UI_START_SECONDS
        healthy = False
        while time.monotonic() < deadline and server.poll() is None and not healthy:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as response:
                    healthy = response.status == 200 and response.read() == b"ok"
            except OSError:
                time.sleep(0.5)
        assert healthy, f"the UI did not answer its health check (exit {server.poll()})"
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert "Traceback" not in output, output
    # `lbsearch ui` is the server itself: SIGTERM stopped it, and nothing is left serving the port.
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
