"""The two towers of a LanguageBind checkpoint: a ViT for the modality and the CLIP language transformer.

Module and parameter names follow the official (HF-CLIP) layout, so a released state dict maps onto
``VisionTower`` / ``TextTower`` by stripping a prefix (see `checkpoint.py`).
"""

from __future__ import annotations

import torch
from torch import nn

from lbsearch.models.config import TextConfig, VisionConfig
from lbsearch.models.layers import Encoder, EncoderLayer


def clip_init(table: nn.Embedding, std: float) -> None:
    """CLIP's N(0, std^2) start for an embedding table (PyTorch's N(0, 1) default is far too large for them).

    Scaling the default draw gives that distribution without drawing the (49408-row) token table twice.
    """
    with torch.no_grad():
        table.weight.mul_(std)


class PatchEmbeddings(nn.Module):
    """Patches + CLS + learned positions, initialised as CLIP's.

    ``vl``: a Conv2d per frame and one CLS embedding. ``vl_new`` (V1.5): a Conv3d over ``tube_size`` frames
    and one CLS embedding per tube, with the same position table added in every frame.
    """

    def __init__(self, config: VisionConfig):
        super().__init__()
        width, patch = config.hidden_size, config.patch_size
        self.is_3d = config.clip_type == "vl_new"
        if self.is_3d:
            self.tube = config.tube_size
            self.tubes = config.num_frames // config.tube_size
            kernel = (config.tube_size, patch, patch)
            self.patch_embedding = nn.Conv3d(config.num_channels, width, kernel, stride=kernel, bias=False)
            self.class_embedding = nn.Parameter(torch.randn(self.tubes, width) * width**-0.5)
        else:
            self.patch_embedding = nn.Conv2d(config.num_channels, width, patch, stride=patch, bias=False)
            self.class_embedding = nn.Parameter(torch.randn(width) * width**-0.5)
        self.position_embedding = nn.Embedding(config.num_positions, width)
        clip_init(self.position_embedding, width**-0.5)

    def forward(self, frames: torch.Tensor, num_frames: int) -> torch.Tensor:
        """``frames``: ``[B*T, C, H, W]`` -> tokens ``[B*T, 1 + patches, D]``."""
        if self.is_3d:
            clips = frames.unflatten(0, (-1, num_frames)).transpose(1, 2)  # b c t h w
            patches = self.patch_embedding(clips).flatten(3).permute(0, 2, 3, 1)  # b t' (hw) d
            cls = self.class_embedding.expand(patches.shape[0], -1, -1).unsqueeze(2)
            tokens = torch.cat([cls.to(patches.dtype), patches], dim=2) + self.position_embedding.weight
            return tokens.flatten(0, 1)
        patches = self.patch_embedding(frames).flatten(2).transpose(1, 2)  # n (hw) d
        cls = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight


class VisionTransformer(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        width, eps = config.hidden_size, config.layer_norm_eps
        self.num_frames = config.num_frames
        self.embeddings = PatchEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(width, eps=eps)  # sic: the official parameter name
        frames = config.num_frames if config.add_time_attn else 0
        layer = [
            EncoderLayer(width, config.num_attention_heads, config.intermediate_size, config.hidden_act, eps, frames)
            for _ in range(config.num_hidden_layers)
        ]
        self.encoder = Encoder(layer)
        self.post_layernorm = nn.LayerNorm(width, eps=eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, C, T, H, W]`` (video) or ``[B, C, H, W]`` -> pooled ``[B, D]``: per-frame CLS, mean over frames."""
        if pixels.ndim == 5:
            batch, frames = pixels.shape[0], pixels.shape[2]
            pixels = pixels.transpose(1, 2).flatten(0, 1)
        else:
            batch, frames = pixels.shape[0], 1
        x = self.pre_layrnorm(self.embeddings(pixels, frames))
        x = self.encoder(x)
        cls = self.post_layernorm(x[:, 0])
        return cls.view(batch, frames, -1).mean(dim=1)


class TextTransformer(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        width, eps = config.hidden_size, config.layer_norm_eps
        self.embeddings = TextEmbeddings(config)
        layers = [
            EncoderLayer(width, config.num_attention_heads, config.intermediate_size, config.hidden_act, eps)
            for _ in range(config.num_hidden_layers)
        ]
        self.encoder = Encoder(layers)
        self.final_layer_norm = nn.LayerNorm(width, eps=eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``[N, L]`` token ids -> ``[N, D]``: the final state at the first end-of-text token.

        Causal attention alone suffices: padding only follows the end-of-text token, which never sees it.
        """
        x = self.encoder(self.embeddings(ids), causal=True)
        x = self.final_layer_norm(x)
        eos = ids.argmax(dim=-1)  # EOS has the largest id; argmax returns its first occurrence
        return x[torch.arange(x.shape[0], device=x.device), eos]


class TextEmbeddings(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        clip_init(self.token_embedding, 0.02)
        clip_init(self.position_embedding, 0.01)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(ids) + self.position_embedding.weight[: ids.shape[1]]


class VisionTower(nn.Module):
    """``vision_model`` + ``visual_projection``: media tensor -> unnormalised embedding."""

    def __init__(self, config: VisionConfig, projection_dim: int):
        super().__init__()
        self.vision_model = VisionTransformer(config)
        self.visual_projection = nn.Linear(config.hidden_size, projection_dim, bias=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual_projection(self.vision_model(pixels))


class TextTower(nn.Module):
    """``text_model`` + ``text_projection``: token ids -> unnormalised embedding."""

    def __init__(self, config: TextConfig, projection_dim: int):
        super().__init__()
        self.text_model = TextTransformer(config)
        self.text_projection = nn.Linear(config.hidden_size, projection_dim, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text_projection(self.text_model(ids))
