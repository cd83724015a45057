"""Generation over a bundle's decode graph with continuous batching: requests join and leave
the running batch between steps, each holding a slot of the state caches while it runs."""

from __future__ import annotations

import collections
import threading
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.interfaces.tokenizer import Tokenizer
from lmforge.plugins.runtime.manifest import BundleError, GraphEntry
from lmforge.plugins.runtime.request import Request, Sampling
from lmforge.plugins.runtime.sampling import sample_rows
from lmforge.plugins.tasks.generation_text import check_stop_strings

DTYPES = {"int64": np.int64, "float32": np.float32, "float16": np.float16, "bool": np.bool_}
FED_INPUTS = ("input_ids", "position_ids", "attention_mask")
# a kv cache without a context limit starts with room for this many positions and doubles
INITIAL_CAPACITY = 256


@dataclass
class _Slot:
    """A running request's place in the batch: every token so far (for the repetition penalty
    and for recomputing past the context limit), how many positions its cache holds, and the
    tokens to feed next."""

    request: Request
    ids: list[int]
    pending: list[int]
    cached: int = 0
    seen: np.ndarray | None = field(default=None, repr=False)


class Engine:
    """Generates for many requests at once over one decode graph (an onnxruntime session, or
    anything with its `run(output_names, feeds)`).

    State caches are numpy buffers with a slot (row along the state's batch axis) per running
    request, up to `max_batch`; a kv cache has room for `context_length` positions per slot.
    Each `step()` first admits waiting requests into free slots, then advances every running
    request by one token: a request with several tokens to feed (its prompt) runs with past 0
    and step = prompt length (batched only with prompts of the same length), the others run as
    one batch fed their last tokens, with
    position ids, an attention mask of their real cache entries and the past sliced to the
    longest of them; the graph returns the new entries, which are written into each slot. A
    request that finishes or is cancelled frees its slot. Past the context limit a request's
    cache is dropped and its last context_length - 1 tokens are recomputed, as the torch path
    does. Sampling, stop ids and max_new_tokens follow `lmforge.plugins.tasks.generate`.

    `submit()` may be called from any thread. `start()` runs steps on a background thread
    while there is work; without it, iterating a request's tokens runs the steps.
    """

    def __init__(self, session, graph: GraphEntry, *, context_length: int | None,
                 max_batch: int, eos_id: int):
        if graph.state is None:
            raise BundleError("the decode graph declares no state: nothing to carry between "
                              "steps")
        unfed = [spec.name for spec in graph.inputs
                 if spec.name not in FED_INPUTS and spec.name not in graph.state.inputs]
        if unfed or graph.input("input_ids") is None or graph.output("logits") is None:
            raise BundleError(f"the decode graph's inputs must be input_ids, position_ids, "
                              f"attention_mask and its state, and its outputs logits and its "
                              f"state; found inputs {[s.name for s in graph.inputs]}, outputs "
                              f"{[s.name for s in graph.outputs]}")
        self.session = session
        self.graph = graph
        self.state = graph.state
        self.context_length = context_length
        self.max_batch = max_batch
        self.eos_id = eos_id
        self._fed = {name for name in FED_INPUTS if graph.input(name) is not None}
        self._outputs = ["logits", *self.state.outputs]
        kv = self.state.kind == "kv_cache"
        self._capacity = (context_length or INITIAL_CAPACITY) if kv else 0
        self._buffers = {name: np.zeros(self._buffer_shape(name), DTYPES[graph.input(name).dtype])
                         for name in self.state.inputs}
        # a kv state's axes with (batch, sequence) first, and those views of the buffers
        ndim = len(graph.input(self.state.inputs[0]).shape)
        front = (self.state.batch_axis, self.state.sequence_axis)
        self._slots_first = (*front, *(a for a in range(ndim) if a not in front)) if kv else ()
        self._fronted = self._front_views()
        self._slots: list[_Slot | None] = [None] * max_batch
        self._waiting: collections.deque[Request] = collections.deque()
        self._wakeup = threading.Condition()
        self._step_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closing = False

    @classmethod
    def for_bundle(cls, bundle, max_batch: int | None = None) -> Engine:
        """An engine over a loaded bundle's decode graph and limits."""
        manifest = bundle.manifest
        if manifest.task != "lm":
            raise LmforgeError(f"{bundle.path} holds a {manifest.task} model, which does not "
                               f"generate text")
        return cls(bundle.session("decode"), manifest.graphs["decode"],
                   context_length=manifest.limits.context_length,
                   max_batch=max_batch or manifest.limits.max_batch,
                   eos_id=manifest.tokenizer.eos_id)

    # --- requests -------------------------------------------------------------------------

    def submit(self, prompt_ids: Sequence[int], sampling: Sampling,
               stop_ids: Collection[int] | None = None) -> Request:
        """Queue a generation after `prompt_ids` (non-empty); `stop_ids` default to {eos}."""
        if len(prompt_ids) == 0:
            raise LmforgeError("generate: the prompt is empty; give at least one token id (a "
                               "document boundary such as the tokenizer's eos id starts afresh)")
        request = Request(self, prompt_ids, sampling,
                          {self.eos_id} if stop_ids is None else stop_ids)
        if sampling.max_new_tokens == 0:
            request._finish("length")
            return request
        with self._wakeup:
            if self._closing:
                raise LmforgeError("the generation engine is closed")
            self._waiting.append(request)
            self._wakeup.notify()
        return request

    @property
    def waiting(self) -> int:
        """Requests queued for a free slot."""
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Requests holding a slot."""
        return sum(slot is not None for slot in self._slots)

    # --- the loop -------------------------------------------------------------------------

    @property
    def running_in_background(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Run steps on a background thread whenever a request waits or runs."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="lmforge-generate",
                                            daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the background loop after its current step; unfinished requests are
        cancelled."""
        with self._wakeup:
            self._closing = True
            self._wakeup.notify_all()
        if self._thread is not None:
            self._thread.join()
        for request in [*self._waiting, *(s.request for s in self._slots if s is not None)]:
            request._finish("cancelled")
        self._waiting.clear()
        self._slots = [None] * self.max_batch

    def wake(self) -> None:
        with self._wakeup:
            self._wakeup.notify()

    def _loop(self) -> None:
        while True:
            with self._wakeup:
                while not (self._closing or self._waiting or self.running):
                    self._wakeup.wait()
                if self._closing:
                    return
            try:
                self.step()
            except Exception as exc:  # fail what is in flight rather than leave it hanging
                self._fail(list(range(self.max_batch)), exc)

    def step(self) -> int:
        """Admit waiting requests into free slots, then advance every running request by one
        token; the number of requests advanced."""
        with self._step_lock:
            self._admit()
            rows = [row for row, slot in enumerate(self._slots) if slot is not None]
            for row in rows:
                self._fit_context(row)
            # Rows feeding several tokens (a prompt, or a recomputation past the context) have
            # an empty cache: those of one length run together, as do all one-token rows.
            groups: dict[int, list[int]] = {}
            for row in rows:
                groups.setdefault(len(self._slots[row].pending), []).append(row)
            for group in groups.values():
                try:
                    logits = self._run(group)
                except Exception as exc:  # onnxruntime raises its own exception types
                    self._fail(group, exc)
                    continue
                for row, token in zip(group, self._sample(group, logits), strict=True):
                    self._advance(row, token)
            return len(rows)

    def _admit(self) -> None:
        for row, slot in enumerate(self._slots):
            if slot is not None and slot.request.done:
                self._slots[row] = None
        with self._wakeup:
            while self._waiting and None in self._slots:
                request = self._waiting.popleft()
                if request.done:
                    continue
                row = self._slots.index(None)
                self._slots[row] = _Slot(request, list(request.prompt_ids),
                                         list(request.prompt_ids))
                self._reset_state(row)

    def _fit_context(self, row: int) -> None:
        slot = self._slots[row]
        window = self.context_length
        if window is not None and slot.cached + len(slot.pending) > window:
            slot.cached = 0
            slot.pending = slot.ids[-max(window - 1, 1):]
            self._reset_state(row)

    def _sample(self, rows: list[int], logits: np.ndarray) -> list[int]:
        """The next token of each row from its logits (len(rows), V): rows whose requests
        sample alike are drawn together, each with its request's generator."""
        alike: dict[tuple, list[int]] = {}
        for i, row in enumerate(rows):
            sampling = self._slots[row].request.sampling
            settings = (sampling.temperature, sampling.top_k, sampling.top_p,
                        sampling.repetition_penalty)
            alike.setdefault(settings, []).append(i)
        tokens = [0] * len(rows)
        for (temperature, top_k, top_p, penalty), members in alike.items():
            slots = [self._slots[rows[i]] for i in members]
            seen = None
            if penalty != 1.0:
                for slot in slots:
                    if slot.seen is None:
                        slot.seen = np.zeros(logits.shape[-1], dtype=bool)
                        slot.seen[slot.ids] = True
                seen = np.stack([slot.seen for slot in slots])
            drawn = sample_rows(logits[members], [slot.request.rng for slot in slots],
                                temperature=temperature, top_k=top_k, top_p=top_p,
                                repetition_penalty=penalty, seen=seen)
            for i, token in zip(members, drawn.tolist(), strict=True):
                tokens[i] = token
        return tokens

    def _advance(self, row: int, token: int) -> None:
        slot = self._slots[row]
        request = slot.request
        if request.done:  # cancelled while the graph ran
            self._slots[row] = None
            return
        sampling = request.sampling
        if token in request.stop_ids:
            request._finish("stop")
            self._slots[row] = None
            return
        request._deliver(token)
        slot.ids.append(token)
        if slot.seen is not None:
            slot.seen[token] = True
        if len(request.generated) >= sampling.max_new_tokens:
            request._finish("length")
            self._slots[row] = None
        else:
            slot.pending = [token]

    def _fail(self, rows: list[int], error: BaseException) -> None:
        for row in rows:
            if self._slots[row] is not None:
                self._slots[row].request._finish("error", error)
                self._slots[row] = None

    # --- the graph and the state buffers --------------------------------------------------

    def _run(self, rows: list[int]) -> np.ndarray:
        """Feed the rows' pending tokens (all of one length) through the graph on top of their
        state; store the new state; the logits (len(rows), V)."""
        slots = [self._slots[row] for row in rows]
        step = len(slots[0].pending)
        cached = np.array([slot.cached for slot in slots], dtype=np.int64)
        feeds = {"input_ids": np.array([slot.pending for slot in slots], dtype=np.int64)}
        if "position_ids" in self._fed:
            feeds["position_ids"] = cached[:, None] + np.arange(step, dtype=np.int64)
        past = int(cached.max())
        if "attention_mask" in self._fed:
            mask = np.arange(past + step) < cached[:, None]
            mask[:, past:] = True
            feeds["attention_mask"] = mask
        kv = self.state.kind == "kv_cache"
        if kv and past + step > self._capacity:
            self._grow(past + step)
        for name in self.state.inputs:
            feeds[name] = np.ascontiguousarray(self._buffers[name][self._index(rows, past)])
        logits, *new_state = self.session.run(self._outputs, feeds)
        for name, value in zip(self.state.inputs, new_state, strict=True):
            self._store(name, value, rows, cached, step)
        for slot in slots:
            slot.cached += step
        return logits

    def _index(self, rows, length: int | None) -> tuple:
        """The index of `rows` (and, in a kv cache, positions [0, length)) in a buffer."""
        index: list = [slice(None)] * self._buffers[self.state.inputs[0]].ndim
        index[self.state.batch_axis] = np.asarray(rows)
        if self.state.sequence_axis is not None and length is not None:
            index[self.state.sequence_axis] = slice(0, length)
        return tuple(index)

    def _store(self, name: str, value: np.ndarray, rows: list[int], cached: np.ndarray,
               step: int) -> None:
        buffer = self._buffers[name]
        if self.state.kind == "recurrent":
            buffer[self._index(rows, None)] = value
            return
        sequence = self.state.sequence_axis
        if value.shape[sequence] != step:
            raise BundleError(f"the decode graph returned {value.shape[sequence]} positions of "
                              f"{name!r}'s state for a step of {step}: it must return only the "
                              f"new entries")
        slots_first = self._fronted[name]  # (slots, positions, ...)
        new = value.transpose(self._slots_first)  # (rows, step, ...)
        if step == 1:
            slots_first[np.asarray(rows), cached] = new[:, 0]
        else:
            for i, row in enumerate(rows):
                slots_first[row, cached[i]:cached[i] + step] = new[i]

    def _reset_state(self, row: int) -> None:
        self._slots[row].cached = 0
        if self.state.kind == "recurrent":
            for buffer in self._buffers.values():
                buffer[self._index([row], None)] = 0

    def _grow(self, needed: int) -> None:
        capacity = self._capacity
        while capacity < needed:
            capacity *= 2
        axis = self.state.sequence_axis
        for name, buffer in self._buffers.items():
            shape = list(buffer.shape)
            shape[axis] = capacity
            grown = np.zeros(shape, buffer.dtype)
            index = [slice(None)] * buffer.ndim
            index[axis] = slice(0, self._capacity)
            grown[tuple(index)] = buffer
            self._buffers[name] = grown
        self._capacity = capacity
        self._fronted = self._front_views()

    def _front_views(self) -> dict[str, np.ndarray]:
        if not self._slots_first:
            return {}
        return {name: buffer.transpose(self._slots_first)
                for name, buffer in self._buffers.items()}

    def _buffer_shape(self, name: str) -> list[int]:
        shape = []
        for axis, dim in enumerate(self.graph.input(name).shape):
            if axis == self.state.batch_axis:
                shape.append(self.max_batch)
            elif axis == self.state.sequence_axis:
                shape.append(self._capacity)
            elif isinstance(dim, int):
                shape.append(dim)
            else:
                raise BundleError(f"decode graph state input {name!r}: axis {axis} is {dim!r}; "
                                  f"only the batch and sequence axes may be symbolic")
        return shape


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """The prompt's token ids; an empty prompt starts from eos (a document boundary)."""
    return tokenizer.encode(prompt) or [tokenizer.eos_id]


def generate_text(bundle, prompt: str, *, max_new_tokens: int, temperature: float = 1.0,
                  top_k: int | None = None, top_p: float | None = None,
                  repetition_penalty: float = 1.0, seed: int | None = None,
                  stop_strings: Sequence[str] = ()) -> Iterator[str]:
    """The continuation of `prompt` by a loaded bundle, streamed as text; the arguments and
    the output are those of `lmforge.plugins.tasks.generate.generate_text`."""
    check_stop_strings(stop_strings)
    sampling = Sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
    engine = Engine.for_bundle(bundle, max_batch=1)
    request = engine.submit(prompt_ids(bundle.tokenizer, prompt), sampling)
    return request.text(bundle.tokenizer, stop_strings)
