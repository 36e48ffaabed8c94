"""The metadata schema: lbsearch's tables, and the versioned migrations that bring an older library up to date.

A change to the tables is a new function at the end of `MIGRATIONS`, never an edit of an earlier one. A new
database gets the current tables at once; one made by an older lbsearch is upgraded in place, step by step, the
first time a newer lbsearch opens it for writing. The version is the one row of `schema_version`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Connection,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
    inspect,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from lbsearch import paths
from lbsearch.errors import ConfigError


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class PathText(TypeDecorator[str]):
    """A path, or text holding one, in its stored form (`lbsearch.paths.stored`): any name the file system
    gives, valid UTF-8 or not, is stored and read back exactly."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: object) -> str | None:
        return None if value is None else paths.stored(value)

    def process_result_value(self, value: str | None, dialect: object) -> str | None:
        return None if value is None else paths.from_stored(value)


class Base(DeclarativeBase):
    pass


class Item(Base):
    """What files belong together: a video and its own audio track, the RGB/depth/thermal frames of a scene."""

    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(PathText, unique=True)  # "file:<path>" or "scene:<folder>/<name>"


class File(Base):
    __tablename__ = "files"

    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(PathText, unique=True)
    root: Mapped[str] = mapped_column(PathText)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    # None when the file could not be read (it is then recorded as failed).
    content_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    modality: Mapped[str] = mapped_column(String(16))
    duration: Mapped[float | None]
    fps: Mapped[float | None]
    width: Mapped[int | None]
    height: Mapped[int | None]
    sample_rate: Mapped[int | None]
    has_audio: Mapped[bool | None]
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    error: Mapped[str | None] = mapped_column(Text)
    item_id: Mapped[int | None] = mapped_column(ForeignKey("items.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class Segment(Base):
    """A span of a file. NULL start and end: the whole file; otherwise a time window in seconds."""

    __tablename__ = "segments"

    id: Mapped[int] = mapped_column(primary_key=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id"), index=True)
    start: Mapped[float | None]
    end: Mapped[float | None]


class Model(Base):
    """One checkpoint for one modality. A new version (other weights) gets its own row and its own index."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("name", "modality", "weights_hash"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String)
    modality: Mapped[str] = mapped_column(String(16))
    revision: Mapped[str | None] = mapped_column(String)
    weights_hash: Mapped[str] = mapped_column(String(128))
    dim: Mapped[int]


class Vector(Base):
    """One embedding. `id` is the FAISS id; AUTOINCREMENT keeps SQLite from reusing a deleted one."""

    __tablename__ = "vectors"
    __table_args__ = (
        UniqueConstraint("segment_id", "model_id", "modality"),
        Index("ix_vectors_model_modality_id", "model_id", "modality", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    segment_id: Mapped[int] = mapped_column(ForeignKey("segments.id"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    modality: Mapped[str] = mapped_column(String(16))
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
    # The precision the encoder ran at (fp32, bf16, fp16, int8); NULL for vectors stored before it was recorded.
    precision: Mapped[str | None] = mapped_column(String(8))


class VectorDeletion(Base):
    """Append-only log of deleted vectors, so a FAISS file can catch up with deletions made after it."""

    __tablename__ = "vector_deletions"
    __table_args__ = (
        Index("ix_vector_deletions_model_modality_seq", "model_id", "modality", "seq"),
        {"sqlite_autoincrement": True},
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vector_id: Mapped[int]
    model_id: Mapped[int]
    modality: Mapped[str] = mapped_column(String(16))


class IngestRun(Base):
    __tablename__ = "ingest_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    started: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default="running")
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    model_set: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Setting(Base):
    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)


class SchemaVersion(Base):
    """The schema version of this database: how many of `MIGRATIONS` it has, plus one."""

    __tablename__ = "schema_version"

    version: Mapped[int] = mapped_column(primary_key=True)


# ------------------------------------------------------------------------------------------ migrations

# MIGRATIONS[i] upgrades a database of version i + 1 to version i + 2. Version 1 is the schema of lbsearch 0.1
# (round 1), which recorded no version.


def _escape_backslashes_in_paths(connection: Connection) -> None:
    """Version 2: paths are stored escaped (`PathText`). Names without a backslash read the same; in the
    others, each backslash is doubled. Undecodable names could not be stored before, so there are none."""
    for column in (File.__table__.c.path, File.__table__.c.root, Item.__table__.c.key):
        escaped = func.replace(column, literal("\\", String), literal("\\\\", String))
        # Untyped literals: the column's own type would escape them as paths.
        connection.execute(update(column.table).where(escaped != column).values({column: escaped}))


def _vector_precision(connection: Connection) -> None:
    """Version 3: each vector records the precision its encoder ran at. Older vectors keep NULL (unrecorded)."""
    if "precision" not in {column["name"] for column in inspect(connection).get_columns("vectors")}:
        connection.execute(text('ALTER TABLE vectors ADD COLUMN "precision" VARCHAR(8)'))


MIGRATIONS: tuple[Callable[[Connection], None], ...] = (_escape_backslashes_in_paths, _vector_precision)
SCHEMA_VERSION = len(MIGRATIONS) + 1


def schema_version(connection: Connection) -> int | None:
    """The version of the database behind ``connection``; None for an empty database."""
    tables = set(inspect(connection).get_table_names())
    if SchemaVersion.__tablename__ in tables:
        return connection.execute(select(SchemaVersion.version)).scalar_one()
    return 1 if File.__tablename__ in tables else None


def migrate(connection: Connection) -> int:
    """Bring the database up to `SCHEMA_VERSION` (inside the caller's write transaction); returns the version it
    had. A database from a newer lbsearch is refused rather than misread."""
    found = schema_version(connection)
    if found is None:
        Base.metadata.create_all(connection)
        connection.execute(SchemaVersion.__table__.insert().values(version=SCHEMA_VERSION))
        return SCHEMA_VERSION
    if found > SCHEMA_VERSION:
        raise ConfigError(
            f"{connection.engine.url.render_as_string(hide_password=True)}: this library was written by a newer "
            f"lbsearch (schema version {found}; this one knows up to {SCHEMA_VERSION}); upgrade lbsearch"
        )
    if found < SCHEMA_VERSION:
        SchemaVersion.__table__.create(connection, checkfirst=True)
        for version in range(found, SCHEMA_VERSION):
            MIGRATIONS[version - 1](connection)
        connection.execute(SchemaVersion.__table__.delete())
        connection.execute(SchemaVersion.__table__.insert().values(version=SCHEMA_VERSION))
    return found
