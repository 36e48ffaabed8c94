"""Ingestion end to end on real files: incremental runs, windows, items, bad files, concurrency and crashes.

Storage-facing tests run on SQLite and on PostgreSQL (`database_url`, from test_db). The crash tests run the real
command in a subprocess and kill it (SIGKILL, SIGINT) at a seeded moment after some commits; set
LBSEARCH_CRASH_SEED to try other moments.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image
from sqlalchemy import select
from typer.testing import CliRunner

from lbsearch.cli import app
from lbsearch.ingest import scan as scan_module
from lbsearch.ingest.decode import DecodeTask, WindowSpec, decode
from lbsearch.ingest.pipeline import IngestOptions, Ingestor, IngestProgress
from lbsearch.ingest.pool import DecodePool
from lbsearch.library import Library
from lbsearch.preprocess import PreprocessSettings
from lbsearch.storage.database import Database
from lbsearch.storage.schema import File, IngestRun, Item

# The shared helpers assert too: rewrite them for readable failures (before they are imported).
pytest.register_assert_rewrite("ingest_fixtures")
from ingest_fixtures import (  # noqa: E402
    SMALL_SCENES,
    assert_consistent,
    copy_library,
    file_statuses,
    indexed_ids_on_disk,
    media_files,
    open_library,
    vector_ids_of,
    vector_table,
    write_video,
    write_video_with_broken_sound,
    write_wav,
)

# Fixtures: models, toy_source, toy_reference and test_db's database_url (SQLite, PostgreSQL).
pytest_plugins = ["ingest_fixtures"]

CRASH_SEED = int(os.environ.get("LBSEARCH_CRASH_SEED", "20240611"))


def ids_only(table: dict) -> dict:
    return {key: vector_id for key, (vector_id, _) in table.items()}


def faiss_mtimes(index_folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (index_folder / "faiss").glob("*.faiss")}


def later_mtime(path: Path, seconds: float = 1.0) -> None:
    """Move a file's mtime forward: a rewrite inside one clock tick may otherwise keep the old stat."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + int(seconds * 1e9)))


def embed_directly(library: Library, modality: str, path: Path, start=None, end=None) -> np.ndarray:
    """What the official processor and encoder give for one file (or window), one file at a time."""
    encoder = library.encoder(modality)
    return encoder.encode(encoder.preprocess(path, start, end)[None])[0].numpy()


# ---------------------------------------------------------------------------------------------- incremental


def test_unchanged_library_embeds_nothing(tmp_path, toy_source, models, database_url, monkeypatch):
    root = copy_library(toy_source, tmp_path / "library", scenes=SMALL_SCENES)
    files = media_files(root)
    index = tmp_path / "index"
    snapshots: list[IngestProgress] = []
    with open_library(index, database_url, models=models) as library:
        first = library.add(root, progress=snapshots.append)
        assert (first.plan["new"], first.embedded, first.failed) == (len(files), len(files), 0)
        assert snapshots[-1].files_done == snapshots[-1].files_total == len(files)
        before, written = ids_only(vector_table(library.db)), faiss_mtimes(index)
        assert len(written) == 5  # one index per modality

        hashed: list[str] = []
        real_hash = scan_module.content_hash
        monkeypatch.setattr(scan_module, "content_hash", lambda path: hashed.append(str(path)) or real_hash(path))
        second = library.add(root)
        assert second.plan == {**dict.fromkeys(second.plan, 0), "unchanged": len(files)}
        assert (second.embedded, second.vectors, second.failed) == (0, 0, 0)
        assert hashed == []  # an unchanged library is only stat()ed
        assert ids_only(vector_table(library.db)) == before
        assert faiss_mtimes(index) == written  # nothing to write either

        # Same bytes, new mtime: hashed again, recognised, not embedded.
        touched = files[0]
        later_mtime(touched)
        third = library.add(root)
        assert (third.plan["touched"], third.plan["unchanged"], third.embedded) == (1, len(files) - 1, 0)
        assert hashed == [str(touched.resolve())]
        assert ids_only(vector_table(library.db)) == before
        assert library.db.file_by_path(str(touched)).mtime_ns == touched.stat().st_mtime_ns
        assert_consistent(library)


