"""Ingest throughput: the lbsearch pipeline against a one-file-at-a-time loop, and each pipeline stage alone.

On a generated toy-world library of mixed media (per scene: an MP4 with an AAC track, a WAV, and RGB, depth and
thermal PNGs in sibling folders), in one run, for each model size:

- (a) sequential: one file at a time, the way the official processors are used: ``x = enc.preprocess(path,
  start, end)`` then ``enc.encode(x[None])`` for every input the pipeline embeds (the same files, modalities
  and time windows: the video's sound track and the windows of long media included), nothing stored;
- (b) pipeline: `Ingestor.run` (scan, hash, decode in ``--workers`` processes, batched encoding, per-file
  commits) then `IndexStore.sync_all` (FAISS files), which is what `Library.add` does once its models are
  loaded, into a fresh index folder;
- decode only: the pipeline's own decode loop (same workers, same tasks, follow-up window parts) with no
  encoding; encode only: the decoded tensors through the encoders in the pipeline's batches.

Models have random weights in the official architecture. "tiny" is the toy-size configuration of the demo set
(`lbsearch.train.config.preset("toy")`: width 64, 4 layers, 56 px, 8 frames), written as official-format
checkpoints with `save_checkpoint` and loaded back with `load_checkpoint`; "large" is ViT-L/14
(`benchmarks/encode.py`), built in memory (vision towers only: ingestion never runs the language tower).
Each measurement is repeated in interleaved rounds and the median reported; (a) and encode only are timed at
each of ``--threads`` torch thread counts and the best counts. "CPU bound" is what the cores allow: files over
the CPU seconds of decode only plus encode only (at the fewest threads) shared evenly by every core; when the
stages share the cores, no schedule beats it, and the pipeline's fraction of it shows what overlap it gets.
Other work on the machine skews every number (the output gives the load average). Prints a Markdown table.

``--engine ray`` instead puts the local pipeline and the same run over Ray (`lbsearch.ingest.cluster`, on a Ray
instance started here with every core) side by side, in interleaved rounds: each end to end as `lbsearch index`
runs it once its process is up, loading (or building) the encoders included: the local pipeline in this process,
Ray in its encoder actors. It gives both rates, their ratio, the largest difference between the two libraries'
vectors, and the driver's memory: the peak growth of this process's resident memory during a Ray run, on the
library and on one ``--memory-scale`` times larger (tiny model only).

Run from the repository root:

    python3 -m benchmarks.ingest                             # tiny on 200 files, large on 25 files
    python3 -m benchmarks.ingest --sizes tiny --files 400 --repeats 5
    python3 -m benchmarks.ingest --sizes large --precisions fp32 auto   # + the pipeline at the auto precision
    python3 -m benchmarks.ingest --engine ray                # local pipeline vs Ray, tiny and large

With ``--precisions``, every measurement runs at each precision (the encoders converted as `--precision` does);
the closing lines compare each pipeline with the official loop at fp32 (the first row of its size).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import resource
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from benchmarks.encode import large_config
from lbsearch.ingest import cluster, scan
from lbsearch.ingest.cluster import RayIngestor, load_encoders
from lbsearch.ingest.decode import DecodedPart, DecodeTask, ModelInput, WindowSpec, follow_up_tasks
from lbsearch.ingest.pipeline import IngestOptions, Ingestor, available_cores
from lbsearch.modalities import MODALITIES
from lbsearch.models import Encoder, ModelConfig, autotune, build_encoder, load_checkpoint, save_checkpoint
from lbsearch.models.precision import AUTO, FP32, apply_to_tower
from lbsearch.models.towers import VisionTower
from lbsearch.storage.database import Database
from lbsearch.storage.store import IndexStore
from lbsearch.toyworld import World, write_library
from lbsearch.train.config import preset
from lbsearch.train.stage2 import modality_config

FILES_PER_SCENE = 5


def tiny_config(modality: str) -> ModelConfig:
    """The toy-size architecture of the demo checkpoint set for one modality."""
    toy = preset("toy")
    image = toy.towers.image_config(toy.data.render.size)
    grid = (toy.towers.audio_mel_bins, toy.towers.audio_target_length)
    return modality_config(image, modality, num_frames=toy.data.render.num_frames, audio_grid=grid)


def tiny_encoders(folder: Path) -> dict[str, Encoder]:
    """Random toy-size encoders saved as official-format checkpoints, and loaded back from them."""
    encoders = {}
    for modality in MODALITIES:
        save_checkpoint(build_encoder(tiny_config(modality)), folder / modality)
        encoders[modality] = load_checkpoint(folder / modality)
    return encoders


def large_encoders(layers: int) -> dict[str, Encoder]:
    """Random ViT-L/14 modality towers (no language tower: ingestion does not use it), with ``layers`` of its 24
    layers."""
    encoders = {}
    for modality in MODALITIES:
        config = large_config(modality)
        config = replace(config, vision=replace(config.vision, num_hidden_layers=layers))
        tower = VisionTower(config.vision, config.projection_dim)
        encoders[modality] = Encoder(config, tower, None, config.logit_scale_init_value, source="random")
    return encoders


def at_precision(encoders: dict[str, Encoder], precision: str) -> dict[str, Encoder]:
    """Copies of the fp32 ``encoders`` at ``precision``; ``auto`` settled here (measured once per machine and
    model shape, then cached), so that its micro-benchmark stays out of the timings."""
    converted = {}
    for modality, encoder in encoders.items():
        chosen = autotune.resolve(encoder.config, encoder.vision) if precision == AUTO else precision
        copied = copy.copy(encoder)
        copied.vision = apply_to_tower(copy.deepcopy(encoder.vision), chosen) if chosen != FP32 else encoder.vision
        copied.precision = chosen
        converted[modality] = copied
    return converted


@dataclass
class Measure:
    seconds: float
    files: int
    inputs: int
    cpu_seconds: float = 0.0  # this process and its finished children


def cpu_seconds() -> float:
    """CPU time used so far by this process and its reaped children (the decode workers, once shut down)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def write_toy_library(root: Path, files: int, seed: int = 0) -> None:
    """At least ``files`` files: whole scenes of FILES_PER_SCENE (kept when ``root`` already holds them)."""
    if not root.exists():
        write_library(root, World(seed).scenes("train", math.ceil(files / FILES_PER_SCENE)))


