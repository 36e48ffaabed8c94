"""Calibrated scores: z-scores against a background sample, one cut-off for every modality pair."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lbsearch.errors import CalibrationError
from lbsearch.search.calibration import Calibrator

SEEDS = [0, 1, 2]


def test_hand_checked_z_score():
    calibrator = Calibrator.fit([0.1, 0.2, 0.3, 0.4], "text", "audio")
    assert calibrator.mean == pytest.approx(0.25)
    assert calibrator.std == pytest.approx(math.sqrt(0.0125))
    assert calibrator.count == 4
    assert calibrator.z_score(0.25) == pytest.approx(0.0)
    assert calibrator.z_score(0.25 + 2 * calibrator.std) == pytest.approx(2.0)
    assert isinstance(calibrator.z_score(0.3), float)


def test_arrays_keep_their_shape():
    calibrator = Calibrator.fit(np.linspace(0.0, 1.0, 11), "text", "video")
    raw = np.array([[0.0, 0.6], [0.9, 1.0]])
    np.testing.assert_allclose(calibrator.z_score(raw), (raw - 0.5) / calibrator.std)


@pytest.mark.parametrize("seed", SEEDS)
def test_one_cut_off_means_the_same_for_pairs_with_different_baselines(seed: int):
    # text->audio cosines sit lower and wider than text->video ones; a raw threshold cannot serve both.
    rng = np.random.default_rng(seed)
    baselines = {"audio": (0.05, 0.05), "video": (0.22, 0.015)}
    kept, kept_by_raw = {}, {}
    for modality, (mean, std) in baselines.items():
        calibrator = Calibrator.fit(rng.normal(mean, std, size=20000), "text", modality)
        fresh = rng.normal(mean, std, size=20000)
        kept[modality] = float(np.mean(calibrator.z_score(fresh) >= 2.0))
        kept_by_raw[modality] = float(np.mean(fresh >= 0.2))
    assert kept_by_raw["video"] - kept_by_raw["audio"] > 0.5  # raw 0.2: nearly all video, almost no audio
    expected = 0.5 * math.erfc(2.0 / math.sqrt(2.0))  # normal tail above 2 sigma, about 2.3 %
    assert kept["audio"] == pytest.approx(expected, abs=0.006)
    assert kept["video"] == pytest.approx(expected, abs=0.006)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"std": 0.0}, "positive std"),
        ({"count": 1}, "2 or more"),
        ({"query_kind": ""}, "must be named"),
    ],
)
def test_an_unusable_calibration_raises(fields, message):
    with pytest.raises(CalibrationError, match=message):
        Calibrator(**{"query_kind": "text", "target_modality": "video", "mean": 0.1, "std": 0.1, "count": 5, **fields})


@pytest.mark.parametrize(
    ("background", "message"),
    [
        ([0.2], "2 or more"),
        ([0.2, 0.2, 0.2], "no spread"),
        ([0.1, float("nan")], "NaN"),
        ([0.1, float("inf")], "finite"),
    ],
)
def test_unusable_background_raises(background, message):
    with pytest.raises(CalibrationError, match=message):
        Calibrator.fit(background, "text", "audio")


def test_nan_raw_score_raises():
    calibrator = Calibrator.fit([0.1, 0.2, 0.3], "text", "audio")
    with pytest.raises(CalibrationError, match="NaN"):
        calibrator.z_score(float("nan"))