def test_changed_file_is_embedded_again(tmp_path, toy_source, models, database_url):
    root = copy_library(toy_source, tmp_path / "library", scenes=SMALL_SCENES)
    image = sorted((root / "scenes" / "rgb").glob("*.png"))[0]
    sound = sorted((root / "sounds").glob("*.wav"))[0]
    with open_library(tmp_path / "index", database_url, models=models) as library:
        library.add(root)
        table = ids_only(vector_table(library.db))
        old = {path: vector_ids_of(library.db, path) for path in (image, sound)}

        Image.fromarray(np.random.default_rng(1).integers(0, 256, (56, 56, 3), dtype=np.uint8)).save(image)
        write_wav(sound, seconds=3.0, seed=5)
        for path in (image, sound):
            later_mtime(path)
        report = library.add(root)
        assert (report.plan["changed"], report.embedded, report.failed) == (2, 2, 0)

        for path, modality in ((image, "image"), (sound, "audio")):
            new = vector_ids_of(library.db, path)
            assert new and not set(new.values()) & set(old[path].values())
            model_id = library.model_id(modality)
            logged = set(library.db.deleted_vector_ids(model_id, modality).tolist())
            on_disk = set(indexed_ids_on_disk(library.store, model_id, modality).tolist())
            assert set(old[path].values()) <= logged
            assert not set(old[path].values()) & on_disk
            assert set(new.values()) <= on_disk
            # The stored vector is the new content's.
            stored = library.db.file_vectors(library.db.file_by_path(str(path)).id, model_id, modality)[0]
            np.testing.assert_allclose(stored.embedding, embed_directly(library, modality, path), atol=1e-5)
        # Nothing else moved.
        changed = {str(image), str(sound)}
        after = ids_only(vector_table(library.db))
        assert {k: v for k, v in after.items() if k[0] not in changed} == {
            k: v for k, v in table.items() if k[0] not in changed
        }
        assert_consistent(library)


def test_deleted_file_leaves_the_index(tmp_path, toy_source, models, database_url):
    root = copy_library(toy_source, tmp_path / "library", scenes=SMALL_SCENES)
    video = sorted((root / "videos").glob("*.mp4"))[0]
    depth = sorted((root / "scenes" / "depth").glob("*.png"))[0]
    with open_library(tmp_path / "index", database_url, models=models) as library:
        library.add(root)
        gone = {path: vector_ids_of(library.db, path) for path in (video, depth)}
        assert {key[1] for key in gone[video]} == {"video", "audio"}  # the video and its sound track
        scene_item = library.db.file_by_path(str(depth)).item_key
        video.unlink()
        depth.unlink()

        report = library.add(root)
        assert (report.plan["deleted"], report.embedded) == (2, 0)
        for path, ids in gone.items():
            assert library.db.file_by_path(str(path)) is None
            for (_, modality, _, _), vector_id in ids.items():
                model_id = library.model_id(modality)
                assert vector_id in library.db.deleted_vector_ids(model_id, modality)
                assert vector_id not in indexed_ids_on_disk(library.store, model_id, modality)
        with library.db.session() as session:
            scene_files = session.execute(select(File.modality).join(Item).where(Item.key == scene_item)).scalars()
            assert sorted(scene_files) == ["image", "thermal"]  # the scene keeps its other frames
            assert session.scalar(select(Item.id).where(Item.key == f"file:{video}")) is None
        assert_consistent(library)


def test_moved_and_renamed_files_keep_their_vectors(tmp_path, toy_source, models, database_url):
    root = copy_library(toy_source, tmp_path / "library", scenes=SMALL_SCENES)
    sound = sorted((root / "sounds").glob("*.wav"))[0]
    video = sorted((root / "videos").glob("*.mp4"))[0]
    index = tmp_path / "index"
    with open_library(index, database_url, models=models) as library:
        library.add(root)
        before = {path: vector_ids_of(library.db, path) for path in (sound, video)}
        file_ids = {path: library.db.file_by_path(str(path)).id for path in (sound, video)}
        written = faiss_mtimes(index)

        renamed = sound.with_name("renamed.wav")
        sound.rename(renamed)
        moved = root / "archive" / "2024" / video.name
        moved.parent.mkdir(parents=True)
        video.rename(moved)
        report = library.add(root)
        assert (report.plan["moved"], report.plan["new"], report.plan["deleted"]) == (2, 0, 0)
        assert (report.embedded, report.vectors) == (0, 0)
        for old, new in ((sound, renamed), (video, moved)):
            assert library.db.file_by_path(str(old)) is None
            assert library.db.file_by_path(str(new)).id == file_ids[old]
            assert vector_ids_of(library.db, new) == before[old]
        assert library.db.file_by_path(str(moved)).item_key == f"file:{moved}"
        assert faiss_mtimes(index) == written
        assert_consistent(library)


