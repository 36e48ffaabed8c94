"""Faults give clear errors and lose nothing (issue 16, parts 4-6).

A small image library is indexed by `lbsearch index` with the bundled demo image model (no shared fixtures needed),
copied per test, and then hit the way disks, mounts and users do: a full disk (a real tmpfs when this machine lets
us mount one, and SQLite's own page limit otherwise), a read-only folder (a real read-only bind mount when
permitted, and the folder's writability reported as false otherwise), a damaged SQLite file, a FAISS file with a
lowered header watermark, out-of-range options. Every failure must be one line on stderr with a non-zero exit.
"""

from __future__ import annotations

import concurrent.futures.process
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from lbsearch import Library
from lbsearch.cli import app
from lbsearch.errors import CheckpointError, ConfigError, ReadOnlyLibraryError
from lbsearch.ingest.decode import WindowSpec
from lbsearch.ingest.pipeline import IngestOptions
from lbsearch.models.checkpoint import read_state_dict
from lbsearch.models.registry import DEMO_DIR
from lbsearch.storage import database as database_module
from lbsearch.storage.database import SQLITE_FILE_NAME
from lbsearch.storage.vectorindex import VectorIndex

runner = CliRunner()
MODEL = ["--model", f"image={DEMO_DIR / 'image'}"]
IMAGES = 8
# Deep enough that a path is wider than an 80-column table leaves it.
DEEP = Path("holidays 2019") / "the long weekend at the lake house" / "photographs from the second camera"


