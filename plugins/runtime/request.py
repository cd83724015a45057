"""A generation request to the runtime's engine: how it samples, and its tokens as they come,
to a thread (`tokens()`) or to an asyncio loop (`async_tokens()`)."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.interfaces.tokenizer import Tokenizer
from lmforge.plugins.tasks.generation_text import check_sampling, check_stop_strings, stream_text

if TYPE_CHECKING:
    from lmforge.plugins.runtime.generate import Engine


@dataclass(frozen=True)
class Sampling:
    """How one request samples: `lmforge.plugins.tasks.generate.generate`'s arguments."""

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        check_sampling(self.max_new_tokens, self.temperature, self.top_k, self.top_p,
                       self.repetition_penalty)


_END = object()  # the queue's last item: the request finished


class Request:
    """A generation submitted to an Engine: its tokens as they come (`tokens()`, `text()`, or
    `async_tokens()` in an asyncio loop), `cancel()` from any thread, and once done a
    `finish_reason`: "stop" (a stop id, or a stop string in `text()`), "length"
    (max_new_tokens), "cancelled" or "error"."""

    def __init__(self, engine: Engine, prompt_ids: Sequence[int], sampling: Sampling,
                 stop_ids: Collection[int]):
        self.prompt_ids = list(prompt_ids)
        self.sampling = sampling
        self.stop_ids = frozenset(stop_ids)
        self.generated: list[int] = []
        self.finish_reason: str | None = None
        self.error: BaseException | None = None
        self._engine = engine
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._wake_consumer: Callable[[], None] | None = None
        self.rng = np.random.default_rng(sampling.seed)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def cancel(self) -> None:
        """Stop this request; its slot is freed before the engine's next step."""
        if self._finish("cancelled"):
            self._engine.wake()

    def tokens(self) -> Iterator[int]:
        """The new token ids, each as soon as it is sampled (stop ids are not yielded). With
        no background loop running, iterating drives the engine's steps. Closing the iterator
        before the end cancels the request; an error of the graph is raised here."""
        try:
            while True:
                if not self._engine.running_in_background:
                    while self._queue.empty():
                        self._engine.step()
                item = self._queue.get()
                if self._ended(item):
                    return
                yield item
        finally:
            self.cancel()  # no-op when it finished

    async def async_tokens(self) -> AsyncIterator[int]:
        """`tokens()` for an asyncio loop, with the engine running in the background: each
        token is awaited, holding no thread while it is being computed."""
        if not self._engine.running_in_background:
            raise LmforgeError("async_tokens needs the engine's background loop (Engine.start)")
        loop = asyncio.get_running_loop()
        arrived = asyncio.Event()
        self._wake_consumer = lambda: loop.call_soon_threadsafe(arrived.set)
        try:
            while True:
                arrived.clear()  # before looking, so that a token put after the look sets it
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    await arrived.wait()
                    continue
                if self._ended(item):
                    return
                yield item
        finally:
            self._wake_consumer = None
            self.cancel()  # no-op when it finished

    def _ended(self, item: object) -> bool:
        """Whether `item` ends the stream; the graph's error, when it failed, is raised here."""
        if item is not _END:
            return False
        if self.error is not None:
            raise LmforgeError(f"generation failed: {self.error}") from self.error
        return True

    def text(self, tokenizer: Tokenizer, stop_strings: Sequence[str] = ()) -> Iterator[str]:
        """The generated text piece by piece, as `lmforge generate` streams it: incomplete
        characters and possible starts of a stop string are held back; output ends before the
        first stop string (finish_reason "stop")."""
        check_stop_strings(stop_strings)
        exhausted = False

        def tokens() -> Iterator[int]:
            nonlocal exhausted
            yield from self.tokens()
            exhausted = True

        yield from stream_text(tokens(), tokenizer, list(stop_strings))
        if not exhausted:
            self.finish_reason = "stop"  # a stop string ended it (cancelling the tokens)

    def _deliver(self, token: int) -> None:
        self.generated.append(token)
        self._put(token)

    def _finish(self, reason: str, error: BaseException | None = None) -> bool:
        """Mark the request finished (the first reason wins); whether this call did."""
        with self._lock:
            if self.finish_reason is not None:
                return False
            self.error = error
            self.finish_reason = reason
        self._put(_END)
        return True

    def _put(self, item) -> None:
        self._queue.put(item)
        wake = self._wake_consumer
        if wake is not None:
            with contextlib.suppress(RuntimeError):  # its loop has closed: nobody waits
                wake()
