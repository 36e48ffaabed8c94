"""Training data: the toy world as in-memory tensors, captioned files for real use, and OpenCLIP start points.

Toy world: scenes are rendered as arrays (``lbsearch.toyworld.render_modality``) and turned into model inputs by
the same preprocessing functions files go through (``lbsearch.preprocess``), so a model trained here reads the
files a toy library holds (``tests/test_train.py`` checks the two paths agree).

Real use: a JSONL manifest of ``{"path": ..., "caption": ...}`` lines (paths relative to the manifest's folder)
read through the modality's preprocessor, and an OpenCLIP model as the stage-1 start point, mapped onto the
LanguageBind parameter names (see `encoder_from_open_clip`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lbsearch.errors import ConfigError, LbsearchError, MediaError
from lbsearch.models.config import ModelConfig, VisionConfig
from lbsearch.models.encoder import Encoder
from lbsearch.models.tokenizer import CONTEXT_LENGTH, EOS_ID
from lbsearch.models.towers import TextTower, VisionTower
from lbsearch.preprocess import (
    PreprocessSettings,
    audio_tensor,
    depth_pixels,
    normalize_fbank,
    preprocessor_for,
    rgb_pixels,
    still_tensor,
    video_tensor,
)
from lbsearch.search.templates import TEMPLATES
from lbsearch.toyworld import VISIBLE_ATTRIBUTES, RenderConfig, Scene, World, WorldSpec, render_modality

# ---------------------------------------------------------------------------------------------- language

# What a text can mention: the visible attributes and the sound (which follows from the shape).
MENTIONABLE = (*VISIBLE_ATTRIBUTES, "sound")
# Every prompt template any modality's zero-shot protocol uses, as phrasing for stage-1 texts.
PROMPT_PHRASINGS: tuple[str, ...] = tuple(dict.fromkeys(t for ts in TEMPLATES.values() for t in ts))


def _without_article(phrase: str) -> str:
    for article in ("a ", "an "):
        if phrase.startswith(article):
            return phrase[len(article) :]
    return phrase


def describe(attributes: Mapping[str, str]) -> str:
    """A noun phrase without article naming exactly the given attributes: "hot red circle moving left".

    One attribute gives the zero-shot class name of that value ("circle", "red thing", "thing moving left",
    "near thing", "hot thing", "low hum"), so stage-1 texts and evaluation prompts share one grammar.
    """
    unknown = set(attributes) - set(MENTIONABLE)
    if unknown or not attributes:
        raise ConfigError(f"cannot describe attributes {sorted(attributes)}; choose from {MENTIONABLE}")
    if set(attributes) == {"sound"}:
        return _without_article(attributes["sound"])
    words = [attributes[name] for name in ("temperature", "distance", "colour") if name in attributes]
    words.append(attributes.get("shape", "thing"))
    if "direction" in attributes:
        words += ["moving", attributes["direction"]]
    if "sound" in attributes:
        words += ["with", attributes["sound"]]
    return " ".join(words)


def class_name(attribute: str, value: str) -> str:
    """The zero-shot class name of one attribute value (``describe`` of that value alone)."""
    return describe({attribute: value})


@dataclass(frozen=True)
class CaptionSampler:
    """Stage-1 texts for a scene: its own captions, or a description of a few of its attributes.

    Each text comes with the visible attributes it pins down (the sound pins the shape), which decide the
    positives of the contrastive loss: a text matches every image that agrees on those attributes.
    """

    full_caption_fraction: float = 0.5
    template_fraction: float = 0.5
    # How often a partial description names 1, 2, 3, ... attributes.
    mention_weights: tuple[float, ...] = (1.0, 1.0, 1.0)

    def sample(self, scene: Scene, rng: random.Random) -> tuple[str, tuple[str, ...]]:
        if rng.random() < self.full_caption_fraction:
            return rng.choice(scene.captions), VISIBLE_ATTRIBUTES
        count = rng.choices(range(1, len(self.mention_weights) + 1), weights=self.mention_weights)[0]
        names = rng.sample(MENTIONABLE, count)
        phrase = describe({name: scene.attributes[name] for name in names})
        text = rng.choice(PROMPT_PHRASINGS).format(c=phrase) if rng.random() < self.template_fraction else phrase
        pinned = {"shape" if name == "sound" else name for name in names}
        return text, tuple(name for name in VISIBLE_ATTRIBUTES if name in pinned)


def attribute_codes(scenes: Sequence[Scene], spec: WorldSpec) -> torch.Tensor:
    """``[N, 5]`` value index of each visible attribute of each scene."""
    values = spec.values
    return torch.tensor([[values[name].index(s.attributes[name]) for name in VISIBLE_ATTRIBUTES] for s in scenes])


def matching_pairs(codes: torch.Tensor, pinned: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, B]`` positives, row = media, column = text: media j matches text i when they agree on every attribute
    text i pins (``pinned[i]``: ``[5]`` bool; all attributes when None)."""
    agree = codes[:, None, :] == codes[None, :, :]  # [media, text, attribute]
    if pinned is not None:
        agree = agree | ~pinned[None, :, :]
    return agree.all(dim=-1)


