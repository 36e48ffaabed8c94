"""Plain records: what the database hands out and takes in, as frozen dataclasses that outlive their session."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement

from lbsearch.errors import ConfigError, LbsearchError
from lbsearch.storage.schema import File

# Embeddings are stored as little-endian float32 bytes.
EMBEDDING_DTYPE = np.dtype("<f4")


@dataclass(frozen=True)
class FileRecord:
    """A `files` row as plain data, safe to keep after its session is gone."""

    id: int
    path: str
    root: str
    size: int
    mtime_ns: int
    content_hash: str | None
    modality: str
    status: str
    error: str | None
    item_key: str | None


@dataclass(frozen=True)
class ModelRecord:
    id: int
    name: str
    modality: str
    revision: str | None
    weights_hash: str
    dim: int


@dataclass(frozen=True)
class MediaInfo:
    """What decoding learnt about a file; every field is optional (an image has no duration)."""

    duration: float | None = None
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    sample_rate: int | None = None
    has_audio: bool | None = None


@dataclass(frozen=True)
class NewVector:
    """One embedding to store for a file: which model and modality made it, at which precision, and which span
    of the file."""

    model_id: int
    modality: str
    embedding: np.ndarray
    start: float | None = None
    end: float | None = None
    precision: str = "fp32"


@dataclass(frozen=True)
class FileVectors:
    """Everything to store for one embedded file, replacing its previous vectors.

    `only_models`: replace only the vectors of these models (plus those in `vectors`), keeping other models'
    (a new model version indexed beside the old one); None replaces every vector of the file.
    `info`, when given, replaces all the media fields of the file (duration, fps, ...).
    `modality`, when given, is the file's modality as decoding found it (an .mp4 holding only sound is audio).
    """

    file_id: int
    vectors: Sequence[NewVector]
    info: MediaInfo | None = None
    only_models: Collection[int] | None = None
    modality: str | None = None


@dataclass(frozen=True)
class Watermark:
    """How far a FAISS file is: the largest vector id and the last deletion seq it includes.

    `dataclasses.asdict(watermark)` is the `watermarks` dict that `lbsearch.storage.vectorindex` keeps in a FAISS file.
    """

    max_vector_id: int
    delete_seq: int


@dataclass(frozen=True)
class StoredVector:
    """One stored embedding of a file, and the span it covers (None, None: the whole file)."""

    vector_id: int
    start: float | None
    end: float | None
    embedding: np.ndarray


@dataclass(frozen=True)
class FileFilter:
    """Conditions on files (None: no condition). `where` maps other `files` columns to a value they must equal."""

    file_modalities: Collection[str] | None = None
    min_duration: float | None = None
    max_duration: float | None = None
    modified_after: datetime | None = None
    modified_before: datetime | None = None
    where: Mapping[str, Any] = field(default_factory=dict)

    def clauses(self) -> list[ColumnElement[bool]]:
        """The conditions as SQL; a column `where` names that `files` does not have is a ConfigError."""
        clauses: list[ColumnElement[bool]] = []
        if self.file_modalities is not None:
            clauses.append(File.modality.in_(list(self.file_modalities)))
        if self.min_duration is not None:
            clauses.append(File.duration >= self.min_duration)
        if self.max_duration is not None:
            clauses.append(File.duration <= self.max_duration)
        if self.modified_after is not None:
            clauses.append(File.mtime_ns >= _nanoseconds(self.modified_after))
        if self.modified_before is not None:
            clauses.append(File.mtime_ns <= _nanoseconds(self.modified_before))
        columns = File.__table__.columns
        for name, value in self.where.items():
            if name not in columns:
                raise ConfigError(f"files have no column {name!r}; they have {', '.join(columns.keys())}")
            clauses.append(columns[name] == value)
        return clauses


@dataclass(frozen=True)
class VectorInfo:
    """Where a vector comes from: what a search result shows."""

    vector_id: int
    model_id: int
    modality: str
    segment_id: int
    start: float | None
    end: float | None
    file_id: int
    path: str
    file_modality: str
    item_id: int | None
    item_key: str | None


# ------------------------------------------------------------------------- numpy <-> bytes, one place


def embedding_to_bytes(embedding: np.ndarray) -> bytes:
    """A 1-D embedding as little-endian float32 bytes."""
    vector = np.asarray(embedding, dtype=EMBEDDING_DTYPE)
    if vector.ndim != 1:
        raise LbsearchError(f"an embedding must be one vector, got shape {vector.shape}")
    return vector.tobytes()


def embeddings_from_bytes(blobs: Sequence[bytes | memoryview], dim: int) -> np.ndarray:
    """Stored embeddings as one float32 [n, dim] matrix (native byte order, as FAISS wants)."""
    matrix = np.frombuffer(b"".join(blobs), dtype=EMBEDDING_DTYPE).reshape(len(blobs), dim)
    return matrix.astype(np.float32)


def _nanoseconds(moment: datetime) -> int:
    """A datetime as st_mtime_ns counts (a naive one is local time, as file times are shown)."""
    return round(moment.timestamp() * 1_000_000) * 1000
