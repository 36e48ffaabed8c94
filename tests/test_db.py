"""The metadata database, on SQLite and on PostgreSQL (LBSEARCH_TEST_PG_URL; `source .ci/postgres.sh`)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, text, update
from sqlalchemy.engine import make_url

from lbsearch.errors import ConfigError, LbsearchError
from lbsearch.storage import schema
from lbsearch.storage.database import SQLITE_FILE_NAME, Database
from lbsearch.storage.records import (
    FileFilter,
    FileVectors,
    MediaInfo,
    NewVector,
    embedding_to_bytes,
    embeddings_from_bytes,
)
from lbsearch.storage.schema import SCHEMA_VERSION, File, SchemaVersion, schema_version

DIM = 8


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: an SQLite file, or a schema of its own on the test PostgreSQL server."""
    if request.param == "sqlite":
        yield str(tmp_path / "index" / SQLITE_FILE_NAME)
        return
    server_url = os.environ.get("LBSEARCH_TEST_PG_URL")
    if not server_url:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but LBSEARCH_TEST_PG_URL is unset: PostgreSQL must be tested in CI")
        pytest.skip("LBSEARCH_TEST_PG_URL is unset: `source .ci/postgres.sh` to test on PostgreSQL too")
    schema = f"lbsearch_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        url = make_url(server_url).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database.open(database_url)
    yield database
    database.close()


def add_file(db: Database, path: str, *, modality: str = "image", content_hash: str | None = None) -> int:
    return db.upsert_file(
        path,
        root=str(Path(path).parent),
        size=100,
        mtime_ns=1,
        content_hash=content_hash or f"hash-{path}",
        modality=modality,
        item_key=f"file:{path}",
    )


def random_vectors(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)


def embed(db: Database, file_id: int, model_id: int, modality: str, spans: list, seed: int) -> np.ndarray:
    """Store one random vector per (start, end) span for a file; return the vectors in span order."""
    matrix = random_vectors(len(spans), seed)
    vectors = [NewVector(model_id, modality, row, start, end) for row, (start, end) in zip(matrix, spans, strict=True)]
    db.store_vectors([FileVectors(file_id, vectors)])
    return matrix


def all_vectors(db: Database, model_id: int, modality: str) -> tuple[np.ndarray, np.ndarray]:
    batches = list(db.iter_vectors(model_id, modality, batch_size=3))
    if not batches:
        return np.zeros(0, np.int64), np.zeros((0, DIM), np.float32)
    return np.concatenate([ids for ids, _ in batches]), np.concatenate([rows for _, rows in batches])


def test_embedding_bytes_round_trip_exactly() -> None:
    vector = random_vectors(1, seed=0)[0]
    blob = embedding_to_bytes(vector)
    assert len(blob) == 4 * DIM
    assert np.array_equal(embeddings_from_bytes([blob, memoryview(blob)], DIM), np.stack([vector, vector]))
    with pytest.raises(LbsearchError, match="one vector"):
        embedding_to_bytes(random_vectors(2, seed=0))


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    index = tmp_path / "index"
    index.mkdir()
    with Database.open(index) as db, db.session() as session:
        assert session.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert session.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert session.execute(text("PRAGMA busy_timeout")).scalar() >= 10_000
    assert (index / SQLITE_FILE_NAME).is_file()
    Database.open(tmp_path / "new" / "indexes").close()
    Database.open(tmp_path / "named.db").close()
    assert (tmp_path / "new" / "indexes" / SQLITE_FILE_NAME).is_file() and (tmp_path / "named.db").is_file()


def test_settings_hold_json_values(db: Database) -> None:
    assert db.get_setting("model_set") is None
    assert db.get_setting("model_set", {}) == {}
    model_set = {"video": "LanguageBind/LanguageBind_Video_FT", "image": "/models/image"}
    db.set_setting("model_set", model_set)
    db.set_setting("window", [10.0, 5.0])
    assert db.get_setting("model_set") == model_set
    db.set_setting("model_set", {"image": "other"})
    assert db.get_setting("model_set") == {"image": "other"}
    assert db.get_setting("window") == [10.0, 5.0]


