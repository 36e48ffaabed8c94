"""The recipe that reproduces the demo checkpoint set end to end (``lbsearch train toy``): generate the toy world,
stage 1, stage 2 per modality, save, evaluate.

    report = train_toy_set("toy")                       # -> lbsearch/assets/demo_models/{video,audio,...}
    report = train_toy_set("test", Path("/tmp/demo"))   # the CI-sized run
    report = train_toy_set(ablations=("thermal",))      # also the LoRA/full/scratch and mask-ratio table

and ``lbsearch train files`` (`train_files`: stage 2 on real (file, caption) pairs with `bind_files`, from
`load_start_point` with the settings of `file_stage`).

Each modality is saved with `save_checkpoint` (official layout, LoRA merged) and its weights are then stored in
float16 (`compact_checkpoint`): the language tower's 49408-row token table is repeated in every checkpoint, and
in float32 the set would not fit the 20 MB the repository allows. The saved checkpoints are loaded back with
`load_model_set` and evaluated on a fresh test world, so the reported numbers are those of the written files.

Not imported by ``lbsearch.train`` itself: it uses `lbsearch.eval.toyworld`, which uses ``lbsearch.train.data``.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from lbsearch.errors import ConfigError, PathError
from lbsearch.eval.toyworld import TextCache, ToyWorldEvaluation, evaluate_embeddings, split_scenes
from lbsearch.models import Encoder, load_checkpoint, load_model_set, save_checkpoint
from lbsearch.models.registry import DEMO_DIR
from lbsearch.toyworld import World
from lbsearch.train.config import (
    BOUND_MODALITIES,
    INPUT_LAYERS,
    LoraSettings,
    Schedule,
    Stage2Config,
    TrainConfig,
    preset,
)
from lbsearch.train.data import ToyDataset, load_open_clip
from lbsearch.train.loop import Logger
from lbsearch.train.stage1 import train_stage1
from lbsearch.train.stage2 import bind_files, bind_toy

# (method, mask ratio) of each ablation row; the configured setting's row reuses the demo run's encoder.
ABLATIONS = (("lora", 0.3), ("full", 0.3), ("scratch", 0.3), ("lora", 0.0), ("lora", 0.5))


def compact_checkpoint(folder: Path) -> int:
    """Rewrite a checkpoint's weights as float16 safetensors; returns the folder's size in bytes."""
    from safetensors.torch import load_file, save_file

    weights = folder / "model.safetensors"
    state = load_file(str(weights))
    # logit_scale stays float32: it is one number and exp() magnifies its rounding.
    save_file({k: v if k == "logit_scale" else v.half() for k, v in state.items()}, str(weights))
    return sum(path.stat().st_size for path in folder.iterdir())


def build_training_data(config: TrainConfig, modalities: Sequence[str] = ("image", *BOUND_MODALITIES)) -> ToyDataset:
    """The training split of the preset's world, rendered once for stage 1 (stills) and every stage 2."""
    world = World(config.data.seed, config.data.spec)
    counts = {"image": config.data.train_scenes} if "image" in modalities else {}
    for modality, stage in config.stage2.items():
        if modality in modalities:
            counts[modality] = min(stage.scenes or config.data.train_scenes, config.data.train_scenes)
    grid = (config.towers.audio_mel_bins, config.towers.audio_target_length)
    return ToyDataset.build(world, "train", counts, config.data.render, grid, workers=config.data.workers)


def stage1_probe(config: TrainConfig, eval_seed: int) -> Callable[[Encoder, int], dict]:
    """Zero-shot accuracy of the stage-1 image tower on a fresh test world, to watch stage 1 learn."""
    world = World(eval_seed, config.data.spec)
    scenes = split_scenes(world, "test")
    data = ToyDataset.build(world, "test", {"image": len(scenes)}, config.data.render, (1, 1))

    def probe(image: Encoder, step: int) -> dict:
        embeddings = {"image": image.encode(data.inputs("image", range(len(scenes)), image.config.vision))}
        # A fresh text cache: the language tower changes between probes.
        results = evaluate_embeddings({"image": image}, embeddings, scenes, world.spec, TextCache())
        return {"zero_shot": {k: round(v, 3) for k, v in results["zero_shot"]["image"].items()},
                "text_to_image_R@1": round(results["text_to_image"]["R@1"], 3)}

    return probe


