"""What the toy-world evaluation and the training inputs do again and again, side by side in one run.

Two Markdown tables, random-weight towers of the "toy" preset's sizes (no training needed):

1. A model set, then ``--ablations`` ablation sets (the same image tower with a new thermal tower, as each row of
   ``lbsearch train toy --ablations thermal``), evaluated on one fresh world: each set with its own
   ``evaluate_toyworld`` call, against one `ToyWorldEvaluation` that keeps the rendered and embedded splits.
   Counted: seconds, renders (``ToyDataset.build`` calls), media-tower batches and language-tower calls.
2. Training batches of the toy preset (128 scenes, 56 pixels): model inputs kept per modality
   (`ToyDataset.inputs`) against preprocessing every batch again.

    python3 -m benchmarks.evaluate
    python3 -m benchmarks.evaluate --ablations 4 --test-scenes 230 --heldout-scenes 26 --scenes 2048
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch

from lbsearch.eval.toyworld import ToyWorldEvaluation, evaluate_toyworld
from lbsearch.models import Encoder, build_encoder
from lbsearch.toyworld import World
from lbsearch.train import ToyDataset, modality_config, preset
from lbsearch.train import data as train_data

CONFIG = preset("toy")


def random_set(seed: int) -> dict[str, Encoder]:
    """Image, thermal, video and audio towers of the toy preset's sizes sharing one language tower."""
    torch.manual_seed(seed)
    image = build_encoder(CONFIG.towers.image_config(CONFIG.data.render.size))
    encoders = {"image": image}
    grid = (CONFIG.towers.audio_mel_bins, CONFIG.towers.audio_target_length)
    for modality in ("thermal", "video", "audio"):
        config = modality_config(image.config, modality, num_frames=CONFIG.data.render.num_frames, audio_grid=grid,
                                 audio_stats=(-8.0, 4.0))
        encoders[modality] = build_encoder(config)
        encoders[modality].text = image.text
    return encoders


def counted(run: Callable[[], Any]) -> tuple[float, Counter]:
    """Seconds of ``run()`` and how often it rendered, ran a media tower and ran the language tower."""
    calls: Counter = Counter()
    build, encode, encode_text = ToyDataset.build, Encoder.encode, Encoder.encode_text

    def counting(name: str, function: Callable) -> Callable:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapper

    ToyDataset.build = counting("renders", build)  # type: ignore[method-assign]
    Encoder.encode = counting("media batches", encode)  # type: ignore[method-assign]
    Encoder.encode_text = counting("text calls", encode_text)  # type: ignore[method-assign]
    try:
        started = time.perf_counter()
        run()
        return time.perf_counter() - started, calls
    finally:
        ToyDataset.build, Encoder.encode, Encoder.encode_text = build, encode, encode_text  # type: ignore[method-assign]


def evaluation_table(args: argparse.Namespace) -> None:
    models = random_set(0)
    sets = [models]
    for seed in range(1, args.ablations + 1):
        torch.manual_seed(seed)
        thermal = build_encoder(models["thermal"].config)
        thermal.text = models["image"].text
        sets.append({"image": models["image"], "thermal": thermal})
    counts = (args.test_scenes, args.heldout_scenes)

    def fresh() -> None:
        for encoders in sets:
            evaluate_toyworld(encoders, args.seed, CONFIG.data.spec, *counts)

    def kept() -> None:
        evaluation = ToyWorldEvaluation(args.seed, CONFIG.data.spec, *counts)
        for encoders in sets:
            evaluation.evaluate(encoders)

    rows = [("`evaluate_toyworld` per set", *counted(fresh)), ("one `ToyWorldEvaluation`", *counted(kept))]
    print(f"\n1 model set + {args.ablations} ablation sets, {args.test_scenes} test + {args.heldout_scenes} held-out "
          f"scenes, {torch.get_num_threads()} threads\n")
    print("| evaluation | s | renders | media batches | text calls | time ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, seconds, calls in rows:
        print(f"| {name} | {seconds:.1f} | {calls['renders']} | {calls['media batches']} | {calls['text calls']} "
              f"| {seconds / rows[0][1]:.2f} |")


def inputs_table(args: argparse.Namespace) -> None:
    modalities = ("image", "depth", "thermal", "audio")
    grid = (CONFIG.towers.audio_mel_bins, CONFIG.towers.audio_target_length)
    data = ToyDataset.build(World(0), "train", dict.fromkeys(modalities, args.scenes), CONFIG.data.render, grid)
    image = CONFIG.towers.image_config(CONFIG.data.render.size)
    batch = CONFIG.stage1.schedule.batch_size
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randperm(args.scenes, generator=generator)[:batch] for _ in range(args.batches)]
    print(f"\n{args.batches} batches of {batch} from {args.scenes} scenes at {CONFIG.data.render.size} pixels\n")
    print("| modality | kept: ms/batch (first call) | kept: ms/batch (later) | every batch: ms/batch | ratio |")
    print("|---|---:|---:|---:|---:|")
    for modality in modalities:
        vision = modality_config(image, modality, audio_grid=grid, audio_stats=data.audio_stats()).vision
        kept = ToyDataset(data.scenes, data.spec, data.render, data.stored, data.codes)
        started = time.perf_counter()
        kept.inputs(modality, batches[0], vision)
        first = time.perf_counter() - started
        started = time.perf_counter()
        for indices in batches:
            kept.inputs(modality, indices, vision)
        later = (time.perf_counter() - started) / len(batches)
        limit = train_data.INPUT_CACHE_BYTES
        train_data.INPUT_CACHE_BYTES = 0  # too large to keep: every batch is preprocessed
        try:
            again = ToyDataset(data.scenes, data.spec, data.render, data.stored, data.codes)
            started = time.perf_counter()
            for indices in batches:
                again.inputs(modality, indices, vision)
            every = (time.perf_counter() - started) / len(batches)
        finally:
            train_data.INPUT_CACHE_BYTES = limit
        print(f"| {modality} | {first * 1e3:.1f} | {later * 1e3:.2f} | {every * 1e3:.2f} | {every / later:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ablations", type=int, default=2, help="ablation sets after the model set")
    parser.add_argument("--test-scenes", type=int, default=64)
    parser.add_argument("--heldout-scenes", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1, help="seed of the evaluation world")
    parser.add_argument("--scenes", type=int, default=1024, help="training scenes for the input table")
    parser.add_argument("--batches", type=int, default=50)
    args = parser.parse_args()
    evaluation_table(args)
    inputs_table(args)


if __name__ == "__main__":
    main()
