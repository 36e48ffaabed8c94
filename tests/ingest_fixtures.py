"""Shared fixtures and checks for the ingestion and index-store tests (test_ingest.py, test_store.py).

Libraries are real files: a toy-world library written once per session (PNG/WAV/MP4 with AAC tracks) and copied
per test, and media made here with PyAV and soundfile. Models are the tiny released-layout checkpoints the tests
write (tests/tiny_checkpoints.py).
"""

from __future__ import annotations

import shutil
from collections import Counter
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
from sqlalchemy import func, select
from test_db import database_url  # noqa: F401  (re-exported fixture: a fresh SQLite or PostgreSQL URL)

from lbsearch.library import Library
from lbsearch.storage.database import Database
from lbsearch.storage.schema import File, Item, Model, Segment, Vector
from lbsearch.storage.store import IndexStore
from lbsearch.storage.vectorindex import VectorIndex
from lbsearch.toyworld import World, read_manifest, write_library
from lbsearch.toyworld.render import VIDEO_CODEC, write_mp4

MODEL_SET = {
    "video": "video_ft",
    "audio": "audio_ft",
    "depth": "depth_lora",
    "thermal": "thermal_lora",
    "image": "image",
}
# Scenes in the session's toy library (five files each: video with an AAC track, wav, rgb, depth, thermal PNGs).
TOY_SCENES = 24
SMALL_SCENES = 4


def model_set(checkpoints: Path) -> dict[str, str]:
    """`MODEL_SET` in the folder of tiny checkpoints (the `tiny_checkpoints` fixture)."""
    return {modality: str(checkpoints / name) for modality, name in MODEL_SET.items()}


def open_library(folder: Path, db_url: str | None = None, *, models: dict[str, str]) -> Library:
    """A library in ``folder`` (metadata there, or at ``db_url``: test_db's `database_url`) using ``models``."""
    library = Library.open(folder, db=db_url, device="cpu")
    library.use_models(models)
    return library


# ---------------------------------------------------------------------------------------------- libraries


@pytest.fixture(scope="session")
def models(tiny_checkpoints: Path) -> dict[str, str]:
    return model_set(tiny_checkpoints)


@pytest.fixture(scope="session")
def toy_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A toy-world library written once per session; tests copy it (see `copy_library`)."""
    root = tmp_path_factory.mktemp("toy") / "library"
    write_library(root, World(7).scenes("train", TOY_SCENES))
    return root


@pytest.fixture(scope="session")
def toy_reference(toy_source: Path, models: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`vector_table` of the whole toy library indexed in one uninterrupted run (paths relative to it)."""
    with open_library(tmp_path_factory.mktemp("reference") / "index", None, models=models) as library:
        library.add(toy_source)
        return vector_table(library.db, root=toy_source)


def copy_library(source: Path, target: Path, scenes: int | None = None) -> Path:
    """Copy a toy library (its first ``scenes`` scenes only, when given) into ``target``; returns it.

    Files already in ``target`` are overwritten with the originals (their modification times included)."""
    if scenes is None:
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("manifest.jsonl"), dirs_exist_ok=True)
        return target
    for entry in read_manifest(source)[:scenes]:
        for path in entry.files.values():
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)
    return target