def run_ablations(image: Encoder, data: ToyDataset, config: TrainConfig, modality: str,
                  evaluation: ToyWorldEvaluation, configured: tuple[Encoder, float],
                  log: Logger | None = None) -> list[dict[str, Any]]:
    """Stage 2 of one modality under each (method, mask ratio) of ABLATIONS, evaluated on ``evaluation``'s splits
    (rendered once, the image tower's embeddings reused by every row).

    ``configured``: the demo run's encoder of this modality and its training time, reused for its own row.
    """
    rows = []
    settings = config.stage2[modality]
    for method, mask_ratio in ABLATIONS:
        if (method, mask_ratio) == (settings.method, settings.mask_ratio):
            encoder, seconds = configured
        else:
            started = time.perf_counter()
            stage = replace(settings, method=method, mask_ratio=mask_ratio)
            encoder = bind_toy(image, data, stage, log=log, seed=config.seed)
            seconds = time.perf_counter() - started
        results = evaluation.evaluate({"image": image, modality: encoder})
        row = {"modality": modality, "method": method, "mask_ratio": mask_ratio, "train_s": round(seconds, 1),
               "zero_shot": results["test"]["zero_shot"][modality],
               "heldout_zero_shot": results["heldout"]["zero_shot"][modality]}
        if modality == "video":
            row["text_to_video_R@1"] = results["test"]["text_to_video"]["R@1"]
        rows.append(row)
        if log is not None:
            log({"ablation": row})
    return rows


def toy_command(preset_name: str, out: Path, eval_seed: int, ablations: Sequence[str], probe_every: int,
                threads: int | None, stage1: Path | None = None, bind: Sequence[str] = BOUND_MODALITIES) -> str:
    """The `lbsearch train toy` command line that runs `train_toy_set` with these arguments."""
    words = ["lbsearch", "train", "toy", "--preset", preset_name, "--out", str(out), "--eval-seed", str(eval_seed)]
    if stage1 is not None:
        words += ["--stage1", str(stage1)]
    if tuple(bind) != BOUND_MODALITIES:
        for modality in bind:
            words += ["--bind", modality]
    for modality in ablations:
        words += ["--ablations", modality]
    if probe_every:
        words += ["--probe-every", str(probe_every)]
    if threads is not None:
        words += ["--threads", str(threads)]
    return shlex.join(words)


def train_toy_set(
    preset_name: str = "toy",
    out: Path = DEMO_DIR,
    eval_seed: int = 1,
    ablations: Sequence[str] = (),
    probe_every: int = 0,
    threads: int | None = None,
    log: Callable[[dict], None] | None = None,
    stage1: Path | None = None,
    bind: Sequence[str] = BOUND_MODALITIES,
) -> dict:
    """Train a preset's five checkpoints into ``out/<modality>``, evaluate the written set, return the JSON-ready
    report: command, timings, threads, checkpoint sizes, the full config, every metric (and the ablation rows).

    ``ablations``: modalities to also bind under every (method, mask ratio) of `ABLATIONS`. ``probe_every``:
    log stage 1's zero-shot accuracy on test images every N steps (0: never). ``threads``: torch threads while
    training (default: the preset's). ``log`` receives the progress records. ``stage1``: start from this saved
    image checkpoint instead of training stage 1 (to re-bind or ablate modalities against a fixed language tower).
    ``bind``: the modalities to bind (default all four).
    """
    config = preset(preset_name)
    unknown = [m for m in (*ablations, *bind) if m not in BOUND_MODALITIES]
    if unknown:
        raise ConfigError(f"{unknown}: only the bound modalities {', '.join(BOUND_MODALITIES)} can be bound or ablated")
    missing = [m for m in ablations if m not in bind]
    if missing:
        raise ConfigError(f"ablations of {missing} need them bound too (--bind)")
    out = Path(out)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or config.threads)
    try:
        report = _train(config, out, eval_seed, ablations, probe_every, log, stage1, bind)
    finally:
        torch.set_num_threads(previous_threads)
    command = toy_command(preset_name, out, eval_seed, ablations, probe_every, threads, stage1, bind)
    return {"command": command, **report}


def _stage1_checkpoint(folder: Path, config: TrainConfig) -> Encoder:
    """A saved stage 1 to bind against: an image checkpoint with its language tower, whose input size is the
    preset's render size (stage 2 trains on the preset's renders, and evaluation renders at the towers' size)."""
    image = load_checkpoint(folder)
    if image.modality != "image" or image.text is None:
        raise ConfigError(f"--stage1 {folder}: need an image checkpoint with its language tower, got {image.modality}")
    size, render = image.config.vision.image_size[0], config.data.render.size
    if size != render:
        raise ConfigError(f"--stage1 {folder}: its image tower reads {size}-pixel images, but the "
                          f"{config.name!r} preset renders {render}-pixel scenes")
    return image