def test_a_new_model_version_gets_its_own_row(db: Database) -> None:
    first = db.register_model("LanguageBind/LanguageBind_Image", "image", "aaaa", DIM, revision="main")
    assert db.register_model("LanguageBind/LanguageBind_Image", "image", "aaaa", DIM) == first
    newer = db.register_model("LanguageBind/LanguageBind_Image", "image", "bbbb", DIM)
    assert newer != first
    assert [model.weights_hash for model in db.models()] == ["aaaa", "bbbb"]
    assert db.model(first).revision == "main"
    with pytest.raises(LbsearchError, match="dimension 8, not 16"):
        db.register_model("LanguageBind/LanguageBind_Image", "image", "aaaa", 16)


def test_stored_vectors_come_back_with_their_file_and_span(db: Database) -> None:
    model = db.register_model("video-model", "video", "w", DIM)
    file_id = add_file(db, "/lib/clip.mp4", modality="video")
    spans = [(None, None), (0.0, 10.0), (5.0, 15.0)]
    matrix = random_vectors(3, seed=1)
    info = MediaInfo(duration=15.0, fps=30.0, width=720, height=406, has_audio=False)
    vectors = [NewVector(model, "video", row, start, end) for row, (start, end) in zip(matrix, spans, strict=True)]
    db.store_vectors([FileVectors(file_id, vectors, info)])

    ids, rows = all_vectors(db, model, "video")
    assert np.array_equal(rows, matrix)  # float32 bytes round-trip exactly, in id order
    described = db.describe_vectors([int(i) for i in ids] + [999])
    assert sorted(described) == sorted(int(i) for i in ids)
    assert [(described[int(i)].start, described[int(i)].end) for i in ids] == spans
    assert {info.path for info in described.values()} == {"/lib/clip.mp4"}
    assert {info.item_key for info in described.values()} == {"file:/lib/clip.mp4"}
    stored = db.file_vectors(file_id, model, "video")
    assert [(vector.vector_id, vector.start, vector.end) for vector in stored] == [
        (int(i), start, end) for i, (start, end) in zip(ids, spans, strict=True)
    ]
    assert np.array_equal(np.stack([vector.embedding for vector in stored]), matrix)
    assert db.file_vectors(file_id, model, "audio") == []
    assert list(db.whole_file_vectors(model, "video")) == [file_id]
    assert np.array_equal(db.whole_file_vectors(model, "video", [file_id, 999])[file_id], matrix[0])
    with db.session() as session:
        row = session.get(File, file_id)
        assert (row.status, row.duration, row.fps, row.width, row.height, row.has_audio) == (
            "ok",
            15.0,
            30.0,
            720,
            406,
            False,
        )


def test_replacing_vectors_logs_deletions_for_watermark_catch_up(db: Database) -> None:
    model = db.register_model("m", "image", "w", DIM)
    first = add_file(db, "/lib/a.jpg")
    second = add_file(db, "/lib/b.jpg")
    assert db.vector_groups() == []
    embed(db, first, model, "image", [(None, None)], seed=1)
    embed(db, second, model, "image", [(None, None)], seed=2)
    assert db.vector_groups() == [(model, "image")]
    old_ids, _ = all_vectors(db, model, "image")
    mark = db.watermark()  # what a FAISS file written now would hold
    assert mark.max_vector_id == old_ids.max()

    replacement = embed(db, first, model, "image", [(None, None)], seed=3)
    db.delete_files([second])

    ids, rows = all_vectors(db, model, "image")
    assert len(ids) == 1 and ids[0] > mark.max_vector_id  # ids are never reused
    assert np.array_equal(rows[0], replacement[0])
    added = list(db.iter_vectors(model, "image", after_id=mark.max_vector_id))
    assert [list(batch_ids) for batch_ids, _ in added] == [list(ids)]
    assert sorted(db.deleted_vector_ids(model, "image", after_seq=mark.delete_seq)) == sorted(old_ids)
    now = db.watermark()
    assert now.max_vector_id == ids[0] and now.delete_seq == mark.delete_seq + 2
    assert len(db.deleted_vector_ids(model, "image", after_seq=now.delete_seq)) == 0
    assert len(db.deleted_vector_ids(model, "image", after_seq=mark.delete_seq, up_to_seq=mark.delete_seq + 1)) == 1
    assert list(db.iter_vectors(model, "image", up_to_id=mark.max_vector_id)) == []


