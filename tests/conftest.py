"""Shared test fixtures.

Tests that need *a* checkpoint use `tiny_checkpoints` (made here, in the released layout); tests that need media
write it or render the toy world. Only parity tests (against what the official code computed) and tests of the
real sample files read the project's shared fixtures (``../shared``, or ``$LBSEARCH_SHARED``), and only through
the `golden` and `media` fixtures, which skip with the reason when the folder is absent. Every test that uses one
of them is marked ``needs_shared``, so ``-m "not needs_shared"`` runs what any clone runs, and
tests/test_self_contained.py bounds how much of the suite that leaves out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from sample_media import write_samples
from tiny_checkpoints import write_all

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LBSEARCH_SHARED", REPO.parent / "shared"))
SHARED_FIXTURES = ("golden", "media")
_NEEDS_SHARED = pytest.StashKey[tuple[int, int]]()


def copy_checkout(target: Path) -> Path:
    """Copy into ``target`` the files a clone of this working tree would hold, were it committed as it is: git's
    tracked and not-ignored files, with their current content. Returns ``target``."""
    command = ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"]
    listed = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():  # a tracked file deleted in the working tree is not copied
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    return target


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared parity fixtures are not checked out beside this repo")
    return path


@pytest.fixture(scope="session")
def golden() -> Path:
    """What the official LanguageBind code computed (parity data), with its tiny checkpoints."""
    return _require(SHARED / "golden")


@pytest.fixture(scope="session")
def media() -> Path:
    """The real sample files of ``../shared/media``."""
    return _require(SHARED / "media")


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with every tiny released-layout checkpoint of `tiny_checkpoints.LAYOUTS`, one subfolder each."""
    return write_all(tmp_path_factory.mktemp("checkpoints"))


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by the marker set here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    marked = 0
    for item in items:
        if set(SHARED_FIXTURES) & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.needs_shared)
            marked += 1
    config.stash[_NEEDS_SHARED] = (marked, len(items))


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    marked, total = config.stash.get(_NEEDS_SHARED, (0, 0))
    if marked:
        where = "present" if SHARED.exists() else "absent: they skip"
        terminalreporter.write_line(f"{marked} of {total} tests read {SHARED} ({where})")


@pytest.fixture(scope="session")
def sample_media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Files like those of ``../shared/media`` (same names and layout), written here: see `sample_media`."""
    return write_samples(tmp_path_factory.mktemp("sample_media"))
