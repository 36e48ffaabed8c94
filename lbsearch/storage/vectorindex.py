"""A FAISS index over the L2-normalised embeddings of one (model, modality).

Scores are inner products of unit vectors (cosine similarity); ids are int64 database vector ids. The verbs
follow faiss' own Python API: `add_with_ids`, `remove_ids`, `search`, `ntotal`, `write`, `read`, plus
`VectorIndex.build`, which picks an index type for the data size (`choose_factory`) and, for approximate
types, raises nprobe (IVF) or efSearch (HNSW) until recall@10 against exact search reaches a target on every
kind of tuning query: vectors of the indexed modality and, when given, each kind of the caller's queries
(text prompts, other modalities). The measured recall and the chosen parameters are kept in `info`.

IVF indexes then probe adaptively, per query: every list whose centroid scores within `probe_margin` of the
query's best centroid, at least `nprobe` of them. The margin is tuned by holding each query kind out of the
nprobe tuning in turn and widening until the held-out kind reaches the target too: it is what a kind the
tuning never saw costs. A guard sends a query that lies outside what tuning covered (its best centroid scores
below every tuning query's, or the margin would open more than `max_probe` lists) to an exact scan of all
lists, so a query far from the tuning set is slow, never silently wrong. `search_with_exactness` says which
queries were searched exactly. The tuning queries are kept with the index: `recheck` measures recall again
after adds and deletes and sets `needs_rebuild` when the margin can no longer reach the target.

Every vector and query is L2-normalised on the way in (a copy, only when it is not unit already); rows that
are zero or not finite are rejected with `VectorIndexError`.

File format, one file written atomically (temporary file in the same folder, fsync, os.replace):

    8 bytes   MAGIC
    8 bytes   header length H, unsigned little-endian
    H bytes   UTF-8 JSON: format_version, info, watermarks, payload_bytes, payload_crc32, index_bytes,
              tuning_kinds ({kind: number of rows})
    rest      faiss.serialize_index payload (index_bytes), then the tuning queries as float32 rows, by kind

`watermarks` ({"max_vector_id": int, "delete_seq": int}) are set by the caller: they say which rows of the
database's append-only vector table and deletion log the file already contains.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import tempfile
import zlib
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import faiss
import numpy as np

from lbsearch.errors import IndexFileError, VectorIndexError

logger = logging.getLogger(__name__)

EXACT_FACTORY = "IDMap2,Flat"
# Below this many vectors brute force is exact and still fast enough for interactive use (768-d, 50k: about
# 30 ms per query on one core of the 2-core dev VM).
EXACT_MAX_VECTORS = 50_000
# Above this much raw float32 storage the IVF lists hold 8-bit scalar-quantised codes (4x smaller).
FLAT_MAX_BYTES = 8 << 30
# k-means wants at least 39 training points per centroid; more only slows the build.
TRAIN_POINTS_PER_LIST = 40
# Non-IVF trained codecs (PQ, SQ) subsample to at most this many points themselves.
TRAIN_SAMPLE_OTHER = 65_536
RECALL_K = 10
DEFAULT_RECALL_TARGET = 0.95
# Queries per kind (indexed vectors, caller's queries) used to measure recall.
RECALL_SAMPLE = 200
HNSW_MIN_EF_SEARCH = 16
HNSW_MAX_EF_SEARCH = 4096
# From this size on, a multi-GPU machine shards the index over all GPUs instead of using one.
MULTI_GPU_MIN_VECTORS = 1_000_000
DEFAULT_WATERMARKS = {"max_vector_id": 0, "delete_seq": 0}

# An IVF query may open at most this fraction of the lists (at least MIN_MAX_PROBE) before the guard sends it
# to an exact scan instead: beyond it the approximate search would cost a good part of the exact one anyway.
MAX_PROBE_FRACTION = 1 / 16
MIN_MAX_PROBE = 32
# Probe margins tried, in cosine units of centroid score below the query's best centroid.
PROBE_MARGINS = (0.0, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.06, 0.08, 0.12, 0.16, 0.24)
# Recall is measured again once this fraction of the vectors was added or removed since it last was.
RECHECK_CHANGED_FRACTION = 0.1
# With exact vectors to re-rank from, a search fetches this many times k candidates from the (compressed) codes.
RERANK_FACTOR = 4
# A recheck that needs more than this many times the lists the build needed says the index needs a rebuild: the
# lists no longer fit the data, and searches have become that much slower.
REBUILD_PROBE_GROWTH = 2.0

MAGIC = b"LBSVIDX\x01"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
_LENGTH = struct.Struct("<Q")


def choose_factory(n: int, dim: int) -> str:
    """The FAISS factory string for `n` vectors of `dim` dimensions: exact "IDMap2,Flat" (brute-force inner
    product) below EXACT_MAX_VECTORS, else `approximate_factory(n, dim)`."""
    return EXACT_FACTORY if n < EXACT_MAX_VECTORS else approximate_factory(n, dim)


def approximate_factory(n: int, dim: int) -> str:
    """The approximate index for `n` vectors: "IVF{nlist},Flat" with nlist = round(4 * sqrt(n)) inverted lists,
    "IVF{nlist},SQ8" (8-bit codes) once raw float32 storage, n * dim * 4 bytes, exceeds FLAT_MAX_BYTES (about
    2.8 million 768-d vectors)."""
    nlist = max(1, round(4 * math.sqrt(n)))
    codec = "SQ8" if n * dim * 4 > FLAT_MAX_BYTES else "Flat"
    return f"IVF{nlist},{codec}"


def compresses(factory: str, dim: int) -> bool:
    """Whether indexes made from `factory` keep lossy codes: their candidates are worth re-ranking with the exact
    vectors (`VectorIndex.exact_vectors`)."""
    index = _new_index(factory, dim)  # kept alive while its inner indexes are looked at
    return _lossy(_core(index))


def on_compute_device(index: faiss.Index, num_gpus: int | None = None) -> faiss.Index:
    """The index to build and search with: a copy on the GPU(s) when there are any, else `index` itself.

    `num_gpus` defaults to faiss.get_num_gpus(), which is 0 with faiss-cpu. Indexes of at least
    MULTI_GPU_MIN_VECTORS vectors are sharded over all GPUs, smaller ones go to one GPU. Index types without
    a GPU implementation (HNSW) stay on the CPU. Builds start from an empty index, so they use one GPU.
    The caller keeps `index` as the CPU copy for write/remove.
    """
    if num_gpus is None:
        num_gpus = faiss.get_num_gpus()
    if num_gpus <= 0:
        return index
    options = faiss.GpuMultipleClonerOptions()
    options.shard = True
    used_gpus = num_gpus if index.ntotal >= MULTI_GPU_MIN_VECTORS else 1
    try:
        return faiss.index_cpu_to_all_gpus(index, co=options, ngpu=used_gpus)
    except RuntimeError as err:
        logger.info("index stays on the CPU: %s", err)
        return index


class Searched(NamedTuple):
    """What `VectorIndex.search_with_exactness` returns."""

    scores: np.ndarray  # [n, k] float32, best first; -inf in unfilled slots
    ids: np.ndarray  # [n, k] int64; -1 in unfilled slots
    exact: np.ndarray  # [n] bool: the query was compared with every stored vector


class VectorIndex:
    """One FAISS inner-product index with int64 ids. Make one with `build` or `read`."""

    def __init__(
        self,
        index: faiss.Index,
        info: dict[str, Any],
        watermarks: dict[str, int] | None = None,
        tuning_queries: dict[str, np.ndarray] | None = None,
    ):
        self._index = index
        self._info = {key: value for key, value in info.items() if key != "ntotal"}
        self._device_index: faiss.Index | None = None
        self.watermarks = dict(DEFAULT_WATERMARKS if watermarks is None else watermarks)
        self._tuning_queries = dict(tuning_queries or {})
        # ids [m] -> their exact float32 vectors [m, dim] (the stored ones): when set, candidates found in
        # compressed codes are re-scored with them (RERANK_FACTOR * k candidates per query).
        self.exact_vectors: Callable[[np.ndarray], np.ndarray] | None = None

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: np.ndarray,
        factory: str | None = None,
        recall_queries: np.ndarray | dict[str, np.ndarray] | None = None,
        recall_target: float = DEFAULT_RECALL_TARGET,
        adaptive: bool = True,
        exact_vectors: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> VectorIndex:
        """Index `vectors` [n, dim] under `ids` [n].

        `factory` forces any FAISS factory string (default: `choose_factory`). `recall_queries` [m, dim], or
        {kind: [m, dim]}, are queries of the kinds users will issue, e.g. text embeddings and other
        modalities' vectors: they lie in other regions of the space than the indexed vectors, so an
        approximate index is tuned on each kind as well as on indexed vectors (an array is the kind "queries").
        They are deliberately not mixed into IVF training: centroids placed among text points hold no media
        vectors, so text queries would spend their probes on empty lists (measured on clustered synthetic data
        with a modality gap, 20k 64-d: text recall@10 at nprobe 16 fell from 1.00 to 0.04).
        `adaptive=False` gives an IVF index one fixed nprobe for every query and no guard (the behaviour
        before adaptive probing, kept for comparison in benchmarks/index.py). `exact_vectors` sets the
        attribute of that name before tuning, so that tuning measures the re-ranked search.
        """
        vectors = _unit_rows(vectors, None, "vectors")
        dim = vectors.shape[1]
        ids = _id_array(ids, len(vectors))
        _reject_duplicates(ids, np.empty(0, dtype=np.int64))
        if isinstance(recall_queries, dict):
            query_kinds = {
                kind: _unit_rows(rows, dim, f"recall_queries[{kind!r}]") for kind, rows in recall_queries.items()
            }
        elif recall_queries is not None:
            query_kinds = {"queries": _unit_rows(recall_queries, dim, "recall_queries")}
        else:
            query_kinds = {}
        if not 0.0 < recall_target <= 1.0:
            raise VectorIndexError(f"recall_target must be in (0, 1], got {recall_target}")
        factory = factory or choose_factory(len(vectors), dim)
        cpu_index = _new_index(factory, dim)
        device_index = on_compute_device(cpu_index)
        try:
            if not cpu_index.is_trained:
                device_index.train(_training_sample(vectors, _core(cpu_index)))
            device_index.add_with_ids(vectors, ids)
        except RuntimeError as err:
            raise VectorIndexError(f"cannot build {factory!r} from {len(vectors)} vectors: {err}") from err
        if device_index is not cpu_index:
            cpu_index = faiss.index_gpu_to_cpu(device_index)
        built = cls(cpu_index, {"factory": factory, "dim": dim, "metric": "inner_product"})
        built.exact_vectors = exact_vectors
        built._info["recall_target"] = recall_target
        if _is_approximate(cpu_index) and len(vectors):
            built._tuning_queries = _tuning_sample(vectors, query_kinds)
            k = min(RECALL_K, len(vectors))
            built._tune(
                adaptive and _adaptive(cpu_index),
                {
                    kind: ids[faiss.knn(queries, vectors, k, faiss.METRIC_INNER_PRODUCT)[1]]
                    for kind, queries in built._tuning_queries.items()
                },
            )
        else:
            built._info["recall_at_10"] = 1.0
        built._info["built_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        built._info["built_ntotal"] = len(vectors)
        return built

    @property
    def ntotal(self) -> int:
        """Number of vectors in the index."""
        return int(self._index.ntotal)

    def ids(self) -> np.ndarray:
        """Every id in the index (int64, in storage order)."""
        return _stored_ids(self._index)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def info(self) -> dict[str, Any]:
        """factory, dim, metric, ntotal, recall_at_10 (+ per query kind), recall_target, nprobe or efSearch,
        probe_margin, max_probe and guard_floor (adaptive IVF), needs_rebuild, built_at. A copy: changing it
        changes nothing."""
        return {**self._info, "ntotal": self.ntotal}

    @property
    def compressed(self) -> bool:
        """Whether the index keeps lossy codes (scalar or product quantised) rather than the float vectors."""
        return _lossy(_core(self._index))

    @property
    def needs_rebuild(self) -> bool:
        """Whether tuning or the last `recheck` found recall below the target, or reached it only with more than
        REBUILD_PROBE_GROWTH times the lists the build needed; info["rebuild_reason"] says which."""
        return bool(self._info.get("needs_rebuild", False))

    @property
    def due_for_recheck(self) -> bool:
        """Whether enough was added or removed since recall was last measured to measure it again."""
        changed = self._info.get("changed_since_check", 0)
        return bool(self._tuning_queries) and changed >= RECHECK_CHANGED_FRACTION * max(self.ntotal, 1)

    def add_with_ids(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add `vectors` [n, dim] under `ids` [n]; an id already in the index raises VectorIndexError."""
        vectors = _unit_rows(vectors, self.dim, "vectors")
        ids = _id_array(ids, len(vectors))
        _reject_duplicates(ids, _stored_ids(self._index))
        self._index.add_with_ids(vectors, ids)
        self._count_changes(len(ids))

    def remove_ids(self, ids: np.ndarray) -> int:
        """Remove `ids` (unknown ids are ignored); returns how many vectors were removed.

        Graph indexes (HNSW) cannot delete in place: they are rebuilt from the remaining vectors, which costs
        a full graph build. IVF and flat indexes delete in place.
        """
        ids = _id_array(ids, None)
        try:
            removed = self._index.remove_ids(ids)
        except RuntimeError as err:
            if "not implemented" not in str(err):
                raise
            removed = self._rebuild_without(ids)
        self._count_changes(int(removed))
        return int(removed)

    def recheck(self) -> dict[str, float]:
        """Measure recall@10 on the kept tuning queries again (after adds and deletes), widen the probe margin
        if that restores the target, else set `needs_rebuild`. Returns the recall per query kind."""
        if "probe_margin" not in self._info:
            return {}
        # Every list scanned: exact for flat codes, exact over the codes for compressed ones.
        full_scan = faiss.SearchParametersIVF(nprobe=faiss.downcast_index(self._index).nlist)
        k = min(RECALL_K, self.ntotal)
        self._tune(
            True,
            {kind: self._index.search(rows, k, params=full_scan)[1] for kind, rows in self._tuning_queries.items()},
        )
        self._info["changed_since_check"] = 0
        return dict(self._info["recall_at_10_by_query"])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best ids per query: (scores [n, k] float32, ids [n, k] int64), best first.

        Slots beyond the number of indexed vectors hold id -1 and score -inf.
        """
        scores, found, _ = self.search_with_exactness(queries, k)
        return scores, found

    def search_with_exactness(self, queries: np.ndarray, k: int) -> Searched:
        """`search`, and for each query whether it was searched exactly (every vector compared with it)."""
        queries = _unit_rows(queries, self.dim, "queries")
        if k < 1:
            raise VectorIndexError(f"k must be at least 1, got {k}")
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        found = np.full((len(queries), k), -1, dtype=np.int64)
        exact = np.full(len(queries), not _is_approximate(self._index))
        searched_k = min(k, self.ntotal)
        if searched_k == 0 or len(queries) == 0:
            return Searched(scores, found, exact)
        fetched = self._fetch_count(searched_k)
        candidate_scores = np.full((len(queries), fetched), -np.inf, dtype=np.float32)
        candidates = np.full((len(queries), fetched), -1, dtype=np.int64)
        if "probe_margin" in self._info:
            exact = self._adaptive_search(queries, fetched, candidate_scores, candidates)
        else:
            if self._device_index is None:
                self._device_index = on_compute_device(self._index)
            candidate_scores[:], candidates[:] = self._device_index.search(queries, fetched)
        if self.exact_vectors is not None:
            candidate_scores, candidates = self._reranked(queries, candidates)
        scores[:, :searched_k], found[:, :searched_k] = candidate_scores[:, :searched_k], candidates[:, :searched_k]
        scores[found < 0] = -np.inf
        return Searched(scores, found, exact)

    def _fetch_count(self, k: int) -> int:
        return min(self.ntotal, RERANK_FACTOR * k) if self.exact_vectors is not None else k

    def _reranked(self, queries: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Candidates re-scored with their exact vectors and sorted, best first (-1 / -inf slots last)."""
        valid = candidates >= 0
        scores = np.full(candidates.shape, -np.inf, dtype=np.float32)
        if not valid.any():
            return scores, candidates
        wanted = np.unique(candidates[valid])
        vectors = _unit_rows(self.exact_vectors(wanted), self.dim, "exact vectors")
        rows = np.searchsorted(wanted, np.where(valid, candidates, wanted[0]))
        scores[valid] = np.einsum("qd,qcd->qc", queries, vectors[rows])[valid]
        order = np.argsort(-scores, axis=1, kind="stable")
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(candidates, order, axis=1)

    def write(self, path: str | Path) -> None:
        """Write index, info, watermarks and tuning queries to one file, atomically: a failure leaves any old
        file intact."""
        path = Path(path)
        watermarks = _checked_watermarks(self.watermarks)
        index_payload = faiss.serialize_index(self._index)
        kinds = {kind: len(rows) for kind, rows in self._tuning_queries.items()}
        tuning_payload = b"".join(
            np.ascontiguousarray(rows, np.float32).tobytes() for rows in self._tuning_queries.values()
        )
        crc = zlib.crc32(tuning_payload, zlib.crc32(index_payload))
        header = json.dumps(
            {
                "format_version": FORMAT_VERSION,
                "info": self.info,
                "watermarks": watermarks,
                "payload_bytes": len(index_payload) + len(tuning_payload),
                "payload_crc32": crc,
                "index_bytes": len(index_payload),
                "tuning_kinds": kinds,
            }
        ).encode()
        try:
            descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        except OSError as err:
            raise IndexFileError(path, f"cannot create a temporary file next to it: {err}") from err
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(MAGIC + _LENGTH.pack(len(header)) + header)
                file.write(memoryview(index_payload))
                file.write(tuning_payload)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException as err:
            Path(temporary).unlink(missing_ok=True)
            if isinstance(err, OSError):
                raise IndexFileError(path, f"cannot write: {err}") from err
            raise
        _fsync_folder(path.parent)

    @classmethod
    def read(cls, path: str | Path) -> VectorIndex:
        """Read a file written by `write`; anything unreadable raises IndexFileError naming the file."""
        path = Path(path)
        try:
            with open(path, "rb") as file:
                file_bytes = os.fstat(file.fileno()).st_size
                prefix = file.read(len(MAGIC) + _LENGTH.size)
                if len(prefix) < len(MAGIC) + _LENGTH.size or prefix[: len(MAGIC)] != MAGIC:
                    raise IndexFileError(path, "not an lbsearch vector index file (bad magic bytes)")
                (header_bytes,) = _LENGTH.unpack(prefix[len(MAGIC) :])
                if header_bytes > file_bytes - len(prefix):
                    raise IndexFileError(path, "truncated inside the header")
                header = _parse_header(path, file.read(header_bytes))
                if header["payload_bytes"] != file_bytes - len(prefix) - header_bytes:
                    raise IndexFileError(path, "truncated or padded: payload size differs from its header")
                payload = np.empty(header["payload_bytes"], dtype=np.uint8)
                file.readinto(memoryview(payload))
        except OSError as err:
            raise IndexFileError(path, f"cannot read: {err}") from err
        if zlib.crc32(payload) != header["payload_crc32"]:
            raise IndexFileError(path, "corrupt: payload checksum mismatch")
        index_bytes = header["index_bytes"]
        try:
            index = faiss.deserialize_index(payload[:index_bytes])
        except RuntimeError as err:
            raise IndexFileError(path, f"corrupt faiss payload: {err}") from err
        info = header["info"]
        if info.get("dim") != index.d or info.get("ntotal") != index.ntotal:
            raise IndexFileError(path, "header info does not match the faiss payload")
        rows = payload[index_bytes:].view(np.float32)
        if len(rows) != sum(header["tuning_kinds"].values()) * index.d:
            raise IndexFileError(path, "tuning queries differ in size from their header")
        tuning, start = {}, 0
        for kind, count in header["tuning_kinds"].items():
            tuning[kind] = rows[start : start + count * index.d].reshape(count, index.d)
            start += count * index.d
        return cls(index, info, header["watermarks"], tuning)

    def _count_changes(self, changed: int) -> None:
        self._device_index = None
        if changed and self._tuning_queries:
            self._info["changed_since_check"] = self._info.get("changed_since_check", 0) + changed

    def _tune(self, adaptive: bool, truth: dict[str, np.ndarray]) -> None:
        """Choose the search parameters that reach the recall target for every tuning query kind (`truth`: the
        exact top ids of each kind); record them with the recall reached."""
        target = self._info["recall_target"]
        core = _core(self._index)
        if adaptive:
            self._tune_adaptive(core, truth, target)
            return
        parameter, values = _search_parameter(core)
        for value in values:
            if parameter is not None:
                _set_search_parameter(core, parameter, value)
                self._info[parameter] = value
            recalls = {
                kind: _recall(self._index.search(queries, truth[kind].shape[1])[1], truth[kind])
                for kind, queries in self._tuning_queries.items()
            }
            if min(recalls.values()) >= target:
                break
        self._record_recall(recalls, target)

    def _tune_adaptive(self, core: faiss.IndexIVF, truth: dict[str, np.ndarray], target: float) -> None:
        """nprobe: the fewest lists every kind needs; probe_margin: the widest margin any kind needs when it is
        held out of the nprobe tuning; guard_floor and max_probe: the lowest best-centroid score and (twice)
        the most lists a tuning query met (see the module docstring)."""
        ranked = {kind: core.quantizer.search(queries, core.nlist) for kind, queries in self._tuning_queries.items()}
        # A fresh sample of a kind lands within sampling error of its tuning sample (measured at 1M: 0.948 where
        # the tuning sample had 0.95): ask the tuning samples for two standard errors more.
        fewest = min(len(queries) for queries in self._tuning_queries.values()) * RECALL_K
        aim = min(1.0, target + 2 * math.sqrt(target * (1 - target) / fewest))

        def recalls_at(nprobe: int, margin: float, kinds: list[str]) -> dict[str, float]:
            self._info["nprobe"], self._info["probe_margin"] = nprobe, margin
            return {
                kind: _recall(self._probe(self._tuning_queries[kind], truth[kind].shape[1], *ranked[kind]), truth[kind])
                for kind in kinds
            }

        def fewest_lists(kinds: list[str]) -> int:
            """The fewest lists reaching the aim; where recall levels off between the target and the aim (lossy
            codes), the fewest reaching the target."""
            steps = _geometric_steps(1, core.nlist)
            enough = steps[-1]
            for n in steps:
                reached = min(recalls_at(n, 0.0, kinds).values())
                if reached >= aim:
                    return n
                if reached >= target:
                    enough = min(enough, n)
            return enough

        kinds = list(self._tuning_queries)
        nprobe = fewest_lists(kinds)
        margin = 0.0
        held_out_margins = {}
        for held_out in kinds if len(kinds) > 1 else []:
            others = fewest_lists([kind for kind in kinds if kind != held_out])
            needed = next(
                (m for m in PROBE_MARGINS if recalls_at(others, m, [held_out])[held_out] >= aim), PROBE_MARGINS[-1]
            )
            held_out_margins[held_out] = needed
            margin = max(margin, needed)
        recalls = recalls_at(nprobe, margin, kinds)
        # Should nprobe and the margin together still miss the target (after adds and deletes, say), widen.
        for wider in (m for m in PROBE_MARGINS if m > margin):
            if min(recalls.values()) >= target:
                break
            recalls = recalls_at(nprobe, wider, kinds)
        core.nprobe = nprobe
        built_nprobe = self._info.setdefault("built_nprobe", nprobe)
        most_lists = max(int((self._probed_lists(*ranked[kind]) >= 0).sum(axis=1).max()) for kind in kinds)
        self._info["max_probe"] = min(core.nlist, max(MIN_MAX_PROBE, 2 * most_lists))
        self._info["guard_floor"] = float(min(scores[:, 0].min() for scores, _ in ranked.values()))
        self._info["probe_margin_by_held_out_kind"] = held_out_margins
        self._record_recall(recalls, target)
        if nprobe > REBUILD_PROBE_GROWTH * built_nprobe:
            self._needs_rebuild(
                f"it needs {nprobe} lists per query to reach its recall target, built for {built_nprobe}"
            )

    def _record_recall(self, recalls: dict[str, float], target: float) -> None:
        reached = min(recalls.values())
        self._info["recall_at_10"] = reached
        self._info["recall_at_10_by_query"] = recalls
        self._info["needs_rebuild"] = False
        self._info.pop("rebuild_reason", None)
        if reached < target:
            self._needs_rebuild(f"recall@{RECALL_K} {reached:.3f} is below its target {target}")

    def _needs_rebuild(self, reason: str) -> None:
        logger.warning("%s needs a rebuild: %s", self._info["factory"], reason)
        self._info["needs_rebuild"] = True
        self._info["rebuild_reason"] = reason

    def _adaptive_search(self, queries: np.ndarray, k: int, scores: np.ndarray, found: np.ndarray) -> np.ndarray:
        """Fill `scores`/`found` [:, :k] by adaptive probing; queries the guard stops are scanned exactly.
        Returns which queries were searched exactly."""
        core = faiss.downcast_index(self._index)
        centroid_scores, lists = core.quantizer.search(queries, self._info["max_probe"])
        # Outside what tuning covered: a best centroid below every tuning query's, or more lists within the
        # margin than any tuning query met.
        saturated = centroid_scores[:, -1] >= centroid_scores[:, 0] - self._info["probe_margin"]
        wide = (centroid_scores[:, 0] < self._info["guard_floor"]) | (
            saturated & (self._info["max_probe"] < core.nlist)
        )
        narrow = ~wide
        if narrow.any():
            if self._device_index is None:
                self._device_index = on_compute_device(self._index)
            probed = self._probed_lists(centroid_scores[narrow], lists[narrow])
            scores[narrow, :k], found[narrow, :k] = self._probe_lists(
                self._device_index, queries[narrow], k, probed, centroid_scores[narrow]
            )
        if wide.any():
            params = faiss.SearchParametersIVF(nprobe=core.nlist)
            scores[wide, :k], found[wide, :k] = self._index.search(queries[wide], k, params=params)
        return wide & isinstance(core, faiss.IndexIVFFlat)

    def _probed_lists(self, centroid_scores: np.ndarray, lists: np.ndarray) -> np.ndarray:
        """`lists` with -1 in place of each list the adaptive rule skips: it probes the first nprobe lists and
        every list whose centroid scores within probe_margin of the best one."""
        rank = np.arange(lists.shape[1])
        within = centroid_scores >= centroid_scores[:, :1] - self._info["probe_margin"]
        return np.where(within | (rank < self._info["nprobe"]), lists, -1)

    def _probe(self, queries: np.ndarray, k: int, centroid_scores: np.ndarray, lists: np.ndarray) -> np.ndarray:
        """The ids the adaptive rule finds, without the guard (tuning measures the approximate search itself),
        on the CPU index."""
        probed = self._probed_lists(centroid_scores, lists)
        candidates = self._probe_lists(self._index, queries, self._fetch_count(k), probed, centroid_scores)[1]
        if self.exact_vectors is not None:
            candidates = self._reranked(queries, candidates)[1]
        return candidates[:, :k]

    def _probe_lists(
        self, searched: faiss.Index, queries: np.ndarray, k: int, probed: np.ndarray, centroid_scores: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scan the given lists (-1: skipped) of each query in `searched`, the CPU index or its GPU copy."""
        if searched is self._index:
            core = faiss.downcast_index(self._index)
            width = int((probed >= 0).sum(axis=1).max())
            core.nprobe = width
            try:
                return core.search_preassigned(queries, k, probed[:, :width], centroid_scores[:, :width])
            finally:
                core.nprobe = self._info["nprobe"]
        # The rule probes a prefix of the lists ranked by centroid score: a plain search with that nprobe.
        counts = (probed >= 0).sum(axis=1)
        scores = np.empty((len(queries), k), np.float32)
        found = np.empty((len(queries), k), np.int64)
        for count in np.unique(counts):
            rows = counts == count
            params = faiss.SearchParametersIVF(nprobe=int(count))
            scores[rows], found[rows] = searched.search(queries[rows], k, params=params)
        return scores, found

    def _rebuild_without(self, ids: np.ndarray) -> int:
        """Rebuild an index that cannot delete in place from its remaining vectors; returns the count removed."""
        stored = _stored_ids(self._index)
        kept = stored[~np.isin(stored, ids)]
        if len(kept) == len(stored):
            return 0
        try:
            vectors = self._index.reconstruct_batch(kept)
        except RuntimeError as err:
            raise VectorIndexError(
                f"index {self._info['factory']!r} can neither remove ids nor return its vectors"
            ) from err
        rebuilt = _new_index(self._info["factory"], self.dim)
        if not rebuilt.is_trained:
            rebuilt.train(vectors)
        parameter, _ = _search_parameter(_core(rebuilt))
        if parameter in self._info:
            _set_search_parameter(_core(rebuilt), parameter, self._info[parameter])
        rebuilt.add_with_ids(vectors, kept)
        self._index = rebuilt
        return len(stored) - len(kept)


def _lossy(core: faiss.Index) -> bool:
    return not isinstance(core, (faiss.IndexFlat, faiss.IndexIVFFlat, faiss.IndexHNSWFlat))


def _is_approximate(index: faiss.Index) -> bool:
    """Whether searching `index` can miss neighbours: anything but a plain flat index (under its id map)."""
    top = faiss.downcast_index(index)
    if isinstance(top, faiss.IndexIDMap):
        top = faiss.downcast_index(top.index)
    return not isinstance(top, faiss.IndexFlat)


def _adaptive(index: faiss.Index) -> bool:
    """Whether `index` is an IVF index at the top (no pre-transform), which the adaptive rule probes."""
    return isinstance(faiss.downcast_index(index), faiss.IndexIVF)


def _tuning_sample(vectors: np.ndarray, query_kinds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """At most RECALL_SAMPLE queries per kind: indexed vectors ("indexed") and each of the caller's kinds."""
    rng = np.random.default_rng(0)
    sample = {"indexed": vectors[rng.choice(len(vectors), min(RECALL_SAMPLE, len(vectors)), False)]}
    for kind, rows in query_kinds.items():
        if len(rows):
            sample[kind] = rows[rng.choice(len(rows), min(RECALL_SAMPLE, len(rows)), False)]
    return sample


def _unit_rows(rows: np.ndarray, dim: int | None, what: str) -> np.ndarray:
    """`rows` as a C-contiguous float32 [n, dim] array of unit vectors (copied only when needed)."""
    rows = np.asarray(rows)
    if rows.ndim != 2 or not np.issubdtype(rows.dtype, np.number):
        raise VectorIndexError(f"{what} must be a 2-D numeric array [n, dim], got shape {rows.shape}")
    if dim is not None and rows.shape[1] != dim:
        raise VectorIndexError(f"{what} have dimension {rows.shape[1]}, the index has {dim}")
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise VectorIndexError(f"{what} contain rows that are zero or not finite")
    if len(rows) and np.abs(norms - 1).max() > 1e-5:
        rows = rows / norms[:, None]
    return rows


def _id_array(ids: np.ndarray, count: int | None) -> np.ndarray:
    """`ids` as a 1-D int64 array of non-negative ids (-1 means "no result"), `count` long if given."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or not (np.issubdtype(ids.dtype, np.integer) or ids.size == 0):
        raise VectorIndexError(f"ids must be a 1-D integer array, got {ids.dtype} of shape {ids.shape}")
    if count is not None and len(ids) != count:
        raise VectorIndexError(f"{len(ids)} ids for {count} vectors")
    if ids.size and ids.min() < 0:
        raise VectorIndexError("ids must be non-negative")
    return np.ascontiguousarray(ids, dtype=np.int64)


def _reject_duplicates(new_ids: np.ndarray, stored_ids: np.ndarray) -> None:
    unique = np.unique(new_ids)
    if len(unique) != len(new_ids):
        raise VectorIndexError("ids repeat within the batch")
    clashes = unique[np.isin(unique, stored_ids)]
    if len(clashes):
        raise VectorIndexError(f"{len(clashes)} ids are already in the index, e.g. {clashes[:5].tolist()}")


def _new_index(factory: str, dim: int) -> faiss.Index:
    """An empty inner-product index from a factory string, wrapped in IDMap2 if it cannot take ids itself."""
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise VectorIndexError(f"invalid FAISS factory string {factory!r} for dim {dim}: {err}") from err
    top = faiss.downcast_index(index)
    while isinstance(top, faiss.IndexPreTransform):
        top = faiss.downcast_index(top.index)
    if isinstance(top, (faiss.IndexIDMap, faiss.IndexIVF)):
        return index
    return faiss.IndexIDMap2(index)


def _core(index: faiss.Index) -> faiss.Index:
    """The index doing the search work, under IDMap, pre-transform and refine wrappers."""
    index = faiss.downcast_index(index)
    while True:
        if isinstance(index, (faiss.IndexIDMap, faiss.IndexPreTransform)):
            index = faiss.downcast_index(index.index)
        elif isinstance(index, faiss.IndexRefine):
            index = faiss.downcast_index(index.base_index)
        else:
            return index


def _stored_ids(index: faiss.Index) -> np.ndarray:
    """Every id in an index made by `_new_index` (IDMap at the top, or IVF under pre-transforms)."""
    top = faiss.downcast_index(index)
    while isinstance(top, faiss.IndexPreTransform):
        top = faiss.downcast_index(top.index)
    if isinstance(top, faiss.IndexIDMap):
        return faiss.vector_to_array(top.id_map)
    lists = top.invlists
    per_list = [
        faiss.rev_swig_ptr(lists.get_ids(number), lists.list_size(number)).copy()
        for number in range(top.nlist)
        if lists.list_size(number)
    ]
    return np.concatenate(per_list) if per_list else np.empty(0, dtype=np.int64)


def _training_sample(vectors: np.ndarray, core: faiss.Index) -> np.ndarray:
    size = TRAIN_POINTS_PER_LIST * core.nlist if isinstance(core, faiss.IndexIVF) else TRAIN_SAMPLE_OTHER
    if len(vectors) <= size:
        return vectors
    rng = np.random.default_rng(0)
    return vectors[np.sort(rng.choice(len(vectors), size, replace=False))]


def _search_parameter(core: faiss.Index) -> tuple[str | None, list[int]]:
    """The speed/recall knob of an index and the values to try, lowest first; (None, [0]) when it has none."""
    if isinstance(core, faiss.IndexIVF):
        return "nprobe", _geometric_steps(1, core.nlist)
    if isinstance(core, faiss.IndexHNSW):
        return "efSearch", _geometric_steps(HNSW_MIN_EF_SEARCH, HNSW_MAX_EF_SEARCH)
    return None, [0]


def _geometric_steps(low: int, high: int) -> list[int]:
    """low, 1.5 low, 2 low, 3 low, 4 low, 6 low ... up to and including high: at most 50% overshoot."""
    steps = {high}
    power = low
    while power < high:
        steps.update(value for value in (power, power * 3 // 2) if value < high)
        power *= 2
    return sorted(steps)


def _set_search_parameter(core: faiss.Index, parameter: str, value: int) -> None:
    if parameter == "nprobe":
        core.nprobe = value
    else:
        core.hnsw.efSearch = value


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the exact top-k ids that the approximate search also returned."""
    hits = sum(len(np.intersect1d(row, exact)) for row, exact in zip(found, truth, strict=True))
    return hits / truth.size


def _checked_watermarks(watermarks: dict[str, int]) -> dict[str, int]:
    if (
        not isinstance(watermarks, dict)
        or set(watermarks) != set(DEFAULT_WATERMARKS)
        or not all(
            isinstance(value, (int, np.integer)) and not isinstance(value, bool) for value in watermarks.values()
        )
    ):
        raise VectorIndexError(f"watermarks must be integers {sorted(DEFAULT_WATERMARKS)}, got {watermarks}")
    return {key: int(value) for key, value in watermarks.items()}


def _parse_header(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw)
        if header["format_version"] not in READABLE_VERSIONS:
            raise IndexFileError(path, f"unknown format version {header['format_version']}")
        # Version 1 files hold the faiss payload only.
        header.setdefault("index_bytes", header["payload_bytes"])
        header.setdefault("tuning_kinds", {})
        for key, kind in (
            ("info", dict),
            ("payload_bytes", int),
            ("payload_crc32", int),
            ("index_bytes", int),
            ("tuning_kinds", dict),
        ):
            if not isinstance(header[key], kind):
                raise IndexFileError(path, f"header field {key!r} is not a {kind.__name__}")
        header["watermarks"] = _checked_watermarks(header["watermarks"])
    except (ValueError, KeyError, TypeError, VectorIndexError) as err:
        raise IndexFileError(path, f"corrupt header: {err}") from err
    return header


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable (POSIX); folders cannot be opened for fsync on Windows."""
    if os.name != "posix":
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
