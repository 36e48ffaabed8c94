"""Exact scan, plain HNSW32, the fixed-nprobe IVF (before issue 14) and the chosen adaptive IVF, side by side,
on synthetic embeddings with a modality gap, with recall@10 per query kind.

For each size: build time, bytes per vector (size of the written index file), recall@10 against exact search
for each query kind, the share of held-out queries the guard sent to an exact scan, and batch-1 query latency
over the held-out kinds: wall time (p50, p95) and the CPU time of the searching thread (p50, p95), which a
loaded machine does not inflate. Prints a Markdown table,
one row as soon as it is measured. Run from the repository root:

    python3 -m benchmarks.index                              # 100k and 1M vectors, 768-d
    python3 -m benchmarks.index --quick                      # 20k vectors: smoke test
    python3 -m benchmarks.index --sizes 100000 --skip HNSW32

Query kinds. Tuned (the approximate indexes are tuned on one sample of these and measured on another): indexed
vectors, text prompts about half of the concepts, stored audio vectors (another modality in the library) and
depth "encoder probes" (a modality with no vectors in the library). Held out, never seen by any tuning: text
about the other half of the concepts, thermal (a modality the tuning never saw, further across the gap), and
uploads (new video files, not in the index).

The data (`gapped_library`) imitate CLIP-style embeddings: every item is a concept direction plus a position in
a low-rank latent space shared by all modalities (what is in the clip: its setting, its motion...), plus noise;
each modality adds its own offset (the modality gap) and sees the latent space through its own warp, so a
thermal query of a scene lands near, but not on, the videos of that scene (cosine about 0.45 to its nearest
videos, against about 0.8 between neighbouring videos).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from lbsearch.storage.vectorindex import EXACT_FACTORY, VectorIndex, approximate_factory

QUICK_SIZE = 20_000
K = 10
# Offset of each modality from the shared concept directions, and spread of items around their concept.
MODALITY_OFFSET = 1.0
ITEM_SPREAD = 0.7
_CHUNK = 100_000
# gapped_library: latent rank, its weight, the noise weight, and each modality's gap: (offset length, share of
# the offset that lies inside the latent space, warp of the latent space). An offset orthogonal to all data would
# scale every score of a query alike; the share inside the latent space tilts its ranking, as real gaps do.
LATENT_RANK = 32
LATENT_WEIGHT = 0.8
NOISE_WEIGHT = 0.4
GAPS = {
    "video": (1.0, 0.0, 0.0),
    "text": (1.0, 0.3, 0.3),
    "audio": (1.0, 0.3, 0.3),
    "depth": (1.2, 0.4, 0.3),
    "thermal": (1.3, 0.6, 0.5),
}
TUNED_KINDS = ("indexed", "text", "audio", "depth probes")
HELD_OUT_KINDS = ("text, new concepts", "thermal (never tuned)", "uploads")
# The exact scan takes long per query: its latency is measured on fewer queries.
EXACT_LATENCY_QUERIES = 40


def clustered_library(
    n: int, dim: int, n_queries: int, seed: int = 0, n_concepts: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(media [n, dim], text queries [n_queries, dim]): unit float32 rows, clustered around shared concepts.

    `n_concepts` defaults to one concept per 1000 media vectors (at least 16): concepts larger than an IVF
    list, so that a query's neighbours spread over several lists, as in real embedding collections.
    """
    rng = np.random.default_rng(seed)
    n_concepts = n_concepts or max(16, n // 1000)
    concepts = _unit(rng.standard_normal((n_concepts, dim), dtype=np.float32))
    media_offset, text_offset = MODALITY_OFFSET * _unit(rng.standard_normal((2, dim), dtype=np.float32))

    def around_concepts(count: int, offset: np.ndarray) -> np.ndarray:
        rows = np.empty((count, dim), dtype=np.float32)
        for start in range(0, count, _CHUNK):
            stop = min(start + _CHUNK, count)
            spread = ITEM_SPREAD * _unit(rng.standard_normal((stop - start, dim), dtype=np.float32))
            rows[start:stop] = _unit(offset + concepts[rng.integers(0, n_concepts, stop - start)] + spread)
        return rows

    return around_concepts(n, media_offset), around_concepts(n_queries, text_offset)


class GappedSpace:
    """Concepts, a shared latent space and per-modality gaps (see the module docstring); `sample` draws items."""

    def __init__(self, dim: int, n_concepts: int, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.dim, self.n_concepts = dim, n_concepts
        self.concepts = _unit(self.rng.standard_normal((n_concepts, dim), dtype=np.float32))
        self.latent_basis = np.linalg.qr(self.rng.standard_normal((dim, LATENT_RANK)))[0].T.astype(np.float32)
        self.offsets = {}
        for modality, (length, inside, _) in GAPS.items():
            outside = _unit(self.rng.standard_normal((1, dim), dtype=np.float32))[0]
            within = _unit(self.rng.standard_normal((1, LATENT_RANK), dtype=np.float32) @ self.latent_basis)[0]
            self.offsets[modality] = length * _unit(((1 - inside) * outside + inside * within)[None])[0]
        self.warps = {
            m: np.eye(LATENT_RANK, dtype=np.float32)
            + warp * self.rng.standard_normal((LATENT_RANK, LATENT_RANK), dtype=np.float32) / np.sqrt(LATENT_RANK)
            for m, (_, _, warp) in GAPS.items()
        }

    def sample(self, count: int, modality: str, concepts: np.ndarray | None = None) -> np.ndarray:
        """`count` unit rows of `modality`, about concepts drawn from `concepts` (default: all)."""
        offset = self.offsets[modality]
        pool = np.arange(self.n_concepts) if concepts is None else concepts
        rows = np.empty((count, self.dim), dtype=np.float32)
        for start in range(0, count, _CHUNK):
            size = min(start + _CHUNK, count) - start
            latent = self.rng.standard_normal((size, LATENT_RANK), dtype=np.float32) @ self.warps[modality]
            noise = self.rng.standard_normal((size, self.dim), dtype=np.float32)
            rows[start : start + size] = _unit(
                offset
                + self.concepts[self.rng.choice(pool, size)]
                + LATENT_WEIGHT * _unit(latent @ self.latent_basis)
                + NOISE_WEIGHT * _unit(noise)
            )
        return rows


def gapped_library(
    n: int, dim: int, n_queries: int, seed: int = 0
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(video vectors [n, dim], tuning queries by kind, evaluation queries by kind), `n_queries` per kind.

    The evaluation holds other samples of the tuned kinds (TUNED_KINDS) and the held-out kinds (HELD_OUT_KINDS).
    """
    space = GappedSpace(dim, max(16, n // 1000), seed)
    media = space.sample(n, "video")
    half = np.arange(space.n_concepts // 2)
    indexed = media[np.random.default_rng(seed + 1).choice(n, 2 * n_queries, replace=False)]

    def tuned_kinds(indexed_sample: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "indexed": indexed_sample,
            "text": space.sample(n_queries, "text", half),
            "audio": space.sample(n_queries, "audio"),
            "depth probes": space.sample(n_queries, "depth"),
        }

    tuning = tuned_kinds(indexed[:n_queries])
    evaluation = {
        **tuned_kinds(indexed[n_queries:]),
        "text, new concepts": space.sample(n_queries, "text", half + len(half)),
        "thermal (never tuned)": space.sample(n_queries, "thermal"),
        "uploads": space.sample(n_queries, "video"),
    }
    return media, tuning, evaluation


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return sum(len(np.intersect1d(row, exact)) for row, exact in zip(found, truth, strict=True)) / truth.size


@dataclass(frozen=True)
class Contender:
    """One index of the comparison: its label, factory, tuning queries (kind -> rows) and probing mode."""

    label: str
    factory: str
    tuning: dict[str, np.ndarray] | np.ndarray | None
    adaptive: bool = True
    rerank: bool = False  # re-score candidates with the exact vectors, read from a file as from the database


def measure(
    contender: Contender, media: np.ndarray, stored: np.ndarray, eval_sets: dict[str, tuple[np.ndarray, np.ndarray]]
) -> dict[str, object]:
    """Build one index and measure it; `eval_sets` maps a query kind to (queries, exact top-K ids); `stored` is
    `media` as a memory-mapped file, what re-ranking reads."""
    ids = np.arange(len(media), dtype=np.int64)
    started = time.perf_counter()
    index = VectorIndex.build(
        media,
        ids,
        contender.factory,
        contender.tuning,
        adaptive=contender.adaptive,
        exact_vectors=(lambda wanted: stored[wanted]) if contender.rerank else None,
    )
    build_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.lbsidx"
        index.write(path)
        bytes_per_vector = path.stat().st_size / len(media)
    row: dict[str, object] = {"index": contender.label, "build_s": build_s, "bytes_per_vector": bytes_per_vector}
    exact_share = []
    for kind, (queries, truth) in eval_sets.items():
        searched = index.search_with_exactness(queries, K)
        row[kind] = _recall(searched.ids, truth)
        if kind in HELD_OUT_KINDS:
            exact_share.append(searched.exact.mean())
    row["exact_share"] = float(np.mean(exact_share))
    held_out = np.concatenate([eval_sets[kind][0] for kind in HELD_OUT_KINDS])
    if contender.factory == EXACT_FACTORY:
        held_out = held_out[np.random.default_rng(2).choice(len(held_out), EXACT_LATENCY_QUERIES, replace=False)]
    latencies, cpu_times = [], []
    # One thread per single query, as a server answering several users would run: on a loaded machine, an OpenMP
    # team of two waits for whichever thread the scheduler parked, which measures the neighbours, not the index.
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        for query in held_out:
            started, started_cpu = time.perf_counter(), time.thread_time()
            index.search(query[None, :], K)
            latencies.append(time.perf_counter() - started)
            cpu_times.append(time.thread_time() - started_cpu)
    finally:
        faiss.omp_set_num_threads(threads)
    row["p50_ms"], row["p95_ms"] = (1000 * value for value in np.percentile(latencies, [50, 95]))
    # CPU time of the searching thread: the work a query costs, whatever else the machine runs.
    row["cpu_p50_ms"], row["cpu_p95_ms"] = (1000 * value for value in np.percentile(cpu_times, [50, 95]))
    info = index.info
    tuned = [f"{name}={info[name]}" for name in ("nprobe", "efSearch", "probe_margin", "max_probe") if name in info]
    row["tuned"] = ", ".join(tuned) or "-"
    return row


def contenders(n: int, dim: int, tuning: dict[str, np.ndarray]) -> list[Contender]:
    ivf = approximate_factory(n, dim)
    # Before issue 14 the library tuned one nprobe on indexed vectors and one mixed array of text prompts and
    # other modalities' vectors; it knew nothing of modalities without vectors.
    before = np.concatenate([tuning["text"], tuning["audio"]])
    compressed = ivf.replace(",Flat", ",SQ8")
    return [
        Contender("exact scan", EXACT_FACTORY, None),
        Contender("adaptive IVF (chosen)", ivf, tuning),
        Contender("fixed-nprobe IVF (before)", ivf, before, adaptive=False),
        Contender("adaptive IVF, 8-bit codes + re-rank", compressed, tuning, rerank=True),
        Contender("HNSW32", "HNSW32", tuning),
    ]


def run_size(n: int, dim: int, n_queries: int, skip: set[str]) -> list[dict[str, object]]:
    media, tuning, evaluation = gapped_library(n, dim, n_queries)
    eval_sets = {
        kind: (queries, faiss.knn(queries, media, K, faiss.METRIC_INNER_PRODUCT)[1])
        for kind, queries in evaluation.items()
    }
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        np.save(Path(folder) / "stored.npy", media)
        stored = np.load(Path(folder) / "stored.npy", mmap_mode="r")
        for contender in contenders(n, dim, tuning):
            if contender.label in skip or contender.factory in skip:
                continue
            rows.append({"n": n, **measure(contender, media, stored, eval_sets)})
            print(markdown_row(rows[-1]), flush=True)
    return rows


def markdown_header() -> str:
    kinds = " | ".join(TUNED_KINDS + HELD_OUT_KINDS)
    columns = len(TUNED_KINDS + HELD_OUT_KINDS)
    return (
        f"| vectors | index | build s | bytes/vector | {kinds} | exact share | p50 ms | p95 ms | CPU p50 ms "
        f"| CPU p95 ms | tuned |\n"
        f"|---:|---|---:|---:|{'---:|' * columns}---:|---:|---:|---:|---:|---|"
    )


def markdown_row(row: dict[str, object]) -> str:
    recalls = " | ".join(f"{row[kind]:.3f}" for kind in TUNED_KINDS + HELD_OUT_KINDS)
    return (
        f"| {row['n']:,} | {row['index']} | {row['build_s']:.1f} | {row['bytes_per_vector']:.0f} | {recalls} "
        f"| {row['exact_share']:.2f} | {row['p50_ms']:.2f} | {row['p95_ms']:.2f} | {row['cpu_p50_ms']:.2f} "
        f"| {row['cpu_p95_ms']:.2f} | {row['tuned']} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--quick", action="store_true", help=f"one small size ({QUICK_SIZE:,}) for a smoke test")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=200, help="queries per kind for recall and latency")
    parser.add_argument("--skip", nargs="*", default=[], help="index labels or factories to leave out")
    args = parser.parse_args()
    sizes = [QUICK_SIZE] if args.quick else args.sizes
    threads = faiss.omp_get_max_threads()
    print(f"{args.dim}-d, k={K}, faiss {faiss.__version__}, {threads} threads to build, 1 per single query\n")
    print(markdown_header(), flush=True)
    for n in sizes:
        run_size(n, args.dim, args.queries, set(args.skip))


if __name__ == "__main__":
    main()
