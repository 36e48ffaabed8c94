"""Exact vs approximate FAISS index (as lbsearch picks it by size) on clustered synthetic embeddings.

For each size: build time, bytes per vector (size of the written index file), recall@10 against exact search
for held-out text-like queries and for indexed vectors, and batch-1 query latency (p50, p95). Prints a
Markdown table. Run from the repository root:

    python3 -m benchmarks.index                              # 100k and 1M vectors, 768-d
    python3 -m benchmarks.index --quick                      # 20k vectors: smoke test
    python3 -m benchmarks.index --sizes 100000 --dim 512

The data imitate CLIP-style embeddings: media vectors and text queries share concept directions but each
modality also has its own offset direction, so text queries sit away from every media vector (cosine about
0.4 to their own concept's media, about 0.4 between unrelated media, about 0 between text and unrelated media).
"""

from __future__ import annotations

import argparse
import tempfile
import time
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


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return sum(len(np.intersect1d(row, exact)) for row, exact in zip(found, truth, strict=True)) / truth.size


def measure(
    factory: str, media: np.ndarray, tuning_queries: np.ndarray, eval_sets: dict[str, tuple[np.ndarray, np.ndarray]]
) -> dict[str, object]:
    """Build one index and measure it; `eval_sets` maps a query kind to (queries, exact top-K ids)."""
    ids = np.arange(len(media), dtype=np.int64)
    started = time.perf_counter()
    index = VectorIndex.build(media, ids, factory=factory, recall_queries=tuning_queries)
    build_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.lbsidx"
        index.write(path)
        bytes_per_vector = path.stat().st_size / len(media)
    row: dict[str, object] = {"factory": factory, "build_s": build_s, "bytes_per_vector": bytes_per_vector}
    for kind, (queries, truth) in eval_sets.items():
        row[f"recall_{kind}"] = _recall(index.search(queries, K)[1], truth)
    latencies = []
    for query in eval_sets["text"][0]:
        started = time.perf_counter()
        index.search(query[None, :], K)
        latencies.append(time.perf_counter() - started)
    row["p50_ms"], row["p95_ms"] = (1000 * value for value in np.percentile(latencies, [50, 95]))
    info = index.info
    row["parameter"] = next((f"{name}={info[name]}" for name in ("nprobe", "efSearch") if name in info), "-")
    return row


def run_size(n: int, dim: int, n_queries: int) -> list[dict[str, object]]:
    media, text = clustered_library(n, dim, 2 * n_queries)
    tuning_queries, held_out_text = text[:n_queries], text[n_queries:]
    rng = np.random.default_rng(1)
    indexed_queries = media[rng.choice(n, n_queries, replace=False)]
    eval_sets = {
        kind: (queries, faiss.knn(queries, media, K, faiss.METRIC_INNER_PRODUCT)[1])
        for kind, queries in (("text", held_out_text), ("indexed", indexed_queries))
    }
    factories = (EXACT_FACTORY, approximate_factory(n, dim))
    return [{"n": n, **measure(factory, media, tuning_queries, eval_sets)} for factory in factories]


def markdown_table(rows: list[dict[str, object]]) -> str:
    lines = [
        "| vectors | index | build s | bytes/vector | recall@10 text | recall@10 indexed | p50 ms | p95 ms | tuned |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['n']:,} | `{row['factory']}` | {row['build_s']:.1f} | {row['bytes_per_vector']:.0f} "
            f"| {row['recall_text']:.3f} | {row['recall_indexed']:.3f} | {row['p50_ms']:.2f} "
            f"| {row['p95_ms']:.2f} | {row['parameter']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--quick", action="store_true", help=f"one small size ({QUICK_SIZE:,}) for a smoke test")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=200, help="queries per kind for recall and latency")
    args = parser.parse_args()
    sizes = [QUICK_SIZE] if args.quick else args.sizes
    rows = [row for n in sizes for row in run_size(n, args.dim, args.queries)]
    print(f"{args.dim}-d, k={K}, faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads\n")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
