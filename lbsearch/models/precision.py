"""Numeric precisions an encoder runs at, and how each is applied to its towers.

- ``fp32``: the released weights as they are (exact to the official code);
- ``bf16`` / ``fp16``: both towers cast to that float type;
- ``int8`` (CPU): the modality tower's Linear layers run with int8 weights and dynamically quantised int8
  activations (PyTorch's dynamic quantisation); the language tower stays fp32 (one short query at a time: not
  worth it);
- ``auto``: the modality tower stays fp32 until its first batch, which calibrates the choice
  (`lbsearch.models.autotune`): the fastest precision whose embeddings agree with fp32.
"""

from __future__ import annotations

import warnings

import torch

from lbsearch.errors import ConfigError

AUTO = "auto"
FP32 = "fp32"
INT8 = "int8"
FLOAT_TYPES = {FP32: torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# What each kind of device can run; the first is the reference the others are compared with.
DEVICE_PRECISIONS = {"cpu": (FP32, "bf16", INT8), "cuda": (FP32, "fp16", "bf16")}


def device_type(device: str | torch.device) -> str:
    return torch.device(device).type


def check(precision: str, device: str | torch.device) -> str:
    """``precision`` if ``device`` can run it (``auto`` included), else a `ConfigError` naming the choices."""
    kind = device_type(device)
    allowed = DEVICE_PRECISIONS.get(kind, (FP32,))
    if precision != AUTO and precision not in allowed:
        raise ConfigError(
            f"precision {precision!r} is not available on {kind}; choose one of {', '.join((AUTO, *allowed))}"
        )
    return precision


def text_dtype(precision: str, device: str | torch.device) -> torch.dtype:
    """The float type of the language tower at ``precision``: half types as asked; int8 keeps it fp32; ``auto``
    gives fp16 on CUDA (its tensor cores) and fp32 elsewhere."""
    if precision == AUTO:
        return torch.float16 if device_type(device) == "cuda" else torch.float32
    return FLOAT_TYPES.get(precision, torch.float32)


def apply_to_tower(tower: torch.nn.Module, precision: str) -> torch.nn.Module:
    """``tower`` (fp32) converted in place to ``precision`` (not ``auto``); returns it."""
    if precision == INT8:
        # PyTorch's dynamic quantisation (fbgemm kernels), not torchao's int8: on an AVX2 CPU without VNNI
        # torchao's int8 dynamic-activation/int8-weight ran far slower than fp32, this faster
        # (benchmarks/encode.py, docs/benchmarks.md). It warns that it leaves PyTorch in 2.10 (for torchao); torch
        # is pinned at 2.9, where it is the maintained path that is fast on such CPUs.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "torch.ao.quantization is deprecated", DeprecationWarning)
            torch.ao.quantization.quantize_dynamic(tower.float(), {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
        return tower
    return tower.to(dtype=FLOAT_TYPES[precision])
