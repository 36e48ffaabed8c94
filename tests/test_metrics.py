"""Retrieval and classification metrics: hand-checked cases, official-protocol cross-checks and random properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lbsearch.errors import MetricsError
from lbsearch.eval.metrics import (
    best_caption_similarity,
    cosine_similarity,
    ground_truth_ranks,
    label_relevance,
    merge_view_logits,
    multi_caption_retrieval_metrics,
    retrieval_metrics,
    top_k_accuracy,
)

SEEDS = [0, 1, 2, 3]


def sorted_position_ranks(sim: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Reference ranks by sorting each row: descending score, the ground truth placed after its ties."""
    ranks = []
    for row, target in zip(sim, gt, strict=True):
        is_target = np.arange(row.size) == target
        order = np.lexsort((is_target, -row))  # last key sorts first: score, then ground truth last among ties
        ranks.append(int(np.flatnonzero(order == target)[0]))
    return np.array(ranks)


def test_hand_checked_ranks_and_metrics():
    sim = np.array([[0.9, 0.1, 0.2], [0.8, 0.5, 0.1], [0.3, 0.4, 0.2]])
    # row 0: its 0.9 is best; row 1: 0.8 beats 0.5; row 2: 0.3 and 0.4 beat 0.2.
    assert ground_truth_ranks(sim).tolist() == [0, 1, 2]
    metrics = retrieval_metrics(sim)
    assert metrics.recall == {1: pytest.approx(1 / 3), 5: 1.0, 10: 1.0}
    assert metrics.median_rank == 2.0
    assert metrics.mean_rank == 2.0
    assert metrics.num_queries == 3
    as_percent = metrics.to_dict(percent=True)
    assert as_percent["R@1"] == pytest.approx(100 / 3)
    assert as_percent["MdR"] == 2.0
    assert metrics.to_dict()["R@1"] == pytest.approx(1 / 3)


def test_explicit_ground_truth_indices():
    sim = np.array([[0.1, 0.7, 0.3], [0.6, 0.2, 0.9]])
    assert ground_truth_ranks(sim, [1, 0]).tolist() == [0, 1]
    assert retrieval_metrics(sim, [2, 2], ks=(1, 2)).recall == {1: 0.5, 2: 1.0}


def test_ties_are_counted_pessimistically():
    # A collapsed model (every similarity equal) must score worst, not best.
    collapsed = np.full((4, 4), 0.3)
    metrics = retrieval_metrics(collapsed)
    assert metrics.recall[1] == 0.0
    assert metrics.median_rank == 4.0
    # One candidate tying the ground truth puts it second; the official np.where would count both as hits.
    sim = np.array([[0.5, 0.5, 0.1], [0.2, 0.9, 0.3], [0.0, 0.0, 1.0]])
    assert ground_truth_ranks(sim).tolist() == [1, 0, 0]


def test_identity_similarity_is_perfect():
    metrics = retrieval_metrics(np.eye(7))
    assert metrics.recall == {1: 1.0, 5: 1.0, 10: 1.0}
    assert (metrics.median_rank, metrics.mean_rank) == (1.0, 1.0)


def test_reversed_ranking_is_worst():
    n = 12
    rng = np.random.default_rng(5)
    sim = rng.uniform(0.5, 1.0, size=(n, n))
    np.fill_diagonal(sim, 0.0)  # the ground truth is always last
    metrics = retrieval_metrics(sim)
    assert metrics.recall == {1: 0.0, 5: 0.0, 10: 0.0}
    assert (metrics.median_rank, metrics.mean_rank) == (float(n), float(n))


@pytest.mark.parametrize("seed", SEEDS)
def test_ranks_match_a_sorting_reference_with_many_ties(seed: int):
    rng = np.random.default_rng(seed)
    sim = rng.integers(0, 4, size=(30, 25)).astype(float)  # few distinct values: ties everywhere
    gt = rng.integers(0, 25, size=30)
    assert ground_truth_ranks(sim, gt).tolist() == sorted_position_ranks(sim, gt).tolist()


