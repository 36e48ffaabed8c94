"""VectorIndex: exact and approximate search, add/remove, atomic self-describing files, recall tuning."""

from __future__ import annotations

import math
import os

import faiss
import numpy as np
import pytest

from benchmarks.index import clustered_library, gapped_library
from lbsearch.errors import IndexFileError, LbsearchError, VectorIndexError
from lbsearch.storage.vectorindex import (
    EXACT_FACTORY,
    EXACT_MAX_VECTORS,
    VectorIndex,
    approximate_factory,
    choose_factory,
    on_compute_device,
)

DIM = 64


@pytest.fixture(scope="module")
def library() -> tuple[np.ndarray, np.ndarray]:
    """20k clustered 256-d media vectors and 400 text-like queries from the other side of the modality gap.

    256-d rather than 64: in few dimensions the gap barely changes which IVF lists hold a query's neighbours.
    """
    return clustered_library(20_000, 256, 400, seed=3, n_concepts=40)


@pytest.fixture(scope="module")
def ivf_index(library) -> VectorIndex:
    media, text = library
    return VectorIndex.build(media, _ids(len(media)), approximate_factory(*media.shape), text[:200])


def _ids(n: int) -> np.ndarray:
    """Sparse, shuffled database ids, so that ids are never mistaken for row numbers."""
    return np.random.default_rng(0).permutation(n).astype(np.int64) * 7 + 3


