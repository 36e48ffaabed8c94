"""Prompt templates per modality and the zero-shot classifier built from them."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lbsearch.errors import ConfigError, QueryError
from lbsearch.modalities import MODALITIES
from lbsearch.search.templates import OPENAI_IMAGENET_TEMPLATES, TEMPLATES, prompts_for, templates_for
from lbsearch.search.zeroshot import accuracy, build_classifier, classify, top_k_labels

DIM = 32


def hashed_text_encoder(texts: list[str]) -> torch.Tensor:
    """A deterministic stand-in for a language tower: each text gets its own pseudo-random, non-unit vector."""
    rows = []
    for text in texts:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        rows.append(torch.from_numpy(np.random.default_rng(seed).normal(size=DIM) * 3.0))
    return torch.stack(rows).float()


# --- templates ---------------------------------------------------------------------------------------------------


def test_every_modality_has_templates():
    assert set(TEMPLATES) == set(MODALITIES)
    with pytest.raises(ConfigError, match="smell"):
        templates_for("smell")


def test_template_counts():
    assert len(OPENAI_IMAGENET_TEMPLATES) == 80
    assert len(set(OPENAI_IMAGENET_TEMPLATES)) == 80
    for modality in ("video", "depth", "thermal", "image"):
        assert len(templates_for(modality)) == 80
    assert templates_for("audio") == ("a sound of {c}.",)


def test_image_and_thermal_use_the_plain_photo_templates():
    assert templates_for("image") == OPENAI_IMAGENET_TEMPLATES
    assert templates_for("thermal") == OPENAI_IMAGENET_TEMPLATES
    assert "a photo of a {c}." in templates_for("thermal")


def test_video_and_depth_replace_photo():
    photo_templates = [template for template in OPENAI_IMAGENET_TEMPLATES if "photo" in template]
    assert len(photo_templates) == 43
    for modality, replacement in (("video", "video"), ("depth", "depth photo")):
        templates = templates_for(modality)
        for original, replaced in zip(OPENAI_IMAGENET_TEMPLATES, templates, strict=True):
            assert replaced == original.replace("photo", replacement)
    assert "a bad depth photo of a {c}." in templates_for("depth")
    assert "a depth photo of a {c}." in templates_for("depth")
    assert "a bad video of a {c}." in templates_for("video")
    assert not any("photo" in template for template in templates_for("video"))
    for unchanged in ("a sculpture of a {c}.", "itap of a {c}.", "a {c} in a video game."):
        assert unchanged in templates_for("depth")
        assert unchanged in templates_for("video")


def test_templates_match_open_clip():
    zero_shot_metadata = pytest.importorskip("open_clip.zero_shot_metadata")
    expected = tuple(template("{c}") for template in zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES)
    assert expected == OPENAI_IMAGENET_TEMPLATES


def test_prompts_fill_the_class_name():
    assert prompts_for("dog barking", templates_for("audio")) == ["a sound of dog barking."]
    assert prompts_for("{odd}", ("a photo of a {c}.",)) == ["a photo of a {odd}."]


# --- classifier --------------------------------------------------------------------------------------------------


def test_classifier_follows_the_official_protocol():
    calls: list[list[str]] = []

    def recording_encoder(texts: list[str]) -> torch.Tensor:
        calls.append(list(texts))
        return hashed_text_encoder(texts)

    classes = ["dog", "cat", "rain"]
    classifier = build_classifier(classes, "video", recording_encoder)
    assert classifier.shape == (3, DIM)
    assert calls == [prompts_for(name, templates_for("video")) for name in classes]
    for row, name in zip(classifier, classes, strict=True):
        embeddings = hashed_text_encoder(prompts_for(name, templates_for("video")))
        mean = (embeddings / embeddings.norm(dim=1, keepdim=True)).mean(dim=0)
        torch.testing.assert_close(row, mean / mean.norm())


def test_custom_templates_override_the_modality():
    classifier = build_classifier(["circle"], "video", hashed_text_encoder, templates=["a {c} moving."])
    expected = F.normalize(hashed_text_encoder(["a circle moving."])[0], dim=0)
    torch.testing.assert_close(classifier[0], expected)


def test_classify_is_100_times_cosine():
    classifier = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    embeddings = torch.tensor([[3.0, 4.0]])  # normalised to (0.6, 0.8)
    torch.testing.assert_close(classify(embeddings, classifier), torch.tensor([[60.0, 80.0]]))


def test_top_k_labels_hand_checked():
    logits = torch.tensor([[10.0, 30.0, 20.0], [5.0, 0.0, 1.0]])
    labels = top_k_labels(logits, ["a", "b", "c"], k=2)
    assert [[label.name for label in row] for row in labels] == [["b", "c"], ["a", "c"]]
    assert [label.index for label in labels[0]] == [1, 2]
    assert labels[0][0].logit == 30.0
    assert labels[0][0].probability == pytest.approx(float(torch.softmax(logits[0], 0)[1]))
    assert len(top_k_labels(logits, ["a", "b", "c"], k=10)[0]) == 3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_items_near_class_prototypes_are_classified(seed: int):
    rng = np.random.default_rng(seed)
    names = [f"class{i}" for i in range(10)]
    prototypes = {name: rng.normal(size=DIM) for name in names}

    def prototype_encoder(texts: list[str]) -> torch.Tensor:
        # each prompt lands near its class prototype, each template off in its own direction
        rows = [prototypes[re.search(r"class\d+", text).group()] for text in texts]
        noise = rng.normal(scale=0.3, size=(len(texts), DIM))
        return torch.from_numpy(np.stack(rows) + noise).float()

    classifier = build_classifier(names, "depth", prototype_encoder)
    labels = rng.integers(0, 10, size=200)
    items = np.stack([prototypes[names[label]] for label in labels]) + rng.normal(scale=0.5, size=(200, DIM))
    result = accuracy(torch.from_numpy(items).float(), classifier, labels)
    assert result[1] >= 0.95
    assert result[5] == 1.0
    scrambled = accuracy(torch.from_numpy(items).float(), classifier, rng.permutation(labels))
    assert scrambled[1] < 0.5  # the same items with wrong labels fail: accuracy reads the labels


@pytest.mark.parametrize(
    ("class_names", "encoder", "message"),
    [
        ([], hashed_text_encoder, "at least one class"),
        (["dog", "dog"], hashed_text_encoder, "distinct"),
        (["dog"], lambda texts: torch.zeros(len(texts)), "expected"),
        (["dog"], lambda texts: torch.zeros(1, DIM), "expected"),
    ],
)
def test_bad_classifier_inputs_raise_query_error(class_names, encoder, message):
    with pytest.raises(QueryError, match=message):
        build_classifier(class_names, "image", encoder)


def test_bad_templates_and_shapes_raise_query_error():
    with pytest.raises(QueryError, match="field"):
        build_classifier(["dog"], "image", hashed_text_encoder, templates=["a photo."])
    with pytest.raises(QueryError, match="must be"):
        classify(torch.zeros(2, DIM), torch.zeros(3, DIM + 1))
    with pytest.raises(QueryError, match="class names"):
        top_k_labels(torch.zeros(2, 3), ["a", "b"])