def write_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for number in range(count):
        pixels = np.zeros((40, 48, 3), np.uint8)
        pixels[...] = rng.integers(0, 256, 3)
        top, left = rng.integers(0, 20, 2)
        pixels[top : top + 16, left : left + 20] = rng.integers(0, 256, 3)
        paths.append(folder / f"picture-{seed}-{number:02d}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def cli(*args: str | Path) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    # An exception escaping a command would be swallowed by the runner: only a deliberate exit is allowed.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.stdout, result.stderr


def assert_one_line_error(stderr: str, *fragments: str) -> None:
    """One error line (besides `index`'s plain progress lines), holding each fragment."""
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("indexing: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], stderr


@dataclass(frozen=True)
class Built:
    media: Path
    index: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    media = tmp_path_factory.mktemp("media")
    write_images(media / DEEP, IMAGES)
    index = tmp_path_factory.mktemp("built") / "index"
    code, stdout, stderr = cli("index", media, "--index", index, "--workers", "0", "--json", *MODEL)
    assert code == 0, stderr
    assert json.loads(stdout)["embedded"] == IMAGES
    return Built(media, index)


@pytest.fixture
def library(built: Built, tmp_path: Path) -> Path:
    """A copy of the built library's index folder, for a test to damage."""
    shutil.copytree(built.index, tmp_path / "index")
    return tmp_path / "index"


def searched_paths(index: Path, *extra: str) -> list[str]:
    code, stdout, stderr = cli("search", "a red square", "--in", "image", "-k", "3", "--json", "--index", index, *extra)
    assert code == 0, stderr
    return [hit["path"] for hit in json.loads(stdout)]


def mounted(*arguments: str) -> bool:
    """Run mount(8); False when this machine does not let us (no root, a container without the capability)."""
    if shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", *arguments], capture_output=True).returncode == 0


# -------------------------------------------------------------------------------------------- disk full


@contextmanager
def page_limit(extra_pages: int) -> Iterator[None]:
    """Every SQLite connection opened meanwhile may grow its file by ``extra_pages`` pages only: SQLite then fails
    with SQLITE_FULL ("database or disk is full") exactly as on a full disk."""
    original = database_module._configure_sqlite

    def limited(engine, read_only: bool) -> None:
        original(engine, read_only)

        @database_module.event.listens_for(engine, "connect")
        def _limit(connection, _record) -> None:
            pages = connection.execute("PRAGMA page_count").fetchone()[0]
            connection.execute(f"PRAGMA max_page_count={pages + extra_pages}")

    database_module._configure_sqlite = limited
    try:
        yield
    finally:
        database_module._configure_sqlite = original


def assert_disk_full_then_recovered(index: Path, media: Path, fill: Callable[[], None], free: Callable[[], None]):
    fill()
    code, _, stderr = cli("index", media, "--index", index, "--workers", "0")
    assert code == 1
    assert_one_line_error(stderr, "full", "free some space")
    free()
    code, _, stderr = cli("index", media, "--index", index, "--workers", "0", "--json")
    assert code == 0, stderr
    with Library.open(index, create=False) as lib:
        assert len(lib.files()) == IMAGES + 40
        assert lib.verify() == []


def test_a_full_disk_stops_index_with_one_line_and_a_rerun_completes(library: Path, tmp_path: Path) -> None:
    """Simulated: SQLite's page limit gives the very error a full disk gives."""
    write_images(tmp_path / "more", 40, seed=1)
    with ExitStack() as stack:
        assert_disk_full_then_recovered(
            library, tmp_path / "more", fill=lambda: stack.enter_context(page_limit(2)), free=stack.close
        )


def test_a_full_tmpfs_stops_index_with_one_line_and_a_rerun_completes(built: Built, tmp_path: Path) -> None:
    """A real full disk: a small tmpfs holding the library, filled up with a ballast file, then freed."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not mounted("-t", "tmpfs", "-o", "size=6m", "tmpfs", str(disk)):
        pytest.skip("mounting a tmpfs is not permitted here (the simulated full disk test covers the code path)")
    try:
        shutil.copytree(built.index, disk / "index")
        write_images(tmp_path / "more", 40, seed=1)
        ballast = disk / "ballast"

        def fill() -> None:
            with open(ballast, "wb") as file:
                try:
                    while True:
                        file.write(b"\0" * 65536)
                        file.flush()
                except OSError:
                    pass
            # Leave room for the -wal file to start, not for the new rows: the failure comes mid-run.
            os.truncate(ballast, ballast.stat().st_size - 96 * 1024)

        assert_disk_full_then_recovered(disk / "index", tmp_path / "more", fill=fill, free=ballast.unlink)
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=True)  # the CLI leaves its pool open


# ------------------------------------------------------------------------------------------- read-only


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, but those of SQLite's -shm, the shared memory in which every reader of a WAL database
    marks what it reads (a real read-only mount keeps even that unchanged)."""
    files = (p for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith("-shm"))
    return {str(p.relative_to(folder)): p.read_bytes() for p in files}


def assert_serves_reads_and_refuses_writes(
    index: Path, media: Path, expected_hits: list[str], verified: tuple[int, str] = (0, "agree")
) -> None:
    assert searched_paths(index) == expected_hits
    code, stdout, stderr = cli("status", "--json", "--index", index)
    assert code == 0, stderr
    assert json.loads(stdout)["files"]["image"]["ok"] == IMAGES
    code, stdout, stderr = cli("verify", "--index", index)
    assert (code, verified[1] in stdout) == (verified[0], True), stdout + stderr
    for command in (["index", media], ["remove", media], ["reindex"], ["verify", "--repair"]):
        code, stdout, stderr = cli(*command, "--index", index)
        assert code == 1, (command, stdout)
        assert_one_line_error(stderr, "read-only")
    with Library.open(index, create=False) as lib:
        assert lib.read_only
        with pytest.raises(ReadOnlyLibraryError, match="read-only"):
            lib.add(media)


def test_a_read_only_folder_serves_search_status_and_verify_and_refuses_writes(
    built: Built, library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulated: the folder reports itself unwritable (as `os.access` does on a read-only mount); nothing may
    then be written in it, not even SQLite's -wal and -shm files."""
    expected = searched_paths(library)
    before = snapshot(library)
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode, **kw: False if mode & os.W_OK and str(library) in str(path)
        else real_access(path, mode, **kw)
    )
    assert_serves_reads_and_refuses_writes(library, built.media, expected)
    assert snapshot(library) == before


def test_a_read_only_mount_serves_search_status_and_verify_and_refuses_writes(built: Built, tmp_path: Path) -> None:
    """A real read-only mount (a bind mount remounted ro), where even root cannot write."""
    library, view = tmp_path / "index", tmp_path / "view"
    shutil.copytree(built.index, library)
    (library / "faiss" / next(p.name for p in (library / "faiss").iterdir())).unlink()  # search must not write it
    expected = searched_paths(built.index)
    before = snapshot(library)
    view.mkdir()
    if not mounted("--bind", str(library), str(view)):
        pytest.skip("bind mounts are not permitted here (the simulated read-only test covers the code path)")
    try:
        assert mounted("-o", "remount,ro,bind", str(view))
        with pytest.raises(OSError):
            (view / "probe").write_bytes(b"")
        # verify reports the missing file (and cannot repair it here).
        assert_serves_reads_and_refuses_writes(view, built.media, expected, verified=(4, "is missing"))
        assert snapshot(library) == before
    finally:
        subprocess.run(["umount", "--lazy", str(view)], check=True)


def test_the_ui_serves_a_read_only_library(built: Built, library: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    from lbsearch.app.live import APP

    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode, **kw: False if mode & os.W_OK and str(library) in str(path)
        else real_access(path, mode, **kw)
    )
    before = snapshot(library)
    monkeypatch.setenv("LBSEARCH_INDEX", str(library))
    page = AppTest.from_file(str(APP), default_timeout=120).run()
    assert not page.exception and not page.error, (page.exception, page.error)
    page.text_input(key="search-text").input("a red square").run()
    assert not page.exception and not page.error, (page.exception, page.error)
    shown = " ".join(str(m.value) for m in page.markdown)
    expected = searched_paths(library)
    assert Path(expected[0]).name in shown, shown
    assert snapshot(library) == before


# ------------------------------------------------------------------------------------- damaged files


def zero_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:100] = bytes(100)
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 256] = bytes(b ^ 0xFF for b in data[middle : middle + 256])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [zero_header, truncate, flip_middle], ids=lambda f: f.__name__)
def test_a_damaged_database_is_one_line_naming_it_and_what_to_do(library: Path, damage) -> None:
    database = library / SQLITE_FILE_NAME
    with sqlite3.connect(database) as connection:  # everything in the file itself, as after a clean close
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    damage(database)
    for command in (["status"], ["search", "a red square", "--in", "image"], ["verify"]):
        code, stdout, stderr = cli(*command, "--index", library)
        assert code != 0, (command, stdout)
        if code == 1:
            assert_one_line_error(stderr, str(database), "restore it from a backup, or start a new library")
        else:  # verify got as far as SQLite's integrity check, which names the damage
            assert code == 4 and "Traceback" not in stderr
            assert str(database) in stdout and "start a new library" in stdout, stdout


