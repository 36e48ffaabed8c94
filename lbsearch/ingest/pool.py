"""The decode pool: decoding in worker processes, a bounded number of tasks in flight, small files in groups.

The pipeline hands it the whole-file tasks and takes each decoded part as it comes (which may add follow-up tasks
for the file's later windows); the ingest benchmark drives the same pool to time decoding alone.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool

import torch

from lbsearch.ingest.decode import DecodedPart, DecodeTask, decode

# How often a decode worker checks that the process that started it is still alive.
ORPHAN_CHECK_SECONDS = 0.5
# Small files go to a worker in groups: each call costs about as much pickling, pipe traffic and thread wake-ups as
# decoding a small PNG (measured in docs/benchmarks.md); a file of a megabyte or more is worth a call of its own.
GROUP_TASKS = 8
GROUP_BYTES = 1 << 20


class DecodePool:
    """``workers`` decode processes (none: decode in this process), at ``niceness`` below the caller's priority.

    Started at construction, so that forking overlaps whatever the caller does next; `close` (or a ``with``
    block) stops them."""

    def __init__(self, workers: int, max_in_flight: int, niceness: int = 0):
        self.workers = workers
        self.max_in_flight = max_in_flight
        self.niceness = niceness
        self.executor: cf.ProcessPoolExecutor | None = self._start() if workers else None

    def _start(self) -> cf.ProcessPoolExecutor:
        # fork (as PyTorch's DataLoader does on Linux): workers start at once and need no importable __main__;
        # they never touch the encoder or the database. spawn elsewhere.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        executor = cf.ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context(method),
            initializer=_worker_init,
            initargs=(os.getpid(), self.niceness),
        )
        executor.submit(int)  # a pool forks its workers at its first call
        return executor

    def close(self) -> None:
        if self.executor is not None:
            # Waiting for the pool's manager thread: one left running races Python's exit handler, which then writes
            # to the pipe the thread just closed ("Exception ignored ... Bad file descriptor"). Calls not yet
            # started are dropped; those running (after Ctrl-C) are finished first.
            self.executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def decoded(self, todo: list[DecodeTask], accept: Callable[[DecodedPart], list[DecodeTask]]) -> Iterator[int]:
        """Decode the tasks, handing each part to ``accept`` as it comes (its follow-up tasks join ``todo``), with at
        most ``max_in_flight`` tasks outstanding. Yields after each part the number of workers left with nothing to
        do: once every task is submitted, their cores are free for encoding until the end of the run.

        A decoder that crashes its worker process (a segfault in a codec) breaks the whole pool: the pool is
        started again and the tasks that were in flight are tried again one at a time, so that only the file
        that crashes the decoder is handed back failed."""
        if self.executor is None:
            while todo:
                todo.extend(reversed(accept(decode(todo.pop()))))
                yield 0
            return
        running: dict[cf.Future, list[DecodeTask]] = {}  # a worker call -> the tasks in it
        suspects: list[DecodeTask] = []  # in flight when a worker died: each is tried again, alone
        alone: set[cf.Future] = set()  # the call running a suspect
        try:
            while todo or running or suspects:
                if suspects:
                    if not running:
                        task = suspects.pop()
                        future = self.executor.submit(_decode_group, [task])
                        running[future] = [task]
                        alone.add(future)
                else:
                    while todo and sum(map(len, running.values())) < self.max_in_flight:
                        group = self.next_group(todo)
                        running[self.executor.submit(_decode_group, group)] = group
                done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for future in done:
                    group = running.pop(future, None)
                    if group is None:  # dropped with a broken pool
                        continue
                    try:
                        parts = future.result()
                    except BrokenProcessPool:
                        parts = self._after_crash(group, future in alone, running, suspects)
                    alone.discard(future)
                    for part in parts:
                        todo.extend(reversed(accept(part)))
                        yield 0 if todo or suspects else self.idle_workers(running)
        finally:
            for future in running:  # after Ctrl-C: calls not yet started never start
                future.cancel()

    def _after_crash(
        self,
        group: list[DecodeTask],
        alone: bool,
        running: dict[cf.Future, list[DecodeTask]],
        suspects: list[DecodeTask],
    ) -> list[DecodedPart]:
        """A worker died while ``group`` was decoding (``alone``: the only call in flight): a fresh pool, and
        the part of the file that crashed it, failed, when that is known."""
        suspects.extend(task for tasks in running.values() for task in tasks)
        running.clear()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.executor = self._start()
        if alone:
            return [DecodedPart(group[0], error="the decoder crashed on this file (its worker process died)")]
        suspects.extend(group)
        return []

    def idle_workers(self, running: Iterable[cf.Future]) -> int:
        # A finished call waiting in `done` waits on this process, not on a worker.
        return max(0, self.workers - sum(not future.done() for future in running))

    def next_group(self, todo: list[DecodeTask]) -> list[DecodeTask]:
        """The tasks for one worker call, taken from the end of ``todo``: small files together, and smaller groups
        as the work runs out, so the workers finish together."""
        most = max(1, min(GROUP_TASKS, len(todo) // (2 * max(1, self.workers))))
        group = [todo.pop()]
        total = group[0].size
        while todo and len(group) < most and total + todo[-1].size <= GROUP_BYTES:
            total += todo[-1].size
            group.append(todo.pop())
        return group


def _decode_group(tasks: list[DecodeTask]) -> list[DecodedPart]:
    return [decode(task) for task in tasks]


def _worker_init(parent_pid: int, niceness: int) -> None:
    # Decoding workers share the CPU with the encoder: one thread each keeps them from oversubscribing it.
    torch.set_num_threads(1)
    if niceness:
        os.nice(niceness)
    # Ctrl-C is handled by the main process, which drains the work already decoded.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A worker waits on its task queue forever, so one whose parent was killed (kill -9) would linger: leave then.
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), name="orphan-watch", daemon=True).start()


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(ORPHAN_CHECK_SECONDS)
    os._exit(1)
