"""The suite tests lbsearch on any machine: a checkout without ``../shared`` beside it skips at most 8% of it.

Only the `golden` and `media` fixtures of tests/conftest.py read ``../shared``, and conftest marks every test that
uses them (directly or through other fixtures) ``needs_shared``: exactly the tests that skip when it is absent.
The check copies the files a clone would hold (git's tracked and not-ignored files, as they are in this working
tree) into a folder with no ``shared`` beside it and collects the suite there, so it counts what a new user's
clone collects, at the cost of one collection (no test runs twice).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import copy_checkout

MAX_SHARED_FRACTION = 0.08


def _collect(clone: Path, *marker: str) -> int:
    """How many tests pytest collects in ``clone`` (with ``-m`` and the marker expression when given)."""
    env = {key: value for key, value in os.environ.items() if key not in ("LBSEARCH_SHARED", "PYTEST_ADDOPTS")}
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    result = subprocess.run(
        [*command, *(("-m", *marker) if marker else ())], cwd=clone, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = re.search(r"^(?:(\d+)/)?(\d+) tests? collected", result.stdout, re.MULTILINE)
    assert summary, result.stdout[-3000:]
    return int(summary.group(1) or summary.group(2))


def test_a_clone_without_shared_skips_at_most_8_percent(tmp_path: Path) -> None:
    clone = copy_checkout(tmp_path / "lbsearch")
    assert not (tmp_path / "shared").exists()

    # Nothing reaches ../shared except through the two fixtures: no test module reads its location itself.
    for module in (clone / "tests").glob("*.py"):
        if module.name not in ("conftest.py", Path(__file__).name):
            source = module.read_text(encoding="utf-8")
            assert "LBSEARCH_SHARED" not in source, module.name
            assert not re.search(r"from conftest import .*\bSHARED\b", source), module.name

    total = _collect(clone)
    needs_shared = _collect(clone, "needs_shared")
    assert needs_shared > 0  # the parity tests are there, and marked
    assert needs_shared / total <= MAX_SHARED_FRACTION, f"{needs_shared} of {total} tests need ../shared"
