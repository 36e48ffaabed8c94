"""Ingestion: a scan plan -> decoded inputs (worker processes) -> embeddings (batched) -> committed rows.

Stages and why:
- decoding runs in ``workers`` processes (file I/O and FFmpeg are the slow part on a CPU); at most
  ``max_in_flight`` tasks are outstanding, so memory stays flat however large the library;
- encoding runs here, in batches per modality, so the model is loaded once;
- a file is committed only when every one of its inputs is embedded, in a transaction with its segments and
  vectors, so a crash (even ``kill -9``) leaves each file either fully stored or not at all. The next run finds
  unfinished files still pending and embeds them again: nothing is duplicated or lost.
Ctrl-C stops submitting work, embeds and commits what was already decoded, and returns a report marked
interrupted.
"""

from __future__ import annotations

import gc
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from sqlalchemy.exc import SQLAlchemyError

from lbsearch import modalities
from lbsearch.errors import ConfigError, StorageError
from lbsearch.ingest import scan
from lbsearch.ingest.decode import DecodedPart, DecodeTask, ModelInput, WindowSpec, follow_up_tasks
from lbsearch.ingest.pool import DecodePool
from lbsearch.models import Encoder
from lbsearch.models.autotune import HEAVY_ENCODER_PARAMETERS
from lbsearch.paths import shown
from lbsearch.preprocess import PreprocessSettings
from lbsearch.storage.database import Database
from lbsearch.storage.records import FileVectors, MediaInfo, NewVector

# When encoding is the slow stage, the decode workers run at this lower priority, so that the scheduler gives them
# the cycles the encoder leaves idle (between batches, in its serial parts) rather than a share of its cores: a
# parallel region of the encoder waits for its slowest thread, so a core taken by a worker stalls the whole batch.
# (Not yet measured against equal priority: see docs/benchmarks.md.)
WORKER_NICENESS = 10

# A file to embed: its database id, its whole-file decode task, and the models to embed it for (None: all).
PlannedTask = tuple[int, DecodeTask, frozenset[int] | None]


@dataclass(frozen=True)
class IngestOptions:
    windows: WindowSpec = field(default_factory=WindowSpec)
    workers: int = 2  # decode processes; 0 decodes in this process
    batch_size: int = 16  # inputs per encoder call
    commit_files: int = 64  # files per database transaction
    commit_seconds: float = 5.0  # ... or this often, whichever comes first
    include_hidden: bool = False
    retry_failed: bool = False
    # torch threads for encoding while the workers decode; None: chosen per encoder (`Ingestor._encoding_threads`).
    encode_threads: int | None = None

    def __post_init__(self) -> None:
        if self.workers < 0 or self.batch_size < 1 or (self.encode_threads is not None and self.encode_threads < 1):
            raise ConfigError(
                f"workers {self.workers}, batch size {self.batch_size}, encode threads {self.encode_threads}: "
                "workers must be >= 0, the batch size and encode threads >= 1"
            )

    @property
    def max_in_flight(self) -> int:
        # Tasks queued besides the running ones keep the workers decoding while the encoder runs a batch: with
        # fewer they sat idle through much of it, and with one batch ahead they still waited out a batch of videos
        # (docs/benchmarks.md, Ingest). Each task holds at most 1 + WINDOWS_PER_PART inputs per modality, so
        # memory stays bounded.
        return 2 * self.batch_size + 2 * max(self.workers, 1)


@dataclass
class IngestProgress:
    """A snapshot for progress displays (the CLI's bar, the UI's live panel)."""

    files_total: int
    files_done: int = 0
    segments: int = 0
    errors: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def segments_per_second(self) -> float:
        return self.segments / max(time.monotonic() - self.started, 1e-9)


@dataclass
class IngestReport:
    plan: dict[str, int]
    embedded: int = 0
    failed: int = 0
    vectors: int = 0
    errors: dict[str, str] = field(default_factory=dict)  # path -> reason
    warnings: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    interrupted: bool = False
    cluster: dict[str, Any] = field(default_factory=dict)  # what a run over a Ray cluster used (ingest.cluster)


@dataclass
class _PendingFile:
    """A file whose parts are being decoded and embedded."""

    file_id: int
    path: str
    parts_left: int = 1
    inputs_left: int = 0
    info: MediaInfo | None = None
    modality: str | None = None  # as decoding found it, when not as scanned
    vectors: list[NewVector] = field(default_factory=list)
    only_models: frozenset[int] | None = None