def test_new_model_version_is_indexed_beside_the_old_one(tmp_path, toy_source, models, tiny_checkpoints):
    root = copy_library(toy_source, tmp_path / "library", scenes=SMALL_SCENES)
    videos = media_files(root / "videos")
    with open_library(tmp_path / "index", None, models=models) as library:
        library.add(root)
        old_table = vector_table(library.db)
        old_video_model = library.model_id("video")

        library.use_models({"video": str(tiny_checkpoints / "video_lora")})
        report = library.add(root)
        new_video_model = library.model_id("video")
        assert new_video_model != old_video_model
        assert report.plan["unchanged"] == len(media_files(root))
        assert report.embedded == len(videos)  # only the videos, and only for the new model

        table = vector_table(library.db)
        assert {k: v[0] for k, v in table.items() if k in old_table} == ids_only(old_table)  # the old one kept
        lora = str(tiny_checkpoints / "video_lora")
        new_keys = {k for k in table if k not in old_table}
        assert {k[1] for k in new_keys} == {lora} and {k[2] for k in new_keys} == {"video"}
        old_video_spans = {(k[0], k[3], k[4]) for k in old_table if k[2] == "video"}
        assert {(k[0], k[3], k[4]) for k in new_keys} == old_video_spans
        some_key = next(iter(new_keys))
        old_key = (some_key[0], str(tiny_checkpoints / "video_ft"), *some_key[2:])
        assert not np.allclose(table[some_key][1], old_table[old_key][1])  # other weights, other vectors
        assert {(old_video_model, "video"), (new_video_model, "video")} <= set(library.db.vector_groups())
        assert_consistent(library)

        assert library.add(root).embedded == 0
        library.use_models({"video": str(tiny_checkpoints / "video_ft")})  # back to the first version: already there
        assert library.add(root).embedded == 0
        assert library.model_id("video") == old_video_model


# --------------------------------------------------------------------------------------- windows and items


def test_long_audio_gets_time_windows(tmp_path, models, sample_media):
    root = tmp_path / "library"
    root.mkdir()
    long_audio = root / "long.wav"
    shutil.copy(sample_media / "audio" / "long_stereo_44k_25s.wav", long_audio)
    just_over = root / "just_over.wav"
    shutil.copy(sample_media / "audio" / "0.wav", just_over)  # 10.242 s: two windows, the last one aligned to the end
    with open_library(tmp_path / "index", None, models=models) as library:
        library.add(root)
        expected = {
            long_audio: [(0.0, 10.0), (5.0, 15.0), (10.0, 20.0), (15.0, 25.0)],
            just_over: [(0.0, 10.0), (0.242, 10.242)],
        }
        for path, windows in expected.items():
            stored = library.db.file_vectors(library.db.file_by_path(str(path)).id, library.model_id("audio"), "audio")
            assert (stored[0].start, stored[0].end) == (None, None)
            assert [(v.start, v.end) for v in stored[1:]] == [pytest.approx(w, abs=1e-6) for w in windows]
            for vector in stored:
                np.testing.assert_allclose(
                    vector.embedding, embed_directly(library, "audio", path, vector.start, vector.end), atol=1e-5
                )
        with library.db.session() as session:
            duration, rate = session.execute(
                select(File.duration, File.sample_rate).where(File.path == str(long_audio))
            ).one()
        assert duration == pytest.approx(25.0, abs=0.01) and rate == 44100
        assert_consistent(library)


def test_long_video_gets_windows_and_its_sound_track_in_one_item(tmp_path, models, sample_media):
    root = tmp_path / "library"
    video = write_video(root / "clip.mp4", seconds=23.0, fps=8)
    silent = root / "silent.mp4"
    shutil.copy(sample_media / "video" / "0.mp4", silent)
    with open_library(tmp_path / "index", None, models=models) as library:
        report = library.add(root)
        assert report.warnings == {} and report.failed == 0
        record = library.db.file_by_path(str(video))
        windows = [(0.0, 10.0), (5.0, 15.0), (10.0, 20.0), (13.0, 23.0)]
        for modality in ("video", "audio"):
            stored = library.db.file_vectors(record.id, library.model_id(modality), modality)
            assert [(v.start, v.end) for v in stored] == [(None, None), *[pytest.approx(w) for w in windows]]
            for vector in (stored[0], stored[-1]):
                np.testing.assert_allclose(
                    vector.embedding, embed_directly(library, modality, video, vector.start, vector.end), atol=1e-5
                )
        with library.db.session() as session:
            has_audio = dict(session.execute(select(File.path, File.has_audio)).all())
        assert has_audio == {str(video): True, str(silent): False}
        silent_id = library.db.file_by_path(str(silent)).id
        assert library.db.file_vectors(silent_id, library.model_id("audio"), "audio") == []
        assert len(library.db.file_vectors(silent_id, library.model_id("video"), "video")) == 1  # 8.2 s: whole only
        # The video's pictures and its sound are one item.
        infos = library.db.describe_vectors(library.db.vector_ids(library.model_id("audio"), "audio"))
        video_infos = library.db.describe_vectors(library.db.vector_ids(library.model_id("video"), "video"))
        clip_items = {i.item_id for i in [*infos.values(), *video_infos.values()] if i.path == str(video)}
        assert len(clip_items) == 1
        assert_consistent(library)


