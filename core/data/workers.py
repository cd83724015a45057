"""The data stage in several processes: workers preprocess chunks, the main process keeps order."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import traceback
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager

from lmforge.config import DataConfig
from lmforge.data.prepare import _SplitWriter, _StepCounter, leakage_index, text_keys
from lmforge.errors import LmforgeError
from lmforge.interfaces.data import Preprocessor, Record

# Characters per chunk of records: enough that sending a chunk costs little beside processing it,
# few enough that the workers start soon and memory stays small.
CHUNK_CHARS = 1 << 18

_job: tuple = ()  # in a worker: its per_record steps, the step to precompute for, split, index


def _start(steps, ahead, split) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the main process to handle
    # A worker waits for chunks forever; if the main process is killed it must exit by itself.
    parent = multiprocessing.parent_process()
    threading.Thread(target=lambda: (parent.join(), os._exit(1)), daemon=True).start()
    global _job
    _job = steps, ahead and ahead.create(), split, split and leakage_index(split)


def _run(records: list[Record]) -> tuple:
    steps, ahead, split, near = _job
    counters = [_StepCounter(c.entry.name, c.create()) for c in steps]  # this chunk's figures
    done, error = [], None
    try:
        for counter in counters:
            records = counter.through(records)
        done.extend(records)
    except Exception as exc:  # raised in the main process after the records before it
        exc.add_note(f"in a data worker process:\n{traceback.format_exc()}")
        error = exc
    return (done, [ahead.precompute(record) for record in done] if ahead else (),
            [text_keys(record["text"], split, near) for record in done] if split else (),
            counters, error)


@contextmanager
def offload(records: Iterator[Record], steps: list[_StepCounter], data: DataConfig, workers: int,
            writer: _SplitWriter):
    """Run the leading `per_record` steps of `steps`, the `precompute` of the next one and, in
    hash mode, the split writer's `text_keys` in `workers` processes. Yields the records that
    pass, in input order, the steps left to this process, and the next one's precomputed values
    (None: none) in the same order, as `_StepCounter.through` takes them."""
    count = next((i for i, s in enumerate(steps) if not s.step.per_record), len(steps))
    ahead = count < len(steps) and type(steps[count].step).precompute is not Preprocessor.precompute
    split = data.split if data.split.mode == "hash" else None
    if not (count or ahead or split):
        yield records, steps, None  # no work a worker could take
        return
    components = data.preprocess[:count + 1 if ahead else count]
    # A fork server that has imported what workers run (and the main module, which they would
    # import again) forks each in milliseconds; spawn, which also starts them clean of this
    # process's threads, pays the imports, about a second, in every worker.
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(["__main__", __name__, *{c.entry.component.__module__
                                                                for c in components}])
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start, initargs=(
        components[:count], components[count] if ahead else None, split))
    precomputed: deque = deque()

    def results() -> Iterator[Record]:
        try:
            for done, values, keys, counters, error in _in_order(pool, records, 4 * workers):
                for mine, theirs in zip(steps, counters, strict=False):
                    mine.merge(theirs)
                precomputed.extend(values)
                writer.known = dict(zip([record["text"] for record in done], keys, strict=False))
                yield from done
                if error is not None:
                    raise error
        except BrokenProcessPool as exc:
            raise LmforgeError("a data worker process died (killed, or out of memory?); nothing "
                               "was written. --workers 1 prepares in one process") from exc

    try:
        yield results(), steps[count:], precomputed if ahead else None
    finally:
        pool.shutdown(cancel_futures=True)


@contextmanager
def _ctrl_c_deferred():
    """Ctrl-C waits for the block: a submit may start the fork server and workers, and one broken
    off halfway leaves a worker the pool does not know, which outlives it or hangs its shutdown.
    Processes started meanwhile are born with SIGINT blocked (the mask is inherited), so it
    cannot kill them before they ignore it."""
    caught: list = []
    handler = signal.getsignal(signal.SIGINT)
    swap = handler is not None and threading.current_thread() is threading.main_thread()
    if swap:  # another thread may take the signal: Python would raise it here all the same
        signal.signal(signal.SIGINT, lambda *_: caught.append(1))
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if swap:
            signal.signal(signal.SIGINT, handler)
        if caught:
            signal.raise_signal(signal.SIGINT)


def _in_order(pool: ProcessPoolExecutor, records: Iterator[Record], in_flight: int) -> Iterator:
    """`_run` of each chunk of `records` in input order, at most `in_flight` chunks pending. An
    error reading `records` is raised after the records read before it, as in one process."""
    pending, chunk, size, error, reading = deque(), [], 0, None, True
    while reading:
        try:
            chunk.append(next(records))
            size += len(chunk[-1]["text"])
        except StopIteration:
            reading = False
        except Exception as exc:
            error, reading = exc, False
        if chunk and (size >= CHUNK_CHARS or not reading):
            with _ctrl_c_deferred():
                pending.append(pool.submit(_run, chunk))
            chunk, size = [], 0
        while len(pending) > (in_flight if reading else 0):
            yield pending.popleft().result()
    if error is not None:
        raise error
