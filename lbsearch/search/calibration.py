"""Calibrated scores: raw cosines turned into numbers that mean the same for every modality pair.

Why: LanguageBind's raw cosines sit around 0.1-0.3, and where they sit depends on the pair of towers. Each tower maps
its inputs into its own narrow cone of the shared space (the "modality gap"), so text->audio cosines have another
baseline and spread than text->video or thermal->image ones. A raw 0.25 can be an outstanding match for one pair and an
average item for another, so one raw threshold, or a ranking that mixes modalities, treats the pairs unfairly.

Method: a ``Calibrator`` per (query kind, target modality) holds the distribution of *background* similarities for
that pair: the cosines between queries of that kind and items of the index that are not their matches. It maps a raw
cosine to a z-score, ``(raw - mean) / std``: how many standard deviations above a typical unrelated item the hit is.
That is comparable across pairs, since it measures the score against what the same pair gives by chance, and a
``min_score`` cut-off on it (say 3) keeps a similar share of chance matches whatever the pair. The calibrator also keeps
quantiles of the background, so a raw cosine can be given as a percentile ("better than 99.7 % of the library").

Building the background sample:

- per pair, stored with the index: embed N background queries (for text, a broad set of generic sentences or class
  prompts; for a modality, N random items of it) and take their cosines against a random sample of the target
  modality's vectors (``Calibrator.from_embeddings``). Use all cosines of that sample, not search results: top-k lists
  hold the best matches and would shift the background upward.
- per query (corrects a query whose cosines are all shifted, such as a generic sentence): the query's own cosines
  against a random sample of the index, fitted at query time with ``Calibrator.fit``.

A background sample contains a few true matches too; against thousands of unrelated pairs they barely move the mean
and standard deviation. Calibrated scores can be fused like cosines (``lbsearch.search.fusion.fuse`` with ``"sum"``).
``to_dict``/``from_dict`` give a JSON-ready form to store with the index.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from lbsearch.errors import CalibrationError, MetricsError
from lbsearch.eval.metrics import cosine_similarity

FORMAT_VERSION = 1
DEFAULT_QUANTILES = 101  # every percentile, 0 to 100


def _values(raw: ArrayLike, name: str) -> np.ndarray:
    values = np.asarray(raw, dtype=np.float64)
    if np.isnan(values).any():
        raise CalibrationError(f"{name} contains NaN")
    return values


def _same_shape(raw: ArrayLike, values: np.ndarray) -> np.ndarray | float:
    """A plain float for a scalar input, otherwise an array of the input's shape."""
    return float(values) if np.ndim(raw) == 0 else values


