"""Stage 2, binding: a new modality's encoder learns to meet the frozen language tower, as LanguageBind does.

- Initialisation from the image encoder (`start_tower`): every weight is copied; audio's position table is
  interpolated from the image's patch grid to the mel x time grid; for video each layer's temporal attention and
  its LayerNorm start as copies of the same layer's spatial self-attention and ``layer_norm1``, and the temporal
  position embedding starts small and random.
- Training: LoRA through ``peft`` on the attention projections (or every weight, for the ablations), patch
  masking (`PatchMasking`), the symmetric contrastive loss against captions embedded once by the frozen language
  tower, a learned temperature starting at 0.07, AdamW with linear warm-up and cosine decay.
- The result is a plain `Encoder` (LoRA merged) that `save_checkpoint` writes in the official layout.

`bind_toy` trains on the toy world; `bind_files` binds a modality on real (file, caption) pairs, typically on a GPU
from an OpenCLIP start point (see docs/training.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from lbsearch.errors import ConfigError, MediaError
from lbsearch.models.config import ModelConfig
from lbsearch.models.encoder import Encoder
from lbsearch.models.towers import PatchEmbeddings, VisionTower
from lbsearch.preprocess import PreprocessSettings
from lbsearch.train.config import LoraSettings, Stage2Config
from lbsearch.train.data import CaptionedFiles, ToyDataset, matching_pairs
from lbsearch.train.loop import Logger, batch_indices, run_schedule
from lbsearch.train.loss import LearnableTemperature, contrastive_loss

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]  # inputs, unit text embeddings, positives
TEMPORAL_EMBEDDING_STD = 0.02


def modality_config(
    image: ModelConfig,
    modality: str,
    *,
    num_frames: int | None = None,
    audio_grid: tuple[int, int] | None = None,
    audio_stats: tuple[float, float] | None = None,
) -> ModelConfig:
    """The config of a ``modality`` encoder grown from an image encoder's config (same widths and depths).

    Video gets temporal attention over ``num_frames``; audio reads a ``audio_grid`` (mel bins, frames)
    spectrogram normalised with ``audio_stats`` (mean, std). Defaults: the released checkpoints' settings.
    """
    released = PreprocessSettings.released()
    raw = image.to_json_dict()
    raw["architectures"] = [f"LanguageBind{modality.capitalize()}"]
    raw["model_type"] = raw["architectures"][0]
    vision = raw["vision_config"]
    vision.update(add_time_attn=False, num_frames=1, num_mel_bins=0, target_length=0, lora_r=0)
    if modality == "video":
        vision.update(add_time_attn=True, num_frames=num_frames or released.num_frames)
    elif modality == "audio":
        mel, length = audio_grid or (released.num_mel_bins, released.target_length)
        mean, std = audio_stats or (released.audio_mean, released.audio_std)
        vision.update(num_mel_bins=mel, target_length=length, audio_mean=mean, audio_std=std)
    elif modality not in ("depth", "thermal", "image"):
        raise ConfigError(f"unknown modality {modality!r}")
    return ModelConfig.from_dict(raw, modality=modality, source=f"{modality} from {image.modality}")


def interpolate_positions(table: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """``[1 + h*w, D]`` position table -> ``[1 + H*W, D]``: the CLS row kept, the patch grid resized bicubically
    (with antialiasing, as the official ``resize_pos``)."""
    if tuple(old_grid) == tuple(new_grid):
        return table.clone()
    cls, grid = table[:1], table[1:]
    grid = grid.reshape(1, *old_grid, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(grid.float(), size=new_grid, mode="bicubic", antialias=True, align_corners=False)
    return torch.cat([cls, resized.permute(0, 2, 3, 1).reshape(-1, table.shape[1]).to(table.dtype)])


def start_tower(start: Encoder, config: ModelConfig, method: str, seed: int = 0) -> VisionTower:
    """The modality tower before training: grown from ``start``'s image tower, or random for "scratch"."""
    torch.manual_seed(seed)
    tower = VisionTower(config.vision, config.projection_dim)
    if method == "scratch":
        return tower
    if start.vision is None:
        raise ConfigError(f"{start.source}: the start encoder has no image tower to grow {config.modality} from")
    source = start.vision.state_dict()
    old_grid, new_grid = start.config.vision.grid, config.vision.grid
    state = {}
    for key, target in tower.state_dict().items():
        spatial = key.replace("temporal_attn", "self_attn").replace("temporal_layer_norm1", "layer_norm1")
        if key.endswith("temporal_embedding"):
            state[key] = torch.randn(target.shape) * TEMPORAL_EMBEDDING_STD
        elif key.endswith("position_embedding.weight"):
            state[key] = interpolate_positions(source[key], old_grid, new_grid)
        elif spatial in source and source[spatial].shape == target.shape:
            state[key] = source[spatial].clone()
        else:
            raise ConfigError(f"{start.source}: no image-tower weight to start {config.modality} weight {key} from")
    tower.load_state_dict(state)
    return tower