def test_the_largest_deleted_id_is_not_reused(db: Database) -> None:
    # SQLite reuses the largest rowid after it is deleted unless the table is AUTOINCREMENT.
    model = db.register_model("m", "image", "w", DIM)
    file_id = add_file(db, "/lib/a.jpg")
    embed(db, file_id, model, "image", [(None, None), (0.0, 1.0)], seed=1)
    largest = int(db.vector_ids(model, "image").max())
    db.delete_files([file_id])
    file_id = add_file(db, "/lib/a.jpg")
    embed(db, file_id, model, "image", [(None, None)], seed=2)
    assert db.vector_ids(model, "image").min() > largest


def test_a_failed_batch_leaves_every_file_as_it_was(db: Database) -> None:
    model = db.register_model("m", "image", "w", DIM)
    first = add_file(db, "/lib/a.jpg")
    second = add_file(db, "/lib/b.jpg")
    original = embed(db, first, model, "image", [(None, None), (0.0, 1.0)], seed=1)
    before = (db.watermark(), db.counts())

    # The first file's old vectors are deleted and new ones written, then the second file fails: all rolls back.
    batch = [
        FileVectors(first, [NewVector(model, "image", random_vectors(1, seed=2)[0])]),
        FileVectors(second, [NewVector(model, "image", np.ones(DIM + 1, np.float32))]),
    ]
    with pytest.raises(LbsearchError, match=r"/lib/b\.jpg: a image vector has 9 dimensions"):
        db.store_vectors(batch)
    with pytest.raises(LbsearchError, match="no file with id 12345"):
        db.store_vectors([batch[0], FileVectors(12345, [])])

    assert (db.watermark(), db.counts()) == before
    assert np.array_equal(all_vectors(db, model, "image")[1], original)
    assert db.file(second).status == "pending"


def test_an_exception_inside_a_write_session_rolls_it_back(db: Database) -> None:
    file_id = add_file(db, "/lib/a.jpg")
    with pytest.raises(RuntimeError), db.session(write=True) as session:
        session.get(File, file_id).status = "error"
        session.flush()
        raise RuntimeError("crash mid-transaction")
    assert db.file(file_id).status == "pending"


def test_a_new_model_version_adds_vectors_beside_the_old_ones(db: Database) -> None:
    old = db.register_model("m", "image", "v1", DIM)
    new = db.register_model("m", "image", "v2", DIM)
    file_id = add_file(db, "/lib/a.jpg")
    old_vectors = embed(db, file_id, old, "image", [(None, None)], seed=1)
    assert [record.path for record in db.files_lacking_vectors(new, "image")] == ["/lib/a.jpg"]

    new_vector = random_vectors(1, seed=2)[0]
    db.store_vectors([FileVectors(file_id, [NewVector(new, "image", new_vector)], only_models={new})])
    assert np.array_equal(all_vectors(db, old, "image")[1], old_vectors)
    assert np.array_equal(all_vectors(db, new, "image")[1][0], new_vector)
    assert db.files_lacking_vectors(new, "image") == []
    assert db.vector_groups() == [(old, "image"), (new, "image")]
    assert db.counts()["segments"] == 1  # both versions share the whole-file segment

    # Changed content: everything of the file is replaced (only_models=None), the old version's vector too.
    embed(db, file_id, new, "image", [(None, None)], seed=3)
    assert len(db.vector_ids(old, "image")) == 0
    assert len(db.deleted_vector_ids(old, "image")) == 1


