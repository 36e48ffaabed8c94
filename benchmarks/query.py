"""End-to-end query latency of text->video and audio->video over a library of 100k and 1M indexed 768-d vectors.

The library is real: clustered synthetic embeddings (`benchmarks.index.clustered_library`) are stored as files of
windowed segments through the metadata database, and the FAISS index is built from the database by
`Library.reindex`, once exact ("IDMap2,Flat") and once with the approximate type lbsearch picks for the size. The
encoders are ViT-L/14-shaped LanguageBind checkpoints with random weights (`benchmarks.encode.large_config`), saved
and loaded like released ones, and loaded before timing. Each query is timed in parts:

- encode: the query embedding (text: the language tower; audio: decoding, filter bank and the audio tower);
- index search: the FAISS search `Library.search` issues for k=10 hits (`engine.OVERFETCH` neighbours per hit);
- rest: everything else `Library.search` does (metadata lookups, grouping, calibration), i.e. end-to-end minus
  the two above;
- end-to-end: `Library.search(...)` as a user calls it.

Recall@10 of the approximate index is measured against the exact one on the benchmark's own query embeddings and on
held-out synthetic text-like queries. The memory-bandwidth floor of an exact scan is the index size divided by the
read bandwidth of this machine (a numpy pass over a large array, one thread as a batch-1 FAISS flat scan is).

    python3 -m benchmarks.query                 # 100k and 1M vectors
    python3 -m benchmarks.query --quick         # 20k vectors: smoke test
    python3 -m benchmarks.query --sizes 100000 --text-queries 50 --audio-queries 10
"""

from __future__ import annotations

import argparse
import gc
import math
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import soundfile
import torch

from benchmarks.encode import large_config
from benchmarks.index import clustered_library
from lbsearch import Library
from lbsearch.models import build_encoder, save_checkpoint
from lbsearch.search.engine import SearchEngine
from lbsearch.search.request import FileQuery
from lbsearch.storage.database import Database
from lbsearch.storage.records import FileVectors, MediaInfo, NewVector
from lbsearch.storage.vectorindex import EXACT_FACTORY, VectorIndex, choose_factory

QUICK_SIZE = 20_000
K = 10
SEGMENTS_PER_FILE = 10  # 10 s windows every 5 s: a 55 s clip
FILES_PER_TRANSACTION = 2_000
SAMPLE_RATE = 16_000
AUDIO_SECONDS = 5.0
SUBJECTS = [
    "a dog",
    "a red car",
    "two children",
    "an old man",
    "a cat",
    "rain",
    "a crowd",
    "a train",
    "waves",
    "a bird",
]
SCENES = ["at night", "in the snow", "on a beach", "in a kitchen", "on a city street", "in a forest"]
SYNTHETIC_QUERIES = 200
BANDWIDTH_ARRAY_BYTES = 1 << 30  # far larger than any CPU cache


@dataclass
class Timings:
    """Seconds per query for each part."""

    encode: list[float] = field(default_factory=list)
    search: list[float] = field(default_factory=list)
    end_to_end: list[float] = field(default_factory=list)

    @property
    def rest(self) -> list[float]:
        return [e2e - enc - s for e2e, enc, s in zip(self.end_to_end, self.encode, self.search, strict=True)]


@dataclass(frozen=True)
class Row:
    """One line of the table: a size, an index type and a query kind."""

    n: int
    dim: int
    factory: str
    tuned: str  # the search parameter the build tuned, e.g. "nprobe=24", or "-"
    query: str
    timings: Timings
    recall: float  # recall@10 against the exact index, on this kind's query embeddings
    recall_synthetic: float  # ... on held-out synthetic text-like queries
    build_s: float


