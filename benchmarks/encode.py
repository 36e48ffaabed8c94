"""Encode throughput per modality and precision for a ViT-L/14-shaped LanguageBind encoder with random weights.

Prints the CPU flags that decide precision speed, then a Markdown table of items/s per modality, batch size and
precision, each precision's speed-up over fp32 and its worst cosine to fp32, and what ``auto`` picks on this
machine (`lbsearch.models.autotune`, cached per machine and model shape) with its speed-up. No download needed:
the architecture is the released Large one (24 layers, width 1024, 8 frames at 224 for video, 112x1036 mel for
audio), the weights random. Only the modality tower runs (ingestion never runs the language tower).

    python3 -m benchmarks.encode                                  # every modality, batch 8, every precision
    python3 -m benchmarks.encode --modalities image audio --batches 1 8 --precisions fp32 int8 int8-torchao
``int8`` is lbsearch's (PyTorch's dynamic quantisation); ``int8-torchao`` is torchao's int8
dynamic-activation/int8-weight, the alternative, for comparison (``pip install -e ".[bench]"``). Each precision
is warmed up with one call before the timings.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import time
from dataclasses import replace

import torch

from lbsearch.modalities import MODALITIES
from lbsearch.models import Encoder, ModelConfig, autotune, build_encoder
from lbsearch.models.precision import DEVICE_PRECISIONS, apply_to_tower

# torchao's int8 dynamic-activation/int8-weight, measured beside lbsearch's int8 (`--precisions ... int8-torchao`).
TORCHAO_INT8 = "int8-torchao"


def large_config(modality: str) -> ModelConfig:
    """The released Large architecture for one modality, as its config.json describes it."""
    vision = {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "patch_size": 14,
        "image_size": 224,
        "hidden_act": "gelu",
        "lora_r": 0,
    }
    if modality == "video":
        vision.update(add_time_attn=True, num_frames=8)
    if modality == "audio":
        vision.update(num_mel_bins=112, target_length=1036)
    text = {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "hidden_act": "gelu",
    }
    raw = {
        "architectures": [f"LanguageBind{modality.capitalize()}"],
        "projection_dim": 768,
        "vision_config": vision,
        "text_config": text,
    }
    return ModelConfig.from_dict(raw)


def converted(encoder: Encoder, precision: str) -> Encoder:
    """A copy of the fp32 ``encoder`` running at ``precision`` (its modality tower converted)."""
    tower = encoder.vision if precision == "fp32" else copy.deepcopy(encoder.vision)
    if precision == TORCHAO_INT8:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        quantize_(tower, Int8DynamicActivationInt8WeightConfig())
    elif precision != "fp32":
        apply_to_tower(tower, precision)
    result = copy.copy(encoder)
    result.vision, result.precision = tower, precision
    return result


def time_encode(encoder: Encoder, batch: torch.Tensor, min_seconds: float) -> tuple[float, torch.Tensor]:
    """(items per second, embeddings). A first call that already takes ``min_seconds`` is the measurement (a ViT-L
    on two CPU cores takes seconds per item, against which one-time start-up costs are negligible); faster cells
    are repeated until ``min_seconds`` have passed."""

    def timed() -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        out = encoder.encode(batch)
        if encoder.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, out

    first, out = timed()
    if first >= min_seconds:
        return batch.shape[0] / first, out
    runs, elapsed = 0, 0.0
    while elapsed < min_seconds:
        elapsed += timed()[0]
        runs += 1
    return runs * batch.shape[0] / elapsed, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modalities", nargs="+", default=list(MODALITIES), choices=MODALITIES)
    parser.add_argument("--batches", nargs="+", type=int, default=[8])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=None,
        help="fp32 first; default: every precision of the device (CPU: fp32 bf16 int8 int8-torchao)",
    )
    parser.add_argument("--layers", type=int, default=24, help="vision layers (24: ViT-L; fewer for a quick look)")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="time each cell for at least this long")
    args = parser.parse_args()
    kind = torch.device(args.device).type
    names = args.precisions or [*DEVICE_PRECISIONS[kind], *([TORCHAO_INT8] if kind == "cpu" else [])]
    if names[0] != "fp32":
        parser.error("--precisions must start with fp32 (the reference)")
    if TORCHAO_INT8 in names and importlib.util.find_spec("torchao") is None:
        parser.error(f'{TORCHAO_INT8} needs torchao: pip install -e ".[bench]"')

    flags = autotune.cpu_flags()
    print(
        f"device: {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    print(
        f"CPU: {autotune.cpu_name()}; "
        + ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in autotune.RELEVANT_CPU_FLAGS)
    )
    if kind == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()}")
    print()
    print(
        "| modality | layers | batch | "
        + " | ".join(f"{p} items/s" for p in names)
        + " | speed-up vs fp32 | min cosine vs fp32 | auto picks | auto speed-up |"
    )
    print("|---|---|---|" + "---|" * len(names) + "---|---|---|---|")
    torch.manual_seed(0)
    for modality in args.modalities:
        config = large_config(modality)
        config = replace(config, vision=replace(config.vision, num_hidden_layers=args.layers))
        encoder = build_encoder(config, device=args.device)
        encoder.text = None
        encoders = {name: converted(encoder, name) for name in names}
        for batch_size in args.batches:
            batch = autotune.example_inputs(config, batch_size)
            for each in encoders.values():  # warm-up: one-time costs stay out of the timings
                each.encode(batch[:1])
            rates, outputs = {}, {}
            for name, each in encoders.items():
                rates[name], outputs[name] = time_encode(each, batch, args.min_seconds)
            auto = autotune.resolve(config, encoder.vision, batch)
            cosines = {name: float((out * outputs["fp32"]).sum(-1).min()) for name, out in outputs.items()}
            cells = " | ".join(f"{rates[n]:.2f}" for n in names)
            ratios = ", ".join(f"{n} {rates[n] / rates['fp32']:.2f}x" for n in names[1:])
            agree = ", ".join(f"{n} {cosines[n]:.5f}" for n in names[1:])
            auto_ratio = f"{rates[auto] / rates['fp32']:.2f}x" if auto in rates else "-"
            print(
                f"| {modality} | {args.layers} | {batch_size} | {cells} | {ratios} | {agree} | {auto} | {auto_ratio} |",
                flush=True,
            )
        del encoder, encoders


if __name__ == "__main__":
    main()
