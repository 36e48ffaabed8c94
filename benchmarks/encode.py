"""Encode throughput per modality for a ViT-L/14-shaped LanguageBind encoder with random weights.

Prints a Markdown table of items/s at each batch size and precision. No download needed: the architecture is the
released Large one (24 layers, width 1024, 8 frames at 224 for video, 112x1036 mel for audio), the weights random.

    python benchmarks/encode.py                       # every modality, batch 1 and 8, fp32 (+bf16 on CPU)
    python benchmarks/encode.py --modalities image audio --batches 1 8 --dtypes fp32 bf16
On CUDA, fp16 and bf16 are measured too.
"""

from __future__ import annotations

import argparse
import time

import torch

from lbsearch.modalities import MODALITIES
from lbsearch.models import ModelConfig, build_encoder

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def input_shape(config: ModelConfig) -> tuple[int, ...]:
    h, w = config.vision.image_size
    if config.modality == "video":
        return (3, config.vision.num_frames, h, w)
    return (3, h, w)


def time_encode(encoder, batch: torch.Tensor, min_seconds: float) -> float:
    """Items per second. A first call that already takes ``min_seconds`` is the measurement (a ViT-L on two
    CPU cores takes seconds per item, against which one-time start-up costs are negligible); faster cells are
    warmed up and repeated until ``min_seconds`` have passed."""

    def timed() -> float:
        start = time.perf_counter()
        encoder.encode(batch)
        if encoder.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    first = timed()
    if first >= min_seconds:
        return batch.shape[0] / first
    runs, elapsed = 0, 0.0
    while elapsed < min_seconds:
        elapsed += timed()
        runs += 1
    return runs * batch.shape[0] / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modalities", nargs="+", default=list(MODALITIES), choices=MODALITIES)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument(
        "--dtypes",
        nargs="+",
        default=None,
        choices=list(DTYPES),
        help="default: fp32 and bf16 on CPU; fp32, fp16 and bf16 on CUDA",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="time each cell for at least this long")
    args = parser.parse_args()
    dtypes = args.dtypes or (["fp32", "fp16", "bf16"] if args.device == "cuda" else ["fp32", "bf16"])

    torch.manual_seed(0)
    print(f"device: {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}\n")
    print("| modality | input | batch | " + " | ".join(f"{d} items/s" for d in dtypes) + " | speed-up vs fp32 |")
    print("|---|---|---|" + "---|" * len(dtypes) + "---|")
    for modality in args.modalities:
        config = large_config(modality)
        encoder = build_encoder(config, device=args.device)
        for batch_size in args.batches:
            batch = torch.randn(batch_size, *input_shape(config))
            rates = []
            for name in dtypes:
                encoder.to(dtype=DTYPES[name])
                rates.append(time_encode(encoder, batch, args.min_seconds))
            ratios = ", ".join(f"{d} {r / rates[0]:.2f}x" for d, r in zip(dtypes[1:], rates[1:], strict=True))
            cells = " | ".join(f"{r:.2f}" for r in rates)
            print(
                f"| {modality} | {'x'.join(map(str, input_shape(config)))} | {batch_size} | {cells} | {ratios} |",
                flush=True,
            )
        del encoder


if __name__ == "__main__":
    main()
