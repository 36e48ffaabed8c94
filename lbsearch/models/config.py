"""Model configs as data: what a LanguageBind ``config.json`` says, as typed dataclasses.

The architecture is read from the config, never assumed: widths, depths, image size, frame count and the
audio mel grid all vary between the released checkpoints (and the tiny test ones).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from lbsearch import modalities
from lbsearch.errors import ConfigError
from lbsearch.modalities import MODALITIES

# The official code names the model class after the modality ("LanguageBindAudio", ...).
_CLASS_TO_MODALITY = {f"LanguageBind{m.capitalize()}": m for m in MODALITIES}

# Class defaults of the official CLIPVisionConfig / CLIPTextConfig. They matter because of the
# `*_config_dict` quirk (see `_apply_config_dict`) and for configs that leave a field out.
_VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "add_time_attn": False,
    "num_frames": 1,
    "force_patch_dropout": 0.0,
    "lora_r": 2,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "num_mel_bins": 0,
    "target_length": 0,
}
# Modality-specific extras of the official config classes (audio and depth files define their own).
_VISION_MODALITY_DEFAULTS: dict[str, dict[str, Any]] = {
    "audio": {"audio_sample_rate": 16000, "audio_mean": 0.5, "audio_std": 0.5},
    "depth": {"max_depth": 10.0},
}
_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}


@dataclass(frozen=True)
class VisionConfig:
    """The modality ("vision") tower. ``image_size`` is (height, width): audio is a mel x time grid."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    image_size: tuple[int, int]
    patch_size: int
    hidden_act: str
    layer_norm_eps: float
    num_channels: int = 3
    add_time_attn: bool = False
    num_frames: int = 1
    clip_type: str = "vl"  # "vl_new": Conv3d patch embedding and one CLS embedding per frame (V1.5)
    tube_size: int = 1
    lora_r: int = 0
    lora_alpha: float = 16
    lora_dropout: float = 0.0
    force_patch_dropout: float = 0.0
    # Preprocessing settings carried by the official configs.
    num_mel_bins: int = 0
    target_length: int = 0
    audio_sample_rate: int = 16000
    audio_mean: float = 0.5
    audio_std: float = 0.5
    max_depth: float = 10.0

    @property
    def grid(self) -> tuple[int, int]:
        """Patches per column and per row."""
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

    @property
    def num_positions(self) -> int:
        gh, gw = self.grid
        return gh * gw + 1

    @property
    def lora_scaling(self) -> float:
        return self.lora_alpha / self.lora_r if self.lora_r else 0.0


@dataclass(frozen=True)
class TextConfig:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    hidden_act: str
    layer_norm_eps: float
    vocab_size: int = 49408
    max_position_embeddings: int = 77


@dataclass(frozen=True)
class ModelConfig:
    """One LanguageBind checkpoint: a modality tower, the language tower and the shared space."""

    modality: str
    projection_dim: int
    vision: VisionConfig
    text: TextConfig
    logit_scale_init_value: float = 2.6592

    def to_json_dict(self) -> dict[str, Any]:
        """The config in the official ``config.json`` layout (what ``from_dict`` reads back)."""
        vision = asdict(self.vision)
        vision["image_size"] = list(self.vision.image_size)
        if self.modality != "audio":
            vision["image_size"] = self.vision.image_size[0]
        return {
            "architectures": [f"LanguageBind{self.modality.capitalize()}"],
            "model_type": f"LanguageBind{self.modality.capitalize()}",
            "projection_dim": self.projection_dim,
            "logit_scale_init_value": self.logit_scale_init_value,
            "vision_config": {**vision, "model_type": "clip_vision_model"},
            "text_config": {**asdict(self.text), "model_type": "clip_text_model"},
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any], modality: str | None = None, source: str = "config") -> ModelConfig:
        modality = modality or _modality_of(raw, source)
        modalities.lookup(modality, where=source)
        vision_defaults = {**_VISION_DEFAULTS, **_VISION_MODALITY_DEFAULTS.get(modality, {})}
        vision_raw = {**vision_defaults, **(raw.get("vision_config") or {})}
        vision_raw = _apply_config_dict(vision_raw, raw.get("vision_config_dict"), vision_defaults)
        text_raw = {**_TEXT_DEFAULTS, **(raw.get("text_config") or {})}
        text_raw = _apply_config_dict(text_raw, raw.get("text_config_dict"), _TEXT_DEFAULTS)
        return cls(
            modality=modality,
            projection_dim=int(raw.get("projection_dim", 512)),
            vision=_vision_config(vision_raw, modality, source),
            text=_build(TextConfig, text_raw),
            logit_scale_init_value=float(raw.get("logit_scale_init_value", 2.6592)),
        )

    @classmethod
    def from_file(cls, path: str | Path, modality: str | None = None) -> ModelConfig:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read config: {exc}") from exc
        return cls.from_dict(raw, modality=modality, source=str(path))


def _modality_of(raw: dict[str, Any], source: str) -> str:
    names = [*(raw.get("architectures") or []), raw.get("model_type", "")]
    for name in names:
        if name in _CLASS_TO_MODALITY:
            return _CLASS_TO_MODALITY[name]
    raise ConfigError(
        f"{source}: cannot tell the modality: architectures/model_type {names!r} name no LanguageBind class "
        f"({sorted(_CLASS_TO_MODALITY)})"
    )


def _apply_config_dict(
    merged: dict[str, Any], override: dict[str, Any] | None, class_defaults: dict[str, Any]
) -> dict[str, Any]:
    """Reproduce the official ``*_config_dict`` rule.

    The official config class builds a whole sub-config from ``*_config_dict`` and copies *every* field of it
    over the sub-config, so a field absent from the dict reverts to the class default (not to the value in
    ``vision_config``). The Huge V1.5 checkpoint relies on this.
    """
    if not override:
        return merged
    return {**merged, **class_defaults, **override}


def _vision_config(raw: dict[str, Any], modality: str, source: str) -> VisionConfig:
    mel, target = int(raw.get("num_mel_bins") or 0), int(raw.get("target_length") or 0)
    size = raw["image_size"]
    if mel and target:
        image_size = (mel, target)  # audio: the mel x time grid replaces the square image
    elif isinstance(size, (list, tuple)):
        image_size = (int(size[0]), int(size[1]))
    else:
        image_size = (int(size), int(size))
    values = {**raw, "image_size": image_size, "num_mel_bins": mel, "target_length": target}
    values["clip_type"] = raw.get("clip_type") or "vl"
    if modality == "video" and not values.get("add_time_attn"):
        raise ConfigError(f"{source}: a video checkpoint needs add_time_attn=true (temporal attention)")
    if modality != "video":
        values["num_frames"] = 1
    config = _build(VisionConfig, values)
    if config.image_size[0] % config.patch_size or config.image_size[1] % config.patch_size:
        raise ConfigError(f"{source}: input size {config.image_size} is not a multiple of patch {config.patch_size}")
    return config


def _build(kind: type, values: dict[str, Any]):
    names = {f.name for f in fields(kind)}
    return kind(**{k: v for k, v in values.items() if k in names})
