"""Gathering concurrent classify requests into one onnxruntime call."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from starlette.concurrency import run_in_threadpool


class MicroBatcher:
    """Calls `predict(texts)` (blocking; run on a pool thread) once for the texts of every
    request that arrives within `max_wait_s` of the first waiting one, up to `max_batch` texts
    (a request is never split: one larger than max_batch runs alone). One call runs at a time;
    the next batch gathers meanwhile. A request whose caller stopped waiting is left out."""

    def __init__(self, predict: Callable[[list[str]], list[Any]], *, max_batch: int,
                 max_wait_s: float):
        self.predict = predict
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._waiting: list[tuple[Sequence[str], asyncio.Future]] = []
        self._full = asyncio.Event()
        self._worker: asyncio.Task | None = None

    @property
    def waiting(self) -> int:
        """Requests waiting for a call."""
        return len(self._waiting)

    async def __call__(self, texts: Sequence[str]) -> list[Any]:
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((texts, future))
        if sum(len(texts) for texts, _ in self._waiting) >= self.max_batch:
            self._full.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work())
        return await future

    async def _work(self) -> None:
        while self._waiting:
            with contextlib.suppress(TimeoutError):  # waited long enough: run what came
                await asyncio.wait_for(self._full.wait(), self.max_wait_s)
            batch = self._take()
            if not batch:
                continue
            texts = [text for request_texts, _ in batch for text in request_texts]
            try:
                results = await run_in_threadpool(self.predict, texts)
            except Exception as exc:  # each caller gets the error of the call it was part of
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for request_texts, future in batch:
                if not future.done():
                    future.set_result(results[start:start + len(request_texts)])
                start += len(request_texts)

    def _take(self) -> list[tuple[Sequence[str], asyncio.Future]]:
        """The oldest waiting requests that fit in max_batch (at least one), still awaited."""
        batch, size = [], 0
        while self._waiting:
            texts, future = self._waiting[0]
            if batch and size + len(texts) > self.max_batch:
                break
            self._waiting.pop(0)
            if not future.done():
                batch.append((texts, future))
                size += len(texts)
        self._full.clear()
        if sum(len(texts) for texts, _ in self._waiting) >= self.max_batch:
            self._full.set()
        return batch
