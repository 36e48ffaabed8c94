"""The latency of a repeated CLI search: `lbsearch search TEXT` run again and again in fresh processes, as a user
at a terminal runs it, for this tree and, side by side, for an older one (``--before``).

A small library (generated PNGs, the bundled demo image model) is indexed once by this tree. Each round runs, for
each tree in turn, two searches back to back; the second one is timed (the first warms the OS file cache, which a
user's earlier search has warmed too). Rounds alternate the trees so that other work on the machine weighs on both
alike. Reports per tree the median and fastest second-search wall time and the ratio of medians, as a Markdown
table. Run from the repository root:

    git archive BASE_COMMIT | tar -x -C /tmp/lbsearch-before
    python3 -m benchmarks.cli_search --before /tmp/lbsearch-before --rounds 7
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
QUERY = "a red square on a dark background"


def write_images(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for number in range(count):
        pixels = np.zeros((48, 48, 3), np.uint8)
        pixels[...] = rng.integers(0, 256, 3)
        top, left = rng.integers(0, 24, 2)
        pixels[top : top + 20, left : left + 20] = rng.integers(0, 256, 3)
        Image.fromarray(pixels).save(folder / f"picture-{number:03d}.png")


def lbsearch(tree: Path, *args: str) -> float:
    """Run `python -m lbsearch.cli ARGS` with ``tree``'s lbsearch; returns its wall time in seconds."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lbsearch.cli", *args], cwd=tree, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, help="an older lbsearch tree to compare with (e.g. git archive)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=50)
    args = parser.parse_args()
    trees = {"this tree": REPO}
    if args.before is not None:
        trees = {"before": args.before.resolve(), **trees}

    with tempfile.TemporaryDirectory() as scratch:
        media, index = Path(scratch) / "media", Path(scratch) / "index"
        write_images(media, args.images)
        demo_image = REPO / "lbsearch" / "assets" / "demo_models" / "image"
        lbsearch(REPO, "index", str(media), "--index", str(index), "--model", f"image={demo_image}", "--workers", "0")
        search = ("search", QUERY, "--in", "image", "-k", "5", "--index", str(index))
        seconds: dict[str, list[float]] = {name: [] for name in trees}
        for _ in range(args.rounds):
            for name, tree in trees.items():
                lbsearch(tree, *search)
                seconds[name].append(lbsearch(tree, *search))

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; {args.rounds} rounds, {args.images} images\n")
    print("| tree | second search, median s | fastest s | median vs before |")
    print("|---|---:|---:|---:|")
    base = statistics.median(seconds["before"]) if "before" in seconds else None
    for name, times in seconds.items():
        median = statistics.median(times)
        ratio = f"{median / base:.2f}x" if base else "-"
        print(f"| {name} | {median:.2f} | {min(times):.2f} | {ratio} |")


if __name__ == "__main__":
    main()
