"""Decode cost per file: what one ingest decode task (`lbsearch.ingest.decode.decode`) costs a CPU core, for
sizing a cluster's CPUs (docs/scaling.md).

Each file is decoded whole, with the released Large preprocessing (224 px, 8 frames per clip; 112 x 1036 mel for
sound) and the default windows (10 s every 5 s), in this process on one thread, ``--repeats`` times. The median
CPU time of this process is reported: the core-seconds the file costs, whatever else runs on the machine (its
wall time is shown too). Prints a Markdown table.

    python3 -m benchmarks.decode ../shared/media/video/*.mp4 ../shared/media/audio/*.wav
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.encode import large_config
from lbsearch.ingest.decode import DecodeTask, WindowSpec, decode, follow_up_tasks
from lbsearch.modalities import embedded_as, of_file
from lbsearch.preprocess import PreprocessSettings


def decode_file(path: Path) -> tuple[int, float | None]:
    """Decode every part of one file; (inputs, duration)."""
    modality = of_file(path)
    settings = {m: PreprocessSettings.from_vision_config(large_config(m).vision) for m in embedded_as(modality)}
    first = decode(DecodeTask(str(path), modality, settings, WindowSpec(), size=path.stat().st_size))
    if first.error is not None:
        raise SystemExit(f"{path}: {first.error}")
    parts = [first, *(decode(task) for task in follow_up_tasks(first))]
    return sum(len(part.inputs) for part in parts), first.info.duration if first.info else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a decode worker
    print(f"\nload average {os.getloadavg()[0]:.1f}; medians of {args.repeats} decodes on one thread.\n")
    print("| file | seconds of media | inputs | core-seconds per file | wall seconds |")
    print("|---|---|---|---|---|")
    for path in args.files:
        cpu, wall = [], []
        for _ in range(args.repeats):
            started, cpu_started = time.perf_counter(), time.process_time()
            inputs, duration = decode_file(path)
            cpu.append(time.process_time() - cpu_started)
            wall.append(time.perf_counter() - started)
        length = f"{duration:.1f}" if duration else "-"
        print(f"| {path.name} | {length} | {inputs} | {np.median(cpu):.3f} | {np.median(wall):.3f} |")


if __name__ == "__main__":
    main()