@dataclass(frozen=True)
class Calibrator:
    """Maps raw cosines of one (query kind, target modality) pair to z-scores and percentiles of its background.

    ``query_kind`` is "text" or the query's modality; ``quantiles`` are the background's values at evenly spaced
    probabilities from 0 to 1 (minimum to maximum).
    """

    query_kind: str
    target_modality: str
    mean: float
    std: float
    count: int
    quantiles: tuple[float, ...]

    def __post_init__(self) -> None:
        pair = f"{self.query_kind}->{self.target_modality}"
        if not self.query_kind or not self.target_modality:
            raise CalibrationError(f"calibration {pair!r}: query kind and target modality must be named")
        if not (np.isfinite(self.mean) and np.isfinite(self.std) and self.std > 0):
            raise CalibrationError(f"calibration {pair}: needs a finite mean and a positive std, got {self.std}")
        if self.count < 2:
            raise CalibrationError(f"calibration {pair}: the background holds {self.count} values; it needs 2 or more")
        quantiles = np.asarray(self.quantiles, dtype=np.float64)
        if quantiles.ndim != 1 or quantiles.size < 2 or not np.isfinite(quantiles).all():
            raise CalibrationError(f"calibration {pair}: needs at least 2 finite quantiles")
        if (np.diff(quantiles) < 0).any():
            raise CalibrationError(f"calibration {pair}: quantiles must not decrease")

    @classmethod
    def fit(
        cls,
        similarities: ArrayLike,
        query_kind: str,
        target_modality: str,
        num_quantiles: int = DEFAULT_QUANTILES,
    ) -> Calibrator:
        """A calibrator from background cosines (any shape; all values are used)."""
        values = _values(similarities, f"background similarities of {query_kind}->{target_modality}").ravel()
        if values.size < 2 or not np.isfinite(values).all():
            raise CalibrationError(
                f"background of {query_kind}->{target_modality}: needs 2 or more finite similarities, got {values.size}"
            )
        if num_quantiles < 2:
            raise CalibrationError(f"num_quantiles must be at least 2, got {num_quantiles}")
        std = float(values.std())
        if std <= 1e-12 * max(1.0, abs(float(values.mean()))):
            raise CalibrationError(
                f"background of {query_kind}->{target_modality}: every similarity is the same, so it has no spread"
            )
        quantiles = np.quantile(values, np.linspace(0.0, 1.0, num_quantiles))
        return cls(query_kind, target_modality, float(values.mean()), std, int(values.size), tuple(quantiles.tolist()))

    @classmethod
    def from_embeddings(
        cls,
        queries: ArrayLike,
        items: ArrayLike,
        query_kind: str,
        target_modality: str,
        exclude_diagonal: bool = False,
        num_quantiles: int = DEFAULT_QUANTILES,
    ) -> Calibrator:
        """A calibrator from background query embeddings ``[Q, D]`` and a sample of index vectors ``[N, D]``.

        ``exclude_diagonal`` drops the pairs ``(i, i)`` when ``queries`` and ``items`` are the same vectors.
        """
        try:
            sim = cosine_similarity(queries, items)
        except MetricsError as error:
            raise CalibrationError(f"background of {query_kind}->{target_modality}: {error}") from None
        if exclude_diagonal:
            if sim.shape[0] != sim.shape[1]:
                raise CalibrationError(f"exclude_diagonal needs as many queries as items, got {sim.shape}")
            sim = sim[~np.eye(sim.shape[0], dtype=bool)]
        return cls.fit(sim, query_kind, target_modality, num_quantiles)

    def z_score(self, raw: ArrayLike) -> np.ndarray | float:
        """Standard deviations above the background mean (a float for a float, an array for an array)."""
        return _same_shape(raw, (_values(raw, "raw scores") - self.mean) / self.std)

    def percentile(self, raw: ArrayLike) -> np.ndarray | float:
        """Percentage (0-100) of the background at or below ``raw``, interpolated between stored quantiles."""
        probabilities = np.linspace(0.0, 100.0, len(self.quantiles))
        return _same_shape(raw, np.interp(_values(raw, "raw scores"), self.quantiles, probabilities))

    def raw_threshold(self, min_score: float) -> float:
        """The raw cosine whose z-score is ``min_score`` (to push a cut-off down to the vector search)."""
        return self.mean + min_score * self.std

    def passes(self, raw: ArrayLike, min_score: float) -> np.ndarray | bool:
        """Whether the calibrated score of ``raw`` reaches ``min_score``."""
        kept = np.asarray(self.z_score(raw)) >= min_score
        return bool(kept) if np.ndim(raw) == 0 else kept

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description, read back by ``from_dict``."""
        return {
            "version": FORMAT_VERSION,
            "query_kind": self.query_kind,
            "target_modality": self.target_modality,
            "mean": self.mean,
            "std": self.std,
            "count": self.count,
            "quantiles": list(self.quantiles),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibrator:
        """The calibrator ``to_dict`` described; ``CalibrationError`` on a missing or malformed field."""
        if data.get("version") != FORMAT_VERSION:
            raise CalibrationError(f"stored calibration has version {data.get('version')!r}; expected {FORMAT_VERSION}")
        try:
            return cls(
                query_kind=str(data["query_kind"]),
                target_modality=str(data["target_modality"]),
                mean=float(data["mean"]),
                std=float(data["std"]),
                count=int(data["count"]),
                quantiles=tuple(float(value) for value in data["quantiles"]),
            )
        except KeyError as error:
            raise CalibrationError(f"stored calibration lacks the field {error.args[0]!r}") from None
        except (TypeError, ValueError) as error:
            raise CalibrationError(f"stored calibration has a malformed field: {error}") from None
