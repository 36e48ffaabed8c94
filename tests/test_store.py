"""FAISS files kept in step with the database: verify, repair, catch-up after a crash, reindex, remove.

Each test indexes a small toy library (real files, tiny checkpoints) on SQLite and on PostgreSQL, then damages
or outdates the index files the way crashes, disks and users do, and drives the `lbsearch` commands.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lbsearch.cli import app
from lbsearch.library import Library
from lbsearch.storage.vectorindex import VectorIndex

# The shared helpers assert too: rewrite them for readable failures (before they are imported).
pytest.register_assert_rewrite("ingest_fixtures")
from ingest_fixtures import (  # noqa: E402
    assert_consistent,
    copy_library,
    indexed_ids_on_disk,
    media_files,
    open_library,
    vector_table,
    write_wav,
)

# Fixtures: models, toy_source and test_db's database_url (SQLite, PostgreSQL).
pytest_plugins = ["ingest_fixtures"]

SCENES = 2


def command(index: Path, database_url: str | None, *args: str) -> list[str]:
    """`lbsearch ARGS --index INDEX [--db URL]` as CliRunner arguments."""
    where = ["--index", str(index)] + (["--db", database_url] if "://" in (database_url or "") else [])
    return [*args, *where]


def run(arguments: list[str], exit_code: int) -> str:
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == exit_code, result.output
    return result.output


def assert_index_holds_stored_vectors(library: Library) -> None:
    """Each index file on disk finds every stored vector as its own nearest neighbour (ties: identical files)."""
    for model_id, modality in library.db.vector_groups():
        index = VectorIndex.read(library.store.path(model_id, modality))
        for ids, vectors in library.db.iter_vectors(model_id, modality):
            scores, found = index.search(vectors, 3)
            for own, row_scores, row_ids in zip(ids, scores, found, strict=True):
                assert own in row_ids[row_scores > 1 - 1e-5]


@pytest.fixture
def indexed(tmp_path: Path, toy_source: Path, models: dict[str, str], database_url: str) -> Iterator[Library]:
    root = copy_library(toy_source, tmp_path / "library", scenes=SCENES)
    library = open_library(tmp_path / "index", database_url, models=models)
    library.add(root)
    yield library
    library.close()


# ------------------------------------------------------------------------------------------- damage kinds


def delete(path: Path) -> None:
    path.unlink()


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def overwrite_with_noise(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def drop_two_vectors(path: Path) -> None:
    """A file that claims to be up to date (its watermarks unchanged) but lacks two vectors."""
    index = VectorIndex.read(path)
    index.remove_ids(index.ids()[:2])
    index.write(path)


def add_unknown_vector(path: Path) -> None:
    index = VectorIndex.read(path)
    index.add_with_ids(np.ones((1, index.dim), np.float32), np.array([10**9]))
    index.write(path)


def copy_as_stray(path: Path) -> None:
    shutil.copy(path, path.with_name("model999-image.faiss"))


DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "deleted": (delete, "is missing"),
    "corrupt": (flip_last_byte, "checksum"),
    "truncated": (truncate, "truncated"),
    "not an index": (overwrite_with_noise, "not an lbsearch vector index"),
    "stale, vectors missing": (drop_two_vectors, "2 vectors of the database are not indexed"),
    "stale, unknown vector": (add_unknown_vector, "1 indexed vectors are not in the database"),
    "stray": (copy_as_stray, "model999-image.faiss indexes nothing"),
}


def test_verify_lists_each_disagreement_and_repair_fixes_it(indexed: Library, database_url: str, models: dict):
    index = indexed.folder
    assert "the database and every index agree" in run(command(index, database_url, "verify"), 0)
    before = vector_table(indexed.db)
    target = indexed.store.path(indexed.model_id("image"), "image")
    for name, (damage, expected) in DAMAGES.items():
        damage(target)
        listed = " ".join(run(command(index, database_url, "verify"), 4).split())
        assert expected in listed and "disagree" in listed, name
        report = json.loads(run(command(index, database_url, "verify", "--json"), 4))
        assert report["ok"] is False and any(expected in p["problem"] for p in report["problems"]), name

        assert "repaired" in run(command(index, database_url, "verify", "--repair"), 0), name
        run(command(index, database_url, "verify"), 0)
        with open_library(index, database_url, models=models) as reopened:
            assert_consistent(reopened)
            assert_index_holds_stored_vectors(reopened)
    assert vector_table(indexed.db).keys() == before.keys()  # repairs rebuild from stored vectors: nothing lost


def test_outdated_index_files_catch_up_when_opened(tmp_path: Path, indexed: Library, database_url: str, models: dict):
    """A crash after a database commit but before the index files were written leaves them behind: opening
    them applies what the database gained and lost since, so nothing disagrees."""
    index, root = indexed.folder, tmp_path / "library"
    saved = tmp_path / "saved-faiss"
    shutil.copytree(index / "faiss", saved)

    media_files(root / "sounds")[0].unlink()  # deletions ...
    write_wav(root / "sounds" / "new.wav", seconds=1.5)  # ... additions ...
    changed = media_files(root / "scenes" / "rgb")[0]  # ... and replacements
    shutil.copy(media_files(root / "scenes" / "rgb")[1], changed)
    report = indexed.add(root)
    assert (report.plan["deleted"], report.plan["new"], report.plan["changed"]) == (1, 1, 1)

    shutil.rmtree(index / "faiss")
    shutil.copytree(saved, index / "faiss")  # the files as they were before that run
    assert run(command(index, database_url, "verify"), 0)
    with open_library(index, database_url, models=models) as reopened:
        for model_id, modality in reopened.db.vector_groups():
            on_disk = indexed_ids_on_disk(reopened.store, model_id, modality)
            in_db = reopened.db.vector_ids(model_id, modality)
            np.testing.assert_array_equal(np.sort(reopened.store.index(model_id, modality).ids()), in_db)
            if modality in ("audio", "image"):
                assert not np.array_equal(on_disk, in_db)  # really outdated on disk
        reopened.store.sync_all()  # ... and written up to date
        assert_consistent(reopened)
        assert_index_holds_stored_vectors(reopened)


def test_reindex_rebuilds_from_stored_vectors_without_embedding(indexed: Library, database_url: str, models: dict):
    index = indexed.folder
    before = vector_table(indexed.db)
    shutil.rmtree(index / "faiss")
    rebuilt = json.loads(run(command(index, database_url, "reindex", "--json"), 0))
    assert {(entry["model_id"], entry["modality"]) for entry in rebuilt} == set(indexed.db.vector_groups())
    assert all(entry["factory"] == "IDMap2,Flat" and entry["recall_at_10"] == 1.0 for entry in rebuilt)
    after = vector_table(indexed.db)
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}  # same ids: not re-embedded
    with open_library(index, database_url, models=models) as reopened:
        assert_consistent(reopened)
        assert_index_holds_stored_vectors(reopened)


def test_remove_forgets_files_in_every_index(tmp_path: Path, indexed: Library, database_url: str, models: dict):
    root = tmp_path / "library"
    videos = media_files(root / "videos")
    doomed = {key: value[0] for key, value in vector_table(indexed.db).items() if key[0] == str(videos[0])}
    assert {key[2] for key in doomed} == {"video", "audio"}
    output = run(command(indexed.folder, database_url, "remove", str(root / "videos")), 0)
    assert f"{len(videos)} files removed" in output
    with open_library(indexed.folder, database_url, models=models) as reopened:
        assert not any(key[0].startswith(str(root / "videos")) for key in vector_table(reopened.db))
        groups = reopened.db.vector_groups()
        assert (reopened.model_id("video"), "video") not in groups  # no video is left ...
        assert not reopened.store.path(reopened.model_id("video"), "video").exists()  # ... nor its index file
        audio_ids = indexed_ids_on_disk(reopened.store, reopened.model_id("audio"), "audio")
        assert not {vector_id for key, vector_id in doomed.items() if key[2] == "audio"} & set(audio_ids.tolist())
        assert_consistent(reopened)
    assert media_files(root / "videos") == videos  # the files themselves stay


def test_ivf_is_tuned_on_every_modality_of_the_model_set_and_hits_say_how_they_were_searched(
    tmp_path: Path, indexed: Library, database_url: str
):
    index = indexed.folder
    run(command(index, database_url, "remove", str(tmp_path / "library" / "scenes" / "thermal")), 0)
    rebuilt = json.loads(run(command(index, database_url, "reindex", "--factory", "IVF2,Flat", "--json"), 0))
    by_modality = {entry["modality"]: entry for entry in rebuilt}
    assert "thermal" not in by_modality and len(by_modality) == 4
    for modality, entry in by_modality.items():
        # Text, every other indexed modality's vectors, and thermal (no vectors) through its encoder's probes.
        others = {other for other in by_modality if other != modality}
        assert set(entry["recall_at_10_by_query"]) == {"indexed", "text", "thermal probes"} | others
        assert entry["factory"] == "IVF2,Flat" and "probe_margin" in entry and "guard_floor" in entry
    hits = json.loads(run(command(index, database_url, "search", "a red circle", "--in", "image", "--json"), 0))
    assert hits and all(isinstance(hit["exact"], bool) for hit in hits)
    run(command(index, database_url, "reindex", "--factory", "", "--json"), 0)
    hits = json.loads(run(command(index, database_url, "search", "a red circle", "--in", "image", "--json"), 0))
    assert hits and all(hit["exact"] is True for hit in hits)
    assert run(command(index, database_url, "verify"), 0)


def test_compressed_codes_are_re_ranked_with_the_stored_vectors(
    indexed: Library, models: dict[str, str], database_url: str
):
    index = indexed.folder
    search = command(index, database_url, "search", "a red circle", "--in", "image", "-k", "3", "--json")
    exact_hits = json.loads(run(search, 0))
    run(command(index, database_url, "reindex", "--factory", "IVF2,SQ4", "--json"), 0)
    with open_library(index, database_url, models=models) as reopened:
        stored = reopened.store.index(reopened.model_id("image"), "image")
        assert stored.compressed and stored.exact_vectors is not None
    # 4-bit codes alone would shift every cosine; re-ranked with the stored vectors, the scores are exact again.
    hits = json.loads(run(search, 0))
    assert [hit["path"] for hit in hits] == [hit["path"] for hit in exact_hits]
    np.testing.assert_allclose([hit["score"] for hit in hits], [hit["score"] for hit in exact_hits], atol=1e-5)
