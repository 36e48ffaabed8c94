"""Calibrated scores: z-scores and percentiles against a background sample, cut-offs, storage round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lbsearch.errors import CalibrationError
from lbsearch.eval.metrics import cosine_similarity
from lbsearch.search.calibration import Calibrator

SEEDS = [0, 1, 2]


def test_hand_checked_z_score_and_percentile():
    calibrator = Calibrator.fit([0.1, 0.2, 0.3, 0.4], "text", "audio", num_quantiles=5)
    assert calibrator.mean == pytest.approx(0.25)
    assert calibrator.std == pytest.approx(math.sqrt(0.0125))
    assert calibrator.count == 4
    assert calibrator.z_score(0.25) == pytest.approx(0.0)
    assert calibrator.z_score(0.25 + 2 * calibrator.std) == pytest.approx(2.0)
    assert calibrator.percentile(0.25) == pytest.approx(50.0)
    assert calibrator.percentile(0.0) == 0.0
    assert calibrator.percentile(0.9) == 100.0
    assert isinstance(calibrator.z_score(0.3), float)
    assert isinstance(calibrator.passes(0.3, 0.0), bool)


def test_arrays_keep_their_shape():
    calibrator = Calibrator.fit(np.linspace(0.0, 1.0, 11), "text", "video")
    raw = np.array([[0.0, 0.6], [0.9, 1.0]])
    assert calibrator.z_score(raw).shape == (2, 2)
    np.testing.assert_allclose(calibrator.percentile(raw), [[0.0, 60.0], [90.0, 100.0]])
    assert calibrator.passes(raw, 0.0).tolist() == [[False, True], [True, True]]


@pytest.mark.parametrize("seed", SEEDS)
def test_raw_threshold_inverts_the_z_score(seed: int):
    rng = np.random.default_rng(seed)
    calibrator = Calibrator.fit(rng.normal(0.2, 0.03, size=500), "audio", "video")
    for min_score in (-1.0, 0.0, 2.5):
        threshold = calibrator.raw_threshold(min_score)
        assert calibrator.z_score(threshold) == pytest.approx(min_score)
        assert calibrator.passes(threshold + 1e-9, min_score)
        assert not calibrator.passes(threshold - 1e-9, min_score)


@pytest.mark.parametrize("seed", SEEDS)
def test_percentile_is_monotonic_and_matches_the_empirical_cdf(seed: int):
    rng = np.random.default_rng(seed)
    background = rng.normal(0.15, 0.05, size=4000)
    calibrator = Calibrator.fit(background, "text", "depth")
    probes = np.sort(rng.normal(0.15, 0.08, size=200))
    percentiles = calibrator.percentile(probes)
    assert (np.diff(percentiles) >= 0).all()
    empirical = np.array([np.mean(background <= probe) * 100 for probe in probes])
    assert np.abs(percentiles - empirical).max() < 1.5


@pytest.mark.parametrize("seed", SEEDS)
def test_one_cut_off_means_the_same_for_pairs_with_different_baselines(seed: int):
    # text->audio cosines sit lower and wider than text->video ones; a raw threshold cannot serve both.
    rng = np.random.default_rng(seed)
    baselines = {"audio": (0.05, 0.05), "video": (0.22, 0.015)}
    kept, kept_by_raw = {}, {}
    for modality, (mean, std) in baselines.items():
        calibrator = Calibrator.fit(rng.normal(mean, std, size=20000), "text", modality)
        fresh = rng.normal(mean, std, size=20000)
        kept[modality] = float(np.mean(calibrator.passes(fresh, 2.0)))
        kept_by_raw[modality] = float(np.mean(fresh >= 0.2))
    assert kept_by_raw["video"] - kept_by_raw["audio"] > 0.5  # raw 0.2: nearly all video, almost no audio
    expected = 0.5 * math.erfc(2.0 / math.sqrt(2.0))  # normal tail above 2 sigma, about 2.3 %
    assert kept["audio"] == pytest.approx(expected, abs=0.006)
    assert kept["video"] == pytest.approx(expected, abs=0.006)


@pytest.mark.parametrize("seed", SEEDS)
def test_from_embeddings_uses_every_pair(seed: int):
    rng = np.random.default_rng(seed)
    queries, items = rng.normal(size=(6, 8)), rng.normal(size=(9, 8))
    calibrator = Calibrator.from_embeddings(queries, items, "text", "image")
    direct = Calibrator.fit(cosine_similarity(queries, items), "text", "image")
    assert calibrator == direct
    assert calibrator.count == 54


def test_exclude_diagonal_drops_self_similarity():
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(10, 8))
    with_self = Calibrator.from_embeddings(vectors, vectors, "video", "video")
    without_self = Calibrator.from_embeddings(vectors, vectors, "video", "video", exclude_diagonal=True)
    assert without_self.count == 90
    assert without_self.quantiles[-1] < 0.999 < with_self.quantiles[-1]  # the cosines of 1 with itself are gone
    with pytest.raises(CalibrationError, match="as many queries as items"):
        Calibrator.from_embeddings(vectors[:3], vectors, "video", "video", exclude_diagonal=True)


def test_round_trip_through_json():
    rng = np.random.default_rng(3)
    calibrator = Calibrator.fit(rng.normal(0.1, 0.02, size=300), "thermal", "image")
    restored = Calibrator.from_dict(json.loads(json.dumps(calibrator.to_dict())))
    assert restored == calibrator
    assert restored.z_score(0.13) == calibrator.z_score(0.13)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 99}, "version"),
        ({"std": 0.0}, "positive std"),
        ({"std": "wide"}, "malformed"),
        ({"count": 1}, "2 or more"),
        ({"quantiles": [0.3, 0.1]}, "must not decrease"),
        ({"quantiles": [0.1]}, "at least 2"),
        ({"query_kind": ""}, "must be named"),
    ],
)
def test_bad_stored_calibration_raises(change, message):
    stored = Calibrator.fit([0.1, 0.2, 0.3], "text", "video").to_dict()
    stored.update(change)
    with pytest.raises(CalibrationError, match=message):
        Calibrator.from_dict(stored)


def test_missing_field_is_named():
    stored = Calibrator.fit([0.1, 0.2, 0.3], "text", "video").to_dict()
    del stored["mean"]
    with pytest.raises(CalibrationError, match="'mean'"):
        Calibrator.from_dict(stored)


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