def pipeline(
    encoders: dict[str, Encoder], root: Path, folder: Path, options: IngestOptions
) -> tuple[Measure, Database]:
    """(b): what `Library.add` runs once the models are loaded, into a fresh index folder."""
    db = Database.open(folder)
    model_ids = {m: db.register_model(f"bench-{m}", m, e.weights_hash or "random", e.dim) for m, e in encoders.items()}
    started = time.perf_counter()
    report = Ingestor(db, encoders, model_ids, options).run([root])
    IndexStore(db, folder).sync_all()
    seconds = time.perf_counter() - started
    if report.failed:
        raise RuntimeError(f"the pipeline failed on {report.errors}")
    return Measure(seconds, report.embedded, report.vectors), db


def embedded_inputs(db: Database) -> list[tuple[str, str, list[tuple[float | None, float | None]]]]:
    """(path, modality, spans) for every (file, modality) the pipeline embedded, by path: the work (a) repeats."""
    work: dict[tuple[str, str], list[tuple[float | None, float | None]]] = defaultdict(list)
    for model_id, modality in db.vector_groups():
        for info in db.describe_vectors(db.vector_ids(model_id, modality)).values():
            work[info.path, modality].append((info.start, info.end))
    return [
        (path, modality, sorted(spans, key=lambda span: (span[0] is not None, span)))
        for (path, modality), spans in sorted(work.items())
    ]


def sequential(encoders: dict[str, Encoder], work: list) -> Measure:
    """(a): one file and one input at a time, preprocess then encode."""
    started = time.perf_counter()
    for path, modality, spans in work:
        encoder = encoders[modality]
        for start, end in spans:
            encoder.encode(encoder.preprocess(path, start, end)[None])
    seconds = time.perf_counter() - started
    return Measure(seconds, len({path for path, _, _ in work}), sum(len(spans) for _, _, spans in work))


