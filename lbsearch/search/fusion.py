"""Joint retrieval math: combining weighted query parts, and fusing per-modality similarities into item scores.

Query side (``combine_query_parts``): "2 x this sound + 'at night' - 'people'" is the weighted sum of the parts'
L2-normalised embeddings, normalised again. Negative weights steer away from a concept. Parts that cancel out leave no
direction to search and raise ``QueryError``.

Item side (``fuse``): an item with several modalities (a clip's video and audio, a scene's RGB, depth and thermal) gets
one score from the per-modality searches, ``{modality: {item_id: similarity}}``. The fusion mode is picked per query:

- ``"sum"``: ``sum_m w_m * s_m``, the weighted sum of the similarities (cosines, or calibrated scores);
- ``"temperature"``: ``sum_m w_m * exp(logit_scale_m) * s_m``, each modality scaled by its checkpoint's temperature,
  as the official multi-modal wrapper does (``use_temp=True``);
- ``"rrf"``: reciprocal-rank fusion, ``sum_m w_m / (k + rank_m)`` with ``rank_m`` the 1-based rank of the item in
  modality m's list (items with equal similarity share the better rank) and ``k = 60`` by default. RRF ignores score
  scales, so it needs no calibration.

An item missing from a modality's mapping (not returned by that search, or lacking that modality) contributes 0 for
that modality. For "sum"/"temperature" this means an unseen item counts as cosine 0, which is better than a negative
cosine it might really have; searches deep enough for every fused candidate to appear in each list (or filling in
exact similarities for the candidates) avoid that. Each hit carries its per-modality contributions, which sum to its
score, so a result can show how much each modality gave.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from lbsearch.errors import QueryError

FusionMode = Literal["sum", "temperature", "rrf"]
FUSION_MODES: tuple[str, ...] = ("sum", "temperature", "rrf")
DEFAULT_RRF_K = 60.0
# A combined query shorter than this fraction of its total weight has (numerically) cancelled out.
_CANCELLED_FRACTION = 1e-6


@dataclass(frozen=True)
class FusedHit:
    """One item of a fused ranking.

    ``contributions`` has an entry for every fused modality (0.0 where the item was missing) and sums to ``score``;
    ``similarities`` holds the input score of each modality the item appeared in.
    """

    item_id: Hashable
    score: float
    contributions: dict[str, float]
    similarities: dict[str, float]


def combine_query_parts(parts: Sequence[tuple[ArrayLike, float]]) -> np.ndarray:
    """Weighted sum of L2-normalised embeddings (``[D]`` or ``[1, D]`` each), normalised: a ``[D]`` float32 vector."""
    if not parts:
        raise QueryError("a joint query needs at least one part")
    units, weights = [], []
    for index, (embedding, weight) in enumerate(parts):
        vector = np.asarray(embedding, dtype=np.float64)
        if vector.ndim == 2 and vector.shape[0] == 1:
            vector = vector[0]
        if vector.ndim != 1 or vector.size == 0:
            raise QueryError(f"query part {index}: expected one embedding vector, got shape {vector.shape}")
        if units and vector.shape != units[0].shape:
            raise QueryError(
                f"query part {index}: dimension {vector.size} differs from the first part's {units[0].size}"
            )
        if not math.isfinite(weight):
            raise QueryError(f"query part {index}: weight must be a finite number, got {weight}")
        norm = float(np.linalg.norm(vector))
        if not math.isfinite(norm) or norm == 0.0:
            raise QueryError(f"query part {index}: the embedding is zero or not finite")
        units.append(vector / norm)
        weights.append(float(weight))
    total = np.asarray(weights) @ np.stack(units)
    length = float(np.linalg.norm(total))
    if length <= _CANCELLED_FRACTION * sum(abs(weight) for weight in weights):
        raise QueryError("the weighted query parts cancel out (their sum is zero): there is no direction to search")
    return (total / length).astype(np.float32)


def _rrf_terms(scores: Mapping[Hashable, float], rrf_k: float) -> dict[Hashable, float]:
    """``1 / (k + rank)`` per item, rank 1-based; tied scores share the better rank."""
    ascending = np.sort(np.fromiter(scores.values(), dtype=np.float64, count=len(scores)))
    terms = {}
    for item_id, score in scores.items():
        higher = ascending.size - int(np.searchsorted(ascending, score, side="right"))
        terms[item_id] = 1.0 / (rrf_k + higher + 1)
    return terms


def _modality_scales(
    modalities: Sequence[str],
    mode: str,
    weights: Mapping[str, float] | None,
    logit_scales: Mapping[str, float] | None,
) -> dict[str, float]:
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(modalities))
    if unknown:
        raise QueryError(f"weights given for modalities that were not searched: {unknown}")
    scales = {modality: float(weights.get(modality, 1.0)) for modality in modalities}
    if not all(math.isfinite(weight) for weight in scales.values()):
        raise QueryError(f"fusion weights must be finite numbers, got {scales}")
    if not any(scales.values()):
        raise QueryError("every fusion weight is zero: nothing to rank by")
    if mode == "temperature":
        logit_scales = logit_scales or {}
        missing = [modality for modality in modalities if modality not in logit_scales]
        if missing:
            raise QueryError(f"temperature fusion needs the logit_scale of every modality; missing: {missing}")
        if not all(math.isfinite(logit_scales[modality]) for modality in modalities):
            raise QueryError(f"logit_scale values must be finite numbers, got {dict(logit_scales)}")
        scales = {modality: weight * math.exp(logit_scales[modality]) for modality, weight in scales.items()}
    return scales


def fuse(
    scores: Mapping[str, Mapping[Hashable, float]],
    mode: FusionMode | str = "sum",
    weights: Mapping[str, float] | None = None,
    logit_scales: Mapping[str, float] | None = None,
    rrf_k: float = DEFAULT_RRF_K,
    top_k: int | None = None,
) -> list[FusedHit]:
    """Fuse per-modality ``{item_id: similarity}`` mappings into one ranking (best first, at most ``top_k`` hits).

    ``weights`` default to 1 per modality (negative allowed); ``logit_scales`` (each checkpoint's ``logit_scale``,
    before ``exp``) are needed by ``"temperature"`` only; ``rrf_k`` by ``"rrf"`` only. Items with equal scores keep the
    order in which they first appear in ``scores``.
    """
    if mode not in FUSION_MODES:
        raise QueryError(f"unknown fusion mode {mode!r}; expected one of {FUSION_MODES}")
    if not scores:
        raise QueryError("nothing to fuse: no modality was searched")
    if not (math.isfinite(rrf_k) and rrf_k >= 0):
        raise QueryError(f"rrf_k must be a finite number >= 0, got {rrf_k}")
    if top_k is not None and top_k < 0:
        raise QueryError(f"top_k must be >= 0, got {top_k}")
    for modality, modality_scores in scores.items():
        if not all(math.isfinite(value) for value in modality_scores.values()):
            raise QueryError(f"{modality}: similarities must be finite numbers")
    modalities = list(scores)
    scales = _modality_scales(modalities, mode, weights, logit_scales)
    terms = {m: _rrf_terms(scores[m], rrf_k) for m in modalities} if mode == "rrf" else scores

    hits = []
    for item_id in dict.fromkeys(item for m in modalities for item in scores[m]):
        contributions = {m: scales[m] * float(terms[m][item_id]) if item_id in terms[m] else 0.0 for m in modalities}
        similarities = {m: float(scores[m][item_id]) for m in modalities if item_id in scores[m]}
        hits.append(FusedHit(item_id, sum(contributions.values()), contributions, similarities))
    hits.sort(key=lambda hit: -hit.score)
    return hits if top_k is None else hits[:top_k]
