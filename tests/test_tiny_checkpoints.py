"""The tiny checkpoints the tests write (tests/tiny_checkpoints.py) are what the loader expects of a released one,
and, where ``../shared/golden`` is present, have exactly the file layout of the official tiny checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_models import random_pixels
from tiny_checkpoints import LAYOUTS, LORA_ALPHA, VISION, write_checkpoint

from lbsearch.models import load_checkpoint
from lbsearch.models.checkpoint import fingerprint


def _raw(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_each_layout_loads_with_its_architecture(tiny_checkpoints: Path, name: str) -> None:
    layout = LAYOUTS[name]
    encoder = load_checkpoint(tiny_checkpoints / name)
    vision = encoder.config.vision
    assert encoder.modality == layout.modality
    assert vision.lora_r == layout.lora_r
    assert vision.clip_type == (layout.clip_type or "vl")
    assert vision.image_size == (layout.mel_grid or (56, 56))
    assert vision.num_frames == (8 if layout.modality == "video" else 1)
    embeddings = encoder.encode(random_pixels(encoder.config))
    assert embeddings.shape == (3, encoder.dim) and torch.isfinite(embeddings).all()
    torch.testing.assert_close(torch.linalg.norm(embeddings, dim=-1), torch.ones(3))
    assert len({tuple(row) for row in embeddings.round(decimals=4).tolist()}) == 3  # random inputs, distinct outputs


@pytest.mark.parametrize("name", [name for name, layout in LAYOUTS.items() if layout.lora_r])
def test_lora_pairs_are_stored_unmerged_under_old_peft_names(tiny_checkpoints: Path, name: str) -> None:
    """Each wrapped projection has a random A and B (B is not zero), and the loader merges W + alpha/r B A."""
    layout = LAYOUTS[name]
    raw = _raw(tiny_checkpoints / name)
    pairs = sorted(key.removesuffix(".lora_A.default.weight") for key in raw if key.endswith(".lora_A.default.weight"))
    assert len(pairs) == 4 * VISION["num_hidden_layers"]  # q, k, v and out of the wrapped attention, every layer
    assert all(f".{layout.lora_on}." in module and ".encoder.base_model.model.layers." in module for module in pairs)
    encoder = load_checkpoint(tiny_checkpoints / name)
    merged = dict(encoder.vision.state_dict())
    for module in pairs:
        a, b = raw[f"{module}.lora_A.default.weight"], raw[f"{module}.lora_B.default.weight"]
        assert a.shape[0] == b.shape[1] == layout.lora_r and b.abs().min() > 0
        expected = raw[f"{module}.weight"] + (LORA_ALPHA / layout.lora_r) * (b @ a)
        plain = module.replace(".encoder.base_model.model.", ".encoder.")
        torch.testing.assert_close(merged[f"{plain}.weight"], expected, rtol=1e-5, atol=1e-5)


def test_every_checkpoint_carries_one_language_tower(tiny_checkpoints: Path) -> None:
    encoders = {name: load_checkpoint(tiny_checkpoints / name) for name in LAYOUTS}
    assert len({encoder.text_hash for encoder in encoders.values()}) == 1
    assert len({encoder.weights_hash for encoder in encoders.values()}) == len(LAYOUTS)
    assert len({encoder.logit_scale for encoder in encoders.values()}) == len(LAYOUTS)


def test_writing_is_seeded(tiny_checkpoints: Path, tmp_path: Path) -> None:
    for name in ("video_lora", "audio_ft"):
        again = _raw(write_checkpoint(name, tmp_path / name))
        first = _raw(tiny_checkpoints / name)
        assert list(again) == list(first) and fingerprint(again) == fingerprint(first)
        assert (tmp_path / name / "config.json").read_text() == (tiny_checkpoints / name / "config.json").read_text()


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_same_files_as_the_official_tiny_checkpoint(golden: Path, tiny_checkpoints: Path, name: str) -> None:
    """Key names, shapes and dtypes of every tensor, and every config field with its value and JSON type."""
    official, ours = golden / "checkpoints" / name, tiny_checkpoints / name
    assert sorted(path.name for path in ours.iterdir()) == sorted(path.name for path in official.iterdir())
    expected = {key: (tuple(t.shape), t.dtype) for key, t in _raw(official).items()}
    assert {key: (tuple(t.shape), t.dtype) for key, t in _raw(ours).items()} == expected
    official_config, our_config = (json.loads((folder / "config.json").read_text()) for folder in (official, ours))
    assert json.dumps(our_config, sort_keys=True) == json.dumps(official_config, sort_keys=True)