# ---------------------------------------------------------------------------------------------- model inputs


def raw_audio_settings(vision: VisionConfig | tuple[int, int], sample_rate: int) -> PreprocessSettings:
    """Audio settings that leave the log-mel bank unnormalised (mean 0, 2 * std = 1)."""
    mel, length = (vision.num_mel_bins, vision.target_length) if isinstance(vision, VisionConfig) else vision
    return PreprocessSettings(
        image_size=(mel, length), num_frames=1, num_mel_bins=mel, target_length=length,
        sample_rate=sample_rate, audio_mean=0.0, audio_std=0.5, max_depth=10.0,
    )


def model_inputs(modality: str, stored: torch.Tensor, vision: VisionConfig) -> torch.Tensor:
    """Rendered arrays (as `ToyDataset` stores them) -> the batch of model inputs their files would give, through
    the preprocessors' own batched paths."""
    settings = PreprocessSettings.from_vision_config(vision)
    if modality == "image":
        return still_tensor(rgb_pixels(stored), settings.crop_size)
    if modality == "thermal":  # a greyscale frame reads as RGB with three equal channels
        return still_tensor(rgb_pixels(stored[..., None].expand(*stored.shape, 3)), settings.crop_size)
    if modality == "depth":
        return still_tensor(depth_pixels(stored, settings.max_depth), settings.crop_size)
    if modality == "video":
        batch, frames = stored.shape[:2]
        video = video_tensor(stored.flatten(0, 1), settings)  # [3, B*T, S, S]
        return video.unflatten(1, (batch, frames)).transpose(0, 1).contiguous()
    if modality == "audio":
        return normalize_fbank(stored, settings)
    raise ConfigError(f"unknown modality {modality!r}")


def _render_batch(scenes: list[Scene], modalities: tuple[str, ...], render: RenderConfig,
                  audio_grid: tuple[int, int]) -> dict[str, np.ndarray]:
    out: dict[str, list[np.ndarray]] = {m: [] for m in modalities}
    settings = raw_audio_settings(audio_grid, render.sample_rate)
    for scene in scenes:
        for modality in modalities:
            array = render_modality(scene, modality, render)
            if modality == "audio":
                wave = torch.from_numpy(array)[None]
                array = audio_tensor(wave, render.sample_rate, settings, source=scene.id).half().numpy()
            out[modality].append(array)
    return {m: np.stack(arrays) for m, arrays in out.items()}


# Model inputs of a whole modality are kept when they fit this many bytes (the toy preset's stills and audio
# take 0.1-0.3 GB); larger ones (the toy preset's video, 2.4 GB) are preprocessed batch by batch.
INPUT_CACHE_BYTES = 1 << 30


