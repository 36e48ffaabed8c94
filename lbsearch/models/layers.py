"""Transformer building blocks shared by the language and modality towers (HF-CLIP parameter names)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lbsearch.errors import ConfigError


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


_ACTIVATIONS = {
    "gelu": F.gelu,
    "quick_gelu": quick_gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


def activation(name: str):
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ConfigError(f"unsupported hidden_act {name!r}; known: {sorted(_ACTIVATIONS)}") from None


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v/out projections, run through PyTorch's SDPA."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ConfigError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        batch, length, width = x.shape
        shape = (batch, length, self.heads, width // self.heads)
        q, k, v = (proj(x).view(shape).transpose(1, 2) for proj in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, act: str):
        super().__init__()
        self.act = activation(act)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    """Pre-LayerNorm transformer layer; with ``num_frames`` (video) temporal attention runs first.

    In the temporal block each token position attends across the frames of its own clip. Its parameters keep
    the official names so a checkpoint's state dict loads without renaming.
    """

    def __init__(self, width: int, heads: int, mlp_width: int, act: str, eps: float, num_frames: int = 0):
        super().__init__()
        self.num_frames = num_frames
        if num_frames:
            self.temporal_embedding = nn.Parameter(torch.randn(1, num_frames, width) * width**-0.5)
            self.temporal_layer_norm1 = nn.LayerNorm(width, eps=eps)
            self.temporal_attn = Attention(width, heads)
        self.layer_norm1 = nn.LayerNorm(width, eps=eps)
        self.self_attn = Attention(width, heads)
        self.layer_norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, mlp_width, act)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        if self.num_frames:
            x = self._temporal(x)
        x = x + self.self_attn(self.layer_norm1(x), causal=causal)
        return x + self.mlp(self.layer_norm2(x))

    def _temporal(self, x: torch.Tensor) -> torch.Tensor:
        frames_total, tokens, width = x.shape
        t = self.num_frames
        # (b t) n d -> (b n) t d
        x = x.view(frames_total // t, t, tokens, width).transpose(1, 2).reshape(-1, t, width)
        if t > 1:
            x = x + self.temporal_embedding[:, :t]
        x = x + self.temporal_attn(self.temporal_layer_norm1(x))
        return x.view(frames_total // t, tokens, t, width).transpose(1, 2).reshape(frames_total, tokens, width)


class Encoder(nn.Module):
    def __init__(self, layers: list[EncoderLayer]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, causal=causal)
        return x