def test_files_lacking_vectors_counts_the_sound_track_of_a_video(db: Database) -> None:
    video_model = db.register_model("v", "video", "w", DIM)
    audio_model = db.register_model("a", "audio", "w", DIM)
    for name, has_audio in [("talk.mp4", True), ("silent.mp4", False)]:
        file_id = add_file(db, f"/lib/{name}", modality="video")
        vectors = [NewVector(video_model, "video", random_vectors(1, seed=1)[0])]
        db.store_vectors([FileVectors(file_id, vectors, MediaInfo(has_audio=has_audio))])
    song = add_file(db, "/lib/song.wav", modality="audio")
    db.store_vectors([FileVectors(song, [], MediaInfo(duration=3.0))])
    add_file(db, "/lib/unfinished.wav", modality="audio")  # pending: not embedded yet, not this query's business

    lacking = [record.path for record in db.files_lacking_vectors(audio_model, "audio")]
    assert lacking == ["/lib/talk.mp4", "/lib/song.wav"]
    assert db.files_lacking_vectors(video_model, "video") == []


def test_vectors_of_hit_groups_by_file_item_and_segment(db: Database) -> None:
    image_model = db.register_model("i", "image", "w", DIM)
    depth_model = db.register_model("d", "depth", "w", DIM)
    video_model = db.register_model("v", "video", "w", DIM)
    audio_model = db.register_model("a", "audio", "w", DIM)
    scene = "scene:/lib/kitchen/0001"
    rgb, depth = db.upsert_files(
        [
            {
                "path": path,
                "root": "/lib",
                "size": 1,
                "mtime_ns": 1,
                "content_hash": path,
                "modality": m,
                "item_key": scene,
            }
            for path, m in [("/lib/kitchen/rgb/0001.jpg", "image"), ("/lib/kitchen/depth/0001.png", "depth")]
        ]
    )
    rgb_vector = embed(db, rgb, image_model, "image", [(None, None)], seed=1)[0]
    depth_vector = embed(db, depth, depth_model, "depth", [(None, None)], seed=2)[0]
    clip = add_file(db, "/lib/clip.mp4", modality="video")
    spans = [(None, None), (0.0, 10.0)]
    video_vectors, audio_vectors = random_vectors(2, seed=3), random_vectors(2, seed=4)
    db.store_vectors(
        [
            FileVectors(
                clip,
                [NewVector(video_model, "video", v, *span) for v, span in zip(video_vectors, spans, strict=True)]
                + [NewVector(audio_model, "audio", v, *span) for v, span in zip(audio_vectors, spans, strict=True)],
            )
        ]
    )
    [rgb_id] = db.vector_ids(image_model, "image")
    video_window_id = int(db.vector_ids(video_model, "video")[1])
    item_id = db.describe_vectors([rgb_id])[rgb_id].item_id

    # An RGB hit's item has a depth vector; a video window's segment has the audio of that window.
    groups = db.group_vectors([("item", item_id), ("file", rgb), video_window_id], depth_model, "depth")
    [(info, embedding)] = groups[("item", item_id)]
    assert (info.path, info.item_key) == ("/lib/kitchen/depth/0001.png", scene)
    assert np.array_equal(embedding, depth_vector)
    assert ("file", rgb) not in groups and video_window_id not in groups  # no depth vector there
    audio = db.group_vectors([video_window_id, ("file", clip)], audio_model, "audio")
    [(window_info, window_audio)] = audio[video_window_id]
    assert (window_info.start, window_info.end) == (0.0, 10.0) and np.array_equal(window_audio, audio_vectors[1])
    assert [info.start for info, _ in audio[("file", clip)]] == [None, 0.0]
    assert np.array_equal(db.group_vectors([("file", rgb)], image_model, "image")[("file", rgb)][0][1], rgb_vector)
    with pytest.raises(LbsearchError, match="not a group of vectors"):
        db.group_vectors([("folder", 1)], image_model, "image")