def lower_watermark(path: Path) -> None:
    """One bit of the header flipped: the file says it holds fewer vectors than it does."""
    index = VectorIndex.read(path)
    index.watermarks = {**index.watermarks, "max_vector_id": index.watermarks["max_vector_id"] ^ 0b100}
    index.write(path)


def raise_delete_seq(path: Path) -> None:
    index = VectorIndex.read(path)
    index.watermarks = {**index.watermarks, "delete_seq": index.watermarks["delete_seq"] + 64}
    index.write(path)


@pytest.mark.parametrize("damage", [lower_watermark, raise_delete_seq], ids=lambda f: f.__name__)
def test_repair_fixes_a_faiss_file_whatever_its_header_says(built: Built, library: Path, damage) -> None:
    expected = searched_paths(library)
    target = next((library / "faiss").glob("*.faiss"))
    damage(target)
    before = target.read_bytes()
    assert searched_paths(library) == expected  # searched from the stored vectors meanwhile ...
    assert target.read_bytes() == before  # ... without writing on a read path
    code, stdout, stderr = cli("verify", "--index", library)
    assert code == 4 and "watermark" in stdout, stdout + stderr
    code, stdout, stderr = cli("verify", "--repair", "--index", library)
    assert code == 0 and "repaired" in stdout, stdout + stderr
    assert cli("verify", "--index", library)[0] == 0
    assert searched_paths(library) == expected


# --------------------------------------------------------------------------------- options and output


def test_out_of_range_options_are_typed_errors_in_the_library_and_one_line_in_the_cli(
    built: Built, library: Path
) -> None:
    code, _, stderr = cli("index", built.media, "--window", "-1", "--index", library)
    assert code == 1
    assert_one_line_error(stderr, "--window -1", ">= 0")
    code, _, stderr = cli("index", built.media, "--window", "-1", "--index", library.parent / "new-index")
    assert code == 1 and not (library.parent / "new-index").exists()
    with pytest.raises(ConfigError, match="window length"):
        WindowSpec(-1, 5)
    with pytest.raises(ConfigError, match="workers"):
        IngestOptions(workers=-2)
    code, _, stderr = cli("search", "--like", "99999999999999999999", "--index", library)
    assert code == 1
    assert_one_line_error(stderr, "no file with id 99999999999999999999")


