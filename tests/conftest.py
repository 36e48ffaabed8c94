"""Shared test fixtures: where the project's shared fixtures (`../shared`) live, skipping when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LBSEARCH_SHARED", REPO.parent / "shared"))
GOLDEN = SHARED / "golden"
MEDIA = SHARED / "media"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared parity fixtures are not checked out beside this repo")
    return path


@pytest.fixture(scope="session")
def golden() -> Path:
    return _require(GOLDEN)


@pytest.fixture(scope="session")
def media() -> Path:
    return _require(MEDIA)