def media_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def write_video(path: Path, seconds: float, fps: int = 8, size: int = 32, sound: bool = True, seed: int = 0) -> Path:
    """An MP4 (PyAV) of moving noise, with a 16 kHz AAC track of a rising tone when ``sound``."""
    rng = np.random.default_rng(seed)
    count = round(seconds * fps)
    base = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    frames = np.stack([np.roll(base, shift=3 * i, axis=1) for i in range(count)])
    wave = None
    if sound:
        t = np.arange(round(seconds * 16000)) / 16000
        wave = (0.3 * np.sin(2 * np.pi * (200 + 20 * t) * t)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(path, frames, seconds, wave, 16000)
    return path


def write_video_with_broken_sound(path: Path, seconds: float = 2.0, fps: int = 8, size: int = 32) -> Path:
    """An MP4 whose pictures are fine but whose AAC track holds packets of noise that no decoder accepts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with av.open(str(path), mode="w", format="mp4") as container:
        video = container.add_stream(VIDEO_CODEC, rate=fps)
        video.width, video.height, video.pix_fmt = size, size, "yuv420p"
        sound = container.add_stream("aac", rate=16000)
        sound.layout = "mono"
        for index in range(round(seconds * fps)):
            picture = av.VideoFrame.from_ndarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), format="rgb24")
            picture.pts = index
            container.mux(video.encode(picture))
        container.mux(video.encode(None))
        sound.codec_context.extradata = bytes([0x14, 0x08])  # AAC-LC, 16 kHz, mono
        for index in range(round(seconds * 16000 / 1024)):
            packet = av.Packet(rng.integers(0, 256, 200, dtype=np.uint8).tobytes())
            packet.stream, packet.pts, packet.dts = sound, index * 1024, index * 1024
            packet.time_base = Fraction(1, 16000)
            container.mux(packet)
    return path


def write_wav(path: Path, seconds: float, rate: int = 16000, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, (0.2 * rng.standard_normal(round(seconds * rate))).astype(np.float32), rate)
    return path


# -------------------------------------------------------------------------------------------------- checks


def vector_table(
    db: Database, root: Path | None = None
) -> dict[tuple[str, str, str, float | None, float | None], tuple[int, np.ndarray]]:
    """Every stored vector by (file path, model name, modality, start, end) -> (vector id, embedding).

    Paths are relative to ``root`` when given. Fails on a duplicate key: one file has at most one vector per
    model, modality and span.
    """
    query = (
        select(File.path, Model.name, Vector.modality, Segment.start, Segment.end, Vector.id, Vector.embedding)
        .join(Segment, Vector.segment_id == Segment.id)
        .join(File, Segment.file_id == File.id)
        .join(Model, Vector.model_id == Model.id)
    )
    table = {}
    with db.session() as session:
        for path, model, modality, start, end, vector_id, blob in session.execute(query):
            if root is not None:
                path = Path(path).relative_to(root.resolve()).as_posix()
            key = (path, model, modality, start, end)
            assert key not in table, f"two vectors for {key}"
            table[key] = (vector_id, np.frombuffer(blob, dtype="<f4").copy())
    return table


def vector_ids_of(db: Database, path: Path | str) -> dict[tuple[str, str, float | None, float | None], int]:
    """(model name, modality, start, end) -> vector id for one file."""
    return {
        key[1:]: vector_id for key, (vector_id, _) in vector_table(db).items() if key[0] == str(Path(path).resolve())
    }


def file_statuses(db: Database) -> dict[str, tuple[str, str | None]]:
    with db.session() as session:
        return {
            path: (status, error) for path, status, error in session.execute(select(File.path, File.status, File.error))
        }


def indexed_ids_on_disk(store: IndexStore, model_id: int, modality: str) -> np.ndarray:
    """The ids in the FAISS file as written (no catch-up with the database)."""
    return np.sort(VectorIndex.read(store.path(model_id, modality)).ids())


def assert_consistent(library: Library, *, files_written: bool = True) -> None:
    """The database is tidy and every index agrees with it.

    - no two segments of a file with the same span, no segment without a vector, no vector without its file,
      no item without a file, no file pointing at a missing item;
    - `verify` finds nothing; with ``files_written`` (after a finished ingest) each FAISS file on disk holds
      exactly the database's vector ids, without catching up.
    """
    db = library.db
    with db.session() as session:
        spans = Counter(session.execute(select(Segment.file_id, Segment.start, Segment.end)).all())
        assert all(count == 1 for count in spans.values()), "a file has two segments with the same span"
        empty_segments = session.scalar(
            select(func.count())
            .select_from(Segment)
            .where(~select(Vector.id).where(Vector.segment_id == Segment.id).exists())
        )
        assert empty_segments == 0, "segments without a vector"
        orphan_vectors = session.scalar(
            select(func.count())
            .select_from(Vector)
            .outerjoin(Segment, Vector.segment_id == Segment.id)
            .outerjoin(File, Segment.file_id == File.id)
            .where(File.id.is_(None))
        )
        assert orphan_vectors == 0, "vectors whose segment or file is gone"
        orphan_items = session.scalar(
            select(func.count()).select_from(Item).where(~select(File.id).where(File.item_id == Item.id).exists())
        )
        assert orphan_items == 0, "items without a file"
        unlinked = session.scalar(select(func.count()).select_from(File).where(File.item_id.is_(None)))
        assert unlinked == 0, "files without an item"
    assert library.verify() == []
    if files_written:
        for model_id, modality in db.vector_groups():
            np.testing.assert_array_equal(
                indexed_ids_on_disk(library.store, model_id, modality), db.vector_ids(model_id, modality)
            )
