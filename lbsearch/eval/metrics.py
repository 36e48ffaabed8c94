"""Evaluation metrics that follow LanguageBind's official protocols (retrieval, zero-shot classification).

Inputs are numpy arrays or CPU torch tensors (anything ``np.asarray`` reads); rows are always queries.

Retrieval (text->video, text->audio, emergent X->Y, ...): ``sim[q, n]`` is the similarity of query ``q`` to candidate
``n``; the ground truth is the diagonal unless told otherwise. For each query the 0-based rank of its ground truth among
all candidates (descending similarity) gives

- ``recall[k]``: the fraction of queries whose rank is below ``k`` (R@1, R@5, R@10);
- ``median_rank = median(rank) + 1`` and ``mean_rank = mean(rank) + 1`` (MdR, MnR: 1 is perfect).

Recalls are fractions in [0, 1]; the paper and the official logs print them as percentages, which
``RetrievalMetrics.to_dict(percent=True)`` gives. Emergent X->Y R@1 is the same computation on the similarity of X
embeddings to Y embeddings (``cosine_similarity(x, y)``); "the top hit shares the query's label" is the same
computation with a relevance mask (``label_relevance``), where the rank is that of the best-ranked relevant candidate.

Ties are counted pessimistically: a candidate that scores exactly as high as the ground truth ranks ahead of it. So a
model whose similarities are all equal (collapsed embeddings) gets the worst possible scores rather than perfect ones.
The official ``compute_metrics`` finds the ground truth with ``np.where(sorted - diag == 0)``, which on ties yields
one hit per tied candidate and so inflates the recalls; this module does not reproduce that.

Several captions per item (MSVD, Clotho, AudioCaps): every caption is a query against all items (text->item); for
item->text each item is a query against the items' caption groups, a group scoring as its best caption
(``multi_caption_retrieval_metrics``), as the official ``tensor_video_to_text_sim`` does.

Zero-shot classification: ``top_k_accuracy(logits, labels)`` is the fraction of samples whose true class is among the
``k`` highest logits (ties pessimistic as above); Kinetics-style multi-view videos first average the per-view softmax
probabilities (``merge_view_logits``).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from lbsearch.errors import MetricsError

RETRIEVAL_KS: tuple[int, ...] = (1, 5, 10)
CLASSIFICATION_KS: tuple[int, ...] = (1, 5)


@dataclass(frozen=True)
class RetrievalMetrics:
    """Retrieval quality over ``num_queries`` queries. Recalls are fractions in [0, 1]; ranks are 1-based."""

    recall: dict[int, float]
    median_rank: float
    mean_rank: float
    num_queries: int

    def to_dict(self, percent: bool = False) -> dict[str, float]:
        """``{"R@1": ..., "MdR": ..., "MnR": ..., "n": ...}``; recalls ×100 when ``percent`` (as the paper reports)."""
        scale = 100.0 if percent else 1.0
        result = {f"R@{k}": value * scale for k, value in self.recall.items()}
        result.update(MdR=self.median_rank, MnR=self.mean_rank, n=float(self.num_queries))
        return result


@dataclass(frozen=True)
class MultiCaptionMetrics:
    """Both directions of a retrieval benchmark whose items have several captions each."""

    text_to_item: RetrievalMetrics
    item_to_text: RetrievalMetrics


def _score_matrix(scores: ArrayLike, name: str) -> np.ndarray:
    matrix = np.asarray(scores, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise MetricsError(f"{name} must be a non-empty [queries, candidates] matrix, got shape {matrix.shape}")
    if np.isnan(matrix).any():
        raise MetricsError(f"{name} contains NaN scores")
    return matrix


def _index_vector(indices: ArrayLike, length: int, upper: int, name: str) -> np.ndarray:
    vector = np.asarray(indices)
    if vector.shape != (length,):
        raise MetricsError(f"{name} must hold one index per row ({length}), got shape {vector.shape}")
    if not np.issubdtype(vector.dtype, np.integer):
        raise MetricsError(f"{name} must hold integer indices, got dtype {vector.dtype}")
    if length and (vector.min() < 0 or vector.max() >= upper):
        raise MetricsError(f"{name} holds indices outside [0, {upper})")
    return vector


def _relevance_mask(gt: ArrayLike | None, shape: tuple[int, int]) -> np.ndarray:
    num_queries, num_candidates = shape
    if gt is None:
        if num_queries != num_candidates:
            raise MetricsError(
                f"the diagonal ground truth needs a square matrix, got {shape}; pass gt (one index per query)"
            )
        return np.eye(num_queries, dtype=bool)
    array = np.asarray(gt)
    if array.dtype == bool:
        if array.shape != shape:
            raise MetricsError(f"a relevance mask must have the similarity's shape {shape}, got {array.shape}")
        if not array.any(axis=1).all():
            raise MetricsError("every query needs at least one relevant candidate in the relevance mask")
        return array
    mask = np.zeros(shape, dtype=bool)
    mask[np.arange(num_queries), _index_vector(array, num_queries, num_candidates, "gt")] = True
    return mask


def ground_truth_ranks(scores: ArrayLike, gt: ArrayLike | None = None) -> np.ndarray:
    """0-based rank of each query's ground truth, ties counted pessimistically.

    ``gt``: ``None`` for the diagonal, one candidate index per query, or a boolean ``[Q, N]`` relevance mask (then
    the rank is that of the best-ranked relevant candidate: the number of irrelevant candidates scoring at least as
    high as it).
    """
    matrix = _score_matrix(scores, "scores")
    relevant = _relevance_mask(gt, matrix.shape)
    best_relevant = np.where(relevant, matrix, -np.inf).max(axis=1, keepdims=True)
    return ((matrix >= best_relevant) & ~relevant).sum(axis=1)


def _checked_ks(ks: Sequence[int]) -> tuple[int, ...]:
    if not ks or any(int(k) != k or k < 1 for k in ks):
        raise MetricsError(f"k values must be positive integers, got {tuple(ks)}")
    return tuple(int(k) for k in ks)


def retrieval_metrics(
    sim: ArrayLike, gt: ArrayLike | None = None, ks: Sequence[int] = RETRIEVAL_KS
) -> RetrievalMetrics:
    """R@k, median and mean rank of ``sim`` ([queries, candidates]); ``gt`` as in ``ground_truth_ranks``."""
    ks = _checked_ks(ks)
    ranks = ground_truth_ranks(sim, gt)
    return RetrievalMetrics(
        recall={k: float(np.mean(ranks < k)) for k in ks},
        median_rank=float(np.median(ranks)) + 1.0,
        mean_rank=float(np.mean(ranks)) + 1.0,
        num_queries=int(ranks.size),
    )


def best_caption_similarity(sim: ArrayLike, caption_items: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Item->text similarity: ``[I, I]`` where entry ``[i, j]`` is item i's best score against item j's captions.

    ``sim`` is ``[captions, items]``; ``caption_items[c]`` is the item caption ``c`` describes. Only items with at
    least one caption take part (they are returned as the second value, in increasing order).
    """
    matrix = _score_matrix(sim, "sim")
    owners = _index_vector(caption_items, matrix.shape[0], matrix.shape[1], "caption_items")
    best = np.full((matrix.shape[1], matrix.shape[1]), -np.inf)
    np.maximum.at(best, owners, matrix)  # best[group, item] = max over the group's captions
    captioned = np.unique(owners)
    return best[np.ix_(captioned, captioned)].T, captioned