class PatchMasking:
    """Drop a random ``ratio`` of the patch tokens of each sample while training; the CLS token always stays.

    Attached as a forward hook on the tower's patch embedding, so tokens are selected after the position
    embedding is added and the kept ones remember where they came from. The frames of one video clip keep the
    same positions: temporal attention pairs each position across frames.
    """

    def __init__(self, ratio: float):
        if not 0.0 <= ratio < 1.0:
            raise ConfigError(f"mask ratio {ratio}: must lie in [0, 1)")
        self.ratio = ratio

    def attach(self, tower: VisionTower) -> RemovableHandle:
        return tower.vision_model.embeddings.register_forward_hook(self._select)

    def _select(self, module: PatchEmbeddings, args: tuple[Any, ...], tokens: torch.Tensor) -> torch.Tensor:
        if not module.training or self.ratio == 0.0:
            return tokens
        frames_per_clip = args[1] // module.tube if module.is_3d else args[1]
        count, length, width = tokens.shape
        patches = length - 1
        keep = max(1, round(patches * (1.0 - self.ratio)))
        clips = count // frames_per_clip
        chosen = torch.rand(clips, patches, device=tokens.device).argsort(dim=1)[:, :keep] + 1
        chosen = chosen.repeat_interleave(frames_per_clip, dim=0)
        index = torch.cat([torch.zeros(count, 1, dtype=torch.long, device=tokens.device), chosen], dim=1)
        return tokens.gather(1, index[..., None].expand(-1, -1, width))


def lora_targets(modality: str, settings: LoraSettings) -> str:
    """peft ``target_modules`` regex: the q/k/v/out projections of spatial (and optionally temporal) attention."""
    blocks = "self_attn|temporal_attn" if modality == "video" and settings.temporal else "self_attn"
    return rf".*\.({blocks})\.(q_proj|k_proj|v_proj|out_proj)"


def _trainable(tower: VisionTower, config: Stage2Config) -> nn.Module:
    """Wrap the tower with LoRA (``method == "lora"``) or leave every weight trainable."""
    if config.method != "lora":
        tower.requires_grad_(True)
        return tower
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=config.lora.rank, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                      target_modules=lora_targets(config.modality, config.lora), bias="none")
    model = get_peft_model(tower, lora)
    for name, parameter in model.named_parameters():
        if any(pattern in name for pattern in config.also_train):
            parameter.requires_grad_(True)
    return model


def bind(
    start: Encoder,
    model_config: ModelConfig,
    config: Stage2Config,
    batches: Iterator[Batch],
    device: str | torch.device = "cpu",
    log: Logger | None = None,
    every: int = 50,
    seed: int = 0,
) -> Encoder:
    """Train ``config.modality``'s tower against precomputed text embeddings; returns the merged encoder.

    ``batches`` yields (model inputs, unit text embeddings of their captions, positives mask or None).
    """
    if model_config.modality != config.modality:
        raise ConfigError(f"model config is for {model_config.modality}, stage-2 config for {config.modality}")
    tower = start_tower(start, model_config, config.method, seed)
    handle = PatchMasking(config.mask_ratio).attach(tower)
    model = _trainable(tower, config).to(device)
    temperature = LearnableTemperature().to(device)

    def batch_loss(logit_scale: torch.Tensor) -> torch.Tensor:
        inputs, text, positives = next(batches)
        media = model(inputs.to(device))
        positives = None if positives is None else positives.to(device)
        return contrastive_loss(media, text.to(device), logit_scale, positives)

    model.train()
    progress = {"stage": 2, "modality": config.modality}
    run_schedule(config.schedule, model.named_parameters(), temperature, batch_loss, progress, log, every)
    handle.remove()
    merged = model.merge_and_unload() if config.method == "lora" else model
    logit_scale = float(temperature().detach())
    return Encoder(model_config, merged.cpu().float(), start.text, logit_scale, source=f"stage2:{config.modality}")