@dataclass
class ToyDataset:
    """Scenes of one split with their rendered media, kept compact (uint8 pixels, int32 depth, fp16 log-mel).

    ``stored[m]`` covers the first ``len(stored[m])`` scenes; audio is the unnormalised log-mel bank, whose
    mean and std (``audio_stats``) become the audio checkpoint's normalisation constants.
    """

    scenes: list[Scene]
    spec: WorldSpec
    render: RenderConfig
    stored: dict[str, torch.Tensor]
    codes: torch.Tensor
    # Model inputs by (modality, settings); None where they would not fit INPUT_CACHE_BYTES.
    _inputs: dict[tuple[str, PreprocessSettings], torch.Tensor | None] = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls,
        world: World,
        split: str,
        counts: Mapping[str, int],
        render: RenderConfig,
        audio_grid: tuple[int, int],
        workers: int = 1,
    ) -> ToyDataset:
        """Render scenes ``0 .. n-1`` of ``split``, each modality for its own count (``{"image": 8000, ...}``)."""
        total = max(counts.values(), default=0)
        scenes = world.scenes(split, total)
        chunk = 64
        jobs = []
        for start in range(0, total, chunk):
            needed = tuple(m for m, n in counts.items() if n > start)
            jobs.append((start, scenes[start : start + chunk], needed))
        parts: dict[str, list[np.ndarray]] = {m: [] for m in counts}

        def collect(start: int, result: dict[str, np.ndarray]) -> None:
            for modality, arrays in result.items():
                parts[modality].append(arrays[: max(0, counts[modality] - start)])

        if workers > 1:
            with ProcessPoolExecutor(max_workers=workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
                futures = [(s, pool.submit(_render_batch, b, m, render, audio_grid)) for s, b, m in jobs]
                for start, future in futures:
                    collect(start, future.result())
        else:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # the filter banks are small; extra threads only contend
            try:
                for start, batch, needed in jobs:
                    collect(start, _render_batch(batch, needed, render, audio_grid))
            finally:
                torch.set_num_threads(threads)
        # torch cannot index uint16 tensors; depth millimetres fit int32 exactly.
        stored = {m: torch.from_numpy(np.concatenate(p).astype(np.int32) if m == "depth" else np.concatenate(p))
                  for m, p in parts.items() if p}
        return cls(scenes, world.spec, render, stored, attribute_codes(scenes, world.spec))

    def count(self, modality: str) -> int:
        if modality not in self.stored:
            raise ConfigError(f"this toy dataset holds no {modality} media (it has {sorted(self.stored)})")
        return len(self.stored[modality])

    def inputs(self, modality: str, indices: torch.Tensor | Sequence[int], vision: VisionConfig) -> torch.Tensor:
        """Model inputs of the given scenes, preprocessed once per modality and settings where they fit
        `INPUT_CACHE_BYTES` (training asks for every scene many times over)."""
        count = self.count(modality)
        indices = torch.as_tensor(indices)
        key = (modality, PreprocessSettings.from_vision_config(vision))
        if key not in self._inputs:
            first = model_inputs(modality, self.stored[modality][:1], vision)
            fits = first.numel() * first.element_size() * count <= INPUT_CACHE_BYTES
            self._inputs[key] = self._preprocess_all(modality, vision) if fits else None
        cached = self._inputs[key]
        if cached is None:
            return model_inputs(modality, self.stored[modality][indices], vision)
        return cached[indices]

    def _preprocess_all(self, modality: str, vision: VisionConfig) -> torch.Tensor:
        stored = self.stored[modality]
        # In chunks: the float intermediates of a whole split at once would need several times the result.
        chunk = 256
        return torch.cat([model_inputs(modality, stored[start : start + chunk], vision)
                          for start in range(0, len(stored), chunk)])

    def audio_stats(self) -> tuple[float, float]:
        """Mean and standard deviation of the unnormalised log-mel banks."""
        bank = self.stored["audio"].float()
        return float(bank.mean()), float(bank.std())


# ---------------------------------------------------------------------------------------------- real use


class CaptionedFiles(torch.utils.data.Dataset):
    """Media files with captions, from a JSONL manifest: one ``{"path": ..., "caption": ...}`` per line.

    Items are ``(model input, caption)``; files go through the modality's preprocessor with the settings of
    the checkpoint being trained (``vision``), exactly as ingestion will read them later.
    """

    def __init__(self, manifest: str | Path, modality: str, vision: VisionConfig):
        self.manifest = Path(manifest)
        self.preprocess = preprocessor_for(modality, vision)
        self.items: list[tuple[Path, str]] = []
        try:
            lines = self.manifest.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise LbsearchError(f"{self.manifest}: cannot read the training manifest: {exc}") from exc
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                path, caption = Path(record["path"]), str(record["caption"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise LbsearchError(
                    f"{self.manifest}:{number}: expected a JSON object with \"path\" and \"caption\" ({exc!r})"
                ) from exc
            if not caption.strip():
                raise LbsearchError(f"{self.manifest}:{number}: empty caption for {path}")
            self.items.append((path if path.is_absolute() else self.manifest.parent / path, caption))
        if not self.items:
            raise LbsearchError(f"{self.manifest}: the manifest lists no files")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str] | MediaError:
        """The file's model input and caption, or the `MediaError` that decoding it raised: returned, not raised,
        so that it crosses from a DataLoader worker as itself (torch re-raises a worker's exception as text)."""
        path, caption = self.items[index]
        try:
            return self.preprocess(path), caption
        except MediaError as exc:
            return exc

    def check_files(self) -> None:
        """Fail early, naming the file, when a listed file is missing (decoding errors surface as MediaError)."""
        for path, _ in self.items:
            if not path.is_file():
                raise MediaError(path, f"listed in {self.manifest} but not found")


# ---------------------------------------------------------------------------------------------- OpenCLIP


def _open_clip_activation(block: Any) -> str:
    name = type(block.mlp.gelu).__name__
    if name == "QuickGELU":
        return "quick_gelu"
    if name == "GELU":
        return "gelu"
    raise ConfigError(f"OpenCLIP activation {name} has no LanguageBind equivalent")


def _map_blocks(prefix: str, target: str, count: int, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One OpenCLIP residual stack -> LanguageBind encoder layers (fused q/k/v split in three)."""
    mapped = {}
    for i in range(count):
        src, dst = f"{prefix}.resblocks.{i}.", f"{target}.encoder.layers.{i}."
        for kind in ("weight", "bias"):
            for part, tensor in zip(("q", "k", "v"), state.pop(f"{src}attn.in_proj_{kind}").chunk(3), strict=True):
                mapped[f"{dst}self_attn.{part}_proj.{kind}"] = tensor
            for old, new in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                             ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                mapped[f"{dst}{new}.{kind}"] = state.pop(f"{src}{old}.{kind}")
    return mapped


def open_clip_state_to_languagebind(state: Mapping[str, torch.Tensor], vision_layers: int,
                                    text_layers: int) -> dict[str, torch.Tensor]:
    """Rename an OpenCLIP ViT CLIP state dict to the LanguageBind (HF-CLIP) names.

    OpenCLIP -> LanguageBind:
    ``visual.conv1`` -> ``vision_model.embeddings.patch_embedding``; ``visual.class_embedding`` ->
    ``...embeddings.class_embedding``; ``visual.positional_embedding`` -> ``...embeddings.position_embedding.weight``;
    ``visual.ln_pre`` -> ``vision_model.pre_layrnorm``; ``visual.transformer.resblocks.i.attn.in_proj_{weight,bias}``
    -> ``...encoder.layers.i.self_attn.{q,k,v}_proj`` (split in three); ``attn.out_proj`` -> ``self_attn.out_proj``;
    ``ln_1``/``ln_2`` -> ``layer_norm1``/``layer_norm2``; ``mlp.c_fc``/``mlp.c_proj`` -> ``mlp.fc1``/``mlp.fc2``;
    ``visual.ln_post`` -> ``vision_model.post_layernorm``; ``visual.proj`` ([width, dim], applied as ``x @ proj``)
    -> ``visual_projection.weight`` (its transpose). Text: ``token_embedding`` and ``positional_embedding`` ->
    ``text_model.embeddings.{token,position}_embedding``; ``transformer.resblocks`` as above under ``text_model``;
    ``ln_final`` -> ``text_model.final_layer_norm``; ``text_projection`` (transposed) -> ``text_projection.weight``;
    ``logit_scale`` stays. Any key left over (layer scale, attention pooling, ...) is an error.
    """
    state = {k: v.detach().float().cpu() for k, v in state.items() if k != "attn_mask"}
    mapped = {
        "vision_model.embeddings.patch_embedding.weight": state.pop("visual.conv1.weight"),
        "vision_model.embeddings.class_embedding": state.pop("visual.class_embedding"),
        "vision_model.embeddings.position_embedding.weight": state.pop("visual.positional_embedding"),
        "visual_projection.weight": state.pop("visual.proj").T.contiguous(),
        "text_model.embeddings.token_embedding.weight": state.pop("token_embedding.weight"),
        "text_model.embeddings.position_embedding.weight": state.pop("positional_embedding"),
        "logit_scale": state.pop("logit_scale"),
    }
    projection = state.pop("text_projection", None)
    if projection is None:
        projection = state.pop("text_projection.weight").T
    mapped["text_projection.weight"] = projection.T.contiguous()
    for kind in ("weight", "bias"):
        mapped[f"vision_model.pre_layrnorm.{kind}"] = state.pop(f"visual.ln_pre.{kind}")
        mapped[f"vision_model.post_layernorm.{kind}"] = state.pop(f"visual.ln_post.{kind}")
        mapped[f"text_model.final_layer_norm.{kind}"] = state.pop(f"ln_final.{kind}")
    mapped.update(_map_blocks("visual.transformer", "vision_model", vision_layers, state))
    mapped.update(_map_blocks("transformer", "text_model", text_layers, state))
    if state:
        raise ConfigError(f"OpenCLIP weights without a LanguageBind counterpart: {sorted(state)[:20]}")
    return mapped


def _block_differences(tower: str, blocks: Sequence[nn.Module]) -> list[str]:
    found = []
    if not all(isinstance(getattr(block, "attn", None), nn.MultiheadAttention) for block in blocks):
        found.append(f"{tower} blocks with their own attention (qk-norm, cosine attention or head scaling)")
    if not all(isinstance(getattr(block, name, None), nn.Identity) for block in blocks for name in ("ls_1", "ls_2")):
        found.append(f"LayerScale in the {tower} blocks")
    return found


def open_clip_differences(model: nn.Module) -> list[str]:
    """What an OpenCLIP model computes that LanguageBind towers cannot (empty when it maps exactly).

    Each of these would change the embeddings silently if its weights were copied over regardless.
    """
    visual = getattr(model, "visual", None)
    if visual is None or not hasattr(visual, "conv1") or not hasattr(visual, "transformer"):
        return ["a vision tower other than OpenCLIP's ViT (conv1 + transformer)"]
    if not all(hasattr(model, name) for name in ("transformer", "token_embedding", "ln_final", "text_projection")):
        return ["a language tower other than OpenCLIP's own transformer (a Hugging Face text model, say)"]
    found = []
    if getattr(visual, "attn_pool", None) is not None:
        found.append("attention pooling")
    if isinstance(visual.ln_pre, nn.Identity):
        found.append("no LayerNorm before the vision transformer")
    if getattr(visual, "pool_type", "tok") != "tok":
        found.append(f"{visual.pool_type!r} image pooling (LanguageBind reads the class token)")
    if getattr(visual, "proj", None) is None:
        found.append("no image projection")
    if len({*_pair(visual.image_size)}) != 1 or len({*_pair(visual.conv1.kernel_size)}) != 1:
        found.append("non-square images or patches")
    if getattr(model, "text_pool_type", "argmax") != "argmax":
        found.append(f"{model.text_pool_type!r} text pooling (LanguageBind reads the end-of-text token)")
    if getattr(model, "attn_mask", None) is None:
        found.append("a bidirectional language tower (LanguageBind's is causal)")
    projection = model.text_projection
    if projection is None or (isinstance(projection, nn.Linear) and projection.bias is not None):
        found.append("a text projection that is missing or has a bias")
    if getattr(model, "logit_bias", None) is not None:
        found.append("a logit bias (a sigmoid-loss model such as SigLIP)")
    # Queries are tokenised with CLIP's BPE: 49408 tokens, end-of-text last, 77 positions.
    if model.token_embedding.num_embeddings != EOS_ID + 1 or model.positional_embedding.shape[0] != CONTEXT_LENGTH:
        found.append("a tokenizer other than CLIP's (vocabulary or context length)")
    return found + _block_differences("image", visual.transformer.resblocks) + _block_differences(
        "text", model.transformer.resblocks)


def _pair(value: int | Sequence[int]) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, Sequence) else (value, value)


def encoder_from_open_clip(model: torch.nn.Module, source: str = "open_clip") -> Encoder:
    """An OpenCLIP ViT CLIP model (``open_clip.create_model_and_transforms(...)[0]``) as a LanguageBind image
    encoder: the stage-1 start point for binding new modalities on real data. A variant the towers cannot
    reproduce (`open_clip_differences`) is a `ConfigError` naming what differs."""
    differences = open_clip_differences(model)
    if differences:
        raise ConfigError(f"{source}: this OpenCLIP model does not map onto LanguageBind towers: "
                          + "; ".join(differences))
    visual = model.visual
    blocks, text_blocks = visual.transformer.resblocks, model.transformer.resblocks
    image_size = visual.image_size if isinstance(visual.image_size, tuple) else (visual.image_size,) * 2
    raw = {
        "architectures": ["LanguageBindImage"],
        "projection_dim": int(visual.proj.shape[1]),
        "vision_config": {
            "hidden_size": visual.conv1.out_channels,
            "intermediate_size": blocks[0].mlp.c_fc.out_features,
            "num_hidden_layers": len(blocks),
            "num_attention_heads": blocks[0].attn.num_heads,
            "image_size": int(image_size[0]),
            "patch_size": int(visual.conv1.kernel_size[0]),
            "hidden_act": _open_clip_activation(blocks[0]),
            "lora_r": 0,
        },
        "text_config": {
            "hidden_size": model.transformer.width,
            "intermediate_size": text_blocks[0].mlp.c_fc.out_features,
            "num_hidden_layers": len(text_blocks),
            "num_attention_heads": text_blocks[0].attn.num_heads,
            "vocab_size": model.token_embedding.num_embeddings,
            "max_position_embeddings": model.positional_embedding.shape[0],
            "hidden_act": _open_clip_activation(text_blocks[0]),
        },
    }
    config = ModelConfig.from_dict(raw, source=source)
    state = open_clip_state_to_languagebind(model.state_dict(), len(blocks), len(text_blocks))
    logit_scale = float(state.pop("logit_scale"))
    vision = VisionTower(config.vision, config.projection_dim)
    text = TextTower(config.text, config.projection_dim)
    vision.load_state_dict({k: v for k, v in state.items() if k.startswith(("vision_model.", "visual_projection."))})
    text.load_state_dict({k: v for k, v in state.items() if k.startswith(("text_model.", "text_projection."))})
    return Encoder(config, vision, text, logit_scale, source=source)


def load_open_clip(model_name: str, pretrained: str) -> Encoder:
    """``open_clip.create_model_and_transforms(model_name, pretrained=pretrained)`` as a LanguageBind image
    encoder (``pretrained``: a local weights file or an OpenCLIP tag, which needs the network)."""
    import open_clip

    try:
        model = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)[0]
    except (RuntimeError, OSError, ValueError) as exc:
        raise ConfigError(f"cannot build OpenCLIP {model_name} from {pretrained}: {exc}") from exc
    return encoder_from_open_clip(model, source=f"open_clip:{model_name}:{pretrained}")
