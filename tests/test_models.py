"""The model layer reproduces what the official LanguageBind code computes, and refuses what it cannot load.

Parity tests compare with the official outputs in ``../shared/golden``; every other test loads the tiny
released-layout checkpoints the tests write (tests/tiny_checkpoints.py) and feeds them seeded random inputs.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lbsearch import tokenize
from lbsearch.errors import CheckpointError, ConfigError
from lbsearch.models import ModelConfig, build_encoder, load_checkpoint, load_model_set, save_checkpoint
from lbsearch.models.checkpoint import read_state_dict

CHECKPOINTS = ["video_ft", "video_lora", "video_v15", "audio_ft", "audio_lora", "depth_lora", "thermal_lora", "image"]


def random_pixels(config: ModelConfig, batch: int = 3, seed: int = 0) -> torch.Tensor:
    """Seeded N(0, 1) model input of the shape the config asks for (a normalised picture, clip or mel grid)."""
    vision = config.vision
    frames = (vision.num_frames,) if config.modality == "video" else ()
    shape = (batch, vision.num_channels, *frames, *vision.image_size)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def sentences(golden: Path) -> list[str]:
    return [str(s) for s in np.load(golden / "tokens.npz")["sentences"]]


def test_tokenizer_ids_equal_official(golden: Path) -> None:
    tokens = np.load(golden / "tokens.npz")
    ids = tokenize([str(s) for s in tokens["sentences"]])
    assert ids.shape == (len(tokens["sentences"]), 77)
    np.testing.assert_array_equal(ids.numpy(), tokens["input_ids"])


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_golden_checkpoint_parity(golden: Path, sentences: list[str], name: str) -> None:
    expected = np.load(golden / "expected" / f"{name}.npz")
    summary = json.loads((golden / "summary.json").read_text())[name]
    encoder = load_checkpoint(golden / "checkpoints" / name)
    assert encoder.modality == summary["modality"]
    assert encoder.dim == summary["dim"]
    assert encoder.logit_scale == pytest.approx(float(expected["logit_scale"]), abs=0)
    embeddings = encoder.encode(torch.from_numpy(expected["pixel_values"]))
    np.testing.assert_allclose(embeddings.numpy(), expected["embeddings"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(torch.linalg.norm(embeddings, dim=-1).numpy(), 1.0, atol=1e-5)
    text = encoder.encode_text(sentences)
    np.testing.assert_allclose(text.numpy(), expected["text_embeddings"], atol=1e-5, rtol=0)


def test_batch_size_does_not_change_results(tiny_checkpoints: Path) -> None:
    encoder = load_checkpoint(tiny_checkpoints / "video_lora")
    pixels = random_pixels(encoder.config)
    np.testing.assert_allclose(encoder.encode(pixels, batch_size=1), encoder.encode(pixels), atol=1e-6)


def test_model_set_shares_one_language_tower(tiny_checkpoints: Path) -> None:
    folders = {
        m: tiny_checkpoints / n
        for m, n in [("video", "video_ft"), ("audio", "audio_ft"), ("depth", "depth_lora"), ("image", "image")]
    }
    encoders = load_model_set(folders)
    towers = {id(e.text) for e in encoders.values()}
    assert len(towers) == 1
    with pytest.raises(CheckpointError, match="is a video checkpoint, but was given for audio"):
        load_model_set({"audio": tiny_checkpoints / "video_ft"})


def _copy_checkpoint(checkpoints: Path, name: str, dest: Path) -> Path:
    target = dest / name
    shutil.copytree(checkpoints / name, target)
    target.chmod(0o755)
    for child in target.iterdir():
        child.chmod(0o644)
    return target


def _rewrite_state(folder: Path, edit) -> None:
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    torch.save(edit(dict(state)), folder / "pytorch_model.bin")


def test_differing_language_towers_are_reported_and_kept(tiny_checkpoints: Path, tmp_path: Path, caplog) -> None:
    other = _copy_checkpoint(tiny_checkpoints, "audio_ft", tmp_path)

    def perturb(state):
        state["text_projection.weight"] = state["text_projection.weight"] + 0.5
        return state

    _rewrite_state(other, perturb)
    with caplog.at_level(logging.WARNING):
        encoders = load_model_set({"video": tiny_checkpoints / "video_ft", "audio": other})
    assert "language tower differs" in caplog.text
    assert encoders["video"].text is not encoders["audio"].text
    text = ["a dog"]
    assert not torch.allclose(encoders["video"].encode_text(text), encoders["audio"].encode_text(text))


def test_new_peft_names_and_safetensors_load_identically(tiny_checkpoints: Path, tmp_path: Path) -> None:
    reference = load_checkpoint(tiny_checkpoints / "depth_lora")
    folder = _copy_checkpoint(tiny_checkpoints, "depth_lora", tmp_path)
    state = read_state_dict(folder)
    renamed = {}
    for key, tensor in state.items():
        key = key.replace("encoder.base_model.model.", "encoder.")
        if (
            ".lora_" not in key
            and any(p in key for p in ("q_proj.", "k_proj.", "v_proj.", "out_proj."))
            and key.startswith("vision_model")
        ):
            key = key.replace("_proj.", "_proj.base_layer.")
        renamed[key.replace(".default.weight", ".weight")] = tensor
    (folder / "pytorch_model.bin").unlink()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in renamed.items()}, str(folder / "model.safetensors"))
    loaded = load_checkpoint(folder)
    pixels = random_pixels(reference.config)
    np.testing.assert_allclose(loaded.encode(pixels), reference.encode(pixels), atol=1e-6)
    assert loaded.weights_hash == reference.weights_hash


def test_lora_is_merged_with_alpha_over_r(tiny_checkpoints: Path, tmp_path: Path) -> None:
    """Dropping the LoRA pairs must change the output: they are applied, not ignored."""
    folder = _copy_checkpoint(tiny_checkpoints, "thermal_lora", tmp_path)
    reference = load_checkpoint(tiny_checkpoints / "thermal_lora")
    _rewrite_state(folder, lambda s: {k: v for k, v in s.items() if ".lora_" not in k})
    plain = load_checkpoint(folder)
    pixels = random_pixels(reference.config)
    assert (plain.encode(pixels) - reference.encode(pixels)).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: {k: v for k, v in s.items() if not k.endswith("post_layernorm.weight")}, "missing"),
        (lambda s: {**s, "vision_model.extra.weight": torch.zeros(3)}, "unexpected"),
        (lambda s: {**s, "visual_projection.weight": torch.zeros(5, 32)}, "wrong shape"),
        (lambda s: {k: v for k, v in s.items() if "lora_B" not in k}, "incomplete"),
        (lambda s: {k: v for k, v in s.items() if k != "logit_scale"}, "no logit_scale"),
    ],
)
def test_bad_state_dicts_are_errors_listing_keys(tiny_checkpoints: Path, tmp_path: Path, edit, message: str) -> None:
    folder = _copy_checkpoint(tiny_checkpoints, "audio_lora", tmp_path)
    _rewrite_state(folder, edit)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(folder)


def test_lora_rank_must_match_config(tiny_checkpoints: Path, tmp_path: Path) -> None:
    folder = _copy_checkpoint(tiny_checkpoints, "audio_lora", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"]["lora_r"] = 16
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"rank 8 but config\.json says lora_r=16"):
        load_checkpoint(folder)


def test_pickled_objects_are_refused(tiny_checkpoints: Path, tmp_path: Path) -> None:
    folder = _copy_checkpoint(tiny_checkpoints, "image", tmp_path)
    torch.save({"weights": Path("not a tensor")}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        load_checkpoint(folder)


def test_missing_checkpoint_and_offline_hub(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        load_checkpoint(tmp_path / "nowhere")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        load_checkpoint("LanguageBind/LanguageBind_Nothing", cache_dir=str(tmp_path / "hf"))


def test_hub_id_is_read_from_the_cache_offline(tiny_checkpoints: Path, tmp_path: Path, monkeypatch) -> None:
    """A hub id resolves through huggingface_hub's cache layout (what a download leaves) with HF_HUB_OFFLINE=1."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "models--LanguageBind--LanguageBind_Image"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(tiny_checkpoints / "image", snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encoder = load_checkpoint("LanguageBind/LanguageBind_Image", cache_dir=str(tmp_path / "hf"))
    assert encoder.source == "LanguageBind/LanguageBind_Image"
    from_folder = load_checkpoint(tiny_checkpoints / "image")
    pixels = random_pixels(from_folder.config)
    np.testing.assert_allclose(encoder.encode(pixels), from_folder.encode(pixels), atol=1e-5)