def toy_batches(data: ToyDataset, start: Encoder, model_config: ModelConfig, config: Stage2Config,
                seed: int = 0) -> Iterator[Batch]:
    """Batches of toy scenes with one of their captions each; scenes of the same combination are positives."""
    count = min(config.scenes or data.count(config.modality), data.count(config.modality))
    scenes = data.scenes[:count]
    captions = list(dict.fromkeys(c for s in scenes for c in s.captions))
    lookup = {caption: index for index, caption in enumerate(captions)}
    caption_ids = torch.tensor([[lookup[c] for c in s.captions] for s in scenes])
    embedded = start.encode_text(captions, batch_size=512)
    generator = torch.Generator().manual_seed(seed)
    for indices in batch_indices(count, config.schedule.batch_size, generator):
        choice = torch.randint(caption_ids.shape[1], (len(indices),), generator=generator)
        text = embedded[caption_ids[indices, choice]]
        yield data.inputs(config.modality, indices, model_config.vision), text, matching_pairs(data.codes[indices])


def bind_toy(start: Encoder, data: ToyDataset, config: Stage2Config, log: Logger | None = None,
             seed: int = 0) -> Encoder:
    """Bind one modality on the toy world, starting from the stage-1 encoder."""
    grid = audio_stats = None
    if config.modality == "audio":
        grid = tuple(int(n) for n in data.stored["audio"].shape[-2:])
        audio_stats = data.audio_stats()
    model_config = modality_config(start.config, config.modality, num_frames=data.render.num_frames,
                                   audio_grid=grid, audio_stats=audio_stats)
    batches = toy_batches(data, start, model_config, config, seed)
    return bind(start, model_config, config, batches, log=log, seed=seed)


def file_batches(files: CaptionedFiles, start: Encoder, batch_size: int, workers: int = 4,
                 seed: int = 0) -> Iterator[Batch]:
    """Shuffled batches of captioned files, endlessly; identical captions in a batch are positives."""
    if len(files) < batch_size:  # drop_last would leave every pass empty: training would wait for ever
        raise ConfigError(f"{files.manifest}: {len(files)} files cannot fill one batch of {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(files, batch_size=batch_size, shuffle=True, drop_last=True,
                                         num_workers=workers, generator=generator, collate_fn=_collate)
    while True:
        for batch in loader:
            if isinstance(batch, MediaError):
                raise MediaError(files.manifest, f"a listed file cannot be used: {batch}")
            inputs, captions = batch
            captions = list(captions)
            numbering: dict[str, int] = {}
            codes = torch.tensor([[numbering.setdefault(caption, len(numbering))] for caption in captions])
            yield inputs, start.encode_text(captions), matching_pairs(codes)


def _collate(samples: list) -> Any:
    """A batch of samples, or the first sample's `MediaError` when one failed (it pickles as itself)."""
    failed = next((sample for sample in samples if isinstance(sample, MediaError)), None)
    return failed if failed is not None else torch.utils.data.default_collate(samples)


def bind_files(
    start: Encoder,
    manifest: str,
    config: Stage2Config,
    device: str | torch.device = "cuda",
    workers: int = 4,
    log: Logger | None = None,
    **model_options: Any,
) -> Encoder:
    """Bind ``config.modality`` on the (file, caption) pairs of a JSONL manifest, from ``start``'s image tower.

    ``model_options`` go to `modality_config` (``num_frames``, ``audio_grid``, ``audio_stats``); the defaults
    are the released LanguageBind settings. The language tower runs on ``device`` too, frozen.
    """
    model_config = modality_config(start.config, config.modality, **model_options)
    files = CaptionedFiles(manifest, config.modality, model_config.vision)
    files.check_files()
    home = start.device
    start.to(device)
    try:
        batches = file_batches(files, start, config.schedule.batch_size, workers)
        bound = bind(start, model_config, config, batches, device=device, log=log)
    finally:
        start.to(home)  # the caller's encoder goes back where it was
    return bound.to(home)  # and the result's new tower joins the language tower it shares with it