def test_filtering_files_by_their_metadata(db: Database) -> None:
    model = db.register_model("m", "audio", "w", DIM)
    short, long_song, photo = (
        add_file(db, "/lib/short.wav", modality="audio"),
        add_file(db, "/lib/long.wav", modality="audio"),
        add_file(db, "/lib/photo.jpg"),
    )
    for file_id, info in [(short, MediaInfo(duration=3.0, sample_rate=16000)), (long_song, MediaInfo(duration=300.0))]:
        db.store_vectors([FileVectors(file_id, [NewVector(model, "audio", random_vectors(1, seed=file_id)[0])], info)])
    with db.session(write=True) as session:  # the long song was modified in 2024, the others in 2025
        for file_id, year in [(short, 2025), (long_song, 2024), (photo, 2025)]:
            session.get(File, file_id).mtime_ns = int(datetime(year, 1, 1, tzinfo=timezone.utc).timestamp()) * 10**9
    everything = {short, long_song, photo}

    assert db.filter_files(everything, FileFilter()) == everything
    assert db.filter_files(everything, FileFilter(file_modalities=["audio"])) == {short, long_song}
    assert db.filter_files(everything, FileFilter(min_duration=10.0)) == {long_song}
    assert db.filter_files(everything, FileFilter(max_duration=10.0)) == {short}  # unknown duration: excluded
    assert db.filter_files(everything, FileFilter(modified_before=datetime(2024, 6, 1, tzinfo=timezone.utc))) == {
        long_song
    }
    assert db.filter_files([short, photo], FileFilter(modified_after=datetime(2024, 6, 1, tzinfo=timezone.utc))) == {
        short,
        photo,
    }
    assert db.filter_files(everything, FileFilter(where={"sample_rate": 16000})) == {short}
    with pytest.raises(ConfigError, match="files have no column 'colour'"):
        db.filter_files(everything, FileFilter(where={"colour": "red"}))


def test_a_renamed_file_is_found_by_hash_and_keeps_its_vectors(db: Database) -> None:
    model = db.register_model("m", "image", "w", DIM)
    file_id = add_file(db, "/lib/old/a.jpg", content_hash="cafe")
    embed(db, file_id, model, "image", [(None, None)], seed=1)
    ids = db.vector_ids(model, "image")

    assert db.files_with_hashes(["beef"]) == {}
    [found] = db.files_with_hashes(["cafe", "beef"])["cafe"]
    assert (found.id, found.path, found.item_key) == (file_id, "/lib/old/a.jpg", "file:/lib/old/a.jpg")
    db.relocate_file(file_id, path="/lib/new/b.jpg", root="/lib", size=100, mtime_ns=2, item_key="file:/lib/new/b.jpg")

    moved = db.file(file_id)
    assert (moved.path, moved.mtime_ns, moved.status) == ("/lib/new/b.jpg", 2, "ok")
    assert db.file_by_path("/lib/old/a.jpg") is None
    assert moved.item_key == "file:/lib/new/b.jpg"
    assert np.array_equal(db.vector_ids(model, "image"), ids)
    assert len(db.deleted_vector_ids(model, "image")) == 0
    assert db.counts()["items"] == 1  # the old item, left empty, is gone


def test_recording_many_files_at_once(db: Database) -> None:
    kept = add_file(db, "/lib/b.jpg")
    facts = {"root": "/lib", "size": 5, "mtime_ns": 7, "content_hash": "h", "modality": "depth"}
    files = [{"path": f"/lib/{name}", **facts, "item_key": "scene:/lib/1"} for name in ["c.png", "b.jpg", "a.png"]]
    ids = db.upsert_files(files)
    assert ids[1] == kept and len(set(ids)) == 3
    assert [db.file(file_id).path for file_id in ids] == [file["path"] for file in files]
    assert {(db.file(file_id).size, db.file(file_id).status, db.file(file_id).item_key) for file_id in ids} == {
        (5, "pending", "scene:/lib/1")
    }
    assert db.counts()["items"] == 1  # b.jpg's own item went when it joined the scene
    with pytest.raises(LbsearchError, match="names a path twice"):
        db.upsert_files([files[0], files[0]])


def test_files_under_matches_whole_folder_names_exactly(db: Database) -> None:
    for path in ["/lib/a/x.jpg", "/lib/a/sub/y.jpg", "/lib/ab/z.jpg", "/lib/A/w.jpg", "/lib/a_%/v.jpg"]:
        add_file(db, path)
    assert [record.path for record in db.files_under(["/lib/a"])] == ["/lib/a/sub/y.jpg", "/lib/a/x.jpg"]
    assert [record.path for record in db.files_under(["/lib/a_%/", "/lib/A"])] == ["/lib/A/w.jpg", "/lib/a_%/v.jpg"]
    assert len(db.files_under(["/lib"])) == 5