def _exact_top(queries: np.ndarray, media: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force in numpy over unit rows: (scores, ids), best first."""
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = queries @ (media / np.linalg.norm(media, axis=1, keepdims=True)).T
    order = np.argsort(-scores, axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), ids[order]


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(row) & set(exact)) / len(exact) for row, exact in zip(found, truth, strict=True)]))


def test_factory_by_size():
    assert choose_factory(0, 768) == EXACT_FACTORY
    assert choose_factory(EXACT_MAX_VECTORS - 1, 768) == EXACT_FACTORY
    lists = {}
    for n in (EXACT_MAX_VECTORS, 1_000_000):
        factory = choose_factory(n, 768)
        assert factory.startswith("IVF") and factory.endswith(",Flat")
        lists[n] = int(factory[3:].split(",")[0])
        assert 2 * math.sqrt(n) <= lists[n] <= 8 * math.sqrt(n)
    assert lists[1_000_000] > lists[EXACT_MAX_VECTORS]
    # Millions of 768-d vectors get compressed codes; the same count at 64-d still fits as floats.
    assert choose_factory(5_000_000, 768).endswith(",SQ8")
    assert choose_factory(5_000_000, 64).endswith(",Flat")


def test_exact_search_equals_numpy_brute_force():
    rng = np.random.default_rng(1)
    media = rng.standard_normal((3_000, DIM)).astype(np.float32)  # not unit: the index normalises
    ids = _ids(len(media))
    index = VectorIndex.build(media, ids)
    queries = 5 * rng.standard_normal((50, DIM))
    scores, found = index.search(queries, 10)
    expected_scores, expected_ids = _exact_top(queries, media, ids, 10)
    assert found.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(found, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    assert index.info["factory"] == EXACT_FACTORY
    assert index.info["recall_at_10"] == 1.0 and index.info["ntotal"] == len(media)


@pytest.mark.parametrize("factory", [EXACT_FACTORY, "IVF32,Flat", "HNSW16"])
def test_add_remove_search_round_trip(factory):
    media, text = clustered_library(4_000, DIM, 100, seed=5, n_concepts=40)
    ids = _ids(len(media))
    index = VectorIndex.build(media[:3_000], ids[:3_000], factory, text)
    index.add_with_ids(media[3_000:], ids[3_000:])
    assert index.ntotal == 4_000
    _, found = index.search(media[3_000:3_100], 1)
    np.testing.assert_array_equal(found[:, 0], ids[3_000:3_100])

    removed = np.concatenate([ids[::3], [10**12]])  # the last id was never added
    assert index.remove_ids(removed) == len(ids[::3])
    assert index.ntotal == 4_000 - len(ids[::3])
    _, found = index.search(np.concatenate([media[::3][:100], text]), 10)
    assert not np.isin(found, removed).any()
    kept = np.ones(len(ids), dtype=bool)
    kept[::3] = False
    _, exact_ids = _exact_top(text, media[kept], ids[kept], 10)
    assert _recall(index.search(text, 10)[1], exact_ids) >= 0.9
    assert index.info["factory"] == factory

    with pytest.raises(VectorIndexError, match="already in the index"):
        index.add_with_ids(media[1:2], ids[1:2])
    with pytest.raises(VectorIndexError, match="repeat"):
        index.add_with_ids(media[:2], np.array([10**9, 10**9]))


def test_hnsw_removal_keeps_tuned_ef_search():
    media, text = clustered_library(3_000, DIM, 100, seed=6, n_concepts=30)
    index = VectorIndex.build(media, _ids(len(media)), "HNSW16", text)
    ef_search = index.info["efSearch"]
    index.remove_ids(_ids(len(media))[:10])
    assert index.info["efSearch"] == ef_search
    assert faiss.downcast_index(faiss.downcast_index(index._index).index).hnsw.efSearch == ef_search


def test_approximate_index_reaches_recall_on_text_and_indexed_queries(library, ivf_index):
    media, text = library
    info = ivf_index.info
    assert info["factory"].startswith("IVF") and info["nprobe"] >= 1
    assert info["recall_at_10"] >= 0.95
    assert set(info["recall_at_10_by_query"]) == {"indexed", "queries"}
    assert min(info["recall_at_10_by_query"].values()) == info["recall_at_10"]
    ids = _ids(len(media))
    held_out_text = text[200:]
    indexed = media[np.random.default_rng(9).choice(len(media), 200, replace=False)]
    for queries in (held_out_text, indexed):
        _, exact_ids = _exact_top(queries, media, ids, 10)
        assert _recall(ivf_index.search(queries, 10)[1], exact_ids) >= 0.93


def test_text_queries_raise_nprobe_past_what_media_queries_need(library, ivf_index):
    media, text = library
    media_only = VectorIndex.build(media, _ids(len(media)), ivf_index.info["factory"])
    assert set(media_only.info["recall_at_10_by_query"]) == {"indexed"}
    assert media_only.info["nprobe"] < ivf_index.info["nprobe"]
    _, exact_ids = _exact_top(text[200:], media, _ids(len(media)), 10)
    # Tuned on media alone, the index never saw a text query: its guard scans every one of them exactly.
    unseen = media_only.search_with_exactness(text[200:], 10)
    assert unseen.exact.all() and _recall(unseen.ids, exact_ids) == 1.0
    tuned = ivf_index.search_with_exactness(text[200:], 10)
    assert tuned.exact.mean() < 0.1 and _recall(tuned.ids, exact_ids) >= 0.95


def test_recall_target_sets_how_far_nprobe_goes(library, ivf_index):
    media, text = library
    loose = VectorIndex.build(media, _ids(len(media)), ivf_index.info["factory"], text[:200], recall_target=0.5)
    assert 0.5 <= loose.info["recall_at_10"] < ivf_index.info["recall_at_10"]
    assert loose.info["nprobe"] < ivf_index.info["nprobe"]
    with pytest.raises(VectorIndexError, match="recall_target"):
        VectorIndex.build(media[:100], _ids(100), recall_target=1.5)


@pytest.mark.parametrize("factory", ["IVF64,SQ8", "PCA32,IVF32,Flat", "SQ8", "PCA16,Flat"])
def test_forced_factory(library, factory):
    media, text = library
    index = VectorIndex.build(media[:5_000], _ids(5_000), factory, text[:100])
    assert index.dim == media.shape[1]
    assert index.info["factory"] == factory and index.ntotal == 5_000
    assert 0 < index.info["recall_at_10"] <= 1
    assert set(index.info["recall_at_10_by_query"]) == {"indexed", "queries"}  # measured, not assumed
    _, found = index.search(media[:20], 5)
    assert np.isin(found, _ids(5_000)).all()


def test_invalid_factory_and_untrainable_sizes():
    media, _ = clustered_library(200, DIM, 1, n_concepts=4)
    with pytest.raises(VectorIndexError, match="factory string"):
        VectorIndex.build(media, _ids(200), "NoSuchIndex42")
    with pytest.raises(VectorIndexError, match="cannot build"):
        VectorIndex.build(media, _ids(200), "IVF1024,Flat")


def test_write_read_round_trip(tmp_path, library, ivf_index):
    media, text = library
    ivf_index.watermarks = {"max_vector_id": 140_002, "delete_seq": 17}
    path = tmp_path / "clip-image.lbsidx"
    ivf_index.write(path)
    loaded = VectorIndex.read(path)
    assert loaded.info == ivf_index.info
    assert loaded.watermarks == {"max_vector_id": 140_002, "delete_seq": 17}
    queries = np.concatenate([text[:50], media[:50]])
    for original, reloaded in zip(ivf_index.search(queries, 10), loaded.search(queries, 10), strict=True):
        np.testing.assert_array_equal(original, reloaded)
    assert sorted(os.listdir(tmp_path)) == ["clip-image.lbsidx"]


def test_failed_write_leaves_old_file_intact(tmp_path, monkeypatch):
    media, _ = clustered_library(1_000, DIM, 1, n_concepts=10)
    ids = _ids(len(media))
    index = VectorIndex.build(media[:600], ids[:600])
    path = tmp_path / "index.lbsidx"
    index.write(path)
    old_bytes = path.read_bytes()
    index.add_with_ids(media[600:], ids[600:])

    def disk_full(descriptor: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(IndexFileError, match="No space left") as raised:
        index.write(path)
    assert raised.value.path == str(path)
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes
    assert VectorIndex.read(path).ntotal == 600
    assert os.listdir(tmp_path) == ["index.lbsidx"]


def _truncate(data: bytes) -> bytes:
    return data[: len(data) - 100]


def _flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0xFF])


def _break_header(data: bytes) -> bytes:
    return data[:16] + b"}" + data[17:]


def _not_an_index(data: bytes) -> bytes:
    return b"PK\x03\x04" + data[4:]


@pytest.mark.parametrize("damage", [_truncate, _flip_last_byte, _break_header, _not_an_index, lambda data: b""])
def test_corrupt_file_raises_index_file_error(tmp_path, damage):
    media, _ = clustered_library(500, DIM, 1, n_concepts=5)
    path = tmp_path / "index.lbsidx"
    VectorIndex.build(media, _ids(500)).write(path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(IndexFileError, match=str(path)) as raised:
        VectorIndex.read(path)
    assert isinstance(raised.value, LbsearchError)


def test_missing_file_raises_index_file_error(tmp_path):
    with pytest.raises(IndexFileError, match="cannot read"):
        VectorIndex.read(tmp_path / "absent.lbsidx")


def test_search_edge_cases():
    media, _ = clustered_library(5, DIM, 1, n_concepts=2)
    index = VectorIndex.build(media, np.arange(5))
    scores, found = index.search(media[:2], 8)
    assert found.shape == (2, 8) and (found[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()
    assert sorted(found[0, :5]) == [0, 1, 2, 3, 4] and found[1, 0] == 1

    empty = VectorIndex.build(np.empty((0, DIM), dtype=np.float32), np.empty(0, dtype=np.int64))
    assert empty.ntotal == 0
    scores, found = empty.search(media[:3], 4)
    assert (found == -1).all() and np.isneginf(scores).all()
    empty.add_with_ids(media, np.arange(5))
    assert empty.search(media[3:4], 1)[1][0, 0] == 3


def test_approximate_search_marks_unfilled_slots():
    """An IVF search sees only the probed lists: asking for more than they hold leaves -1 / -inf slots."""
    media, text = clustered_library(1_000, DIM, 50, n_concepts=10)
    index = VectorIndex.build(media, np.arange(1_000), "IVF32,Flat", text)
    assert index.info["nprobe"] < 32
    scores, found = index.search(text, 900)
    assert (found == -1).any() and (found[:, 0] >= 0).all()
    np.testing.assert_array_equal(np.isneginf(scores), found == -1)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda index, media: index.search(media[:, :32], 3), "dimension 32, the index has 64"),
        (lambda index, media: index.add_with_ids(media[:, :32], np.arange(100, 105)), "dimension 32"),
        (lambda index, media: index.search(media[0], 3), "2-D"),
        (lambda index, media: index.search(np.zeros((1, DIM)), 3), "zero or not finite"),
        (lambda index, media: index.search(np.full((1, DIM), np.nan), 3), "zero or not finite"),
        (lambda index, media: index.search(media, 0), "k must be"),
        (lambda index, media: index.add_with_ids(media, np.arange(100, 104)), "4 ids for 5 vectors"),
        (lambda index, media: index.add_with_ids(media, -np.arange(1, 6)), "non-negative"),
        (lambda index, media: index.add_with_ids(media, np.linspace(100, 104, 5)), "integer"),
    ],
)
def test_bad_input_raises_vector_index_error(call, message):
    media, _ = clustered_library(5, DIM, 1, n_concepts=2)
    index = VectorIndex.build(media, np.arange(5))
    with pytest.raises(VectorIndexError, match=message):
        call(index, media)
    assert index.ntotal == 5


def test_bad_watermarks_are_refused(tmp_path):
    media, _ = clustered_library(5, DIM, 1, n_concepts=2)
    index = VectorIndex.build(media, np.arange(5))
    index.watermarks = {"max_vector_id": 5}
    with pytest.raises(VectorIndexError, match="watermarks"):
        index.write(tmp_path / "index.lbsidx")
    assert not (tmp_path / "index.lbsidx").exists()


def test_compute_device_is_the_cpu_index_without_gpus(monkeypatch):
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    media, _ = clustered_library(300, DIM, 1, n_concepts=3)
    cpu_index = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    assert on_compute_device(cpu_index) is cpu_index
    index = VectorIndex.build(media, np.arange(300))
    assert index.search(media[7:8], 1)[1][0, 0] == 7


class _FakeGpus:
    """Stands in for faiss' GPU cloners on a CPU-only faiss: records calls, copies on the CPU."""

    def __init__(self):
        self.calls: list[int] = []

    def to_gpus(self, index, co=None, ngpu=-1):
        self.calls.append(ngpu)
        return faiss.clone_index(index)


def test_gpu_copy_is_used_for_search_and_refreshed_after_changes(monkeypatch):
    gpus = _FakeGpus()
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 2)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", gpus.to_gpus)
    monkeypatch.setattr(faiss, "index_gpu_to_cpu", faiss.clone_index, raising=False)
    monkeypatch.setattr(faiss, "GpuMultipleClonerOptions", lambda: type("Options", (), {})(), raising=False)
    media, text = clustered_library(2_000, DIM, 50, n_concepts=20)
    index = VectorIndex.build(media[:1_500], np.arange(1_500), "IVF16,Flat", text)
    assert gpus.calls == [1]  # the build ran on one GPU
    _, found = index.search(media[:5], 1)
    np.testing.assert_array_equal(found[:, 0], np.arange(5))
    index.search(media[:5], 1)
    assert gpus.calls == [1, 1]  # one copy for searching, reused; small indexes use one GPU
    index.add_with_ids(media[1_500:], np.arange(1_500, 2_000))
    assert index.search(media[1_900:1_901], 1)[1][0, 0] == 1_900
    assert len(gpus.calls) == 3