def test_a_video_whose_sound_track_cannot_be_decoded_keeps_its_pictures(tmp_path, models):
    root = tmp_path / "library"
    video = write_video_with_broken_sound(root / "clip.mp4")
    with open_library(tmp_path / "index", None, models=models) as library:
        report = library.add(root)
        assert (report.embedded, report.failed) == (1, 0)
        assert report.warnings[str(video)].startswith("audio track skipped: cannot decode audio")
        assert {key[1] for key in vector_ids_of(library.db, video)} == {"video"}
        # Recorded as having no usable track, so later runs do not try it again.
        again = library.add(root)
        assert (again.embedded, again.warnings) == (0, {})
        assert_consistent(library)


def test_windows_past_one_decode_part_are_all_embedded(tmp_path, models):
    """19 windows: the first decode task carries 16, a follow-up task the rest (in another worker)."""
    root = tmp_path / "library"
    video = write_video(root / "clip.mp4", seconds=20.0, fps=8, seed=3)
    with open_library(tmp_path / "index", None, models=models) as library:
        library.add(root, options=IngestOptions(windows=WindowSpec(2.0, 1.0), workers=2, batch_size=5))
        record = library.db.file_by_path(str(video))
        for modality in ("video", "audio"):
            stored = library.db.file_vectors(record.id, library.model_id(modality), modality)
            assert [(v.start, v.end) for v in stored[1:]] == [pytest.approx((s, s + 2.0)) for s in range(19)]
            for vector in (stored[16], stored[17], stored[19]):  # last of the first part, first and last of the next
                np.testing.assert_allclose(
                    vector.embedding, embed_directly(library, modality, video, vector.start, vector.end), atol=1e-5
                )
        assert_consistent(library)


def test_workers_left_without_tasks_are_reported_for_encoding(tmp_path, models):
    """`DecodePool.decoded` says after each part how many workers have nothing left to decode: none while tasks
    wait to be submitted, every worker once the last part is in (their cores then go to encoding)."""
    root = tmp_path / "library"
    root.mkdir()
    for index in range(10):
        Image.fromarray(np.full((24, 32, 3), 20 * index, np.uint8)).save(root / f"{index}.png")
    options = IngestOptions(workers=2, batch_size=1)  # at most 2 * 1 + 2 * 2 = 6 tasks in flight
    with open_library(tmp_path / "index", None, models=models) as library:
        encoders = {"image": library.encoder("image")}
        ingestor = Ingestor(library.db, encoders, {"image": library.model_id("image")}, options)
        todo = [ingestor.decode_task(str(path), "image", path.stat().st_size) for path in sorted(root.iterdir())]
        accepted: list[int] = []

        def accept(part):
            assert part.error is None, part.error
            accepted.append(len(todo))  # tasks not yet submitted when this part came
            return []

        with ingestor.start_decoding() as pool:
            idle = list(pool.decoded(todo, accept))
    assert len(idle) == len(accepted) == 10
    assert all(count == 0 for count, waiting in zip(idle, accepted, strict=True) if waiting)
    assert accepted[0] == 4 and idle[-1] == 2 and all(0 <= count <= 2 for count in idle)
    # Once the pool is closed, its workers are gone.
    deadline = time.monotonic() + 30
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert multiprocessing.active_children() == []


def test_small_files_go_to_the_workers_in_groups_and_large_ones_alone():
    pool = DecodePool(workers=2, max_in_flight=6)
    pool.close()  # grouping needs no running worker
    sizes = [3_000] * 64 + [5_000_000, 400_000, 400_000, 400_000] + [3_000] * 40
    todo = [DecodeTask(f"/media/{index}", "image", {}, size=size) for index, size in enumerate(sizes)]
    todo.reverse()  # the pipeline takes tasks from the end
    groups = []
    while todo:
        groups.append([int(task.path.rsplit("/", 1)[1]) for task in pool.next_group(todo)])
    assert [index for group in groups for index in group] == list(range(len(sizes)))  # each once, in order
    assert [len(group) for group in groups[:8]] == [8] * 8 and max(map(len, groups)) == 8
    assert [64] in groups and [65, 66] in groups  # 5 MB alone; a third 400 kB file would pass 1 MiB
    assert [len(group) for group in groups[-3:]] == [1, 1, 1]  # one by one at the end: the workers end together


