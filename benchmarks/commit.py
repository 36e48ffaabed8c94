"""Commit throughput: the ingest's one writer, on SQLite and PostgreSQL, for sizing a cluster (docs/scaling.md).

What the pipeline's `RunLedger` does per run, on synthetic files: record the planned files (`upsert_files`, one
transaction), then store each file's vectors in transactions of ``--batch`` files (`store_vectors`, which also
marks them done). A file holds ``--vectors`` vectors of ``--dim`` floats (a 20 s clip: the whole clip, three
10 s windows, and the same four spans of its sound track: 8). Prints a Markdown table of files/s per stage.

    python3 -m benchmarks.commit                                  # SQLite in a temporary folder
    python3 -m benchmarks.commit --pg postgresql://...            # and PostgreSQL ($LBSEARCH_TEST_PG_URL)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from lbsearch.storage.database import Database, FileVectors, MediaInfo, NewVector


def synthetic_files(count: int, root: str) -> list[dict]:
    return [
        {
            "path": f"{root}/clip-{index:07d}.mp4",
            "root": root,
            "size": 1_000_000 + index,
            "mtime_ns": 1_700_000_000_000_000_000 + index,
            "modality": "video",
            "item_key": f"{root}/clip-{index:07d}",
            "content_hash": f"{index:040x}",
        }
        for index in range(count)
    ]


def measure(db: Database, files: int, vectors: int, dim: int, batch: int) -> dict[str, float]:
    """Seconds to record the files, and to commit their vectors in batches."""
    video = db.register_model("bench-video", "video", "random", dim)
    audio = db.register_model("bench-audio", "audio", "random", dim)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    ids = db.upsert_files(synthetic_files(files, "/library"))
    recorded = time.perf_counter() - started
    spans = [(None, None), *[(5.0 * i, 5.0 * i + 10.0) for i in range(vectors // 2 - 1)]]
    info = MediaInfo(duration=20.0, fps=25.0, width=1280, height=720, sample_rate=48000, has_audio=True)
    committing = 0.0
    for begin in range(0, files, batch):
        work = [
            FileVectors(
                file_id,
                [
                    NewVector(model_id, modality, rng.standard_normal(dim, dtype=np.float32), start, end)
                    for model_id, modality in ((video, "video"), (audio, "audio"))
                    for start, end in spans
                ],
                info,
            )
            for file_id in ids[begin : begin + batch]
        ]
        started = time.perf_counter()
        db.store_vectors(work)
        committing += time.perf_counter() - started
    return {"record": recorded, "commit": committing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--vectors", type=int, default=8, help="vectors per file (even: half video, half audio)")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--batch", type=int, default=64, help="files per transaction (IngestOptions.commit_files)")
    parser.add_argument("--pg", default=os.environ.get("LBSEARCH_TEST_PG_URL"), help="a PostgreSQL URL to use")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        backends = [("SQLite", Path(scratch))] + ([("PostgreSQL", args.pg)] if args.pg else [])
        for name, location in backends:
            db = Database.open(location)
            try:
                if db.files():
                    raise SystemExit(f"{name}: the database is not empty; point --pg at a fresh one")
                seconds = measure(db, args.files, args.vectors, args.dim, args.batch)
            finally:
                db.close()
            rows.append((name, seconds))
    print(
        f"\n{args.files} files, {args.vectors} vectors of {args.dim} floats each, {args.batch} files per "
        f"transaction; load average {os.getloadavg()[0]:.1f}.\n"
    )
    print("| database | record files/s | commit files/s | commit vectors/s |")
    print("|---|---|---|---|")
    for name, seconds in rows:
        print(
            f"| {name} | {args.files / seconds['record']:.0f} | {args.files / seconds['commit']:.0f} "
            f"| {args.files * args.vectors / seconds['commit']:.0f} |"
        )


if __name__ == "__main__":
    main()
