"""Joint retrieval math: weighted query parts and per-modality score fusion (sum, temperature, RRF)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lbsearch.errors import LbsearchError, QueryError
from lbsearch.search.fusion import FUSION_MODES, combine_query_parts, fuse

SEEDS = [0, 1, 2, 3]


def random_scores(rng: np.random.Generator, count: int, prefix: str = "item") -> dict[str, float]:
    return {f"{prefix}{i}": float(value) for i, value in enumerate(rng.uniform(-0.2, 0.5, size=count))}


# --- query side --------------------------------------------------------------------------------------------------


def test_parts_are_normalised_before_weighting():
    combined = combine_query_parts([(np.array([10.0, 0.0]), 1.0), (np.array([0.0, 0.1]), 1.0)])
    np.testing.assert_allclose(combined, [math.sqrt(0.5), math.sqrt(0.5)], rtol=1e-6)
    assert combined.dtype == np.float32


def test_negative_weights_steer_away():
    combined = combine_query_parts([(np.array([1.0, 0.0]), 2.0), (np.array([0.0, 3.0]), -1.0)])
    np.testing.assert_allclose(combined, np.array([2.0, -1.0]) / math.sqrt(5), rtol=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_combined_query_is_a_unit_vector_invariant_to_weight_scale(seed: int):
    rng = np.random.default_rng(seed)
    parts = [(rng.normal(size=16), float(rng.uniform(-2, 2))) for _ in range(3)]
    combined = combine_query_parts(parts)
    assert np.linalg.norm(combined) == pytest.approx(1.0, abs=1e-6)
    rescaled = combine_query_parts([(vector, 7.5 * weight) for vector, weight in parts])
    np.testing.assert_allclose(combined, rescaled, atol=1e-6)
    single = combine_query_parts([parts[0]])
    np.testing.assert_allclose(single, np.sign(parts[0][1]) * parts[0][0] / np.linalg.norm(parts[0][0]), atol=1e-6)


def test_accepts_torch_rows_from_an_encoder():
    text = torch.tensor([[0.0, 1.0, 0.0]])  # Encoder.encode_text gives [1, D] for one sentence
    audio = np.array([1.0, 0.0, 0.0])
    combined = combine_query_parts([(audio, 2.0), (text, 0.5)])
    np.testing.assert_allclose(combined, np.array([2.0, 0.5, 0.0]) / math.hypot(2.0, 0.5), rtol=1e-6)


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([], "at least one part"),
        ([(np.array([1.0, 2.0]), 1.0), (np.array([2.0, 4.0]), -1.0)], "cancel out"),
        ([(np.array([1.0, 0.0]), 0.0)], "cancel out"),
        ([(np.zeros(3), 1.0)], "zero"),
        ([(np.ones(3), 1.0), (np.ones(4), 1.0)], "dimension"),
        ([(np.ones((2, 3)), 1.0)], "one embedding vector"),
        ([(np.ones(3), float("nan"))], "finite"),
    ],
)
def test_bad_query_parts_raise_query_error(parts, message):
    with pytest.raises(QueryError, match=message) as caught:
        combine_query_parts(parts)
    assert isinstance(caught.value, LbsearchError)


# --- item side ---------------------------------------------------------------------------------------------------


def test_sum_fusion_hand_checked_with_missing_modality():
    scores = {"video": {"a": 0.35, "b": 0.1}, "audio": {"b": 0.4, "c": 0.2}}
    hits = fuse(scores, "sum", weights={"video": 2.0})
    # a: 2*0.35 = 0.7 ; b: 2*0.1 + 0.4 = 0.6 ; c: 0.2 (no video: contributes 0)
    assert [hit.item_id for hit in hits] == ["a", "b", "c"]
    assert [hit.score for hit in hits] == pytest.approx([0.7, 0.6, 0.2])
    assert hits[2].contributions == {"video": 0.0, "audio": pytest.approx(0.2)}
    assert hits[2].similarities == {"audio": 0.2}
    assert hits[1].similarities == {"video": 0.1, "audio": 0.4}


def test_equal_scores_keep_first_appearance_order():
    scores = {"video": {"c": 0.25, "a": 0.5}, "audio": {"c": 0.25, "b": 0.5}}  # exact in binary: all three tie
    assert [hit.item_id for hit in fuse(scores, "sum")] == ["c", "a", "b"]


def test_temperature_fusion_scales_by_exp_logit_scale():
    scores = {"video": {"a": 0.2, "b": 0.3}, "audio": {"a": 0.3, "b": 0.1}}
    logit_scales = {"video": math.log(100.0), "audio": math.log(20.0)}
    hits = fuse(scores, "temperature", logit_scales=logit_scales)
    # a: 100*0.2 + 20*0.3 = 26 ; b: 100*0.3 + 20*0.1 = 32
    assert [(hit.item_id, hit.score) for hit in hits] == [("b", pytest.approx(32.0)), ("a", pytest.approx(26.0))]
    assert hits[1].contributions == {"video": pytest.approx(20.0), "audio": pytest.approx(6.0)}
    # plain sum ranks them the other way: 0.5 vs 0.4
    assert [hit.item_id for hit in fuse(scores, "sum")] == ["a", "b"]


def test_rrf_hand_checked():
    scores = {"video": {"a": 0.9, "b": 0.5, "c": 0.1}, "audio": {"c": 0.8, "a": 0.7}}
    hits = fuse(scores, "rrf", rrf_k=60)
    # a: 1/61 + 1/62 ; c: 1/63 + 1/61 ; b: 1/62
    expected = {"a": 1 / 61 + 1 / 62, "c": 1 / 63 + 1 / 61, "b": 1 / 62}
    assert [hit.item_id for hit in hits] == ["a", "c", "b"]
    assert {hit.item_id: hit.score for hit in hits} == pytest.approx(expected)
    assert hits[2].contributions == {"video": pytest.approx(1 / 62), "audio": 0.0}


def test_rrf_tied_scores_share_the_better_rank():
    hits = fuse({"audio": {"a": 0.5, "b": 0.5, "c": 0.1}}, "rrf", rrf_k=10)
    assert {hit.item_id: hit.score for hit in hits} == pytest.approx({"a": 1 / 11, "b": 1 / 11, "c": 1 / 13})


@pytest.mark.parametrize("seed", SEEDS)
def test_rrf_with_one_modality_preserves_its_order(seed: int):
    scores = random_scores(np.random.default_rng(seed), 40)
    hits = fuse({"video": scores}, "rrf")
    assert [hit.item_id for hit in hits] == sorted(scores, key=lambda item: -scores[item])


@pytest.mark.parametrize("seed", SEEDS)
def test_sum_with_weights_one_zero_equals_the_first_modality(seed: int):
    rng = np.random.default_rng(seed)
    first, second = random_scores(rng, 30), random_scores(rng, 30)
    second.update(random_scores(rng, 5, prefix="only-second"))
    hits = fuse({"video": first, "audio": second}, "sum", weights={"video": 1.0, "audio": 0.0})
    fused = {hit.item_id: hit.score for hit in hits}
    assert {item: fused[item] for item in first} == first
    assert all(fused[item] == 0.0 for item in second if item not in first)
    in_first = [hit.item_id for hit in hits if hit.item_id in first]
    assert in_first == sorted(first, key=lambda item: -first[item])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mode", FUSION_MODES)
def test_contributions_sum_to_score_and_ranking_is_sorted(seed: int, mode: str):
    rng = np.random.default_rng(seed)
    scores = {m: random_scores(rng, int(rng.integers(5, 30))) for m in ("video", "audio", "depth")}
    weights = {"video": 1.5, "audio": -0.5}
    hits = fuse(scores, mode, weights=weights, logit_scales={"video": 4.6, "audio": 3.0, "depth": 4.0})
    assert len(hits) == len(set().union(*scores.values()))
    for hit in hits:
        assert sum(hit.contributions.values()) == pytest.approx(hit.score)
        assert set(hit.contributions) == set(scores)
        for modality, modality_scores in scores.items():
            if hit.item_id not in modality_scores:
                assert hit.contributions[modality] == 0.0
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)


@pytest.mark.parametrize("seed", SEEDS)
def test_equal_temperatures_rank_like_sum(seed: int):
    rng = np.random.default_rng(seed)
    scores = {m: random_scores(rng, 20) for m in ("video", "audio")}
    by_sum = fuse(scores, "sum")
    by_temperature = fuse(scores, "temperature", logit_scales={"video": 2.0, "audio": 2.0})
    assert [hit.item_id for hit in by_temperature] == [hit.item_id for hit in by_sum]
    assert [hit.score for hit in by_temperature] == pytest.approx([math.exp(2.0) * hit.score for hit in by_sum])


def test_top_k_truncates_and_integer_ids_work():
    hits = fuse({"image": {1: 0.1, 2: 0.3, 3: 0.2}}, "sum", top_k=2)
    assert [hit.item_id for hit in hits] == [2, 3]
    assert fuse({"image": {}}, "sum") == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scores": {"video": {"a": 0.1}}, "mode": "max"}, "unknown fusion mode"),
        ({"scores": {}}, "no modality"),
        ({"scores": {"video": {"a": 0.1}}, "weights": {"audio": 1.0}}, "not searched"),
        ({"scores": {"video": {"a": 0.1}}, "weights": {"video": 0.0}}, "every fusion weight is zero"),
        ({"scores": {"video": {"a": 0.1}}, "weights": {"video": float("inf")}}, "finite"),
        ({"scores": {"video": {"a": 0.1}}, "mode": "temperature"}, "logit_scale"),
        ({"scores": {"video": {"a": float("nan")}}}, "finite"),
        ({"scores": {"video": {"a": 0.1}}, "mode": "rrf", "rrf_k": -1}, "rrf_k"),
        ({"scores": {"video": {"a": 0.1}}, "top_k": -1}, "top_k"),
    ],
)
def test_bad_fusion_requests_raise_query_error(kwargs, message):
    with pytest.raises(QueryError, match=message):
        fuse(**kwargs)