def test_config_dict_overrides_with_class_defaults() -> None:
    """The official `vision_config_dict` rule: absent fields revert to class defaults, not to vision_config."""
    raw = {
        "architectures": ["LanguageBindVideo"],
        "projection_dim": 1024,
        "vision_config": {"hidden_size": 1024, "num_frames": 8, "add_time_attn": True, "lora_r": 0, "patch_size": 14},
        "vision_config_dict": {
            "hidden_size": 1280,
            "intermediate_size": 5120,
            "num_hidden_layers": 32,
            "num_attention_heads": 16,
            "patch_size": 14,
            "hidden_act": "gelu",
            "add_time_attn": True,
            "num_frames": 8,
            "lora_r": 0,
            "clip_type": "vl_new",
        },
        "text_config": {"hidden_size": 1024, "num_hidden_layers": 24},
    }
    config = ModelConfig.from_dict(raw)
    assert (config.vision.hidden_size, config.vision.num_hidden_layers, config.vision.clip_type) == (1280, 32, "vl_new")
    assert config.vision.image_size == (224, 224) and config.vision.lora_r == 0
    del raw["vision_config_dict"]["lora_r"], raw["vision_config_dict"]["num_frames"]
    config = ModelConfig.from_dict(raw)
    assert config.vision.lora_r == 2  # the class default wins over vision_config's 0
    with pytest.raises(ConfigError, match="add_time_attn"):
        ModelConfig.from_dict({**raw, "vision_config_dict": {"hidden_size": 64}})


