"""Adaptive IVF on faiss GPU indexes: the same guarantees as on the CPU (needs faiss-gpu and CUDA)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from benchmarks.index import gapped_library
from lbsearch.storage.vectorindex import VectorIndex, on_compute_device

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(faiss.get_num_gpus() == 0, reason="needs faiss-gpu and a CUDA device"),
]


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(row) & set(exact)) / len(exact) for row, exact in zip(found, truth, strict=True)]))


@pytest.fixture(scope="module")
def gapped():
    return gapped_library(20_000, 256, 100, seed=8)


def test_gpu_index_reaches_recall_for_every_kind_and_guards(gapped):
    media, tuning, evaluation = gapped
    ids = np.arange(len(media), dtype=np.int64) * 3
    index = VectorIndex.build(media, ids, "IVF256,Flat", tuning)
    # The search runs on a GPU copy.
    index.search(media[:1], 1)
    assert index._device_index is not index._index
    assert index.info["recall_at_10"] >= 0.95
    for kind, queries in evaluation.items():
        truth = ids[faiss.knn(queries, media, 10, faiss.METRIC_INNER_PRODUCT)[1]]
        assert _recall(index.search(queries, 10)[1], truth) >= 0.95, kind
    rng = np.random.default_rng(2)
    outside = rng.standard_normal((4, media.shape[1])).astype(np.float32)
    mean = media.mean(axis=0) / np.linalg.norm(media.mean(axis=0))
    outside -= (outside @ mean)[:, None] * mean
    searched = index.search_with_exactness(outside, 10)
    expected = ids[
        faiss.knn(outside / np.linalg.norm(outside, axis=1, keepdims=True), media, 10, faiss.METRIC_INNER_PRODUCT)[1]
    ]
    assert searched.exact.all()
    np.testing.assert_array_equal(searched.ids, expected)


def test_gpu_index_after_adds_and_deletes(gapped):
    media, tuning, evaluation = gapped
    ids = np.arange(len(media), dtype=np.int64)
    index = VectorIndex.build(media[:15_000], ids[:15_000], "IVF256,Flat", tuning)
    index.add_with_ids(media[15_000:], ids[15_000:])
    index.remove_ids(ids[::4])
    index.recheck()
    kept = np.ones(len(ids), dtype=bool)
    kept[::4] = False
    queries = evaluation["text, new concepts"]
    truth = ids[kept][faiss.knn(queries, media[kept], 10, faiss.METRIC_INNER_PRODUCT)[1]]
    assert _recall(index.search(queries, 10)[1], truth) >= 0.95 or index.needs_rebuild
    assert on_compute_device(index._index) is not index._index