def decode_only(
    encoders: dict[str, Encoder], root: Path, folder: Path, options: IngestOptions
) -> tuple[Measure, list[ModelInput]]:
    """The pipeline's decode loop alone (its workers, tasks and window parts); returns the decoded inputs."""
    db = Database.open(folder)
    ingestor = Ingestor(db, encoders, {m: 0 for m in encoders}, options)
    files = scan.scan([root])
    todo = [ingestor.decode_task(f.path, f.modality, f.size) for f in files]
    todo.reverse()  # the pipeline pops tasks from the end

    inputs: list[ModelInput] = []

    def accept(part: DecodedPart) -> list[DecodeTask]:
        if part.error is not None:
            raise RuntimeError(f"{part.task.path}: {part.error}")
        inputs.extend(part.inputs)
        return follow_up_tasks(part) if part.task.part == 0 else []

    started, cpu_started = time.perf_counter(), cpu_seconds()
    pool = ingestor.start_decoding()
    for _ in pool.decoded(todo, accept):
        pass
    seconds = time.perf_counter() - started
    pool.close()  # the workers' CPU time counts once they are reaped
    db.close()
    return Measure(seconds, len(files), len(inputs), cpu_seconds() - cpu_started), inputs


def encode_only(encoders: dict[str, Encoder], inputs: list[ModelInput], batch_size: int, files: int) -> Measure:
    """Decoded tensors through the encoders in batches of ``batch_size`` per modality, as the pipeline sends them."""
    by_modality: dict[str, list[torch.Tensor]] = defaultdict(list)
    for item in inputs:
        by_modality[item.modality].append(item.tensor)
    started, cpu_started = time.perf_counter(), cpu_seconds()
    for modality, tensors in by_modality.items():
        for begin in range(0, len(tensors), batch_size):
            encoders[modality].encode(torch.stack(tensors[begin : begin + batch_size]))
    return Measure(time.perf_counter() - started, files, len(inputs), cpu_seconds() - cpu_started)


def check_same_vectors(encoders: dict[str, Encoder], db: Database, work: list, samples: int = 8) -> float:
    """Largest difference between the pipeline's stored vectors and (a)'s, on a few inputs: the same work."""
    worst = 0.0
    picks = np.random.default_rng(0).choice(len(work), min(samples, len(work)), replace=False)
    for pick in picks:
        path, modality, spans = work[pick]
        record = db.file_by_path(path)
        model_id = next(m for m, mod in db.vector_groups() if mod == modality)
        stored = db.file_vectors(record.id, model_id, modality)
        encoder = encoders[modality]
        direct = encoder.encode(encoder.preprocess(path, spans[0][0], spans[0][1])[None])[0].numpy()
        worst = max(worst, float(np.abs(stored[0].embedding - direct).max()))
    return worst


