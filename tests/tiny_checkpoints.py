"""Tiny LanguageBind checkpoints in the released layout, made by the tests so the suite needs no download and no
``../shared``.

Each folder holds what the official ``save_pretrained`` writes for a released ``LanguageBind/*`` repo: a
``config.json`` with every field Hugging Face writes, and a ``pytorch_model.bin`` whose keys keep the released
names (``position_ids`` buffers, and for LoRA checkpoints old peft's wrapper ``encoder.base_model.model.`` with
unmerged ``lora_A.default`` / ``lora_B.default`` pairs). Only the sizes are small (vision width 32, 2 layers,
4 heads, 56 px; text width 16, 2 layers, the full 49408-token vocabulary).

Every tensor is random and seeded, LoRA B too, so a LoRA term that is dropped or mis-scaled changes the
embeddings. All checkpoints carry one language tower, as the released ones do. This lives under tests/ because
only tests need checkpoints in the *released* layout: the demo ships trained ones and the benchmarks build
encoders in memory with `build_encoder`.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lbsearch.models import ModelConfig, build_encoder

PROJECTION_DIM = 24
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
TEXT = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
IMAGE_SIZE, PATCH_SIZE, VIDEO_FRAMES = 56, 14, 8
LORA_ALPHA = 16
# The audio settings the released audio checkpoints carry (the official processor's normalisation).
AUDIO_SETTINGS = {"audio_mean": -4.2677393, "audio_sample_rate": 16000, "audio_std": 4.5689974}
TEXT_SEED = 0  # one language tower for every checkpoint
WEIGHT_STD = 0.2


@dataclass(frozen=True)
class Layout:
    """What one released checkpoint family looks like."""

    modality: str
    lora_r: int = 0
    lora_on: str = "self_attn"  # the attention whose projections LoRA wraps
    clip_type: str | None = None  # "vl_new": Conv3d patches and one CLS per frame (V1.5)
    mel_grid: tuple[int, int] | None = None  # audio: (num_mel_bins, target_length)


LAYOUTS: dict[str, Layout] = {
    "video_ft": Layout("video"),
    "video_lora": Layout("video", lora_r=4, lora_on="temporal_attn"),
    "video_v15": Layout("video", clip_type="vl_new"),
    "audio_ft": Layout("audio", mel_grid=(28, 98)),
    "audio_lora": Layout("audio", lora_r=8, mel_grid=(42, 98)),
    "depth_lora": Layout("depth", lora_r=2),
    "thermal_lora": Layout("thermal", lora_r=2),
    "image": Layout("image"),
}

# Fields every Hugging Face `PretrainedConfig` writes, with the values the official code leaves them at.
_HF_COMMON: dict[str, Any] = {
    "_name_or_path": "",
    "add_cross_attention": False,
    "architectures": None,
    "bad_words_ids": None,
    "begin_suppress_tokens": None,
    "chunk_size_feed_forward": 0,
    "cross_attention_hidden_size": None,
    "decoder_start_token_id": None,
    "diversity_penalty": 0.0,
    "do_sample": False,
    "early_stopping": False,
    "encoder_no_repeat_ngram_size": 0,
    "exponential_decay_length_penalty": None,
    "finetuning_task": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
    "is_decoder": False,
    "is_encoder_decoder": False,
    "label2id": {"LABEL_0": 0, "LABEL_1": 1},
    "length_penalty": 1.0,
    "max_length": 20,
    "min_length": 0,
    "no_repeat_ngram_size": 0,
    "num_beam_groups": 1,
    "num_beams": 1,
    "num_return_sequences": 1,
    "output_attentions": False,
    "output_hidden_states": False,
    "output_scores": False,
    "prefix": None,
    "problem_type": None,
    "pruned_heads": {},
    "remove_invalid_values": False,
    "repetition_penalty": 1.0,
    "return_dict": True,
    "return_dict_in_generate": False,
    "sep_token_id": None,
    "suppress_tokens": None,
    "task_specific_params": None,
    "temperature": 1.0,
    "tf_legacy_loss": False,
    "tie_encoder_decoder": False,
    "tie_word_embeddings": True,
    "tokenizer_class": None,
    "top_k": 50,
    "top_p": 1.0,
    "torch_dtype": None,
    "torchscript": False,
    "transformers_version": "4.30.2",
    "typical_p": 1.0,
    "use_bfloat16": False,
    # CLIP's own sub-config fields
    "attention_dropout": 0.0,
    "hidden_act": "gelu",
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-05,
    "projection_dim": 512,  # the sub-configs keep CLIP's default; the model's own is the top-level one
}


def official_config(layout: Layout) -> dict[str, Any]:
    """The ``config.json`` the official ``save_pretrained`` writes for ``layout`` (keys sorted, as HF writes)."""
    text = {
        **_HF_COMMON,
        **TEXT,
        "add_time_attn": False,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 1,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "vocab_size": 49408,
    }
    mel, target = layout.mel_grid or (0.0, 0.0)  # the official config stores the unused grid as floats
    vision = {
        **_HF_COMMON,
        **VISION,
        "add_time_attn": layout.modality == "video",
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
        "force_patch_dropout": 0.0,
        "image_size": IMAGE_SIZE,
        "lora_alpha": LORA_ALPHA,
        "lora_dropout": 0.0,
        "lora_r": layout.lora_r,
        "model_type": "clip_vision_model",
        "num_channels": 3,
        "num_frames": VIDEO_FRAMES if layout.modality == "video" else 1,
        "num_mel_bins": mel,
        "patch_size": PATCH_SIZE,
        "target_length": target,
        "video_decode_backend": "decord",
    }
    if layout.clip_type:
        vision["clip_type"] = layout.clip_type
    if layout.modality == "audio":
        vision.update(AUDIO_SETTINGS)
    if layout.modality == "depth":
        vision["max_depth"] = 10
    name = f"LanguageBind{layout.modality.capitalize()}"
    return {
        "_commit_hash": None,
        "architectures": [name],
        "initializer_factor": 1.0,
        "logit_scale_init_value": 2.6592,
        "model_type": name,
        "projection_dim": PROJECTION_DIM,
        "text_config": dict(sorted(text.items())),
        "torch_dtype": "float32",
        "transformers_version": None,
        "vision_config": dict(sorted(vision.items())),
    }


def _random_like(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Seeded random values in the shapes of ``state``: N(0, 0.2), layer-norm scales around 1."""
    generator = torch.Generator().manual_seed(seed)
    filled = {}
    for key, tensor in state.items():
        noise = torch.randn(tensor.shape, generator=generator) * WEIGHT_STD
        is_norm_scale = "norm" in key and key.endswith(".weight")
        filled[key] = 1.0 + noise / 2 if is_norm_scale else noise
    return filled


