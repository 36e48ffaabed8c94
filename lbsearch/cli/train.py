"""`lbsearch train`: the toy demo set, or a new modality bound on real files."""


import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from lbsearch.cli.common import (
    DeviceOption,
    JsonOption,
    console,
    print_json,
    train_app,
)
from lbsearch.errors import ConfigError

# --------------------------------------------------------------------------------------------- train


def log_record(record: dict) -> None:
    """A training progress record: one JSON object per line on stderr, so stdout stays the result."""
    print(json.dumps(record, default=str), file=sys.stderr, flush=True)


def print_bars(bars: dict[str, dict[str, Any]]) -> None:
    table = Table("bar", "value", "needs", "passed", title="The issue's bars (test split)")
    for name, bar in bars.items():
        value = "-" if bar["value"] is None else f"{bar['value']:.3f}"
        passed = {True: "[green]yes[/]", False: "[red]no[/]", None: "not measured"}[bar["passed"]]
        table.add_row(name, value, f">= {bar['bar']}", passed)
    console.print(table)


@train_app.command("toy")
def train_toy(
    preset_name: Annotated[str, typer.Option("--preset", help="Training preset: toy (the demo set) or test.")] = "toy",
    out: Annotated[
        Path | None, typer.Option("--out", help="Where the checkpoint folders go (default: the bundled demo set's).")
    ] = None,
    eval_seed: Annotated[int, typer.Option(help="Seed of the fresh world the saved set is tested on.")] = 1,
    ablations: Annotated[
        list[str] | None,
        typer.Option("--ablations", help="MODALITY to also run the LoRA/full/scratch and mask-ratio ablations on; "
                     "repeatable."),
    ] = None,
    probe_every: Annotated[
        int, typer.Option(help="Log stage 1's zero-shot accuracy on test images every N steps (0: never).")
    ] = 0,
    stage1: Annotated[
        Path | None,
        typer.Option("--stage1", help="Start from this saved image checkpoint instead of training stage 1."),
    ] = None,
    bind: Annotated[
        list[str] | None, typer.Option("--bind", help="MODALITY to bind (repeatable; default all four).")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="Torch threads (default: the preset's).")] = None,
    report_file: Annotated[Path | None, typer.Option("--report", help="Also write the JSON report here.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Reproduce the demo checkpoint set: render the toy world, train stage 1 and bind video, audio, depth and
    thermal, save the five checkpoints, then load them back and evaluate them on a fresh world. Progress goes to
    stderr as one JSON object per line.

    Examples:
      lbsearch train toy                                   # writes lbsearch/assets/demo_models/
      lbsearch train toy --preset test --out /tmp/demo --json
      lbsearch train toy --ablations thermal --ablations audio --report /tmp/demo-report.json
      lbsearch train toy --stage1 lbsearch/assets/demo_models/image --bind thermal --ablations thermal --out /tmp/a
    """
    from lbsearch.models.registry import DEMO_DIR
    from lbsearch.train.config import BOUND_MODALITIES
    from lbsearch.train.recipe import train_toy_set

    if report_file is not None and not report_file.parent.is_dir():  # checked now, not after the training
        raise ConfigError(f"--report {report_file}: the folder {report_file.parent} does not exist")
    report = train_toy_set(
        preset_name,
        out or DEMO_DIR,
        eval_seed=eval_seed,
        ablations=ablations or (),
        probe_every=probe_every,
        stage1=stage1,
        bind=bind or BOUND_MODALITIES,
        threads=threads,
        log=log_record,
    )
    if report_file is not None:
        report_file.write_text(json.dumps(report, indent=2, default=str))
    if as_json:
        print_json(report)
        return
    print_bars(report["results"]["bars"])
    timings = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in report["timings_s"].items())
    console.print(f"Timings ({report['threads']} threads): {timings}")
    sizes = report["sizes_bytes"]
    saved = ", ".join(m for m in sizes if m != "total")
    console.print(f"Checkpoints ({saved}; {sizes['total'] / 1e6:.1f} MB) in [bold]{report['out']}[/]", highlight=False)
    for row in report.get("ablations", []):
        console.print(f"ablation {row['modality']} {row['method']} mask {row['mask_ratio']}: "
                      f"zero-shot {row['zero_shot']} ({row['train_s']} s)", highlight=False)


@train_app.command("files")
def train_files(
    manifest: Annotated[Path, typer.Argument(help='JSONL of {"path": ..., "caption": ...} lines.')],
    modality: Annotated[str, typer.Option("--modality", help="The modality to bind: video, audio, depth, thermal.")],
    start: Annotated[
        str,
        typer.Option("--start", help="open_clip:MODEL_NAME:PRETRAINED, or a LanguageBind image checkpoint folder "
                     "or hub id."),
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder the bound checkpoint is saved to.")],
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = 1000,
    batch_size: Annotated[int, typer.Option(help="(file, caption) pairs per step.")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).")] = 1e-4,
    warmup: Annotated[int | None, typer.Option(help="Linear warm-up steps (default: 10% of --steps).")] = None,
    lora_rank: Annotated[int, typer.Option(help="LoRA rank (--method lora).")] = 16,
    lora_alpha: Annotated[float, typer.Option(help="LoRA alpha (--method lora).")] = 16.0,
    mask_ratio: Annotated[float, typer.Option(help="Fraction of patch tokens dropped per sample in training.")] = 0.5,
    method: Annotated[
        str, typer.Option(help="lora (image-initialised, LoRA), full (image-initialised) or scratch.")
    ] = "lora",
    device: DeviceOption = None,
    workers: Annotated[int, typer.Option(help="Decode processes (0: decode in this process).")] = 4,
    frames: Annotated[int | None, typer.Option(help="Video frames per clip (default: the released 8).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Bind a new modality on your own (file, caption) pairs (LanguageBind stage 2: frozen language tower, LoRA,
    patch masking) and save it as a LanguageBind checkpoint. Progress goes to stderr as JSON lines.

    Examples:
      lbsearch train files audiocaps.jsonl --modality audio --start open_clip:ViT-L-14:/models/clip.bin --out ./my_audio
      lbsearch train files scans.jsonl --modality depth --start LanguageBind/LanguageBind_Image --out ./my_depth
    """
    from lbsearch.library import default_device
    from lbsearch.train import recipe

    stage = recipe.file_stage(modality, steps, batch_size, lr, warmup, method, lora_rank, lora_alpha, mask_ratio)
    summary = recipe.train_files(manifest, stage, start, out, device=device or default_device(), workers=workers,
                                 num_frames=frames, log=log_record)
    if as_json:
        print_json(summary)
    else:
        console.print(f"Bound {modality} in {summary['seconds']} s; checkpoint saved to [bold]{out}[/] "
                      f"(`lbsearch models verify {out}`).", highlight=False)