def test_os_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file where the index folder should be")
    code, _, stderr = cli("index", tmp_path, "--index", tmp_path / "blocker" / "index")
    assert code == 1
    assert_one_line_error(stderr, "blocker")


def test_search_tables_fold_long_paths_instead_of_cutting_them(built: Built) -> None:
    code, stdout, stderr = cli("search", "a red square", "--in", "image", "-k", "2", "--index", built.index)
    assert code == 0, stderr
    assert "…" not in stdout
    # The path column's pieces, joined (folding at a space drops that space).
    joined = "".join(line.split("│")[6].strip() for line in stdout.splitlines() if line.count("│") >= 7)
    hits = searched_paths(built.index, "-k", "2")
    assert all(hit.replace(" ", "") in joined.replace(" ", "") for hit in hits), stdout
    assert all(len(line) <= 80 for line in stdout.splitlines())


def test_progress_on_a_non_terminal_is_a_plain_line_at_most_every_few_seconds(tmp_path: Path) -> None:
    write_images(tmp_path / "media", 12)
    calls = []
    from lbsearch.cli import library as cli_module

    original = cli_module.PlainProgress.update
    cli_module.PlainProgress.update = lambda self, progress: calls.append(progress) or original(self, progress)
    try:
        code, _, stderr = cli("index", tmp_path / "media", "--index", tmp_path / "index", "--workers", "0", *MODEL)
    finally:
        cli_module.PlainProgress.update = original
    assert code == 0, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(calls) >= 12  # one update per decoded file at least ...
    assert 1 <= len(lines) <= 3  # ... but a run of a few seconds prints one or two lines
    assert all(line.startswith("indexing: ") and "\r" not in line for line in lines), stderr
    assert lines[-1].startswith("indexing: 12/12 files")


def test_an_index_run_leaves_no_pool_thread_to_race_the_interpreter_exit(tmp_path: Path) -> None:
    """The "Exception ignored ... Bad file descriptor" at exit came from a pool manager thread still running when
    Python's exit handler woke it: after a run with workers, none is left."""
    write_images(tmp_path / "media", 4)
    with Library.open(tmp_path / "index") as lib:
        lib.use_models({"image": str(DEMO_DIR / "image")})
        assert lib.add(tmp_path / "media", options=IngestOptions(workers=2)).embedded == 4
    managers = [t for t in threading.enumerate() if isinstance(t, concurrent.futures.process._ExecutorManagerThread)]
    assert managers == []


# ------------------------------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize("shard", ["/etc/passwd", "../outside.safetensors", "sub/../../outside.safetensors"])
def test_checkpoint_shards_must_stay_inside_their_folder(tmp_path: Path, shard: str) -> None:
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    save_file({"w": torch.zeros(2)}, str(tmp_path / "outside.safetensors"))
    save_file({"v": torch.ones(2)}, str(folder / "inside.safetensors"))
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"v": "inside.safetensors", "w": shard}}))
    with pytest.raises(CheckpointError, match="not a file inside the checkpoint folder"):
        read_state_dict(folder)
    index.write_text(json.dumps({"weight_map": {"v": "inside.safetensors"}}))
    assert set(read_state_dict(folder)) == {"v"}


def test_a_text_search_imports_no_media_readers(built: Built) -> None:
    """The warm path of repeated CLI searches: a text search pays for torch and its text tower only, not for
    torchvision, torchaudio, PyAV, decord or the open_clip package (seconds of imports per search)."""
    script = (
        "import sys\n"
        "from lbsearch.cli import app\n"
        f"app(['search', 'a red square', '--in', 'image', '--json', '--index', {str(built.index)!r}],"
        " standalone_mode=False)\n"
        "heavy = ('torchvision', 'torchaudio', 'av', 'decord', 'open_clip', 'lbsearch.ingest.pipeline')\n"
        "print('IMPORTED', sorted(name for name in heavy if name in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300, check=True
    )
    assert json.loads(done.stdout.split("IMPORTED")[0])  # it did search, and found hits
    assert done.stdout.split("IMPORTED")[1].strip() == "[]"
