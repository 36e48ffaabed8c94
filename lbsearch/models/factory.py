"""Building encoders: from a config (random weights) or from a released checkpoint (folder or hub id)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection, Mapping
from dataclasses import replace
from pathlib import Path

import torch

from lbsearch.errors import CheckpointError
from lbsearch.models import checkpoint
from lbsearch.models.config import ModelConfig
from lbsearch.models.encoder import Encoder
from lbsearch.models.towers import TextTower, VisionTower

log = logging.getLogger(__name__)


def default_dtype(device: str) -> torch.dtype:
    """The precision encoders run in on a device when none is chosen: half on a GPU, single on a CPU."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def build_encoder(
    config: ModelConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> Encoder:
    """An encoder with freshly initialised weights: for training and for benchmarks that need no download."""
    vision = VisionTower(config.vision, config.projection_dim)
    text = TextTower(config.text, config.projection_dim)
    return Encoder(config, vision, text, config.logit_scale_init_value, source="random").to(device, dtype)


def load_checkpoint(
    name_or_path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    revision: str | None = None,
    cache_dir: str | None = None,
    text_tower: Encoder | None = None,
    towers: Collection[str] = ("vision", "text"),
) -> Encoder:
    """Load a LanguageBind checkpoint (``config.json`` + weights) from a folder or a Hugging Face hub id.

    LoRA pairs are merged at load. Every tensor must match the architecture the config describes: a missing,
    unexpected or mis-shaped key raises `CheckpointError` listing them. Pass ``text_tower`` (an encoder loaded
    before) to share its language tower when the two checkpoints carry the same one. ``towers`` picks which
    towers to build: ``("text",)`` serves text queries without holding the modality tower in memory.
    """
    files = checkpoint.resolve(name_or_path, revision=revision, cache_dir=cache_dir)
    config = ModelConfig.from_file(files.folder / "config.json")
    raw = checkpoint.read_state_dict(files.folder)
    rank = checkpoint.lora_rank(raw)
    if rank is not None and rank != config.vision.lora_r:
        raise CheckpointError(
            f"{files.source}: LoRA weights have rank {rank} but config.json says lora_r={config.vision.lora_r}"
        )
    state = checkpoint.normalise_keys(raw, config.vision.lora_scaling)
    del raw
    vision_state, text_state, logit_scale = checkpoint.split_towers(state)
    if logit_scale is None:
        raise CheckpointError(f"{files.source}: the checkpoint has no logit_scale")

    vision = None
    if "vision" in towers:
        vision = VisionTower(config.vision, config.projection_dim)
        checkpoint.load_strict(vision, vision_state, f"{files.source} (modality tower)")
    text_hash = checkpoint.fingerprint(text_state)
    if "text" not in towers:
        text = None
    elif text_tower is not None and text_tower.text is not None and text_tower.text_hash == text_hash:
        text = text_tower.text
    else:
        if text_tower is not None:
            log.warning(
                "%s: its language tower differs from the one of %s; keeping both", files.source, text_tower.source
            )
        text = TextTower(config.text, config.projection_dim)
        checkpoint.load_strict(text, text_state, f"{files.source} (language tower)")
    encoder = Encoder(
        config,
        vision,
        text,
        float(logit_scale),
        source=files.source,
        weights_hash=checkpoint.fingerprint(vision_state),
        text_hash=text_hash,
    )
    return encoder.to(device, dtype)


def load_model_set(
    checkpoints: Mapping[str, str | os.PathLike],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    cache_dir: str | None = None,
) -> dict[str, Encoder]:
    """Load one checkpoint per modality (``{"video": id_or_path, ...}``), sharing one language tower."""
    encoders: dict[str, Encoder] = {}
    for modality, name in checkpoints.items():
        first = next(iter(encoders.values()), None)
        encoder = load_checkpoint(name, device, dtype, cache_dir=cache_dir, text_tower=first)
        if encoder.modality != modality:
            raise CheckpointError(f"{name}: is a {encoder.modality} checkpoint, but was given for {modality}")
        encoders[modality] = encoder
    return encoders


def save_checkpoint(encoder: Encoder, folder: str | os.PathLike, *, safetensors: bool = False) -> None:
    """Write ``encoder`` in the released layout (``config.json`` + weights), readable by `load_checkpoint`.

    LoRA, if any was trained, is saved merged: the config says ``lora_r: 0``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = replace(encoder.config, vision=replace(encoder.config.vision, lora_r=0))
    state = {
        **{k: v.detach().float().cpu().contiguous() for k, v in encoder.vision.state_dict().items()},
        **{k: v.detach().float().cpu().contiguous() for k, v in encoder.text.state_dict().items()},
        "logit_scale": torch.tensor(encoder.logit_scale, dtype=torch.float32),
    }
    (folder / "config.json").write_text(json.dumps(config.to_json_dict(), indent=2))
    if safetensors:
        from safetensors.torch import save_file

        save_file(state, str(folder / "model.safetensors"))
    else:
        torch.save(state, folder / "pytorch_model.bin")
