"""FAISS files kept in step with the database.

The database is the truth: its append-only vector table and deletion log say what every index must hold.
Each FAISS file carries the watermarks (largest vector id, last deletion seq) it was written at, so opening
one applies whatever the database gained or lost since; a crash between a database commit and a file write
therefore never leaves the two out of step. `rebuild` makes an index again from stored vectors, without
re-embedding anything.

Reading (`index`, `verify`, `status`) never writes a file: a missing or damaged one is built in memory for the
search at hand, and written by the next command that writes (`index`, `verify --repair`, `reindex`). A file whose
header watermarks do not fit what it holds or what the database has (a flipped bit) counts as damaged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lbsearch.errors import IndexFileError
from lbsearch.storage.database import Database
from lbsearch.storage.records import Watermark
from lbsearch.storage.vectorindex import EXACT_FACTORY, VectorIndex, choose_factory, compresses

log = logging.getLogger(__name__)

INDEX_FOLDER = "faiss"
FORCED_FACTORY_SETTING = "index_factory"
# An index is rebuilt (and its type chosen again) once it holds this many times the vectors it was built with.
REBUILD_GROWTH = 2.0


@dataclass(frozen=True)
class Disagreement:
    """One way an index file and the database differ (what `verify` reports)."""

    model_id: int
    modality: str
    problem: str


class IndexStore:
    """The FAISS indexes of one library: one file per (model, modality) under ``folder/faiss``.

    ``recall_queries(model_id, modality)`` may supply queries by kind (text embeddings, other modalities'
    vectors) to tune approximate indexes on the queries users actually send (see `VectorIndex.build`).
    """

    def __init__(
        self,
        db: Database,
        folder: str | Path,
        recall_queries: Callable[[int, str], np.ndarray | dict[str, np.ndarray] | None] | None = None,
    ):
        self.db = db
        self.folder = Path(folder) / INDEX_FOLDER
        self.recall_queries = recall_queries
        self._open: dict[tuple[int, str], VectorIndex] = {}
        # The watermarks of each file as this store last read or wrote it: what `sync` compares with.
        self._on_disk: dict[tuple[int, str], dict[str, int]] = {}
        self._background: dict[tuple[int, str], tuple[Watermark, np.ndarray]] = {}

    def path(self, model_id: int, modality: str) -> Path:
        return self.folder / f"model{model_id}-{modality}.faiss"

    @property
    def forced_factory(self) -> str | None:
        return self.db.get_setting(FORCED_FACTORY_SETTING)

    def index(self, model_id: int, modality: str) -> VectorIndex:
        """The index of (model, modality) with every committed database change applied (in memory)."""
        key = (model_id, modality)
        index = self._open.get(key)
        if index is None:
            index = self._with_exact_vectors(self._read_or_build(model_id, modality))
        self._catch_up(index, model_id, modality)
        self._open[key] = index
        return index

    def sync(self, model_id: int, modality: str) -> VectorIndex:
        """Bring the file of (model, modality) up to date and write it (atomically) if it is behind the database.

        The file is compared as it is on disk, not as it is in memory: an index caught up in memory (by a search,
        say) still has its file written. Once enough was added or removed, recall is measured again
        (`VectorIndex.recheck`): an index that no longer reaches its target is marked, and `verify` reports it."""
        index = self.index(model_id, modality)
        built = index.info.get("built_ntotal", index.ntotal)
        if self.forced_factory is None and index.ntotal > REBUILD_GROWTH * max(built, 1) and _kind_changes(index):
            return self.rebuild(model_id, modality)
        path = self.path(model_id, modality)
        rechecked = index.due_for_recheck
        if rechecked:
            index.recheck()
        if rechecked or self._on_disk.get((model_id, modality)) != index.watermarks or not path.exists():
            self._write(index, model_id, modality)
        return index

    def sync_all(self) -> None:
        for model_id, modality in self.db.vector_groups():
            self.sync(model_id, modality)
        self.remove_stray_files()

    def rebuild(self, model_id: int, modality: str, factory: str | None = None) -> VectorIndex:
        """Build the index of (model, modality) again from the stored vectors and write it."""
        index = self._build(model_id, modality, factory)
        self._write(index, model_id, modality)
        return index

    def verify(self) -> list[Disagreement]:
        """Every way the index files and the database disagree (empty: they agree)."""
        problems: list[Disagreement] = []
        groups = self.db.vector_groups()
        for model_id, modality in groups:
            path = self.path(model_id, modality)
            if not path.exists():
                problems.append(Disagreement(model_id, modality, f"{path.name} is missing"))
                continue
            try:
                index = self._read(model_id, modality)
            except IndexFileError as exc:
                problems.append(Disagreement(model_id, modality, str(exc)))
                continue
            self._catch_up(self._with_exact_vectors(index), model_id, modality)
            if index.due_for_recheck:
                index.recheck()
            if index.needs_rebuild:
                problems.append(
                    Disagreement(
                        model_id,
                        modality,
                        f"{path.name} needs a rebuild ({index.info['rebuild_reason']}): "
                        "run `lbsearch reindex` or `lbsearch verify --repair`",
                    )
                )
            in_index, in_db = index.ids(), self.db.vector_ids(model_id, modality)
            extra, missing = np.setdiff1d(in_index, in_db), np.setdiff1d(in_db, in_index)
            if len(extra) or len(missing):
                problems.append(
                    Disagreement(
                        model_id,
                        modality,
                        f"{path.name}: {len(missing)} vectors of the database are not indexed, "
                        f"{len(extra)} indexed vectors are not in the database",
                    )
                )
        for stray in self._stray_files(groups):
            problems.append(Disagreement(-1, "", f"{stray.name} indexes nothing the database holds"))
        return problems

    def repair(self) -> list[Disagreement]:
        """Rebuild every index that disagrees with the database, write those that are merely behind it (a crash
        before they were written) and remove stray files; returns the disagreements fixed."""
        problems = self.verify()
        for model_id, modality in {(p.model_id, p.modality) for p in problems if p.model_id >= 0}:
            self._open.pop((model_id, modality), None)
            self.rebuild(model_id, modality)
        self.sync_all()
        return problems

    def remove_stray_files(self) -> None:
        for stray in self._stray_files(self.db.vector_groups()):
            stray.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------------ helpers

    def background(self, model_id: int, modality: str, size: int) -> np.ndarray:
        """A fixed random sample of the stored vectors of (model, modality): what calibration compares with.

        Cached until the database changes."""
        mark = self.db.watermark()
        cached = self._background.get((model_id, modality))
        if cached is None or cached[0] != mark:
            cached = (mark, self.db.sample_vectors(model_id, modality, size))
            self._background[(model_id, modality)] = cached
        return cached[1]

    def _with_exact_vectors(self, index: VectorIndex) -> VectorIndex:
        """`index`, re-ranking with the stored vectors if it keeps compressed codes."""
        if index.compressed:
            index.exact_vectors = self.db.embeddings_by_id
        return index

    def _read_or_build(self, model_id: int, modality: str) -> VectorIndex:
        path = self.path(model_id, modality)
        if path.exists():
            try:
                index = self._read(model_id, modality)
                self._on_disk[(model_id, modality)] = dict(index.watermarks)
                return index
            except IndexFileError as exc:
                log.warning("%s; searching an index built from the stored vectors (`lbsearch verify --repair` "
                            "writes it)", exc)
        return self._build(model_id, modality)

    def _read(self, model_id: int, modality: str) -> VectorIndex:
        """The file of (model, modality), refused (IndexFileError) when its watermarks cannot be right: below an
        id it holds (catching up would add vectors twice) or above the database's (it would never catch up)."""
        path = self.path(model_id, modality)
        index = VectorIndex.read(path)
        seen, mark = index.watermarks, self.db.watermark()
        held = index.ids()
        # Ids past the database's newest are unknown vectors, which `verify` lists as such.
        early = held[(held > seen["max_vector_id"]) & (held <= mark.max_vector_id)]
        if len(early):
            raise IndexFileError(path, f"its header watermark says it holds vectors up to id "
                                       f"{seen['max_vector_id']}, but it holds id {early.max()}")
        if seen["max_vector_id"] > mark.max_vector_id or seen["delete_seq"] > mark.delete_seq:
            raise IndexFileError(path, f"its header watermarks {seen} are ahead of the database's "
                                       f"{{'max_vector_id': {mark.max_vector_id}, 'delete_seq': {mark.delete_seq}}}")
        return index

    def _build(self, model_id: int, modality: str, factory: str | None = None) -> VectorIndex:
        """The index of (model, modality) built from the stored vectors, in memory."""
        mark = self.db.watermark()
        ids, vectors = self._stored(model_id, modality, up_to_id=mark.max_vector_id)
        factory = factory or self.forced_factory or (choose_factory(len(ids), vectors.shape[1]) if len(ids) else None)
        dim = self.db.model(model_id).dim
        if len(ids) == 0:
            index = VectorIndex.build(np.empty((0, dim), np.float32), ids, factory=EXACT_FACTORY)
        else:
            # Exact search needs no tuning; skipping the queries spares encoding them (and loading a text tower).
            tuned = self.recall_queries is not None and factory != EXACT_FACTORY
            queries = self.recall_queries(model_id, modality) if tuned else None
            # Compressed codes re-rank their candidates with the stored vectors (tuning measures it so).
            exact_vectors = self.db.embeddings_by_id if compresses(factory, dim) else None
            index = VectorIndex.build(vectors, ids, factory, queries, exact_vectors=exact_vectors)
        index.watermarks = {"max_vector_id": mark.max_vector_id, "delete_seq": mark.delete_seq}
        self._catch_up(index, model_id, modality)
        self._open[(model_id, modality)] = index
        return index

    def _catch_up(self, index: VectorIndex, model_id: int, modality: str) -> None:
        """Apply the deletions and additions committed after the index's watermarks."""
        mark: Watermark = self.db.watermark()
        seen = index.watermarks
        if seen["delete_seq"] < mark.delete_seq:
            deleted = self.db.deleted_vector_ids(
                model_id, modality, after_seq=seen["delete_seq"], up_to_seq=mark.delete_seq
            )
            if len(deleted):
                index.remove_ids(deleted)
        if seen["max_vector_id"] < mark.max_vector_id:
            ids, vectors = self._stored(model_id, modality, after_id=seen["max_vector_id"], up_to_id=mark.max_vector_id)
            if len(ids):
                index.add_with_ids(vectors, ids)
        index.watermarks = {"max_vector_id": mark.max_vector_id, "delete_seq": mark.delete_seq}

    def _stored(self, model_id: int, modality: str, after_id: int = 0, up_to_id: int | None = None):
        batches = list(self.db.iter_vectors(model_id, modality, after_id=after_id, up_to_id=up_to_id))
        if not batches:
            dim = self.db.model(model_id).dim
            return np.empty(0, np.int64), np.empty((0, dim), np.float32)
        return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])

    def _write(self, index: VectorIndex, model_id: int, modality: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        index.write(self.path(model_id, modality))
        self._on_disk[(model_id, modality)] = dict(index.watermarks)

    def _stray_files(self, groups: list[tuple[int, str]]) -> list[Path]:
        if not self.folder.exists():
            return []
        wanted = {self.path(model_id, modality).name for model_id, modality in groups}
        return sorted(p for p in self.folder.glob("*.faiss") if p.name not in wanted)


def _kind_changes(index: VectorIndex) -> bool:
    """Whether the index type chosen for the current size differs from the one in use."""
    return choose_factory(index.ntotal, index.dim) != index.info.get("factory")