class RunLedger:
    """The files of a run in flight, and their commits: whatever runs the decoding and encoding (this module's
    process pool, a Ray cluster) hands it decoded parts and embeddings, and it alone writes them.

    A file is committed only once every part and input of it has arrived, in one transaction with its segments
    and vectors; ``commit_files`` files or ``commit_seconds`` go by between transactions."""

    def __init__(
        self, db: Database, options: IngestOptions, report: IngestReport, tasks: Sequence[PlannedTask]
    ):
        self.db = db
        self.options = options
        self.report = report
        self.progress = IngestProgress(files_total=len(tasks))
        self.pending = {task.path: _PendingFile(file_id, task.path, only_models=only) for file_id, task, only in tasks}
        self._finished: list[_PendingFile] = []
        self._failures: dict[int, str] = {}
        self._last_commit = time.monotonic()

    def owner_of(self, part: DecodedPart) -> _PendingFile | None:
        """The pending file a decoded part belongs to, with the part's warning and media description recorded.
        None when the file failed, in this part (recorded here) or in an earlier one."""
        owner = self.pending.get(part.task.path)
        if owner is None:
            return None
        if part.error is not None:
            self._failures[owner.file_id] = part.error
            self.report.failed += 1
            self.report.errors[owner.path] = part.error
            self.progress.errors += 1
            self.progress.files_done += 1
            del self.pending[owner.path]
            return None
        if part.warning:
            self.report.warnings[owner.path] = part.warning
        if part.task.part == 0:
            owner.info = _media_info(part)
            owner.modality = part.modality
        return owner

    def embedded(
        self, owner: _PendingFile, model_id: int, item: ModelInput, embedding: np.ndarray, precision: str
    ) -> None:
        """One of ``owner``'s inputs came back from its encoder (run at ``precision``) as ``embedding``."""
        vector = NewVector(model_id, item.modality, embedding.astype(np.float32), item.start, item.end, precision)
        owner.vectors.append(vector)
        owner.inputs_left -= 1
        self.progress.segments += 1
        self.maybe_finish(owner)

    def maybe_finish(self, owner: _PendingFile) -> None:
        if owner.parts_left == 0 and owner.inputs_left == 0 and self.pending.get(owner.path) is owner:
            del self.pending[owner.path]
            self._finished.append(owner)
            self.progress.files_done += 1

    def commit(self, force: bool = False) -> None:
        """Write the finished and failed files, when a batch is due (``force``: now)."""
        due = (
            len(self._finished) >= self.options.commit_files
            or time.monotonic() - self._last_commit > self.options.commit_seconds
        )
        if not (force or due) or not (self._finished or self._failures):
            return
        self.db.store_vectors(
            [FileVectors(p.file_id, p.vectors, p.info, p.only_models, p.modality) for p in self._finished]
        )
        if self._failures:
            self.db.mark_files_failed(self._failures)
        self.report.embedded += len(self._finished)
        self.report.vectors += sum(len(p.vectors) for p in self._finished)
        self._finished.clear()
        self._failures.clear()
        self._last_commit = time.monotonic()