def test_unknown_modality_and_activation_are_config_errors(tiny_checkpoints: Path) -> None:
    raw = json.loads((tiny_checkpoints / "image" / "config.json").read_text())
    with pytest.raises(ConfigError, match="cannot tell the modality"):
        ModelConfig.from_dict({**raw, "architectures": ["CLIPModel"], "model_type": "clip"})
    raw["vision_config"]["hidden_act"] = "swish"
    with pytest.raises(ConfigError, match="unsupported hidden_act"):
        build_encoder(ModelConfig.from_dict(raw))


@pytest.mark.parametrize("name", ["video_v15", "audio_lora", "depth_lora"])
@pytest.mark.parametrize("safetensors", [False, True])
def test_saved_checkpoints_round_trip(tiny_checkpoints: Path, tmp_path: Path, name: str, safetensors: bool) -> None:
    encoder = load_checkpoint(tiny_checkpoints / name)
    save_checkpoint(encoder, tmp_path / name, safetensors=safetensors)
    again = load_checkpoint(tmp_path / name)
    assert again.config.vision.lora_r == 0 and again.config.vision.image_size == encoder.config.vision.image_size
    pixels = random_pixels(encoder.config)
    np.testing.assert_allclose(again.encode(pixels), encoder.encode(pixels), atol=1e-6)
    assert again.logit_scale == encoder.logit_scale


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_on_cpu_stays_close(tiny_checkpoints: Path, precision: str) -> None:
    full = load_checkpoint(tiny_checkpoints / "video_ft")
    encoder = load_checkpoint(tiny_checkpoints / "video_ft", precision=precision)
    assert encoder.precision == precision
    pixels = random_pixels(full.config)
    out = encoder.encode(pixels)
    assert out.dtype == torch.float32
    cosine = (out * full.encode(pixels)).sum(-1)
    assert cosine.min() > 0.99