def run_size(
    name: str,
    encoders: dict[str, Encoder],
    root: Path,
    work_dir: Path,
    options: IngestOptions,
    thread_counts: list[int],
    repeats: int,
    log: Callable[[str], None],
) -> dict:
    """Every measurement ``repeats`` times, in interleaved rounds (the machine's other load drifts): medians."""
    files = scan.scan([root])
    default_threads = torch.get_num_threads()
    times: dict[str, list[float]] = defaultdict(list)
    cpu: dict[str, list[float]] = defaultdict(list)  # CPU seconds of decode only, and of encode only per threads
    work: list = []
    difference = 0.0
    for round_ in range(repeats):
        piped, db = pipeline(encoders, root, work_dir / f"{name}-index-{round_}", options)
        times["pipeline"].append(piped.seconds)
        if round_ == 0:
            work = embedded_inputs(db)
            difference = check_same_vectors(encoders, db, work)
            inputs = piped.inputs
        db.close()
        for threads in thread_counts:
            torch.set_num_threads(threads)
            times[f"sequential {threads}"].append(sequential(encoders, work).seconds)
        torch.set_num_threads(default_threads)
        decoded, decoded_inputs = decode_only(encoders, root, work_dir / f"{name}-decode-{round_}", options)
        times["decode"].append(decoded.seconds)
        cpu["decode"].append(decoded.cpu_seconds)
        for threads in thread_counts:
            torch.set_num_threads(threads)
            encoded = encode_only(encoders, decoded_inputs, options.batch_size, len(files))
            times[f"encode {threads}"].append(encoded.seconds)
            cpu[f"encode {threads}"].append(encoded.cpu_seconds)
        torch.set_num_threads(default_threads)
        del decoded_inputs
        log(f"{name}, round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()))
    rates = {kind: len(files) / float(np.median(seconds)) for kind, seconds in times.items()}
    best_threads = max(thread_counts, key=lambda threads: rates[f"sequential {threads}"])
    best_encode = max(rates[f"encode {threads}"] for threads in thread_counts)
    # The most any schedule of the two stages can do on this machine's cores: all their CPU work spread evenly
    # (encoding's work taken at its fewest threads, where no thread waits on another).
    work_seconds = float(np.median(cpu["decode"]) + np.median(cpu[f"encode {min(thread_counts)}"]))
    return {
        "model": name,
        "files": len(files),
        "inputs": inputs,
        "sequential": rates[f"sequential {best_threads}"],
        "thread_counts": best_threads,
        "pipeline": rates["pipeline"],
        "decode": rates["decode"],
        "encode": best_encode,
        "bound": len(files) / (work_seconds / available_cores()),
        "difference": difference,
    }


# ---------------------------------------------------------------------------------------- --engine ray


def seeded_large_encoders(device: str = "cpu", precision: str = FP32, layers: int = 24) -> dict[str, Encoder]:
    """`large_encoders` with the same random weights wherever they are built (this process, a Ray actor)."""
    torch.manual_seed(0)
    return {m: e.to(device) for m, e in at_precision(large_encoders(layers), precision).items()}


def tiny_loader(folder: Path) -> Callable[..., dict[str, Encoder]]:
    return partial(load_encoders, {m: str(folder / m) for m in MODALITIES})


def stored_vectors(db: Database) -> dict[tuple, np.ndarray]:
    """Every stored vector by (path, modality, start, end)."""
    table = {}
    records = db.files("ok")
    for model_id, modality in db.vector_groups():
        for record in records:
            for vector in db.file_vectors(record.id, model_id, modality):
                table[record.path, modality, vector.start, vector.end] = vector.embedding
    return table


class PeakMemory:
    """The largest growth of this process's resident memory while the block runs (sampled every 20 ms)."""

    def __init__(self) -> None:
        self.growth = 0
        self._stop = threading.Event()

    @staticmethod
    def resident() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _watch(self, baseline: int) -> None:
        while not self._stop.wait(0.02):
            self.growth = max(self.growth, self.resident() - baseline)

    def __enter__(self) -> PeakMemory:
        self._thread = threading.Thread(target=self._watch, args=(self.resident(),), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def engine_run(
    engine: str,
    build: Callable[..., dict[str, Encoder]],
    configs: dict[str, ModelConfig],
    root: Path,
    folder: Path,
    options: IngestOptions,
) -> tuple[Measure, Database, int]:
    """One end-to-end run into a fresh index folder: (measure, database, driver memory growth in bytes)."""
    db = Database.open(folder)
    with PeakMemory() as memory:
        started = time.perf_counter()
        if engine == "local":
            encoders = build("cpu", FP32)
        else:
            # The driver plans and commits only: the configs say the preprocessing, the actors build the towers.
            encoders = {m: Encoder(c, None, None, 0.0, source="random") for m, c in configs.items()}
        model_ids = {m: db.register_model(f"bench-{m}", m, "random", e.dim) for m, e in encoders.items()}
        if engine == "local":
            report = Ingestor(db, encoders, model_ids, options).run([root])
        else:
            report = RayIngestor(db, encoders, model_ids, options, precision=FP32, build_encoders=build).run([root])
        del encoders
        IndexStore(db, folder).sync_all()
        seconds = time.perf_counter() - started
    if report.failed:
        raise RuntimeError(f"the {engine} run failed on {report.errors}")
    return Measure(seconds, report.embedded, report.vectors), db, memory.growth


def run_engines(
    name: str,
    build: Callable[..., dict[str, Encoder]],
    configs: dict[str, ModelConfig],
    root: Path,
    work_dir: Path,
    options: IngestOptions,
    repeats: int,
    memory_root: Path | None,
    log: Callable[[str], None],
) -> dict:
    """The local pipeline and Ray, ``repeats`` interleaved rounds each: medians, and the vectors compared."""
    times: dict[str, list[float]] = defaultdict(list)
    memory: dict[str, list[int]] = defaultdict(list)
    difference = 0.0
    files = inputs = 0
    for round_ in range(repeats):
        tables = {}
        for engine in ("local", "ray"):
            measure, db, growth = engine_run(
                engine, build, configs, root, work_dir / f"{name}-{engine}-{round_}", options
            )
            times[engine].append(measure.seconds)
            memory[engine].append(growth)
            files, inputs = measure.files, measure.inputs
            if round_ == 0:
                tables[engine] = stored_vectors(db)
            db.close()
        if round_ == 0:
            if tables["local"].keys() != tables["ray"].keys():
                raise RuntimeError("the local pipeline and Ray stored different vectors")
            difference = max(float(np.abs(tables["local"][k] - tables["ray"][k]).max()) for k in tables["local"])
        log(f"{name}, round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()))
    row = {
        "model": name,
        "files": files,
        "inputs": inputs,
        "local": files / float(np.median(times["local"])),
        "ray": files / float(np.median(times["ray"])),
        "difference": difference,
        "memory": {engine: float(np.median(growths)) for engine, growths in memory.items()},
    }
    if memory_root is not None:
        row["memory_scaled"] = {}
        for engine in ("local", "ray"):
            measure, db, growth = engine_run(
                engine, build, configs, memory_root, work_dir / f"{name}-{engine}-memory", options
            )
            db.close()
            row["memory_scaled"][engine] = float(growth)
            row["files_scaled"] = measure.files
            log(f"{name}, {engine} on {measure.files} files: {measure.seconds:.1f} s, +{growth / 2**20:.0f} MiB")
    return row


def print_engine_table(rows: list[dict], ray_seconds: float, resources: dict) -> None:
    print(
        f"Ray: a local instance ({resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs) started in "
        f"{ray_seconds:.1f} s before the rounds (not counted).\n"
    )
    print(
        "| model | files (inputs) | local files/s | Ray files/s | Ray / local | Ray overhead | max diff local vs Ray "
        "| driver memory growth, local / Ray (files) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        memory = f"{row['memory']['local'] / 2**20:.0f} / {row['memory']['ray'] / 2**20:.0f} MiB ({row['files']})"
        if "memory_scaled" in row:
            scaled = row["memory_scaled"]
            memory += f"; {scaled['local'] / 2**20:.0f} / {scaled['ray'] / 2**20:.0f} MiB ({row['files_scaled']})"
        print(
            f"| {row['model']} | {row['files']} ({row['inputs']}) | {row['local']:.2f} | {row['ray']:.2f} "
            f"| {row['ray'] / row['local']:.2f}x | {row['local'] / row['ray'] - 1:+.0%} | {row['difference']:.1e} "
            f"| {memory} |"
        )


def compare_engines(
    args: argparse.Namespace, options: IngestOptions, work_dir: Path, log: Callable[[str], None]
) -> None:
    ray = cluster.import_ray()
    started = time.perf_counter()
    ray.init(num_cpus=available_cores(), runtime_env=cluster.worker_runtime_env(), include_dashboard=False)
    ray_seconds = time.perf_counter() - started
    resources = ray.cluster_resources()
    load_before = os.getloadavg()[0]
    rows = []
    try:
        for size in args.sizes:
            files = args.files if size == "tiny" else args.large_files
            root = work_dir / f"library-{files}"
            write_toy_library(root, files)
            memory_root = None
            if size == "tiny" and args.memory_scale > 1:
                memory_root = work_dir / f"library-{files * args.memory_scale}"
                write_toy_library(memory_root, files * args.memory_scale, seed=1)
            if size == "tiny":
                tiny_encoders(work_dir / "tiny-checkpoints")  # written once, loaded by each run
                build, configs = tiny_loader(work_dir / "tiny-checkpoints"), {m: tiny_config(m) for m in MODALITIES}
            else:
                build = partial(seeded_large_encoders, layers=args.large_layers)
                configs = {m: large_config(m) for m in MODALITIES}
            repeats = args.repeats if size == "tiny" else args.large_repeats
            run = work_dir / f"run-{size}"
            rows.append(run_engines(size, build, configs, root, run, options, repeats, memory_root, log))
    finally:
        ray.shutdown()
    print(
        f"\nmachine: {machine()}; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after. "
        f"Local pipeline: {args.workers} decode workers, batch {args.batch_size}. Medians of the rounds "
        f"(tiny {args.repeats}, large {args.large_repeats}), each run end to end with its encoders' loading."
    )
    print_engine_table(rows, ray_seconds, resources)


def machine() -> str:
    try:
        cpu_info = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpu_info = ""
    names = [line.split(":", 1)[1].strip() for line in cpu_info.splitlines() if line.startswith("model name")]
    cpu = names[0] if names else platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "large"], choices=["tiny", "large"])
    parser.add_argument("--files", type=int, default=200, help="library size for the tiny model")
    parser.add_argument("--large-files", type=int, default=25, help="library size for the ViT-L/14 model")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--large-layers", type=int, default=24, help="layers of the large towers (24: ViT-L/14)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where encoders run")
    parser.add_argument("--batch-size", type=int, default=IngestOptions().batch_size)
    parser.add_argument(
        "--encode-threads", type=int, default=None, help="the pipeline's encoding threads (default: its own choice)"
    )
    parser.add_argument(
        "--threads",
        nargs="+",
        type=int,
        default=None,
        help="torch threads to time (a) and encode only with; the best counts (default: 1 and torch's default)",
    )
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=[FP32],
        help="encoder precisions to run each size at (fp32 first: its (a) is the official loop), e.g. fp32 auto",
    )
    parser.add_argument("--repeats", type=int, default=3, help="rounds of measurements (medians are reported)")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep libraries and indexes here")
    parser.add_argument("--engine", choices=["local", "ray"], default="local", help="ray: local pipeline vs Ray")
    parser.add_argument("--large-repeats", type=int, default=1, help="--engine ray: rounds for the ViT-L model")
    parser.add_argument(
        "--memory-scale", type=int, default=10, help="--engine ray: the larger library for the driver's memory"
    )
    args = parser.parse_args()
    torch.manual_seed(0)

    def log(line: str) -> None:
        print(f"  [{time.strftime('%H:%M:%S')}] {line}", flush=True)

    load_before = os.getloadavg()[0]  # other work on the machine skews every number: say how much there was
    with tempfile.TemporaryDirectory() as scratch:
        work_dir = args.work_dir or Path(scratch)
        options = IngestOptions(
            windows=WindowSpec(), workers=args.workers, batch_size=args.batch_size, encode_threads=args.encode_threads
        )
        if args.engine == "ray":
            compare_engines(args, options, work_dir, log)
            return
        thread_counts = args.threads or sorted({1, torch.get_num_threads()})
        rows = []
        for size in args.sizes:
            files = args.files if size == "tiny" else args.large_files
            root = work_dir / f"library-{files}"
            write_toy_library(root, files)
            if size == "tiny":
                encoders = tiny_encoders(work_dir / "tiny-checkpoints")
            else:
                encoders = large_encoders(args.large_layers)
            encoders = {modality: encoder.to(args.device) for modality, encoder in encoders.items()}
            for precision in args.precisions:
                converted = at_precision(encoders, precision)
                name = f"{size} {precision}" + (f" ({converted['image'].precision})" if precision == AUTO else "")
                run = work_dir / f"run-{size}-{time.time_ns()}"
                rows.append(run_size(name, converted, root, run, options, thread_counts, args.repeats, log))
                del converted
            del encoders

    print(
        f"\nmachine: {machine()}, encoders on {args.device}; "
        f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after. "
        f"Pipeline: {args.workers} decode workers, batch {args.batch_size}. Medians of {args.repeats} rounds; "
        f"(a) and encode only at their best of {thread_counts} torch threads.\n"
    )
    print(
        "| model | files (inputs) | (a) sequential files/s (threads) | (b) pipeline files/s | (b)/(a) "
        "| decode only files/s | encode only files/s | (b) / slower stage | CPU bound files/s | (b) / CPU bound "
        "| max diff (a) vs (b) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        slower = min(row["decode"], row["encode"])
        print(
            f"| {row['model']} | {row['files']} ({row['inputs']}) | {row['sequential']:.2f} "
            f"({row['thread_counts']}) | {row['pipeline']:.2f} | {row['pipeline'] / row['sequential']:.2f}x "
            f"| {row['decode']:.2f} | {row['encode']:.2f} | {row['pipeline'] / slower:.0%} | {row['bound']:.2f} "
            f"| {row['pipeline'] / row['bound']:.0%} | {row['difference']:.1e} |"
        )
    official = {row["model"].split()[0]: row["sequential"] for row in rows if row["model"].endswith(f" {FP32}")}
    for row in rows:
        size = row["model"].split()[0]
        if size in official and not row["model"].endswith(f" {FP32}"):
            print(f"\n{row['model']}: (b) pipeline / (a) official fp32 loop = {row['pipeline'] / official[size]:.2f}x")


if __name__ == "__main__":
    main()