def test_a_run_freezes_older_objects_for_the_garbage_collector_and_thaws_them(tmp_path, models, monkeypatch):
    """Objects older than the run are frozen while it runs (a full collection would rescan torch and the models)
    and thawed after it; objects a caller froze itself stay frozen."""
    root = tmp_path / "library"
    root.mkdir()
    Image.fromarray(np.full((24, 32, 3), 90, np.uint8)).save(root / "a.png")
    seen: list[int] = []
    with open_library(tmp_path / "index", None, models=models) as library:
        encoder = library.encoder("image")
        real_encode = encoder.encode
        monkeypatch.setattr(encoder, "encode", lambda x: seen.append(gc.get_freeze_count()) or real_encode(x))
        assert gc.get_freeze_count() == 0
        library.add(root, options=IngestOptions(workers=0))
        assert seen and seen[0] > 0 and gc.get_freeze_count() == 0

        gc.freeze()  # as a pre-forking server would
        try:
            (root / "a.png").unlink()
            Image.fromarray(np.full((24, 32, 3), 30, np.uint8)).save(root / "b.png")
            library.add(root, options=IngestOptions(workers=0))
            assert len(seen) == 2 and gc.get_freeze_count() > 0  # the run did not unfreeze the caller's objects
        finally:
            gc.unfreeze()


def test_decoded_inputs_cross_from_the_workers_as_plain_arrays(tmp_path):
    # Not as torch's shared-memory handles (a file per tensor, 20x slower for tensors of this size).
    settings = PreprocessSettings.released()
    video = write_video(tmp_path / "clip.mp4", seconds=2.0, fps=8, seed=1)
    part = decode(DecodeTask(str(video), "video", {"video": settings, "audio": settings}))
    assert part.error is None and {item.modality for item in part.inputs} == {"video", "audio"}
    payload = ForkingPickler.dumps(part)
    assert len(payload) > sum(item.tensor.nbytes for item in part.inputs)
    clone = pickle.loads(payload)
    for sent, received in zip(part.inputs, clone.inputs, strict=True):
        assert (received.modality, received.start, received.end) == (sent.modality, sent.start, sent.end)
        assert torch.equal(received.tensor, sent.tensor)