def test_deleting_files_removes_vectors_segments_and_empty_items(db: Database) -> None:
    model = db.register_model("m", "depth", "w", DIM)
    paired = [
        db.upsert_file(
            path, root="/lib", size=1, mtime_ns=1, content_hash=path, modality=modality, item_key="scene:/lib/s/1"
        )
        for path, modality in [("/lib/s/rgb/1.jpg", "image"), ("/lib/s/depth/1.png", "depth")]
    ]
    embed(db, paired[1], model, "depth", [(None, None)], seed=1)
    assert db.counts()["items"] == 1

    db.delete_files([paired[1]])
    counts = db.counts()
    assert (counts["items"], counts["segments"], counts["vectors"]) == (1, 0, [])  # the RGB frame keeps the item
    assert len(db.deleted_vector_ids(model, "depth")) == 1
    db.delete_files([paired[0]])
    assert db.counts() == {"files": {}, "items": 0, "segments": 0, "vectors": []}
    assert db.vector_groups() == []


def test_deleting_many_files_at_once(db: Database) -> None:
    model = db.register_model("m", "image", "w", DIM)
    paths = [f"/lib/{number:04d}.jpg" for number in range(1234)]  # more than one IN (...) list holds
    with db.session(write=True) as session:
        session.add_all(
            File(path=path, root="/lib", size=1, mtime_ns=1, content_hash=path, modality="image") for path in paths
        )
    file_ids = [record.id for record in db.files_under(["/lib"])]
    vectors = random_vectors(len(paths), seed=1)
    db.store_vectors([FileVectors(i, [NewVector(model, "image", v)]) for i, v in zip(file_ids, vectors, strict=True)])
    assert db.counts()["vectors"][0]["vectors"] == len(paths)

    db.delete_files(file_ids[:-1])
    assert [record.path for record in db.files_under(["/lib"])] == [paths[-1]]
    assert len(db.deleted_vector_ids(model, "image")) == len(paths) - 1
    assert db.counts()["segments"] == 1


def test_counts_and_failed_files_for_status(db: Database) -> None:
    model = db.register_model("LanguageBind/LanguageBind_Image", "image", "w", DIM)
    good = add_file(db, "/lib/good.jpg")
    bad = add_file(db, "/lib/bad.jpg")
    add_file(db, "/lib/song.wav", modality="audio")
    embed(db, good, model, "image", [(None, None)], seed=1)
    embed(db, bad, model, "image", [(None, None)], seed=2)  # an older version of it was fine

    db.mark_files_failed({bad: "cannot identify image file"})
    counts = db.counts()
    assert counts["files"] == {
        "audio": {"pending": 1, "ok": 0, "error": 0},
        "image": {"pending": 0, "ok": 1, "error": 1},
    }
    assert counts["items"] == 3 and counts["segments"] == 1
    assert counts["vectors"] == [
        {
            "model_id": model,
            "model": "LanguageBind/LanguageBind_Image",
            "modality": "image",
            "vectors": 1,
            "precisions": {"fp32": 1},
        }
    ]
    assert [(record.path, record.error) for record in db.failed_files()] == [
        ("/lib/bad.jpg", "cannot identify image file")
    ]
    # A retried file that is then embedded is no longer failed.
    add_file(db, "/lib/bad.jpg")
    embed(db, bad, model, "image", [(None, None)], seed=3)
    assert db.failed_files() == []


def test_ingest_runs_are_recorded(db: Database) -> None:
    run = db.start_run({"image": "LanguageBind/LanguageBind_Image"})
    db.finish_run(run, "finished", {"embedded": 3, "failed": 1})
    with db.session() as session:
        status, counts, model_set, finished = session.execute(
            text("SELECT status, counts, model_set, finished FROM ingest_runs")
        ).one()
    assert status == "finished" and finished is not None
    # JSON columns come back as text on SQLite and as objects on PostgreSQL's json type.
    assert counts in ({"embedded": 3, "failed": 1}, '{"embedded": 3, "failed": 1}')
    assert "LanguageBind_Image" in str(model_set)