@pytest.mark.parametrize("seed", SEEDS)
def test_metrics_ignore_candidate_order_and_accept_torch(seed: int):
    rng = np.random.default_rng(seed)
    sim = rng.normal(size=(20, 20))
    permutation = rng.permutation(20)
    shuffled = sim[:, permutation]
    gt = np.argsort(permutation)  # where each query's own candidate moved to
    assert retrieval_metrics(shuffled, gt) == retrieval_metrics(sim)
    assert retrieval_metrics(torch.from_numpy(sim)) == retrieval_metrics(sim)


@pytest.mark.parametrize("seed", SEEDS)
def test_relevance_mask_with_one_positive_equals_index_ground_truth(seed: int):
    rng = np.random.default_rng(seed)
    sim = rng.integers(0, 5, size=(15, 10)).astype(float)
    gt = rng.integers(0, 10, size=15)
    mask = np.zeros_like(sim, dtype=bool)
    mask[np.arange(15), gt] = True
    assert ground_truth_ranks(sim, mask).tolist() == ground_truth_ranks(sim, gt).tolist()


def test_label_relevance_ranks_the_best_relevant_item():
    query_labels = ["circle", "square"]
    item_labels = ["square", "circle", "circle", "star"]
    relevant = label_relevance(query_labels, item_labels)
    assert relevant.tolist() == [[False, True, True, False], [True, False, False, False]]
    sim = np.array([[0.9, 0.2, 0.6, 0.1], [0.5, 0.5, 0.4, 0.3]])
    # query 0: the square (0.9) beats its best circle (0.6) -> rank 1; query 1: the circle ties its square -> rank 1.
    assert ground_truth_ranks(sim, relevant).tolist() == [1, 1]
    sim[1, 0] = 0.8
    assert retrieval_metrics(sim, relevant).recall[1] == 0.5


def official_item_to_text(sim: np.ndarray, caption_items: np.ndarray) -> np.ndarray:
    """The official layout: captions stacked per item into [I, Cmax, I] with -inf padding, max over captions, .T."""
    num_items = sim.shape[1]
    groups = [sim[caption_items == item] for item in range(num_items)]
    most = max(len(group) for group in groups)
    stacked = np.full((num_items, most, num_items), -np.inf)
    for item, group in enumerate(groups):
        stacked[item, : len(group)] = group
    return stacked.max(axis=1).T


def test_multi_caption_hand_checked():
    # captions 0 and 1 describe item 0, caption 2 describes item 1
    sim = np.array([[0.2, 0.6], [0.9, 0.1], [0.3, 0.4]])
    result = multi_caption_retrieval_metrics(sim, [0, 0, 1], ks=(1,))
    # text->item: caption 0 misses (0.6 > 0.2), captions 1 and 2 hit
    assert result.text_to_item.recall[1] == pytest.approx(2 / 3)
    assert result.text_to_item.num_queries == 3
    # item->text: item 0's own best caption 0.9 beats item 1's caption 0.3; item 1's own 0.4 loses to caption 0's 0.6
    assert result.item_to_text.recall[1] == 0.5
    assert result.item_to_text.num_queries == 2


@pytest.mark.parametrize("seed", SEEDS)
def test_multi_caption_matches_the_official_stacking(seed: int):
    rng = np.random.default_rng(seed)
    num_items = 9
    caption_items = np.concatenate([np.arange(num_items), rng.integers(0, num_items, size=20)])
    rng.shuffle(caption_items)
    sim = rng.normal(size=(caption_items.size, num_items))
    item_to_text, captioned = best_caption_similarity(sim, caption_items)
    assert captioned.tolist() == list(range(num_items))
    np.testing.assert_allclose(item_to_text, official_item_to_text(sim, caption_items))