def multi_caption_retrieval_metrics(
    sim: ArrayLike, caption_items: ArrayLike, ks: Sequence[int] = RETRIEVAL_KS
) -> MultiCaptionMetrics:
    """Both directions for a ``[captions, items]`` similarity where ``caption_items[c]`` is caption c's item."""
    text_to_item = retrieval_metrics(sim, np.asarray(caption_items), ks)
    item_to_text, _ = best_caption_similarity(sim, caption_items)
    return MultiCaptionMetrics(text_to_item=text_to_item, item_to_text=retrieval_metrics(item_to_text, None, ks))


def cosine_similarity(queries: ArrayLike, items: ArrayLike) -> np.ndarray:
    """``[Q, N]`` cosines of ``[Q, D]`` queries against ``[N, D]`` items (rows normalised here)."""
    rows = [np.asarray(matrix, dtype=np.float64) for matrix in (queries, items)]
    for name, matrix in zip(("queries", "items"), rows, strict=True):
        if matrix.ndim != 2:
            raise MetricsError(f"{name} must be a [count, dim] matrix, got shape {matrix.shape}")
        if (np.linalg.norm(matrix, axis=1) == 0).any():
            raise MetricsError(f"{name} contains a zero vector, which has no direction")
    if rows[0].shape[1] != rows[1].shape[1]:
        raise MetricsError(f"queries have dimension {rows[0].shape[1]} but items have {rows[1].shape[1]}")
    unit = [matrix / np.linalg.norm(matrix, axis=1, keepdims=True) for matrix in rows]
    return unit[0] @ unit[1].T


def label_relevance(query_labels: Sequence[Hashable], item_labels: Sequence[Hashable]) -> np.ndarray:
    """``[Q, N]`` mask: item n is relevant to query q when their labels are equal (e.g. the same shape)."""
    codes: dict[Hashable, int] = {}
    query_codes = np.array([codes.setdefault(label, len(codes)) for label in query_labels], dtype=np.int64)
    item_codes = np.array([codes.setdefault(label, len(codes)) for label in item_labels], dtype=np.int64)
    return query_codes[:, None] == item_codes[None, :]


def top_k_accuracy(logits: ArrayLike, labels: ArrayLike, ks: Sequence[int] = CLASSIFICATION_KS) -> dict[int, float]:
    """Fraction of samples whose true class (``labels[i]``) is among the top ``k`` of ``logits[i]`` ([N, C])."""
    ks = _checked_ks(ks)
    ranks = ground_truth_ranks(logits, np.asarray(labels))
    return {k: float(np.mean(ranks < k)) for k in ks}


def merge_view_logits(view_logits: ArrayLike) -> np.ndarray:
    """``[N, V, C]`` per-view logits -> ``[N, C]`` mean over views of the per-view softmax (the 'prob' merge)."""
    logits = np.asarray(view_logits, dtype=np.float64)
    if logits.ndim != 3 or 0 in logits.shape:
        raise MetricsError(f"view logits must be a non-empty [samples, views, classes] array, got {logits.shape}")
    shifted = np.exp(logits - logits.max(axis=2, keepdims=True))
    return (shifted / shifted.sum(axis=2, keepdims=True)).mean(axis=1)