class Ingestor:
    """Runs one ingest of some roots into a library's database with a loaded model set."""

    def __init__(
        self,
        db: Database,
        encoders: Mapping[str, Encoder],
        model_ids: Mapping[str, int],
        options: IngestOptions = IngestOptions(),
        progress: Callable[[IngestProgress], None] | None = None,
    ):
        self.db = db
        self.encoders = encoders
        self.model_ids = model_ids
        self.options = options
        self.progress = progress
        self.settings = {m: PreprocessSettings.from_vision_config(e.config.vision) for m, e in encoders.items()}

    # ----------------------------------------------------------------------------------------- planning

    def run(self, roots: Iterable[str | scan.ScanRoot]) -> IngestReport:
        started = time.monotonic()
        # Forking the decode workers first overlaps their start with the planning.
        pool = self.start_decoding()
        try:
            return self._plan_and_execute(roots, pool, started)
        except (SQLAlchemyError, OSError) as exc:
            # Files fail in the workers and are recorded; what fails here is the library's own storage.
            raise StorageError(
                f"indexing stopped: the library's storage failed ({_cause(exc)}). What was committed is kept; "
                f"free disk space or repair {self.db.url.render_as_string(hide_password=True)}, "
                "then run the same command again to go on"
            ) from exc
        finally:
            pool.close()

    def _plan_and_execute(
        self, roots: Iterable[str | scan.ScanRoot], pool: DecodePool, started: float
    ) -> IngestReport:
        plan = scan.plan(
            self.db, roots, include_hidden=self.options.include_hidden, retry_failed=self.options.retry_failed
        )
        report = IngestReport(plan=plan.summary())
        for moved in [*plan.moved, *plan.touched]:
            f = moved.file
            self.db.relocate_file(
                moved.file_id, path=f.path, root=f.root, size=f.size, mtime_ns=f.mtime_ns, item_key=f.item_key
            )
        self.db.delete_files([record.id for record in plan.deleted])

        unreadable = [t for t in plan.to_embed if t.content_hash is None]
        readable = [t for t in plan.to_embed if t.content_hash is not None]
        ids = self.db.upsert_files([{**asdict(t.file), "content_hash": t.content_hash} for t in plan.to_embed])
        file_ids = dict(zip((t.file.path for t in plan.to_embed), ids, strict=True))
        if unreadable:
            self.db.mark_files_failed({file_ids[t.file.path]: "cannot be read" for t in unreadable})
            report.failed += len(unreadable)
            report.errors.update({t.file.path: "cannot be read" for t in unreadable})
        tasks: list[PlannedTask] = [
            (
                file_ids[t.file.path],
                self.decode_task(t.file.path, t.file.modality, t.file.size),
                None,
            )
            for t in readable
        ]
        tasks += self._new_model_tasks({file_id for file_id, _, _ in tasks})
        run_id = self.db.start_run({m: e.source for m, e in self.encoders.items()})
        status = "failed"  # unless _execute returns
        threads = torch.get_num_threads()  # _execute changes them as it goes
        try:
            with _older_objects_frozen():
                self._execute(tasks, report, pool)
            status = "interrupted" if report.interrupted else "done"
        finally:
            torch.set_num_threads(threads)
            report.seconds = time.monotonic() - started
            self.db.finish_run(
                run_id,
                status,
                {"embedded": report.embedded, "failed": report.failed, "vectors": report.vectors, **report.plan},
            )
        return report

    def decode_task(
        self, path: str, modality: str, size: int, settings: Mapping[str, PreprocessSettings] | None = None
    ) -> DecodeTask:
        """The whole-file task for a file of ``modality`` (``settings``: only some of its modalities)."""
        settings = self._settings_for(modality) if settings is None else settings
        return DecodeTask(path, modality, settings, self.options.windows, size=size)

    def _settings_for(self, file_modality: str) -> dict[str, PreprocessSettings]:
        """The modalities a file of this kind is embedded in: a video also gives its audio track."""
        return {m: self.settings[m] for m in modalities.embedded_as(file_modality) if m in self.settings}

    def _new_model_tasks(self, planned: set[int]) -> list[PlannedTask]:
        """Embedded files that lack a vector of a model in the set (a new model version): embed them for it
        alone, keeping the vectors of older versions."""
        tasks = []
        lacking = {
            m: {r.id: r for r in self.db.files_lacking_vectors(model_id, m)} for m, model_id in self.model_ids.items()
        }
        for modality in self.model_ids:
            for record in lacking[modality].values():
                if record.id in planned:
                    continue
                planned.add(record.id)
                settings = {
                    m: s
                    for m, s in self._settings_for(record.modality).items()
                    if m == modality or record.id in lacking.get(m, ())
                }
                only = frozenset(self.model_ids[m] for m in settings)
                tasks.append((record.id, self.decode_task(record.path, record.modality, record.size, settings), only))
        return tasks

    # ---------------------------------------------------------------------------------------- execution

    def _execute(
        self,
        tasks: list[PlannedTask],
        report: IngestReport,
        pool: DecodePool,
    ) -> None:
        ledger = RunLedger(self.db, self.options, report, tasks)
        progress = ledger.progress
        queues: dict[str, list[tuple[_PendingFile, ModelInput]]] = defaultdict(list)
        all_threads = torch.get_num_threads()
        threads = {m: self._encoding_threads(e, all_threads) for m, e in self.encoders.items()}
        todo = [task for _, task, _ in reversed(tasks)]

        def encode(modality: str, everything: bool = False, idle_workers: int = 0) -> None:
            queue = queues[modality]
            wanted = min(all_threads, threads[modality] + idle_workers)
            while len(queue) >= self.options.batch_size or (everything and queue):
                batch, queue[:] = queue[: self.options.batch_size], queue[self.options.batch_size :]
                if torch.get_num_threads() != wanted:
                    torch.set_num_threads(wanted)
                encoder = self.encoders[modality]
                embeddings = encoder.encode(torch.stack([item.tensor for _, item in batch]))
                for (owner, item), embedding in zip(batch, embeddings.numpy(), strict=True):
                    ledger.embedded(owner, self.model_ids[modality], item, embedding, encoder.precision)

        def accept(part: DecodedPart) -> list[DecodeTask]:
            owner = ledger.owner_of(part)
            if owner is None:  # the file failed, in this part or in another one
                if part.error is not None:
                    for queue in queues.values():
                        queue[:] = [entry for entry in queue if entry[0].path != part.task.path]
                return []
            more = follow_up_tasks(part) if part.task.part == 0 else []
            owner.parts_left += len(more) - 1
            owner.inputs_left += len(part.inputs)
            for item in part.inputs:
                queues[item.modality].append((owner, item))
            ledger.maybe_finish(owner)
            return more

        parts = pool.decoded(todo, accept)
        try:
            for idle_workers in parts:
                for modality in list(queues):
                    encode(modality, idle_workers=idle_workers)
                ledger.commit()
                if self.progress:
                    self.progress(progress)
        except KeyboardInterrupt:
            report.interrupted = True
        finally:
            parts.close()
        # Embed what was decoded, for files whose every part arrived; unfinished files stay pending. The workers
        # have nothing left to decode: the encoder gets every core.
        threads = dict.fromkeys(threads, all_threads)
        for modality in list(queues):
            encode(modality, everything=True)
        ledger.commit(force=True)
        if self.progress:
            self.progress(progress)

    def _encoding_threads(self, encoder: Encoder, all_threads: int) -> int:
        """torch threads for an encoder's batches in a run (decode workers take cores too).

        Intra-op threads beside busy workers fight them for the cores, and a parallel region waits for its
        slowest thread: small models run faster with one thread each (benchmarks/ingest.py, docs/benchmarks.md).
        A heavy tower on a CPU is the slower stage by far (the workers idle most of the time): it gets every
        core.
        """
        if self.options.encode_threads is not None:
            return self.options.encode_threads
        if self.options.workers == 0 or (is_heavy(encoder) and encoder.device.type == "cpu"):
            return all_threads
        return max(1, available_cores() - self.options.workers)

    def _encoder_bound(self) -> bool:
        """Whether encoding is the slow stage: some tower is heavy and runs on the CPU, beside the workers."""
        return any(is_heavy(encoder) and encoder.device.type == "cpu" for encoder in self.encoders.values())

    def start_decoding(self) -> DecodePool:
        """The decode pool for this run's options, its workers niced when encoding is the slow stage."""
        niceness = WORKER_NICENESS if self._encoder_bound() else 0
        return DecodePool(self.options.workers, self.options.max_in_flight, niceness)


@contextmanager
def _older_objects_frozen() -> Iterator[None]:
    """Keep Python's cyclic garbage collector from scanning the objects that exist before a run (torch's, the
    models', SQLAlchemy's): a full collection of them costs a noticeable share of a small run."""
    if gc.get_freeze_count():  # a caller froze its own objects (a pre-forking server): unfreezing would undo that
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def is_heavy(encoder: Encoder) -> bool:
    """Whether the encoder's modality tower is big enough to be the slow stage on a CPU (counted at fp32)."""
    return encoder.vision_parameters >= HEAVY_ENCODER_PARAMETERS


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _cause(exc: BaseException) -> str:
    """One line on what failed: the database driver's own message, or the OS error and its file."""
    if isinstance(exc, SQLAlchemyError):
        return str(getattr(exc, "orig", None) or exc).splitlines()[0]
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {shown(exc.filename)}" if exc.filename else exc.strerror
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _media_info(part: DecodedPart) -> MediaInfo | None:
    info = part.info
    if info is None:
        return None
    return MediaInfo(
        duration=info.duration,
        fps=info.fps,
        width=info.width,
        height=info.height,
        sample_rate=info.sample_rate,
        has_audio=info.has_audio,
    )