@contextmanager
def stage_clock() -> Iterator[dict[str, Any]]:
    """Time the encoding and the FAISS search inside `Library.search` calls (by wrapping the two functions that do
    them), and keep the last query embedding. Yields ``{"encode": s, "search": s, "embedding": array}``."""
    spent: dict[str, Any] = {"encode": 0.0, "search": 0.0, "embedding": None}
    query_vector, index_search = SearchEngine.query_vector, VectorIndex.search

    def timed_query_vector(*args: Any, **kwargs: Any) -> np.ndarray:
        started = time.perf_counter()
        spent["embedding"] = query_vector(*args, **kwargs)
        spent["encode"] += time.perf_counter() - started
        return spent["embedding"]

    def timed_index_search(*args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        started = time.perf_counter()
        found = index_search(*args, **kwargs)
        spent["search"] += time.perf_counter() - started
        return found

    SearchEngine.query_vector, VectorIndex.search = timed_query_vector, timed_index_search
    try:
        yield spent
    finally:
        SearchEngine.query_vector, VectorIndex.search = query_vector, index_search


def read_bandwidth(nbytes: int, repeats: int = 5) -> float:
    """Bytes per second of one thread reading a float32 array of ``nbytes`` (best of ``repeats``)."""
    array = np.ones(nbytes // 4, dtype=np.float32)  # written once, so every page is resident
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        array.sum()
        best = min(best, time.perf_counter() - started)
    return array.nbytes / best


def save_random_checkpoints(folder: Path) -> dict[str, str]:
    """ViT-L/14-shaped video and audio checkpoints with random weights sharing one language tower, as released
    (kept in ``folder`` for later runs)."""
    paths = {modality: str(folder / modality) for modality in ("video", "audio")}
    if all((Path(path) / "config.json").exists() for path in paths.values()):
        return paths
    torch.manual_seed(0)
    video, audio = build_encoder(large_config("video")), build_encoder(large_config("audio"))
    audio.text = video.text
    for encoder in (video, audio):
        save_checkpoint(encoder, paths[encoder.modality], safetensors=True)
    return paths


def write_query_sounds(folder: Path, count: int) -> list[Path]:
    """Short WAVs to search with: tones and noise, a different one each."""
    rng = np.random.default_rng(0)
    seconds = np.arange(int(AUDIO_SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
    paths = []
    for number in range(count):
        wave = 0.2 * np.sin(2 * np.pi * rng.uniform(100, 2000) * seconds) + 0.05 * rng.standard_normal(seconds.size)
        paths.append(folder / f"query{number}.wav")
        soundfile.write(paths[-1], wave.astype(np.float32), SAMPLE_RATE)
    return paths


def query_texts(count: int) -> list[str]:
    return [f"{SUBJECTS[i % len(SUBJECTS)]} {SCENES[(i // len(SUBJECTS)) % len(SCENES)]}" for i in range(count)]


def store_clips(db: Database, model_id: int, vectors: np.ndarray) -> None:
    """Store ``vectors`` as video clips of SEGMENTS_PER_FILE windows each, through the database's own writes."""
    files = math.ceil(len(vectors) / SEGMENTS_PER_FILE)
    for first in range(0, files, FILES_PER_TRANSACTION):
        numbers = range(first, min(first + FILES_PER_TRANSACTION, files))
        ids = db.upsert_files(
            [
                {
                    "path": f"/bench/clips/{n:07d}.mp4",
                    "root": "/bench/clips",
                    "size": 1,
                    "mtime_ns": 0,
                    "content_hash": f"{n:040x}",
                    "modality": "video",
                    "item_key": f"file:/bench/clips/{n:07d}.mp4",
                }
                for n in numbers
            ]
        )
        batch = []
        for file_id, n in zip(ids, numbers, strict=True):
            rows = vectors[n * SEGMENTS_PER_FILE : (n + 1) * SEGMENTS_PER_FILE]
            windows = [NewVector(model_id, "video", row, 5.0 * s, 5.0 * s + 10.0) for s, row in enumerate(rows)]
            batch.append(FileVectors(file_id, windows, MediaInfo(duration=5.0 * SEGMENTS_PER_FILE + 5.0)))
        db.store_vectors(batch)


def measure(lib: Library, queries: dict[str, list[dict[str, Any]]]) -> tuple[dict[str, Timings], dict[str, np.ndarray]]:
    """Per query kind: the timings of each `Library.search(**query)` (after one untimed warm-up) and the query
    embeddings."""
    timings, embeddings = {}, {}
    for kind, searches in queries.items():
        lib.search(**searches[0], modalities=["video"], k=K)
        timings[kind], vectors = Timings(), []
        for query in searches:
            with stage_clock() as spent:
                started = time.perf_counter()
                lib.search(**query, modalities=["video"], k=K)
                timings[kind].end_to_end.append(time.perf_counter() - started)
            timings[kind].encode.append(spent["encode"])
            timings[kind].search.append(spent["search"])
            vectors.append(spent["embedding"])
        embeddings[kind] = np.stack(vectors)
    return timings, embeddings


def percentiles_ms(values: list[float]) -> str:
    p50, p95 = np.percentile(np.asarray(values) * 1000, [50, 95])
    return f"{p50:.1f} / {p95:.1f}"


def run_size(
    n: int, work: Path, checkpoints: dict[str, str], queries: dict[str, list[dict[str, Any]]], device: str
) -> list[Row]:
    folder = work / f"library-{n}"
    shutil.rmtree(folder, ignore_errors=True)
    with Library.open(folder, device=device) as lib:
        lib.use_models(checkpoints)
        dim = lib.encoder("video", text_only=True).dim
        media, synthetic = clustered_library(n, dim, SYNTHETIC_QUERIES)
        started = time.perf_counter()
        store_clips(lib.db, lib.model_id("video"), media)
        print(f"{n:,} vectors stored in {time.perf_counter() - started:.0f} s", flush=True)
        del media
        gc.collect()

    rows: list[Row] = []
    exact_top: dict[str, np.ndarray] = {}
    # "" = the type lbsearch chooses for the size, when that is not the exact one already.
    factories = [EXACT_FACTORY] + ([""] if choose_factory(n, dim) != EXACT_FACTORY else [])
    for factory in factories:
        # A fresh Library per index type: only one index of this size is in memory at a time.
        with Library.open(folder, device=device) as lib:
            started = time.perf_counter()
            (built,) = lib.reindex(factory)
            build_s = time.perf_counter() - started
            print(f"  {built['factory']} built in {build_s:.0f} s", flush=True)
            timings, embeddings = measure(lib, queries)
            embeddings["synthetic text"] = synthetic
            index = lib.store.index(lib.model_id("video"), "video")
            found = {kind: index.search(vectors, K)[1] for kind, vectors in embeddings.items()}
            exact_top = exact_top or found
            recall = {kind: _recall(found[kind], exact_top[kind]) for kind in found}
            tuned = next((f"{p}={built[p]}" for p in ("nprobe", "efSearch") if p in built), "-")
            rows += [
                Row(n, dim, built["factory"], tuned, kind, timing, recall[kind], recall["synthetic text"], build_s)
                for kind, timing in timings.items()
            ]
            del index
        gc.collect()
    return rows


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return sum(len(np.intersect1d(row, exact)) for row, exact in zip(found, truth, strict=True)) / truth.size


def markdown_table(rows: list[Row]) -> str:
    lines = [
        "| vectors | index | query | encode ms p50 / p95 | index search ms p50 / p95 | rest ms p50 / p95 "
        "| end-to-end ms p50 / p95 | recall@10 (these queries / synthetic text) | build s |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        index = f"`{row.factory}`" + (f" {row.tuned}" if row.tuned != "-" else "")
        lines.append(
            f"| {row.n:,} | {index} | {row.query} | {percentiles_ms(row.timings.encode)} "
            f"| {percentiles_ms(row.timings.search)} | {percentiles_ms(row.timings.rest)} "
            f"| {percentiles_ms(row.timings.end_to_end)} | {row.recall:.3f} / {row.recall_synthetic:.3f} "
            f"| {row.build_s:.0f} |"
        )
    return "\n".join(lines)


def goals(rows: list[Row], bandwidth: float) -> list[str]:
    """One line per size: the exact scan against its bandwidth floor, the approximate index against 10 ms.

    The index search does not depend on the query kind, so every query's search counts."""
    lines = []
    for n, dim in sorted({(row.n, row.dim) for row in rows}):
        floor_ms = 1000 * n * dim * 4 / bandwidth
        by_factory: dict[str, list[Row]] = {}
        for row in rows:
            if row.n == n:
                by_factory.setdefault(row.factory, []).append(row)
        line = f"- {n:,} vectors: bandwidth floor of an exact scan {floor_ms:.1f} ms"
        for factory, found in by_factory.items():
            p50 = 1000 * float(np.median([s for row in found for s in row.timings.search]))
            line += f"; `{factory}` index search p50 {p50:.2f} ms"
            line += f" = {p50 / floor_ms:.2f}x the floor" if factory == EXACT_FACTORY else ""
            line += f" at recall@10 {min(row.recall for row in found):.3f}" if factory != EXACT_FACTORY else ""
        lines.append(line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--quick", action="store_true", help=f"one small size ({QUICK_SIZE:,}) for a smoke test")
    parser.add_argument("--text-queries", type=int, default=40)
    parser.add_argument("--audio-queries", type=int, default=8)
    parser.add_argument("--work", type=Path, default=None, help="folder for checkpoints and libraries (default: temp)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    sizes = [QUICK_SIZE] if args.quick else args.sizes

    work = Path(tempfile.mkdtemp(prefix="lbsearch-query-bench-")) if args.work is None else args.work
    work.mkdir(parents=True, exist_ok=True)
    try:
        checkpoints = save_random_checkpoints(work / "checkpoints")
        queries = {
            "text->video": [{"text": text} for text in query_texts(args.text_queries)],
            "audio->video": [{"like": FileQuery(str(path))} for path in write_query_sounds(work, args.audio_queries)],
        }
        rows = [row for n in sizes for row in run_size(n, work, checkpoints, queries, args.device)]
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    bandwidth = read_bandwidth(BANDWIDTH_ARRAY_BYTES)
    print(
        f"\n{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads), device {args.device}; "
        f"k={K}; one-thread read bandwidth {bandwidth / 1e9:.1f} GB/s\n"
    )
    print(markdown_table(rows))
    print()
    print("\n".join(goals(rows, bandwidth)))


if __name__ == "__main__":
    main()