# ------------------------------------------------------------------------ adaptive probing and its guard (issue 14)


@pytest.fixture(scope="module")
def gapped():
    """8k 128-d video vectors with a modality gap, tuning queries of four kinds, evaluation queries of seven."""
    return gapped_library(8_000, 128, 100, seed=4)


@pytest.fixture(scope="module")
def gapped_index(gapped) -> VectorIndex:
    media, tuning, _ = gapped
    return VectorIndex.build(media, np.arange(len(media)), "IVF128,Flat", tuning)


def test_recall_holds_for_every_query_kind_including_one_absent_from_tuning(gapped, gapped_index):
    media, tuning, evaluation = gapped
    info = gapped_index.info
    assert set(info["recall_at_10_by_query"]) == set(tuning)
    assert set(info["probe_margin_by_held_out_kind"]) == set(tuning)
    assert info["recall_at_10"] >= 0.95 and not gapped_index.needs_rebuild
    assert "thermal (never tuned)" not in tuning
    ids = np.arange(len(media))
    for kind, queries in evaluation.items():
        _, exact_ids = _exact_top(queries, media, ids, 10)
        searched = gapped_index.search_with_exactness(queries, 10)
        assert _recall(searched.ids, exact_ids) >= 0.95, kind
        # Most queries of every kind stay approximate: the guard is not a disguised exact scan.
        assert searched.exact.mean() < 0.5, kind