def _with_position_ids(state: dict[str, torch.Tensor], tower: str, positions: int) -> dict[str, torch.Tensor]:
    """Insert the ``position_ids`` buffer the released files carry, where HF puts it: after the direct
    parameters of the embeddings module, before its submodules."""
    prefix = f"{tower}.embeddings."
    out: dict[str, torch.Tensor] = {}
    inserted = False
    for key, tensor in state.items():
        if not inserted and key.startswith(prefix) and "." in key[len(prefix) :]:
            out[f"{prefix}position_ids"] = torch.arange(positions).unsqueeze(0)
            inserted = True
        out[key] = tensor
    return out


def _as_old_peft(state: dict[str, torch.Tensor], layout: Layout, seed: int) -> dict[str, torch.Tensor]:
    """Unmerged LoRA under old peft's names: the vision encoder wrapped in ``base_model.model``, and a random
    ``lora_A`` [r, in] / ``lora_B`` [out, r] pair after each wrapped projection's bias."""
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        key = key.replace("vision_model.encoder.", "vision_model.encoder.base_model.model.")
        out[key] = tensor
        parts = key.split(".")
        if len(parts) >= 3 and parts[-3] == layout.lora_on and parts[-2].endswith("_proj") and parts[-1] == "bias":
            module = key.rpartition(".")[0]
            rows, columns = out[f"{module}.weight"].shape
            lora_a = torch.randn(layout.lora_r, columns, generator=generator) * WEIGHT_STD
            out[f"{module}.lora_A.default.weight"] = lora_a
            out[f"{module}.lora_B.default.weight"] = torch.randn(rows, layout.lora_r, generator=generator) * WEIGHT_STD
    return out


def released_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The tensors of checkpoint ``name`` (a key of `LAYOUTS`) under the released key names."""
    layout = LAYOUTS[name]
    config = ModelConfig.from_dict(official_config(layout))
    encoder = build_encoder(config)  # only for the tensor names and shapes of this architecture
    seed = zlib.crc32(name.encode())
    text = _random_like(encoder.text.state_dict(), TEXT_SEED)
    vision = _random_like(encoder.vision.state_dict(), seed)
    text = _with_position_ids(text, "text_model", config.text.max_position_embeddings)
    vision = _with_position_ids(vision, "vision_model", config.vision.num_positions)
    if layout.lora_r:
        vision = _as_old_peft(vision, layout, seed + 1)
    # Each checkpoint its own temperature, so a mix-up between two of them shows.
    logit_scale = torch.tensor(config.logit_scale_init_value + 0.1 * list(LAYOUTS).index(name))
    text_projection = {"text_projection.weight": text.pop("text_projection.weight")}
    vision_projection = {"visual_projection.weight": vision.pop("visual_projection.weight")}
    # The order of the released files: the temperature, the language tower, the modality tower, the projections.
    return {"logit_scale": logit_scale, **text, **vision, **vision_projection, **text_projection}


def write_checkpoint(name: str, folder: Path) -> Path:
    """Write checkpoint ``name`` (a key of `LAYOUTS`) into ``folder``; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(official_config(LAYOUTS[name]), indent=2, sort_keys=True) + "\n")
    torch.save(released_state_dict(name), folder / "pytorch_model.bin")
    return folder


def write_all(root: Path) -> Path:
    """Every layout of `LAYOUTS` as ``root/NAME``; returns ``root``."""
    for name in LAYOUTS:
        write_checkpoint(name, root / name)
    return root
