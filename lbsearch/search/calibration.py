"""Calibrated scores: raw cosines turned into numbers that mean the same for every modality pair.

Why: LanguageBind's raw cosines sit around 0.1-0.3, and where they sit depends on the pair of towers. Each tower maps
its inputs into its own narrow cone of the shared space (the "modality gap"), so text->audio cosines have another
baseline and spread than text->video or thermal->image ones. A raw 0.25 can be an outstanding match for one pair and an
average item for another, so one raw threshold, or a ranking that mixes modalities, treats the pairs unfairly.

Method: a ``Calibrator`` per (query kind, target modality) holds the distribution of *background* similarities for
that pair: the cosines between queries of that kind and items of the index that are not their matches. It maps a raw
cosine to a z-score, ``(raw - mean) / std``: how many standard deviations above a typical unrelated item the hit is.
That is comparable across pairs, since it measures the score against what the same pair gives by chance, and a
``min_score`` cut-off on it (say 3) keeps a similar share of chance matches whatever the pair.

The background is the query's own cosines against a random sample of the target index, fitted at query time
(``Calibrator.fit``): that also corrects a query whose cosines are all shifted, such as a generic sentence. Use all
cosines of the sample, not search results: top-k lists hold the best matches and would shift the background upward.
A background sample contains a few true matches too; against thousands of unrelated pairs they barely move the
mean and standard deviation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from lbsearch.errors import CalibrationError


def _values(raw: ArrayLike, name: str) -> np.ndarray:
    values = np.asarray(raw, dtype=np.float64)
    if np.isnan(values).any():
        raise CalibrationError(f"{name} contains NaN")
    return values


@dataclass(frozen=True)
class Calibrator:
    """Maps raw cosines of one (query kind, target modality) pair to z-scores against its background.

    ``query_kind`` is "text", "media" or "mixed" (what the query is made of).
    """

    query_kind: str
    target_modality: str
    mean: float
    std: float
    count: int

    def __post_init__(self) -> None:
        pair = f"{self.query_kind}->{self.target_modality}"
        if not self.query_kind or not self.target_modality:
            raise CalibrationError(f"calibration {pair!r}: query kind and target modality must be named")
        if not (np.isfinite(self.mean) and np.isfinite(self.std) and self.std > 0):
            raise CalibrationError(f"calibration {pair}: needs a finite mean and a positive std, got {self.std}")
        if self.count < 2:
            raise CalibrationError(f"calibration {pair}: the background holds {self.count} values; it needs 2 or more")

    @classmethod
    def fit(cls, similarities: ArrayLike, query_kind: str, target_modality: str) -> Calibrator:
        """A calibrator from background cosines (any shape; all values are used)."""
        values = _values(similarities, f"background similarities of {query_kind}->{target_modality}").ravel()
        if values.size < 2 or not np.isfinite(values).all():
            raise CalibrationError(
                f"background of {query_kind}->{target_modality}: needs 2 or more finite similarities, got {values.size}"
            )
        std = float(values.std())
        if std <= 1e-12 * max(1.0, abs(float(values.mean()))):
            raise CalibrationError(
                f"background of {query_kind}->{target_modality}: every similarity is the same, so it has no spread"
            )
        return cls(query_kind, target_modality, float(values.mean()), std, int(values.size))

    def z_score(self, raw: ArrayLike) -> np.ndarray | float:
        """Standard deviations above the background mean (a float for a float, an array for an array)."""
        scores = (_values(raw, "raw scores") - self.mean) / self.std
        return float(scores) if np.ndim(raw) == 0 else scores