def test_guard_sends_a_query_outside_the_tuning_to_an_exact_scan(gapped, gapped_index):
    media, tuning, evaluation = gapped
    # A direction no tuning query came near: orthogonal to the media's mean, so every centroid scores about 0.
    rng = np.random.default_rng(11)
    outside = rng.standard_normal((5, media.shape[1])).astype(np.float32)
    mean = media.mean(axis=0) / np.linalg.norm(media.mean(axis=0))
    outside -= (outside @ mean)[:, None] * mean
    outside /= np.linalg.norm(outside, axis=1, keepdims=True)
    info = gapped_index.info
    core = faiss.downcast_index(gapped_index._index)
    assert (core.quantizer.search(outside, 1)[0][:, 0] < info["guard_floor"]).all()
    searched = gapped_index.search_with_exactness(outside, 10)
    expected_scores, expected_ids = _exact_top(outside, media, np.arange(len(media)), 10)
    assert searched.exact.all()
    np.testing.assert_array_equal(searched.ids, expected_ids)
    np.testing.assert_allclose(searched.scores, expected_scores, atol=1e-5)
    # Tuning queries themselves are inside what tuning saw: searched approximately.
    assert not gapped_index.search_with_exactness(tuning["text"], 10).exact.any()
    assert not gapped_index.search_with_exactness(evaluation["indexed"], 10).exact.all()


