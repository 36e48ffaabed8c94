"""The metadata database: files, items, segments, models, vectors and ingest runs (SQLAlchemy 2).

The embeddings are stored here too, as float32 bytes, so any FAISS index can be rebuilt without re-embedding.
A vector's primary key is its FAISS id. Ids are never reused (AUTOINCREMENT on SQLite, a sequence elsewhere)
and every deleted vector is logged in `vector_deletions`, so a FAISS file written at a `Watermark` (largest
vector id, last deletion seq) is brought up to date by adding the vectors above the one and removing those
logged after the other.

Writes go through `Database.session(write=True)`, which serialises writers (BEGIN IMMEDIATE on SQLite, an
advisory lock on PostgreSQL) so that ids and seqs become visible in increasing order. Readers never wait for a
writer and see the last committed state (SQLite runs in WAL mode).

An SQLite file whose folder cannot be written (a read-only mount, a shared NAS) is opened read-only: reads work,
writes raise `ReadOnlyLibraryError`, and opening it writes nothing. Failures of the database itself (a corrupt
file, a full disk, an I/O error) come out as one `StorageError` naming the database and what to do.

The tables and their migrations are in `schema`, the records this class hands out in `records`. The class stays
one module, longer than most: it is every SQL statement lbsearch runs, read in one sitting.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import (
    ColumnElement,
    Engine,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from lbsearch import paths
from lbsearch.errors import LbsearchError, ReadOnlyLibraryError, StorageError, VectorIndexError
from lbsearch.modalities import MODALITIES, lookup
from lbsearch.storage import schema
from lbsearch.storage.records import (
    EMBEDDING_DTYPE,
    FileFilter,
    FileRecord,
    FileVectors,
    ModelRecord,
    NewVector,
    StoredVector,
    VectorInfo,
    Watermark,
    embedding_to_bytes,
    embeddings_from_bytes,
)
from lbsearch.storage.schema import (
    File,
    IngestRun,
    Item,
    Model,
    Segment,
    Setting,
    Vector,
    VectorDeletion,
    migrate,
    utcnow,
)

SQLITE_FILE_NAME = "metadata.sqlite"
# What a caller says about a file it records (besides its item key).
_FILE_FACTS = ("path", "root", "size", "mtime_ns", "content_hash", "modality")
FILE_STATUSES = ("pending", "ok", "error")
# How `counts` names the precision of vectors stored before lbsearch recorded it.
UNRECORDED = "unrecorded"
# Any fixed number: the key of the PostgreSQL advisory lock that serialises lbsearch writers.
_PG_WRITER_LOCK = 0x6C627372

T = TypeVar("T")

# The columns of a FileRecord, in order (with the item's key joined in).
_RECORD_COLUMNS = (
    File.id,
    File.path,
    File.root,
    File.size,
    File.mtime_ns,
    File.content_hash,
    File.modality,
    File.status,
    File.error,
    Item.key,
)


# The columns of a VectorInfo, in order.
_VECTOR_INFO_COLUMNS = (
    Vector.id,
    Vector.model_id,
    Vector.modality,
    Segment.id,
    Segment.start,
    Segment.end,
    File.id,
    File.path,
    File.modality,
    File.item_id,
    Item.key,
)
# A group of search hits: ("file", file id), ("item", item id), or one vector id (its segment).
GroupKey = tuple[str, int] | int


# ------------------------------------------------------------------------------------------ database


class Database:
    """The metadata database behind one index folder (or any SQLAlchemy URL)."""

    def __init__(self, url: str | URL, *, read_only: bool | None = None):
        """``read_only``: open an SQLite file read-only (default: when it or its folder cannot be written)."""
        self.url = make_url(url)
        self.dialect = self.url.get_backend_name()
        self.read_only = False
        if self.dialect == "sqlite":
            path = self.url.database
            on_disk = path not in (None, "", ":memory:")
            self.read_only = on_disk and (not writable(Path(path)) if read_only is None else read_only)
            creator = (lambda: _connect_read_only(Path(path))) if self.read_only else None
            self.engine = create_engine(self.url, **({"creator": creator} if creator else {}))
            _configure_sqlite(self.engine, self.read_only)
        else:
            self.engine = create_engine(self.url, pool_pre_ping=True)
        writer_engine = self.engine.execution_options(lbsearch_writer=True)
        self._reader_sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._writer_sessions = sessionmaker(writer_engine, expire_on_commit=False)
        # Opening a library that is up to date writes nothing (a search on a read-only copy must work).
        with self.session() as session:
            found = schema.schema_version(session.connection())
        if found == schema.SCHEMA_VERSION:
            return
        if self.read_only and (found is None or found < schema.SCHEMA_VERSION):
            what = "holds no library" if found is None else "needs an upgrade by this lbsearch"
            raise ReadOnlyLibraryError(f"{self.name}: {what}, and cannot be written (read-only)")
        # A newer version is refused by `migrate` before it writes. Inside a writer transaction, so that two
        # processes opening a new database do not both create it.
        with self.session(write=not self.read_only) as session:
            migrate(session.connection())

    @classmethod
    def open(cls, target: str | Path) -> Database:
        """A SQLAlchemy URL, an SQLite file, or an index folder (made when missing) holding `metadata.sqlite`.

        A path that is not an existing file and has no suffix (`indexes`) is taken for a folder.
        """
        if isinstance(target, str) and "://" in target:
            return cls(target)
        path = Path(target)
        if path.is_dir() or (not path.exists() and not path.suffix):
            path = path / SQLITE_FILE_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(URL.create("sqlite", database=str(path.resolve())))

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def name(self) -> str:
        """The database as messages name it: its file, or its URL without the password."""
        if self.dialect == "sqlite" and self.url.database:
            return self.url.database
        return self.url.render_as_string(hide_password=True)

    @contextmanager
    def session(self, write: bool = False) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back when it raises.

        `write=True` first waits for any other writer to finish, so writes never interleave.
        """
        if write and self.read_only:
            raise ReadOnlyLibraryError(f"{self.name}: the library is read-only (its folder cannot be written)")
        sessions = self._writer_sessions if write else self._reader_sessions
        try:
            with sessions.begin() as session:
                if write:
                    session.connection()  # begin now (IMMEDIATE on SQLite), not at the first statement
                    if self.dialect == "postgresql":
                        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_WRITER_LOCK})
                yield session
        except DBAPIError as exc:
            raise storage_error(self.name, exc) from exc

    def integrity_problems(self) -> list[str]:
        """What SQLite's own integrity check finds wrong with the file (empty: nothing; PostgreSQL: not run)."""
        if self.dialect != "sqlite":
            return []
        with self.session() as session:
            found = [row[0] for row in session.execute(text("PRAGMA integrity_check"))]
        return [] if found == ["ok"] else found

    # ------------------------------------------------------------------------------------- settings

    def get_setting(self, key: str, default: Any = None) -> Any:
        with self.session() as session:
            row = session.get(Setting, key)
            return default if row is None else row.value

    def set_setting(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable value under `key` (e.g. the model set in use for the library)."""
        json.dumps(value)  # fail here, not at commit, on a value JSON cannot hold
        with self.session(write=True) as session:
            session.merge(Setting(key=key, value=value))

    # --------------------------------------------------------------------------------------- models

    def register_model(self, name: str, modality: str, weights_hash: str, dim: int, revision: str | None = None) -> int:
        """The id of this (checkpoint, modality, weights), adding it when new."""
        with self.session(write=True) as session:
            model = session.scalars(
                select(Model).filter_by(name=name, modality=modality, weights_hash=weights_hash)
            ).one_or_none()
            if model is None:
                model = Model(name=name, modality=modality, weights_hash=weights_hash, dim=dim, revision=revision)
                session.add(model)
                session.flush()
            elif model.dim != dim:
                raise LbsearchError(
                    f"model {name} ({modality}, weights {weights_hash}) is recorded with dimension {model.dim}, "
                    f"not {dim}"
                )
            return model.id

    def models(self) -> list[ModelRecord]:
        with self.session() as session:
            return [_model_record(model) for model in session.scalars(select(Model).order_by(Model.id))]

    def model(self, model_id: int) -> ModelRecord:
        with self.session() as session:
            model = session.get(Model, model_id)
            if model is None:
                raise LbsearchError(f"no model with id {model_id} in the database")
            return _model_record(model)

    # ---------------------------------------------------------------------------------------- files

    def upsert_file(
        self,
        path: str,
        *,
        root: str,
        size: int,
        mtime_ns: int,
        content_hash: str | None,
        modality: str,
        item_key: str,
    ) -> int:
        """Record a new or changed file as pending (its old vectors stay until new ones replace them)."""
        facts = {"root": root, "size": size, "mtime_ns": mtime_ns, "content_hash": content_hash}
        return self.upsert_files([{"path": path, **facts, "modality": modality, "item_key": item_key}])[0]

    def upsert_files(self, files: Sequence[Mapping[str, Any]]) -> list[int]:
        """`upsert_file` for many files in one transaction; each mapping holds its arguments. Ids in order.

        A scanned file and its hash: `{**dataclasses.asdict(task.file), "content_hash": task.content_hash}`.
        """
        paths = [file["path"] for file in files]
        if len(set(paths)) != len(paths):
            raise LbsearchError("a batch of files to record names a path twice")
        ids: dict[str, int] = {}
        with self.session(write=True) as session:
            for chunk in _chunks(files):
                known = {
                    path: (file_id, item_id)
                    for file_id, path, item_id in session.execute(
                        select(File.id, File.path, File.item_id).where(File.path.in_([f["path"] for f in chunk]))
                    )
                }
                item_ids = _item_ids(session, {file["item_key"] for file in chunk})
                rows = [
                    {
                        **{column: file[column] for column in _FILE_FACTS},
                        "item_id": item_ids[file["item_key"]],
                        "status": "pending",
                        "error": None,
                    }
                    for file in chunk
                ]
                updated = [{"id": known[row["path"]][0], **row} for row in rows if row["path"] in known]
                if updated:
                    session.execute(update(File), updated)
                    _delete_orphan_items(session, [item_id for _, item_id in known.values()])
                    ids.update((row["path"], row["id"]) for row in updated)
                added = [row for row in rows if row["path"] not in known]
                if added:
                    ids.update(
                        (path, file_id)
                        for file_id, path in session.execute(insert(File).returning(File.id, File.path), added)
                    )
        return [ids[path] for path in paths]

    def relocate_file(self, file_id: int, *, path: str, root: str, size: int, mtime_ns: int, item_key: str) -> None:
        """A file whose content did not change was moved, renamed or touched: keep its vectors."""
        with self.session(write=True) as session:
            file = _get_file(session, file_id)
            old_item_id = file.item_id
            file.path, file.root, file.size, file.mtime_ns = path, root, size, mtime_ns
            file.item_id = _item_ids(session, [item_key])[item_key]
            session.flush()
            _delete_orphan_items(session, [old_item_id])

    def mark_files_failed(self, reasons: Mapping[int, str]) -> None:
        """Record why files could not be embedded; their old vectors (of older content) are deleted."""
        with self.session(write=True) as session:
            for chunk in _chunks(list(reasons)):
                _delete_file_vectors(session, chunk, models=None)
                _delete_empty_segments(session, chunk)
                session.execute(
                    update(File),
                    # A reason may quote an undecodable file name; stored as people will read it.
                    [{"id": file_id, "status": "error", "error": paths.shown(reasons[file_id])} for file_id in chunk],
                )

    def delete_files(self, file_ids: Collection[int]) -> None:
        """Forget files: their vectors (logged as deleted), segments, and items left without a file."""
        with self.session(write=True) as session:
            for chunk in _chunks(list(file_ids)):
                item_ids = session.scalars(select(File.item_id).where(File.id.in_(chunk))).all()
                _delete_file_vectors(session, chunk, models=None)
                session.execute(delete(Segment).where(Segment.file_id.in_(chunk)))
                session.execute(delete(File).where(File.id.in_(chunk)))
                _delete_orphan_items(session, item_ids)

    def file(self, file_id: int) -> FileRecord:
        # An id beyond 64 bits would not even reach the database (the driver overflows).
        records = self._file_records(File.id == file_id) if 0 < file_id < 2**63 else []
        if not records:
            raise LbsearchError(f"no file with id {file_id} in the database")
        return records[0]

    def file_by_path(self, path: str) -> FileRecord | None:
        records = self._file_records(File.path == path)
        return records[0] if records else None

    def files_with_hashes(self, content_hashes: Collection[str]) -> dict[str, list[FileRecord]]:
        """The files with each of these contents (hashes with none are left out): how a move is recognised."""
        found: dict[str, list[FileRecord]] = defaultdict(list)
        for chunk in _chunks(sorted(content_hashes)):
            for record in self._file_records(File.content_hash.in_(chunk)):
                found[record.content_hash].append(record)
        return dict(found)

    def files_under(self, folders: Iterable[str]) -> list[FileRecord]:
        """Every file whose path lies inside one of these (absolute) folders, by path."""
        prefixes = {folder.rstrip("/") + "/" for folder in folders}
        if not prefixes:
            return []
        # substr, not LIKE: exact and case-sensitive on every database, with nothing to escape. It compares stored
        # forms, in which a folder's is a prefix of its files' (`lbsearch.paths`).
        inside = or_(*(func.substr(File.path, 1, len(stored)) == stored for stored in map(paths.stored, prefixes)))
        return self._file_records(inside, order_by=File.path)

    def files(self, status: str | None = None) -> list[FileRecord]:
        """Every file (with this status: pending, ok or error), by path."""
        return self._file_records(*([] if status is None else [File.status == status]), order_by=File.path)

    def failed_files(self) -> list[FileRecord]:
        return self.files("error")

    def files_lacking_vectors(self, model_id: int, modality: str) -> list[FileRecord]:
        """Embedded files that should have a (model, modality) vector and have none (e.g. a new model version).

        A file qualifies when it is of that modality, or, for audio, when it is a video with a sound track.
        """
        has_vector = exists().where(
            Vector.segment_id == Segment.id,
            Segment.file_id == File.id,
            Vector.model_id == model_id,
            Vector.modality == modality,
        )
        qualifies = File.modality == modality
        carriers = [m for m in MODALITIES if lookup(m).companion == modality]
        if carriers:  # a video with a sound track qualifies for audio
            qualifies = qualifies | (File.modality.in_(carriers) & File.has_audio.is_(True))
        return self._file_records(File.status == "ok", qualifies, ~has_vector)

    def _file_records(self, *conditions: ColumnElement[bool], order_by: Any = File.id) -> list[FileRecord]:
        query = select(*_RECORD_COLUMNS).outerjoin(Item, File.item_id == Item.id).where(*conditions)
        with self.session() as session:
            return [FileRecord(*row) for row in session.execute(query.order_by(order_by))]

    # -------------------------------------------------------------------------------------- vectors

    def store_vectors(self, batch: Sequence[FileVectors]) -> None:
        """Store the vectors of a batch of embedded files in ONE transaction and mark the files ok.

        Each file's previous vectors (of the models replaced) are deleted and logged; segments are reused
        when the same span already exists. A failure anywhere leaves every file of the batch as it was.
        """
        file_ids = [done.file_id for done in batch]
        if len(set(file_ids)) != len(file_ids):
            twice = sorted({file_id for file_id in file_ids if file_ids.count(file_id) > 1})
            raise LbsearchError(f"a batch of vectors names a file twice: file ids {twice}")
        with self.session(write=True) as session:
            dims = {model_id: dim for model_id, dim in session.execute(select(Model.id, Model.dim))}
            for chunk in _chunks(batch):
                _store_chunk(session, chunk, dims)

    def watermark(self) -> Watermark:
        """The current largest vector id and last deletion seq (what a FAISS file written now includes)."""
        # One statement, so both come from one snapshot even under READ COMMITTED.
        query = select(
            select(func.coalesce(func.max(Vector.id), 0)).scalar_subquery(),
            select(func.coalesce(func.max(VectorDeletion.seq), 0)).scalar_subquery(),
        )
        with self.session() as session:
            max_vector_id, delete_seq = session.execute(query).one()
        return Watermark(max_vector_id=max_vector_id, delete_seq=delete_seq)

    def iter_vectors(
        self,
        model_id: int,
        modality: str,
        *,
        after_id: int = 0,
        up_to_id: int | None = None,
        batch_size: int = 8192,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids int64 [n], embeddings float32 [n, dim]) batches of one (model, modality), in id order.

        Each batch is its own short read, so a long rebuild never holds a transaction open; pass
        `up_to_id=watermark().max_vector_id` to stop at a known point.
        """
        dim = self.model(model_id).dim
        last_id = after_id
        while True:
            query = (
                select(Vector.id, Vector.embedding)
                .where(Vector.model_id == model_id, Vector.modality == modality, Vector.id > last_id)
                .order_by(Vector.id)
                .limit(batch_size)
            )
            if up_to_id is not None:
                query = query.where(Vector.id <= up_to_id)
            with self.session() as session:
                rows = session.execute(query).all()
            if not rows:
                return
            ids = np.fromiter((row.id for row in rows), dtype=np.int64, count=len(rows))
            yield ids, embeddings_from_bytes([row.embedding for row in rows], dim)
            last_id = int(ids[-1])

    def deleted_vector_ids(
        self, model_id: int, modality: str, *, after_seq: int = 0, up_to_seq: int | None = None
    ) -> np.ndarray:
        """Ids (int64) of the (model, modality) vectors deleted after deletion seq `after_seq` (up to `up_to_seq`)."""
        query = select(VectorDeletion.vector_id).where(
            VectorDeletion.model_id == model_id, VectorDeletion.modality == modality, VectorDeletion.seq > after_seq
        )
        if up_to_seq is not None:
            query = query.where(VectorDeletion.seq <= up_to_seq)
        with self.session() as session:
            return np.array(session.scalars(query.order_by(VectorDeletion.seq)).all(), dtype=np.int64)

    def vector_groups(self) -> list[tuple[int, str]]:
        """The (model id, modality) pairs that have stored vectors: one FAISS index each."""
        # One EXISTS probe per model (a model has one modality), not a DISTINCT scan of every vector.
        has_vectors = exists().where(Vector.model_id == Model.id, Vector.modality == Model.modality)
        query = select(Model.id, Model.modality).where(has_vectors).order_by(Model.id)
        with self.session() as session:
            return [(model_id, modality) for model_id, modality in session.execute(query)]

    def vector_ids(self, model_id: int, modality: str) -> np.ndarray:
        """Every vector id of one (model, modality), sorted (for checking a FAISS index against the database)."""
        query = select(Vector.id).where(Vector.model_id == model_id, Vector.modality == modality)
        with self.session() as session:
            return np.array(session.scalars(query.order_by(Vector.id)).all(), dtype=np.int64)

    def describe_vectors(self, vector_ids: Iterable[int]) -> dict[int, VectorInfo]:
        """Segment, file and item of each vector, by id (ids no longer in the database are left out)."""
        found: dict[int, VectorInfo] = {}
        for chunk in _chunks(sorted({int(i) for i in vector_ids})):
            found.update((info.vector_id, info) for info, _ in self._vectors(Vector.id.in_(chunk)))
        return found

    def file_vectors(self, file_id: int, model_id: int, modality: str) -> list[StoredVector]:
        """A file's stored (model, modality) vectors (e.g. an indexed file as a query): whole file first."""
        rows = self._vectors(
            Segment.file_id == file_id, Vector.model_id == model_id, Vector.modality == modality, embeddings=True
        )
        rows.sort(key=lambda row: (row[0].start is not None, row[0].start or 0.0, row[0].end or 0.0))
        return [StoredVector(info.vector_id, info.start, info.end, embedding) for info, embedding in rows]

    def whole_file_vectors(
        self, model_id: int, modality: str, file_ids: Iterable[int] | None = None
    ) -> dict[int, np.ndarray]:
        """The whole-file (model, modality) vector of each file (of these files, or all), by file id in order."""
        whole = (Vector.model_id == model_id, Vector.modality == modality, Segment.start.is_(None))
        if file_ids is None:
            rows = self._vectors(*whole, embeddings=True)
        else:
            rows = []
            for chunk in _chunks(sorted({int(i) for i in file_ids})):
                rows += self._vectors(*whole, Segment.file_id.in_(chunk), embeddings=True)
        return {info.file_id: embedding for info, embedding in sorted(rows, key=lambda row: row[0].file_id)}

    def group_vectors(
        self, keys: Iterable[GroupKey], model_id: int, modality: str
    ) -> dict[GroupKey, list[tuple[VectorInfo, np.ndarray]]]:
        """The (model, modality) vectors of each group of search hits, with where each comes from.

        A key is ("file", file id), ("item", item id), or a vector id: the vectors of that vector's segment.
        """
        by_kind: dict[str, dict[int, list[GroupKey]]] = {"file": defaultdict(list), "item": defaultdict(list)}
        segment_of_vector: dict[int, list[GroupKey]] = defaultdict(list)
        for key in keys:
            if isinstance(key, tuple) and len(key) == 2 and key[0] in by_kind:
                by_kind[key[0]][int(key[1])].append(key)
            elif isinstance(key, (int, np.integer)):
                segment_of_vector[int(key)].append(key)
            else:
                raise LbsearchError(f"not a group of vectors: {key!r}; expected ('file', id), ('item', id) or an id")
        by_segment: dict[int, list[GroupKey]] = defaultdict(list)
        for chunk in _chunks(sorted(segment_of_vector)):
            with self.session() as session:
                for vector_id, segment_id in session.execute(
                    select(Vector.id, Vector.segment_id).where(Vector.id.in_(chunk))
                ):
                    by_segment[segment_id] += segment_of_vector[vector_id]

        found: dict[GroupKey, list[tuple[VectorInfo, np.ndarray]]] = defaultdict(list)
        of_model = (Vector.model_id == model_id, Vector.modality == modality)
        for column, wanted, key_of in (
            (File.id, by_kind["file"], lambda info: info.file_id),
            (File.item_id, by_kind["item"], lambda info: info.item_id),
            (Segment.id, by_segment, lambda info: info.segment_id),
        ):
            for chunk in _chunks(sorted(wanted)):
                for info, embedding in self._vectors(*of_model, column.in_(chunk), embeddings=True):
                    for key in wanted[key_of(info)]:
                        found[key].append((info, embedding))
        return dict(found)

    def filter_files(self, file_ids: Iterable[int], conditions: FileFilter) -> set[int]:
        """The files among these that meet the conditions."""
        tests = conditions.clauses()
        kept: set[int] = set()
        for chunk in _chunks(sorted({int(i) for i in file_ids})):
            with self.session() as session:
                kept.update(session.scalars(select(File.id).where(File.id.in_(chunk), *tests)))
        return kept

    def sample_vectors(self, model_id: int, modality: str, size: int, seed: int = 0) -> np.ndarray:
        """A fixed random sample of up to ``size`` embeddings of (model, modality), float32 [n, dim]."""
        ids = self.vector_ids(model_id, modality)
        if len(ids) > size:
            ids = np.sort(np.random.default_rng(seed).choice(ids, size, replace=False))
        rows = []
        for chunk in _chunks(ids.tolist()):
            rows += self._vectors(Vector.id.in_(chunk), embeddings=True)
        if not rows:
            return np.empty((0, self.model(model_id).dim), np.float32)
        return np.stack([embedding for _, embedding in rows])

    def embeddings_by_id(self, vector_ids: np.ndarray) -> np.ndarray:
        """The stored embeddings of ``vector_ids`` (at least one), float32 [n, dim], in the order given;
        VectorIndexError names ids that are not stored (an index out of step: `lbsearch verify --repair`)."""
        found: dict[int, np.ndarray] = {}
        for chunk in _chunks(np.asarray(vector_ids).tolist()):
            found.update(
                (info.vector_id, embedding) for info, embedding in self._vectors(Vector.id.in_(chunk), embeddings=True)
            )
        missing = [int(i) for i in vector_ids if int(i) not in found]
        if missing:
            raise VectorIndexError(
                f"{len(missing)} vector ids are not stored, e.g. {missing[:5]}: run `lbsearch verify --repair`"
            )
        return np.stack([found[int(i)] for i in vector_ids])

    def _vectors(
        self, *conditions: ColumnElement[bool], embeddings: bool = False
    ) -> list[tuple[VectorInfo, np.ndarray | None]]:
        """Vectors meeting the conditions, each with where it comes from (and its embedding when asked)."""
        columns = [*_VECTOR_INFO_COLUMNS, Vector.embedding] if embeddings else _VECTOR_INFO_COLUMNS
        query = (
            select(*columns)
            .join(Segment, Vector.segment_id == Segment.id)
            .join(File, Segment.file_id == File.id)
            .outerjoin(Item, File.item_id == Item.id)
            .where(*conditions)
            .order_by(Vector.id)
        )
        with self.session() as session:
            rows = session.execute(query).all()
        if not embeddings:
            return [(VectorInfo(*row), None) for row in rows]
        return [
            (VectorInfo(*row[:-1]), embeddings_from_bytes([row[-1]], len(row[-1]) // EMBEDDING_DTYPE.itemsize)[0])
            for row in rows
        ]

    # ------------------------------------------------------------------------------- runs and status

    def start_run(self, model_set: Mapping[str, Any]) -> int:
        with self.session(write=True) as session:
            run = IngestRun(model_set=dict(model_set))
            session.add(run)
            session.flush()
            return run.id

    def finish_run(self, run_id: int, status: str, counts: Mapping[str, int]) -> None:
        with self.session(write=True) as session:
            session.execute(
                update(IngestRun).filter_by(id=run_id).values(status=status, counts=dict(counts), finished=utcnow())
            )

    def counts(self) -> dict[str, Any]:
        """JSON-ready counts: files per modality and status, items, segments, vectors per model and modality (and
        per precision: ``{"int8": 120, ...}``, "unrecorded" for vectors stored before precisions were recorded)."""
        with self.session() as session:
            files: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(FILE_STATUSES, 0))
            for modality, status, count in session.execute(
                select(File.modality, File.status, func.count()).group_by(File.modality, File.status)
            ):
                files[modality][status] = count
            groups: dict[tuple[int, str, str], dict[str | None, int]] = defaultdict(dict)
            for model_id, name, modality, precision, count in session.execute(
                select(Model.id, Model.name, Vector.modality, Vector.precision, func.count())
                .join(Model, Vector.model_id == Model.id)
                .group_by(Model.id, Model.name, Vector.modality, Vector.precision)
                .order_by(Model.id, Vector.modality)
            ):
                groups[model_id, name, modality][precision or UNRECORDED] = count
            vectors = [
                {
                    "model_id": model_id,
                    "model": name,
                    "modality": modality,
                    "vectors": sum(by_precision.values()),
                    "precisions": by_precision,
                }
                for (model_id, name, modality), by_precision in groups.items()
            ]
            return {
                "files": dict(sorted(files.items())),
                "items": session.scalar(select(func.count()).select_from(Item)),
                "segments": session.scalar(select(func.count()).select_from(Segment)),
                "vectors": vectors,
            }


# ------------------------------------------------------------------------------------------ helpers


def _configure_sqlite(engine: Engine, read_only: bool) -> None:
    """WAL, a busy timeout and foreign keys on every connection; transactions begun by us, not by sqlite3.

    The sqlite3 module's own transaction handling begins late (at the first write); taking it over lets a
    writer begin IMMEDIATE, so it waits for another writer up front instead of failing halfway.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if not read_only:  # setting the journal mode writes the file header
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        # In WAL mode NORMAL survives a crash of the process; only a power cut can lose the last commits.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        writer = connection.get_execution_options().get("lbsearch_writer", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")


def writable(path: Path) -> bool:
    """Whether an SQLite file (or the one to be made there) and its folder, where SQLite keeps its -wal and -shm
    files, can be written. `os.access` answers for read-only mounts even to root."""
    return os.access(path.parent, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection to ``path``, which cannot be written and whose folder may not be either.

    A WAL database needs its -shm file, which SQLite cannot create in a read-only folder. After the last writer
    closed, the -wal file is gone and the database file holds everything: it is opened as immutable (no shared
    memory, no locks). A -wal file left behind holds commits the file lacks, so then SQLite must read it.
    """
    wal = path.with_name(path.name + "-wal")
    leftover = wal.exists() and wal.stat().st_size > 0
    uri = path.as_uri() + ("?mode=ro" if leftover else "?mode=ro&immutable=1")
    return sqlite3.connect(uri, uri=True, check_same_thread=False)


def storage_error(database: str, exc: DBAPIError) -> StorageError:
    """A failure of the database itself as one line: what went wrong with which database, and what to do."""
    reason = str(exc.orig) if exc.orig is not None else str(exc)
    lowered = reason.lower()
    if "not a database" in lowered or "malformed" in lowered:
        advice = "the file is damaged: restore it from a backup, or start a new library (move the index folder " \
                 "away and run `lbsearch index` again)"
    elif "disk is full" in lowered or "no space" in lowered:
        advice = "free some space and run the command again: nothing already committed is lost"
    elif "readonly" in lowered or "read-only" in lowered or "unable to open" in lowered:
        advice = "check that the index folder exists and that you may write it"
    elif "disk i/o" in lowered:
        advice = "check the disk: is it full, failing or gone?"
    else:
        return StorageError(f"{database}: {reason}")
    return StorageError(f"{database}: {reason}; {advice}")


def _model_record(model: Model) -> ModelRecord:
    return ModelRecord(model.id, model.name, model.modality, model.revision, model.weights_hash, model.dim)


def _get_file(session: Session, file_id: int) -> File:
    file = session.get(File, file_id)
    if file is None:
        raise LbsearchError(f"no file with id {file_id} in the database")
    return file


def _item_ids(session: Session, keys: Collection[str]) -> dict[str, int]:
    """The id of the item with each key, making the items that do not exist yet."""
    found = {key: item_id for item_id, key in session.execute(select(Item.id, Item.key).where(Item.key.in_(keys)))}
    missing = [{"key": key} for key in keys if key not in found]
    if missing:
        found.update(
            (key, item_id) for item_id, key in session.execute(insert(Item).returning(Item.id, Item.key), missing)
        )
    return found


def _delete_orphan_items(session: Session, item_ids: Iterable[int | None]) -> None:
    candidates = {item_id for item_id in item_ids if item_id is not None}
    if candidates:
        in_use = exists().where(File.item_id == Item.id)
        session.execute(delete(Item).where(Item.id.in_(candidates), ~in_use))


def _chunks(values: Sequence[T], size: int = 500) -> Iterator[Sequence[T]]:
    """Slices short enough for an IN (...) list on any database."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _delete_file_vectors(session: Session, file_ids: Collection[int], models: Collection[int] | None) -> None:
    """Delete the files' vectors (of these models, or all), logging each in `vector_deletions` first."""
    doomed = select(Vector.id, Vector.model_id, Vector.modality).join(Segment).where(Segment.file_id.in_(file_ids))
    if models is not None:
        doomed = doomed.where(Vector.model_id.in_(models))
    session.execute(
        insert(VectorDeletion).from_select(["vector_id", "model_id", "modality"], doomed.order_by(Vector.id))
    )
    session.execute(delete(Vector).where(Vector.id.in_(doomed.with_only_columns(Vector.id).scalar_subquery())))


def _delete_empty_segments(session: Session, file_ids: Collection[int]) -> None:
    has_vector = exists().where(Vector.segment_id == Segment.id)
    session.execute(delete(Segment).where(Segment.file_id.in_(file_ids), ~has_vector))


def _store_chunk(session: Session, chunk: Sequence[FileVectors], dims: Mapping[int, int]) -> None:
    """`Database.store_vectors` for as many files as one IN (...) list holds, in a few statements."""
    file_ids = [done.file_id for done in chunk]
    paths = {
        file_id: path for file_id, path in session.execute(select(File.id, File.path).where(File.id.in_(file_ids)))
    }
    for file_id in file_ids:
        if file_id not in paths:
            raise LbsearchError(f"no file with id {file_id} in the database")

    # Files replacing the same models are cleared together (in practice: all of them at once).
    by_scope: dict[frozenset[int] | None, list[int]] = defaultdict(list)
    for done in chunk:
        scope = (
            None if done.only_models is None else frozenset([*done.only_models, *(v.model_id for v in done.vectors)])
        )
        by_scope[scope].append(done.file_id)
    for scope, scoped_ids in by_scope.items():
        _delete_file_vectors(session, scoped_ids, models=scope)

    segment_ids = _segment_ids(session, {(done.file_id, v.start, v.end) for done in chunk for v in done.vectors})
    rows = [
        {
            "segment_id": segment_ids[done.file_id, vector.start, vector.end],
            "model_id": vector.model_id,
            "modality": vector.modality,
            "embedding": _checked_bytes(vector, dims, paths[done.file_id]),
            "precision": vector.precision,
        }
        for done in chunk
        for vector in done.vectors
    ]
    if rows:
        session.execute(insert(Vector), rows)
    _delete_empty_segments(session, file_ids)
    session.execute(
        update(File),
        [
            {
                "id": done.file_id,
                "status": "ok",
                "error": None,
                **(asdict(done.info) if done.info else {}),
                **({"modality": done.modality} if done.modality else {}),
            }
            for done in chunk
        ],
    )


def _segment_ids(
    session: Session, spans: Collection[tuple[int, float | None, float | None]]
) -> dict[tuple[int, float | None, float | None], int]:
    """The segment id of each (file id, start, end), adding the spans that do not exist yet."""
    columns = (Segment.id, Segment.file_id, Segment.start, Segment.end)
    file_ids = {file_id for file_id, _, _ in spans}
    found = {
        (file_id, start, end): segment_id
        for segment_id, file_id, start, end in session.execute(select(*columns).where(Segment.file_id.in_(file_ids)))
    }
    missing = [
        {"file_id": file_id, "start": start, "end": end}
        for file_id, start, end in spans
        if (file_id, start, end) not in found
    ]
    if missing:
        for segment_id, file_id, start, end in session.execute(insert(Segment).returning(*columns), missing):
            found[file_id, start, end] = segment_id
    return found


def _checked_bytes(vector: NewVector, dims: Mapping[int, int], path: str) -> bytes:
    if vector.model_id not in dims:
        raise LbsearchError(f"{path}: a vector names model id {vector.model_id}, which is not registered")
    blob = embedding_to_bytes(vector.embedding)
    if len(blob) != 4 * dims[vector.model_id]:
        raise LbsearchError(
            f"{path}: a {vector.modality} vector has {len(blob) // 4} dimensions, "
            f"model {vector.model_id} has {dims[vector.model_id]}"
        )
    return blob
