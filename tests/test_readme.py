"""The README's Python examples run as written: every ```python block preceded by a `<!-- test -->` line runs in a
temporary folder holding a library indexed at ``indexes/`` (the test media of tests/test_query.py, the tiny
official-format checkpoints)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO
from test_query import build_library, checkpoint_paths, write_media

README = REPO / "README.md"
MARKED_BLOCK = re.compile(r"^<!-- test -->[ \t]*\n```python[ \t]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def marked_blocks(text: str) -> list[tuple[int, str]]:
    """(line number of the block's first code line, code) of every marked Python block."""
    return [(text.count("\n", 0, match.start(1)) + 1, match.group(1)) for match in MARKED_BLOCK.finditer(text)]


def _cases() -> list:
    blocks = marked_blocks(README.read_text(encoding="utf-8")) if README.exists() else []
    if not blocks:
        return [pytest.param(None, marks=pytest.mark.skip(reason="README.md marks no Python block with <!-- test -->"))]
    return [pytest.param(block, id=f"README.md:{block[0]}") for block in blocks]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoints: Path) -> Path:
    folder = tmp_path_factory.mktemp("readme")
    media = folder / "media"
    media.mkdir()
    write_media(media)
    build_library(folder / "indexes", media, checkpoint_paths(tiny_checkpoints)).close()
    return folder


def test_marked_blocks_are_found() -> None:
    text = (
        "intro\n<!-- test -->\n```python\nx = 1\n```\n\n"
        "```python\nnot marked\n```\n<!-- test -->\n```python\ny = 2\n```\n"
    )
    assert marked_blocks(text) == [(4, "x = 1\n"), (12, "y = 2\n")]


@pytest.mark.parametrize("block", _cases())
def test_readme_example_runs(block: tuple[int, str], workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    line, code = block
    monkeypatch.chdir(workdir)
    # Compiled under the README's name with the block's line offset, so a failure points at the README line.
    exec(compile("\n" * (line - 1) + code, str(README), "exec"), {"__name__": "readme_example"})
