"""Ingestion over a Ray cluster: the same run as `pipeline.Ingestor`, with decoding and encoding on Ray Data.

The driver (this process) scans, hashes and plans exactly as the local pipeline does (it is an `Ingestor`), and
alone writes to the database through the same `RunLedger`, so incremental runs, exactly-once commits, Ctrl-C
and ``kill -9`` behave as they do locally. Ray runs the two heavy stages as one streaming Ray Data job:

- decoding, as tasks on any node's CPUs: a task decodes its files where it runs (every root must be on storage
  that every node sees, checked before any work starts) and yields each decoded part as it comes;
- encoding, in a pool of actors that each load the encoders once: one per GPU (``num_gpus=1``) when the cluster
  has GPUs, else one per node on its CPUs.

Embeddings stream back to the driver; Ray Data's backpressure keeps a bounded number of blocks in flight, so the
driver never holds more than a few batches of tensors however large the library. A task on a node that dies is
retried by Ray, and a part that arrives twice is dropped, so each file is committed once.

Ray is an optional dependency: it is imported only here, and only when a run asks for it.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from lbsearch.errors import ClusterError
from lbsearch.ingest import scan
from lbsearch.ingest.decode import DecodedPart, DecodeTask, ModelInput, decode, follow_up_tasks
from lbsearch.ingest.pipeline import (
    IngestOptions,
    Ingestor,
    IngestProgress,
    IngestReport,
    PlannedTask,
    RunLedger,
    available_cores,
    is_heavy,
)
from lbsearch.ingest.pool import GROUP_TASKS, DecodePool
from lbsearch.models import Encoder, load_checkpoint
from lbsearch.models.precision import AUTO
from lbsearch.storage.database import Database

ADDRESSES = "local, auto or ray://HOST:PORT"
MISSING_RAY = 'Ray is not installed: install the extra with `pip install -e ".[ray]"` (or "lbsearch[ray]")'
# Memory a decode task's worker process holds: Ray Data measured up to 0.95 GiB on the tests' library (torch,
# PyAV, and a part of a long file: up to 17 clips of 8 frames at 224 px, ~80 MB as float32). Ray starts no more
# decode tasks on a node than its memory admits.
DECODE_MEMORY = 1 << 30
# The folder that holds the lbsearch package: put first on the workers' path, so they run this code even where
# another copy is installed (a checkout beside a `pip install -e` of another one).
SOURCE_FOLDER = str(Path(__file__).resolve().parents[2])


def import_ray() -> ModuleType:
    """Ray with Ray Data, or a `ClusterError` that names the extra to install."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise ClusterError(MISSING_RAY) from None
    return ray


def worker_runtime_env() -> dict[str, Any]:
    """The runtime environment of the workers of a Ray instance this process starts or joins."""
    path = os.pathsep.join(p for p in (SOURCE_FOLDER, os.environ.get("PYTHONPATH")) if p)
    return {"env_vars": {"PYTHONPATH": path}}


def connect(address: str) -> bool:
    """Connect to Ray at ``address`` (local: start an instance on this machine; auto: the cluster this machine
    is part of; ray://HOST:PORT: a remote one). A process already connected keeps its connection. Returns
    whether this call connected (the caller then disconnects at the end)."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    if address not in ("local", "auto") and not address.startswith("ray://"):
        raise ClusterError(f"Ray address {address!r}: expected {ADDRESSES}")
    try:
        ray.init(address=address, runtime_env=worker_runtime_env(), include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterError(f"cannot join the Ray cluster at {address}: {exc}") from None
    return True


def disconnect() -> None:
    import_ray().shutdown()


@dataclass(frozen=True)
class ClusterShape:
    """What a run gets from the cluster: its nodes, their CPUs and GPUs, and the encoder actors it starts."""

    nodes: int
    cpus: float
    gpus: float

    @property
    def encode_device(self) -> str:
        return "cuda" if self.gpus >= 1 else "cpu"

    @property
    def encode_actors(self) -> int:
        return int(self.gpus) if self.gpus >= 1 else self.nodes

    def summary(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "cpus": self.cpus,
            "gpus": self.gpus,
            "encode_actors": self.encode_actors,
            "encode_device": self.encode_device,
        }


def cluster_shape() -> ClusterShape:
    ray = import_ray()
    resources = ray.cluster_resources()
    nodes = sum(1 for node in ray.nodes() if node["Alive"])
    return ClusterShape(nodes=nodes, cpus=resources.get("CPU", 0.0), gpus=resources.get("GPU", 0.0))


def check_roots_visible(roots: Iterable[str]) -> None:
    """Every live node sees every root as this process does (a folder with the same entries), or a
    `ClusterError` names the first node and root that it does not."""
    ray = import_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    expected = {root: _root_listing(root) for root in roots}
    probe = ray.remote(num_cpus=0)(_root_listings)
    calls = {
        (node["NodeManagerAddress"], node["NodeID"]): probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ).remote(list(expected))
        for node in ray.nodes()
        if node["Alive"]
    }
    gone = (ray.exceptions.TaskUnschedulableError, ray.exceptions.NodeDiedError, ray.exceptions.WorkerCrashedError)
    for (address, node_id), call in calls.items():
        try:
            listings = ray.get(call)
        except gone:
            continue  # a node that died since it was listed runs no work either
        for root, listing in listings.items():
            if listing != expected[root]:
                seen = "cannot see it" if listing is None else "sees other files there"
                raise ClusterError(
                    f"node {address} ({node_id[:12]}) {seen}: {root}; every root must be on storage that every "
                    "node of the cluster shares"
                )


def _root_listing(root: str) -> list[str] | None:
    try:
        return sorted(os.listdir(root))
    except OSError:
        return None


def _root_listings(roots: list[str]) -> dict[str, list[str] | None]:
    return {root: _root_listing(root) for root in roots}


# ---------------------------------------------------------------------------------------------- Ray stages


@dataclass
class EncodedPart:
    """What comes back to the driver for one decoded part: the part without its tensors, how many parts its file
    has, and each input's span with its embedding and the precision its encoder ran at."""

    part: DecodedPart
    parts: int
    embedded: list[tuple[ModelInput, np.ndarray, str]] = field(default_factory=list)