def test_paired_frames_in_sibling_folders_are_one_item(tmp_path, toy_source, models, sample_media):
    root = copy_library(toy_source, tmp_path / "library", scenes=SMALL_SCENES)
    nyu = root / "nyu" / "kitchen"
    for folder, source, name in (
        ("rgb", sample_media / "image" / "0.jpg", "0001.jpg"),
        ("depth", sample_media / "depth" / "0.png", "0001.png"),
        ("depth", sample_media / "depth" / "1.png", "0002.png"),  # no RGB partner: an item of its own
    ):
        (nyu / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(source, nyu / folder / name)
    llvip = root / "llvip"
    pairs = (("visible", sample_media / "image" / "1.jpg"), ("infrared", sample_media / "thermal" / "1.jpg"))
    for folder, source in pairs:
        (llvip / folder).mkdir(parents=True)
        shutil.copy(source, llvip / folder / "190001.jpg")
    with open_library(tmp_path / "index", None, models=models) as library:
        library.add(root)
        with library.db.session() as session:
            rows = session.execute(select(Item.key, File.path, File.modality).join(Item, File.item_id == Item.id))
            items: dict[str, dict[str, str]] = {}
            for key, path, modality in rows:
                items.setdefault(key, {})[modality] = Path(path).relative_to(root).as_posix()
        scene_ids = sorted(p.stem for p in (root / "scenes" / "rgb").glob("*.png"))
        for scene_id in scene_ids:
            assert items[f"scene:{root / 'scenes' / scene_id}"] == {
                "image": f"scenes/rgb/{scene_id}.png",
                "depth": f"scenes/depth/{scene_id}.png",
                "thermal": f"scenes/thermal/{scene_id}.png",
            }
        assert items[f"scene:{nyu / '0001'}"] == {
            "image": "nyu/kitchen/rgb/0001.jpg",
            "depth": "nyu/kitchen/depth/0001.png",
        }
        assert items[f"scene:{nyu / '0002'}"] == {"depth": "nyu/kitchen/depth/0002.png"}
        assert items[f"scene:{llvip / '190001'}"] == {
            "image": "llvip/visible/190001.jpg",
            "thermal": "llvip/infrared/190001.jpg",
        }
        # Each scene item holds one vector per modality of its frames: what joint retrieval sums.
        with library.db.session() as session:
            item_ids = dict(session.execute(select(Item.key, Item.id)).all())
        for key, members in items.items():
            for modality in members:
                grouped = library.db.group_vectors([("item", item_ids[key])], library.model_id(modality), modality)
                assert len(grouped[("item", item_ids[key])]) == 1
        assert_consistent(library)


# ------------------------------------------------------------------------------------------------ bad files


def test_bad_files_are_recorded_and_the_run_goes_on(tmp_path, toy_source, models, sample_media):
    root = copy_library(toy_source, tmp_path / "library", scenes=1)
    good = media_files(root)
    video = (root / "videos").glob("*.mp4").__next__().read_bytes()
    sound = (root / "sounds").glob("*.wav").__next__().read_bytes()
    picture = (root / "scenes" / "rgb").glob("*.png").__next__().read_bytes()
    bad = root / "bad"
    bad.mkdir()
    broken = {
        "corrupt.mp4": np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes(),
        "truncated.mp4": video[: len(video) * 2 // 5],
        "truncated.wav": sound[: len(sound) // 2],
        "truncated.png": picture[: len(picture) // 2],
        "empty.jpg": b"",
        "sound_named.png": sound,  # wrong extension
        "words.mp3": b"this is not audio\n" * 200,
    }
    for name, data in broken.items():
        (bad / name).write_bytes(data)
    index = tmp_path / "index"
    with open_library(index, None, models=models) as library:
        report = library.add(root)
        assert report.failed == len(broken) and report.embedded == len(good)
        assert set(report.errors) == {str(bad / name) for name in broken}
        assert all(reason for reason in report.errors.values())
        assert "empty" in report.errors[str(bad / "empty.jpg")]
        statuses = file_statuses(library.db)
        assert {path for path, (status, _) in statuses.items() if status == "ok"} == {str(p) for p in good}
        assert all(statuses[path] == ("error", reason) for path, reason in report.errors.items())
        assert library.db.vector_ids(library.model_id("image"), "image").size == 1
        assert_consistent(library)

        # `lbsearch status --json` shows the counts and every failure with its reason.
        result = CliRunner().invoke(app, ["status", "--json", "--index", str(index)])
        assert result.exit_code == 0, result.output
        status = json.loads(result.stdout)
        assert {entry["path"]: entry["error"] for entry in status["failed"]} == report.errors
        assert status["files"]["video"] == {"ok": 1, "pending": 0, "error": 2}
        assert status["files"]["audio"] == {"ok": 1, "pending": 0, "error": 2}
        assert status["files"]["image"] == {"ok": 1, "pending": 0, "error": 3}
        assert sum(v["vectors"] for v in status["vectors"]) == len(vector_table(library.db))

        # Failed files are not tried again unless asked; a repaired one is embedded.
        again = library.add(root)
        assert (again.plan["unchanged"], again.failed, again.embedded) == (len(good) + len(broken), 0, 0)
        shutil.copy(sample_media / "image" / "0.jpg", bad / "empty.jpg")
        retried = library.add(root, options=IngestOptions(retry_failed=True))
        assert (retried.plan["changed"], retried.plan["retry"]) == (1, len(broken) - 1)
        assert (retried.embedded, retried.failed) == (1, len(broken) - 1)
        assert file_statuses(library.db)[str(bad / "empty.jpg")] == ("ok", None)

    # The command exits 3 when files failed, and reports them.
    result = CliRunner().invoke(app, ["index", str(root), "--index", str(index), "--retry-failed", "--json"])
    assert result.exit_code == 3, result.output
    assert json.loads(result.stdout)["failed"] == len(broken) - 1


def test_an_encoder_failure_stops_the_run_without_a_trace_in_the_library(tmp_path, toy_source, models, monkeypatch):
    root = copy_library(toy_source, tmp_path / "library", scenes=1)
    with open_library(tmp_path / "index", None, models=models) as library:
        threads = torch.get_num_threads()

        def broken(batch, batch_size=None):
            raise RuntimeError("the image encoder broke")

        monkeypatch.setattr(library.encoder("image"), "encode", broken)
        with pytest.raises(RuntimeError, match="the image encoder broke"):
            library.add(root, options=IngestOptions(workers=2))
        assert torch.get_num_threads() == threads  # the encoding threads are given back
        with library.db.session() as session:
            assert session.scalars(select(IngestRun.status)).all() == ["failed"]
        assert {status for status, _ in file_statuses(library.db).values()} == {"pending"}
        assert_consistent(library, files_written=False)

        monkeypatch.undo()
        assert library.add(root).embedded == len(media_files(root))
        assert_consistent(library)


# ------------------------------------------------------------------------------------- concurrency, crashes

# The command with small commits (it has no option for them), so a kill lands between many commits.
# SIGINT gets Python's handler back, as at a terminal: a background job (`pytest &` in a script, as CI may run
# it) starts its children with SIGINT ignored, and Ctrl-C would then reach nothing.
_COMMAND = """
import functools, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
import lbsearch.ingest.pipeline
lbsearch.ingest.pipeline.IngestOptions = functools.partial(
    lbsearch.ingest.pipeline.IngestOptions, commit_files=int(sys.argv.pop(1)), commit_seconds=60.0
)
from lbsearch.cli import app
app()
"""


def start_index_command(
    root: Path, index: Path, *, commit_files: int, workers: int = 2, batch_size: int = 4
) -> subprocess.Popen:
    """`lbsearch index ROOT --index INDEX --json` in a subprocess (the model set is already recorded)."""
    command = [sys.executable, "-c", _COMMAND, str(commit_files), "index", str(root), "--index", str(index)]
    command += ["--workers", str(workers), "--batch-size", str(batch_size), "--json"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def files_ok(db: Database) -> int:
    return sum(counts["ok"] for counts in db.counts()["files"].values())


def wait_for_commits(process: subprocess.Popen, db: Database, at_least: int, timeout: float = 120.0) -> int:
    """Wait until the database holds ``at_least`` embedded files; the command must still be running then."""
    deadline = time.monotonic() + timeout
    while (done := files_ok(db)) < at_least:
        if process.poll() is not None:
            pytest.fail(f"the command ended before {at_least} files were committed:\n{process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"fewer than {at_least} files committed after {timeout} s")
        time.sleep(0.02)
    return done


def worker_pids(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_search_while_indexing_sees_the_last_committed_state(tmp_path, toy_source, models):
    root = copy_library(toy_source, tmp_path / "library", scenes=6)
    index = tmp_path / "index"
    with open_library(index, None, models=models) as reader:
        model_ids = {modality: reader.model_id(modality) for modality in models}
        for modality in models:  # load the text side now, so that searches keep up with the commits
            reader.encoder(modality, text_only=True).encode_text("warm up")
        process = start_index_command(root, index, commit_files=1, workers=1, batch_size=1)
        try:
            seen_totals = set()
            wait_for_commits(process, reader.db, 1)
            while process.poll() is None:
                total, searchable = 0, []
                for modality, model_id in model_ids.items():
                    committed_before = set(reader.db.vector_ids(model_id, modality).tolist())
                    if not committed_before:
                        continue
                    searched = set(reader.store.index(model_id, modality).ids().tolist())
                    committed_after = set(reader.db.vector_ids(model_id, modality).tolist())
                    assert committed_before <= searched <= committed_after
                    total += len(searched)
                    searchable.append(modality)
                seen_totals.add(total)
                modality = searchable[len(seen_totals) % len(searchable)]  # one search a round, in turn
                for hit in reader.search("a red square", modalities=[modality], k=3):
                    assert reader.db.file(hit.file_id).status == "ok"
            assert process.wait() == 0, process.stderr.read()
        finally:
            process.kill()
        final = len(vector_table(reader.db))
        assert len({total for total in seen_totals if 0 < total < final}) >= 3  # watched it grow mid-run
        assert_consistent(reader)


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_indexes_every_file_exactly_once(tmp_path, toy_source, toy_reference, models):
    rng = random.Random(CRASH_SEED)
    root = tmp_path.resolve() / "library"
    index = tmp_path / "index"
    with open_library(index, None, models=models) as library:
        # A first, finished run over part of the library (so index files exist and go stale), with a file that
        # will be deleted and one that will change back to the library's version before the killed run.
        copy_library(toy_source, root, scenes=4)
        extra = write_wav(root / "sounds" / "extra.wav", seconds=2.0)
        changed = sorted((root / "scenes" / "rgb").glob("*.png"))[0]
        Image.fromarray(np.zeros((56, 56, 3), dtype=np.uint8)).save(changed)
        library.add(root)
        first_done = files_ok(library.db)
        copy_library(toy_source, root)
        extra.unlink()
        all_files = media_files(root)

        process = start_index_command(root, index, commit_files=4)
        try:
            wait_for_commits(process, library.db, first_done + rng.randrange(4, 48))
            time.sleep(rng.uniform(0.0, 0.3))
            assert process.poll() is None, "the command finished before it could be killed"
            workers = worker_pids(process.pid)
            process.send_signal(signal.SIGKILL)
            assert process.wait() == -signal.SIGKILL
        finally:
            process.kill()
        # Its decode workers leave with it.
        deadline = time.monotonic() + 10
        while any(running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        lingering = [pid for pid in workers if running(pid)]
        for pid in lingering:
            os.kill(pid, signal.SIGKILL)
        assert not lingering, "decode workers outlived their killed parent"

        # Straight after the crash: tidy, and every index agrees once it caught up with the database.
        statuses = file_statuses(library.db)
        partly = {path for path, (status, _) in statuses.items() if status == "ok"}
        assert first_done < len(partly) < len(all_files)
        assert_consistent(library, files_written=False)
        table = vector_table(library.db, root=root)
        reference_ok = {key: value for key, value in toy_reference.items() if str(root / key[0]) in partly}
        stale = (changed.relative_to(root).as_posix(), "sounds/extra.wav")
        assert {k for k in table if k[0] not in stale} == {k for k in reference_ok if k[0] not in stale}

        report = library.add(root)
        assert report.failed == 0 and not report.interrupted
        assert report.embedded == len(all_files) - len(partly)
        assert report.plan["deleted"] == 0  # the extra file left during the killed run
        assert_consistent(library)
        assert_same_vectors(vector_table(library.db, root=root), toy_reference)
        assert all(status == "ok" for status, _ in file_statuses(library.db).values())


def assert_same_vectors(table: dict, reference: dict) -> None:
    """The same (file, model, modality, span) keys as the uninterrupted run, each once, with its embedding."""
    assert table.keys() == reference.keys()
    for key, (_, embedding) in table.items():
        np.testing.assert_allclose(embedding, reference[key][1], atol=1e-5, err_msg=str(key))


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_a_rerun_completes(tmp_path, toy_source, toy_reference, models):
    rng = random.Random(CRASH_SEED + 1)
    root = copy_library(toy_source, tmp_path / "library")
    index = tmp_path / "index"
    with open_library(index, None, models=models) as library:
        process = start_index_command(root, index, commit_files=4)
        try:
            wait_for_commits(process, library.db, rng.randrange(4, 40))
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=120)
        finally:
            process.kill()
        assert process.returncode == 130, (out, err)
        summary = json.loads(out)
        assert summary["interrupted"] is True
        statuses = file_statuses(library.db)
        ok = [path for path, (status, _) in statuses.items() if status == "ok"]
        assert summary["embedded"] == len(ok) < len(media_files(root))
        # The clean stop wrote every index up to date.
        assert_consistent(library)

        report = library.add(root)
        assert report.plan["retry"] + report.plan["unchanged"] == len(media_files(root))
        assert report.embedded == report.plan["retry"] == len(media_files(root)) - len(ok)
        assert_consistent(library)
        assert_same_vectors(vector_table(library.db, root=root), toy_reference)


def test_a_decoder_that_crashes_its_worker_fails_only_its_own_file(monkeypatch):
    """A codec that kills its process (a segfault) breaks the worker pool: the pool starts again, the files that
    were in flight are decoded again one by one, and only the one that crashes the decoder comes back failed."""
    from lbsearch.ingest import pool as pool_module
    from lbsearch.ingest.decode import DecodedPart

    def decode_or_crash(task: DecodeTask) -> DecodedPart:
        if task.path.endswith("crash"):
            os.kill(os.getpid(), signal.SIGKILL)  # dies at once, as a codec that segfaults does
        return DecodedPart(task)

    monkeypatch.setattr(pool_module, "decode", decode_or_crash)  # the workers fork with it
    names = [f"/media/{index}" for index in range(20)]
    names.insert(12, "/media/crash")
    todo = [DecodeTask(name, "image", {}, size=1000) for name in reversed(names)]
    parts = []
    with DecodePool(workers=2, max_in_flight=6) as pool:
        for _ in pool.decoded(todo, lambda part: parts.append(part) or []):
            pass
    assert sorted(part.task.path for part in parts) == sorted(names)  # every file once
    failed = {part.task.path: part.error for part in parts if part.error is not None}
    assert list(failed) == ["/media/crash"] and "decoder crashed" in failed["/media/crash"]