@pytest.mark.parametrize("seed", SEEDS)
def test_one_caption_per_item_reduces_to_plain_retrieval(seed: int):
    rng = np.random.default_rng(seed)
    sim = rng.normal(size=(11, 11))
    result = multi_caption_retrieval_metrics(sim, np.arange(11))
    assert result.text_to_item == retrieval_metrics(sim)
    assert result.item_to_text == retrieval_metrics(sim.T)


def test_items_without_captions_are_distractors_only():
    sim = np.array([[0.9, 0.1, 0.95], [0.2, 0.8, 0.1]])
    result = multi_caption_retrieval_metrics(sim, [0, 1], ks=(1,))
    assert result.text_to_item.recall[1] == 0.5  # item 2 (no caption) still outranks item 0 for caption 0
    assert result.item_to_text.num_queries == 2


def test_cosine_similarity_normalises_rows():
    queries = np.array([[3.0, 0.0], [1.0, 1.0]])
    items = np.array([[0.0, 5.0], [2.0, 0.0]])
    expected = np.array([[0.0, 1.0], [np.sqrt(0.5), np.sqrt(0.5)]])
    np.testing.assert_allclose(cosine_similarity(queries, items), expected)
    with pytest.raises(MetricsError, match="zero vector"):
        cosine_similarity(np.zeros((1, 2)), items)
    with pytest.raises(MetricsError, match="dimension"):
        cosine_similarity(queries, np.ones((2, 3)))


def test_top_k_accuracy_hand_checked():
    logits = np.array([[5.0, 1.0, 0.0], [1.0, 3.0, 2.0], [0.0, 2.0, 1.0], [1.0, 1.0, 1.0]])
    labels = [0, 2, 0, 1]
    # ranks of the true class: 0, 1, 2, 2 (the last row ties: pessimistic)
    assert top_k_accuracy(logits, labels, ks=(1, 2, 5)) == {1: 0.25, 2: 0.5, 5: 1.0}


@pytest.mark.parametrize("seed", SEEDS)
def test_top_k_accuracy_agrees_with_torch_topk_without_ties(seed: int):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(50, 12))
    labels = rng.integers(0, 12, size=50)
    top5 = torch.from_numpy(logits).topk(5, dim=1).indices.numpy()
    expected_top1 = float(np.mean(top5[:, 0] == labels))
    expected_top5 = float(np.mean((top5 == labels[:, None]).any(axis=1)))
    assert top_k_accuracy(logits, labels) == {1: pytest.approx(expected_top1), 5: pytest.approx(expected_top5)}


def test_merge_view_logits_averages_softmax():
    view_logits = np.array([[[2.0, 0.0], [0.0, 4.0]]])  # one video, two views disagreeing
    merged = merge_view_logits(view_logits)
    first = np.exp([2.0, 0.0]) / np.exp([2.0, 0.0]).sum()
    second = np.exp([0.0, 4.0]) / np.exp([0.0, 4.0]).sum()
    np.testing.assert_allclose(merged, [(first + second) / 2])
    assert merged.argmax() == 1
    with pytest.raises(MetricsError):
        merge_view_logits(np.zeros((2, 3)))


@pytest.mark.parametrize(
    ("sim", "gt", "message"),
    [
        (np.zeros((0, 3)), None, "non-empty"),
        (np.array([[np.nan, 1.0], [0.0, 1.0]]), None, "NaN"),
        (np.ones((2, 3)), None, "square"),
        (np.ones((2, 3)), [0, 3], "outside"),
        (np.ones((2, 3)), [0], "one index per row"),
        (np.ones((2, 3)), [0.0, 1.0], "integer"),
        (np.ones((2, 2)), np.array([[True, False], [False, False]]), "at least one relevant"),
    ],
)
def test_bad_inputs_raise_metrics_error(sim, gt, message):
    with pytest.raises(MetricsError, match=message):
        retrieval_metrics(sim, gt)


def test_bad_k_raises_metrics_error():
    with pytest.raises(MetricsError, match="positive integers"):
        retrieval_metrics(np.eye(3), ks=(0,))