@pytest.mark.timeout(120)
def test_a_reader_sees_the_last_committed_state_during_a_write(database_url: str) -> None:
    writer, reader = Database.open(database_url), Database.open(database_url)
    try:
        model = writer.register_model("m", "image", "w", DIM)
        file_id = add_file(writer, "/lib/a.jpg")
        embed(writer, file_id, model, "image", [(None, None)], seed=1)
        committed = reader.counts()

        with writer.session(write=True) as session:
            session.get(File, file_id).status = "error"
            session.add(File(path="/lib/b.jpg", root="/lib", size=1, mtime_ns=1, content_hash="b", modality="image"))
            session.flush()
            # Mid-write, from another connection: no waiting, and none of the uncommitted rows.
            assert reader.counts() == committed
            assert reader.file(file_id).status == "ok"
        assert reader.counts()["files"]["image"] == {"pending": 1, "ok": 0, "error": 1}
    finally:
        writer.close()
        reader.close()


@pytest.mark.timeout(120)
def test_writers_take_turns(database_url: str) -> None:
    first, second = Database.open(database_url), Database.open(database_url)
    second_began = threading.Event()
    second_done: list[float] = []

    def write_second() -> None:
        second_began.set()
        second.set_setting("writer", "second")
        second_done.append(time.monotonic())

    try:
        with first.session(write=True):
            thread = threading.Thread(target=write_second)
            thread.start()
            second_began.wait()
            time.sleep(0.5)
            assert second_done == []  # the second writer waits for the first to commit
            first_committed = time.monotonic()
        thread.join(timeout=60)
        assert second_done and second_done[0] >= first_committed
        assert first.get_setting("writer") == "second"
    finally:
        first.close()
        second.close()


# ------------------------------------------------------------------------------------------- migrations


def test_a_new_database_records_the_current_schema_version(database_url: str) -> None:
    with Database.open(database_url) as database, database.engine.connect() as connection:
        assert schema_version(connection) == SCHEMA_VERSION


def test_a_database_from_before_versions_is_upgraded_in_place(database_url: str, tmp_path: Path) -> None:
    """Round 1 wrote the tables without a version: such a library is version 1, keeps its rows and is upgraded."""
    with Database.open(database_url) as database:
        file_id = database.upsert_file(path="/m/a.png", root="/m", size=1, mtime_ns=1, content_hash="h",
                                       modality="image", item_key="a")
        with database.engine.begin() as connection:
            SchemaVersion.__table__.drop(connection)
            assert schema_version(connection) == 1
    with Database.open(database_url) as database:
        assert database.file(file_id).path == "/m/a.png"
        with database.engine.connect() as connection:
            assert schema_version(connection) == SCHEMA_VERSION


def test_migrations_run_in_order_from_the_version_found(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Database.open(database_url) as database, database.engine.begin() as connection:
        connection.execute(update(SchemaVersion).values(version=1))  # where the patched migrations start
    ran: list[str] = []

    def add_note(connection) -> None:
        ran.append("note")
        connection.execute(text("ALTER TABLE files ADD COLUMN note TEXT"))

    def fill_note(connection) -> None:
        ran.append("fill")
        connection.execute(text("UPDATE files SET note = 'x'"))

    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, add_note, fill_note))
    monkeypatch.setattr(schema, "SCHEMA_VERSION", SCHEMA_VERSION + 2)
    with Database.open(database_url) as database, database.engine.connect() as connection:
        assert ran == ["note", "fill"]  # version N -> N + 1 -> N + 2
        assert schema_version(connection) == SCHEMA_VERSION + 2
    with Database.open(database_url):
        assert ran == ["note", "fill"]  # nothing left to run


def test_a_database_from_a_newer_lbsearch_is_refused(database_url: str) -> None:
    with Database.open(database_url) as database, database.engine.begin() as connection:
        connection.execute(update(SchemaVersion).values(version=SCHEMA_VERSION + 1))
    with pytest.raises(ConfigError, match=r"written by a newer lbsearch .*upgrade lbsearch"):
        Database.open(database_url)