def _train(config: TrainConfig, out: Path, eval_seed: int, ablations: Sequence[str], probe_every: int,
           log: Logger | None, stage1: Path | None, bind: Sequence[str]) -> dict[str, Any]:
    timings: dict[str, float] = {}
    started = time.perf_counter()
    # A saved stage 1 is checked before minutes of rendering.
    given = _stage1_checkpoint(stage1, config) if stage1 is not None else None
    data = build_training_data(config, (*(() if given else ("image",)), *bind))
    timings["generate"] = time.perf_counter() - started
    if given is None:
        mark = time.perf_counter()
        probe = stage1_probe(config, eval_seed) if probe_every else None
        image = train_stage1(config, data, log=log, check=probe, check_every=probe_every)
        timings["stage1"] = time.perf_counter() - mark
    else:
        image = given
    encoders: dict[str, Encoder] = {"image": image}
    for modality in bind:
        mark = time.perf_counter()
        encoders[modality] = bind_toy(image, data, config.stage2[modality], log=log, seed=config.seed)
        timings[f"stage2_{modality}"] = time.perf_counter() - mark

    sizes = {}
    for modality, encoder in encoders.items():
        save_checkpoint(encoder, out / modality, safetensors=True)
        sizes[modality] = compact_checkpoint(out / modality)
    mark = time.perf_counter()
    loaded = load_model_set({m: out / m for m in encoders})
    evaluation = ToyWorldEvaluation(eval_seed, config.data.spec)
    results = evaluation.evaluate(loaded)
    timings["evaluate"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - started

    report: dict[str, Any] = {
        "out": str(out),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "threads": torch.get_num_threads(),
        "sizes_bytes": {**sizes, "total": sum(sizes.values())},
        "config": config.to_dict(),
        "results": results,
    }
    rows = []
    for modality in ablations:
        configured = (encoders[modality], timings[f"stage2_{modality}"])
        rows += run_ablations(image, data, config, modality, evaluation, configured, log)
    if rows:
        report["ablations"] = rows
    return report


# ---------------------------------------------------------------------------------------------- real files

OPEN_CLIP_PREFIX = "open_clip:"


def load_start_point(spec: str) -> Encoder:
    """The stage-2 start point: ``open_clip:MODEL_NAME:PRETRAINED`` (an OpenCLIP model, `load_open_clip`), else a
    LanguageBind image checkpoint folder or hub id (`load_checkpoint`)."""
    if spec.startswith(OPEN_CLIP_PREFIX):
        model_name, sep, pretrained = spec[len(OPEN_CLIP_PREFIX) :].partition(":")
        if not sep or not model_name or not pretrained:
            raise ConfigError(f"start point {spec!r}: expected open_clip:MODEL_NAME:PRETRAINED "
                              "(PRETRAINED: a weights file or an OpenCLIP tag)")
        return load_open_clip(model_name, pretrained)
    start = load_checkpoint(spec)
    if start.modality != "image":
        raise ConfigError(f"start point {spec}: is a {start.modality} checkpoint; stage 2 starts from an image one")
    return start


def file_stage(
    modality: str,
    steps: int,
    batch_size: int,
    lr: float,
    warmup_steps: int | None = None,
    method: str = "lora",
    lora_rank: int = 16,
    lora_alpha: float = 16.0,
    mask_ratio: float = 0.5,
) -> Stage2Config:
    """Stage-2 settings for binding real files. As in the toy recipe, the layers that meet the new signal train in
    full beside LoRA: the input layers, or for video the new temporal blocks. Warm-up defaults to 10% of the steps."""
    also_train = ("temporal",) if modality == "video" else INPUT_LAYERS
    warmup = steps // 10 if warmup_steps is None else warmup_steps
    schedule = Schedule(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup)
    return Stage2Config(modality, schedule, method=method, lora=LoraSettings(rank=lora_rank, alpha=lora_alpha),
                        mask_ratio=mask_ratio, also_train=also_train)


def train_files(
    manifest: Path,
    stage: Stage2Config,
    start: str,
    out: Path,
    device: str | torch.device = "cuda",
    workers: int = 4,
    num_frames: int | None = None,
    log: Logger | None = None,
) -> dict[str, Any]:
    """``lbsearch train files``: bind ``stage.modality`` on a JSONL manifest's (file, caption) pairs from the start
    point ``start`` (see `load_start_point`) with ``stage`` (see `file_stage`), save the checkpoint to ``out`` and
    return the JSON-ready summary. ``num_frames`` (video only) overrides the released 8 frames per clip.

    The arguments are checked before the start point loads (a large download or file) and the training begins.
    """
    modality = stage.modality
    if num_frames is not None and modality != "video":
        raise ConfigError(f"a frame count ({num_frames}) is for binding video, not {modality}")
    if not Path(manifest).is_file():
        raise PathError(manifest, "no such training manifest")
    encoder = load_start_point(start)
    started = time.perf_counter()
    options = {} if num_frames is None else {"num_frames": num_frames}
    bound = bind_files(encoder, str(manifest), stage, device=device, workers=workers, log=log, **options)
    save_checkpoint(bound, out, safetensors=True)
    return {"out": str(out), "modality": modality, "start": start, "steps": stage.schedule.steps,
            "seconds": round(time.perf_counter() - started, 1), "logit_scale": bound.logit_scale}