def test_flat_indexes_report_exact_search_and_fixed_nprobe_has_no_guard(gapped):
    media, tuning, evaluation = gapped
    assert VectorIndex.build(media[:500], np.arange(500)).search_with_exactness(media[:3], 2).exact.all()
    fixed = VectorIndex.build(media, np.arange(len(media)), "IVF128,Flat", tuning, adaptive=False)
    assert "probe_margin" not in fixed.info and "guard_floor" not in fixed.info
    assert not fixed.search_with_exactness(evaluation["thermal (never tuned)"], 10).exact.any()


def test_tuning_queries_travel_with_the_file_and_recheck_after_changes(tmp_path, gapped, gapped_index):
    media, tuning, evaluation = gapped
    path = tmp_path / "gapped.lbsidx"
    gapped_index.write(path)
    index = VectorIndex.read(path)
    assert index.info == gapped_index.info
    queries = evaluation["text, new concepts"]
    np.testing.assert_array_equal(index.search(queries, 10)[1], gapped_index.search(queries, 10)[1])
    ids = np.arange(len(media))
    # Deletes: a third of the vectors go; adds: new videos of the same world. Recall holds after the recheck.
    removed = ids[::3]
    index.remove_ids(removed)
    fresh = evaluation["uploads"]
    fresh_ids = np.arange(100_000, 100_000 + len(fresh))
    index.add_with_ids(fresh, fresh_ids)
    assert index.due_for_recheck
    recalls = index.recheck()
    assert not index.due_for_recheck and set(recalls) == set(tuning)
    kept = np.ones(len(ids), dtype=bool)
    kept[removed] = False
    stored, stored_ids = np.concatenate([media[kept], fresh]), np.concatenate([ids[kept], fresh_ids])
    for kind in ("text, new concepts", "thermal (never tuned)", "uploads"):
        _, exact_ids = _exact_top(evaluation[kind], stored, stored_ids, 10)
        reached = _recall(index.search(evaluation[kind], 10)[1], exact_ids)
        assert reached >= 0.95 or index.needs_rebuild, kind


def test_compressed_codes_re_ranked_with_exact_vectors(gapped):
    media, tuning, evaluation = gapped
    ids = np.arange(len(media)) * 5 + 1
    stored = dict(zip(ids.tolist(), media, strict=True))
    fetched = []

    def exact_vectors(wanted: np.ndarray) -> np.ndarray:
        fetched.append(len(wanted))
        return np.stack([stored[int(i)] for i in wanted])

    # 4-bit codes lose neighbours; re-ranking RERANK_FACTOR * k candidates with the exact vectors wins them back.
    coarse = VectorIndex.build(media, ids, "IVF64,SQ4", tuning)
    reranked = VectorIndex.build(media, ids, "IVF64,SQ4", tuning, exact_vectors=exact_vectors)
    queries = evaluation["thermal (never tuned)"]
    _, expected_ids = _exact_top(queries, media, ids, 10)
    scores, found, _ = reranked.search_with_exactness(queries, 10)
    assert fetched and _recall(found, expected_ids) >= 0.95
    assert _recall(found, expected_ids) > _recall(coarse.search(queries, 10)[1], expected_ids)
    # Scores are the exact cosines of the ids returned, best first.
    exact_scores = np.einsum(
        "qd,qkd->qk", queries / np.linalg.norm(queries, axis=1, keepdims=True), media[(found - 1) // 5]
    )
    np.testing.assert_allclose(scores, exact_scores, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()
    assert reranked.info["recall_at_10"] >= 0.95