def _packed(values: list) -> np.ndarray:
    """A column of pickled objects. Ray Data stores them as Arrow binary; given the objects themselves, it first
    tries to convert them to Arrow types and fails (formatting each tensor into its error message) every batch."""
    column = np.empty(len(values), dtype=object)
    column[:] = [pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL) for value in values]
    return column


def _unpacked(column: Iterable[bytes]) -> list:
    return [pickle.loads(value) for value in column]


def decode_files(batch: Mapping[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data task: decode a block of files, yielding each part as soon as it is decoded (a long file's
    windows come in parts, so one file never holds more than a part's tensors)."""
    for task in _unpacked(batch["task"]):
        first = decode(task)
        more = follow_up_tasks(first)
        yield {"part": _packed([first]), "parts": np.array([1 + len(more)])}
        for follow_up in more:
            yield {"part": _packed([decode(follow_up)]), "parts": np.array([1 + len(more)])}


def load_encoders(sources: Mapping[str, str], device: str, precision: str) -> dict[str, Encoder]:
    """The modality towers of a model set (``{modality: checkpoint}``), without their language towers."""
    return {m: load_checkpoint(source, device, precision, towers=("vision",)) for m, source in sources.items()}


class EncodeActor:
    """Ray Data actor: builds its encoders once (``build()``: `load_encoders` with the run's model set), then
    embeds batches of decoded parts, ``batch_size`` inputs per encoder call."""

    def __init__(self, build: Callable[[], Mapping[str, Encoder]], batch_size: int):
        self.encoders = dict(build())
        self.batch_size = batch_size
        # As in the local pipeline: a heavy tower on a CPU gets every core of its node (decoding waits on it
        # anyway); a small one gets one, leaving the others to the decode tasks.
        on_cpu = all(e.device.type == "cpu" for e in self.encoders.values())
        heavy = any(is_heavy(e) for e in self.encoders.values())
        torch.set_num_threads(available_cores() if heavy and on_cpu else 1)

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        parts = _unpacked(batch["part"])
        encoded = [
            EncodedPart(replace(part, inputs=[]), int(count)) for part, count in zip(parts, batch["parts"], strict=True)
        ]
        queues: dict[str, list[tuple[EncodedPart, ModelInput]]] = defaultdict(list)
        for owner, part in zip(encoded, parts, strict=True):
            for item in part.inputs:
                queues[item.modality].append((owner, item))
        for modality, queue in queues.items():
            for begin in range(0, len(queue), self.batch_size):
                chunk = queue[begin : begin + self.batch_size]
                encoder = self.encoders[modality]
                embeddings = encoder.encode(torch.stack([item.tensor for _, item in chunk]))
                for (owner, item), embedding in zip(chunk, embeddings.numpy(), strict=True):
                    owner.embedded.append((replace(item, tensor=torch.empty(0)), embedding, encoder.precision))
        return {"encoded": _packed(encoded)}


# -------------------------------------------------------------------------------------------------- driver


class RayIngestor(Ingestor):
    """An `Ingestor` whose decoding and encoding run on the Ray cluster this process is connected to (see
    `connect`). ``encoders`` may hold only their language towers: the actors load the modality towers from each
    encoder's ``source``, at ``precision`` (`lbsearch.models.precision`; ``auto``: each actor measures its own
    device's best, as `Library` does). ``build_encoders(device, precision)`` builds the actors' encoders another
    way (the benchmark's in-memory models).
    """

    def __init__(
        self,
        db: Database,
        encoders: Mapping[str, Encoder],
        model_ids: Mapping[str, int],
        options: IngestOptions | None = None,
        progress: Callable[[IngestProgress], None] | None = None,
        precision: str = AUTO,
        build_encoders: Callable[[str, str], Mapping[str, Encoder]] | None = None,
    ):
        super().__init__(db, encoders, model_ids, options or IngestOptions(), progress)
        self.precision = precision
        self.build_encoders = build_encoders or partial(load_encoders, {m: e.source for m, e in encoders.items()})
        self.shape: ClusterShape | None = None

    def run(self, roots: Iterable[str | scan.ScanRoot]) -> IngestReport:
        roots = [r if isinstance(r, scan.ScanRoot) else scan.ScanRoot(Path(r)) for r in roots]
        check_roots_visible([str(r.path.expanduser().resolve()) for r in roots])
        self.shape = cluster_shape()
        report = super().run(roots)
        report.cluster = self.shape.summary()
        return report

    def start_decoding(self) -> DecodePool:
        return DecodePool(workers=0, max_in_flight=0)  # no local workers: the cluster decodes

    def _execute(
        self,
        tasks: list[PlannedTask],
        report: IngestReport,
        pool: DecodePool,
    ) -> None:
        ledger = RunLedger(self.db, self.options, report, tasks)
        seen: dict[str, set[int]] = {}  # a pending file -> its parts that arrived
        stream = self._stream([task for _, task, _ in tasks])
        try:
            for encoded in stream:
                self._accept(encoded, ledger, seen)
                ledger.commit()
                self._show(ledger.progress)
        except KeyboardInterrupt:
            report.interrupted = True
        finally:
            stream.close()
        ledger.commit(force=True)
        self._show(ledger.progress)

    def _show(self, progress: IngestProgress) -> None:
        if self.progress:
            self.progress(progress)

    def _accept(self, encoded: EncodedPart, ledger: RunLedger, seen: dict[str, set[int]]) -> None:
        part = encoded.part
        path = part.task.path
        if part.task.part in seen.get(path, ()):
            return  # a retried task sent this part again
        owner = ledger.owner_of(part)
        if owner is None:
            seen.pop(path, None)
            return
        arrived = seen.setdefault(path, set())
        if not arrived:
            owner.parts_left = encoded.parts
        arrived.add(part.task.part)
        owner.parts_left -= 1
        owner.inputs_left += len(encoded.embedded)
        for item, embedding, precision in encoded.embedded:
            ledger.embedded(owner, self.model_ids[item.modality], item, embedding, precision)
        ledger.maybe_finish(owner)
        if path not in ledger.pending:
            del seen[path]

    def _stream(self, tasks: list[DecodeTask]) -> Iterator[EncodedPart]:
        """The Ray Data job: decode tasks -> encoder actors -> parts streamed back here as they are embedded."""
        if not tasks:
            return
        ray = import_ray()
        # The run's own progress bar and summary stand for Ray Data's.
        ray.data.DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        shape = self.shape or cluster_shape()
        gpu = shape.encode_device == "cuda"
        # Blocks of a few files, as the local pipeline groups them, and at least two blocks per CPU so that every
        # core decodes until the end of the run.
        blocks = max(1, min(math.ceil(len(tasks) / GROUP_TASKS), len(tasks)), min(len(tasks), 2 * int(shape.cpus)))
        files = ray.data.from_items([{"task": task} for task in _packed(tasks)], override_num_blocks=blocks)
        # A memory reservation of their own also keeps Ray Data from fusing the decode tasks into the encoder
        # actors (it fuses stages whose resources are the same): decoding must run on every CPU, not in the actors.
        parts = files.map_batches(decode_files, batch_size=None, num_cpus=1, memory=DECODE_MEMORY)
        embedded = parts.map_batches(
            EncodeActor,
            fn_constructor_kwargs={
                "build": partial(self.build_encoders, shape.encode_device, self.precision),
                "batch_size": self.options.batch_size,
            },
            batch_size=self.options.batch_size,
            compute=ray.data.ActorPoolStrategy(size=shape.encode_actors),
            # A CPU actor claims no core, as the local pipeline's encoder runs beside as many decode processes as
            # there are cores: the decode tasks get every CPU. Claiming one also deadlocked a run that lost a
            # node: both actors restarted on the other node's two CPUs, and the decode tasks left had none.
            **({"num_gpus": 1} if gpu else {"num_cpus": 0}),
        )
        for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
            yield from _unpacked(batch["encoded"])
