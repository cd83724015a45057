"""The torch-free side of generation, shared by the torch path and the ONNX runtime: argument
checks, stop strings, and text streamed from token ids as they are sampled."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from lmforge.errors import LmforgeError
from lmforge.interfaces.tokenizer import Tokenizer


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None,
                   top_p: float | None, repetition_penalty: float) -> None:
    """Refuse sampling arguments outside their ranges, naming every one that is."""
    problems = []
    if max_new_tokens < 0:
        problems.append(f"max_new_tokens must be >= 0, found {max_new_tokens}")
    if temperature < 0:
        problems.append(f"temperature must be >= 0 (0: greedy), found {temperature}")
    if top_k is not None and top_k < 1:
        problems.append(f"top_k must be >= 1 or unset, found {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        problems.append(f"top_p must be in (0, 1] or unset, found {top_p}")
    if repetition_penalty <= 0:
        problems.append(f"repetition_penalty must be > 0 (1: none), found {repetition_penalty}")
    if problems:
        raise LmforgeError("generate: " + "; ".join(problems))


def check_stop_strings(stop_strings: Sequence[str]) -> None:
    if any(not stop for stop in stop_strings):
        raise LmforgeError(f"generate: stop strings must be non-empty, found "
                           f"{list(stop_strings)!r}")


def stop_at(text: str, stop_strings: Sequence[str]) -> int | None:
    """Where the earliest stop string starts in `text`, or None."""
    found = [i for i in (text.find(s) for s in stop_strings) if i >= 0]
    return min(found) if found else None


def settled_length(text: str, stop_strings: Sequence[str]) -> int:
    """How much of `text` can be shown now: trailing replacement characters (an incomplete
    UTF-8 sequence of byte-level pieces) and a trailing start of a stop string are held back."""
    end = len(text.rstrip("\ufffd"))
    held = 0
    for stop in stop_strings:
        for k in range(min(len(stop) - 1, end), held, -1):
            if text.endswith(stop[:k], 0, end):
                held = k
                break
    return end - held


class TextStream:
    """Text from token ids pushed one at a time, as `stream_text` yields it: each push decodes
    all the ids so far and gives the new settled end of the text ("" when nothing new is
    settled); `stopped` turns True once a stop string appears (push the rest no more)."""

    def __init__(self, tokenizer: Tokenizer, stop_strings: Sequence[str]):
        self.tokenizer = tokenizer
        self.stop_strings = list(stop_strings)
        self.generated: list[int] = []
        self.shown = 0  # characters of the decoded text given out so far
        self.stopped = False

    def push(self, token: int) -> str:
        self.generated.append(token)
        text = self.tokenizer.decode(self.generated)
        stop = stop_at(text, self.stop_strings)
        if stop is not None:
            self.stopped = True
            return text[self.shown:stop] if stop > self.shown else ""
        return self._show(text, settled_length(text, self.stop_strings))

    def end(self) -> str:
        """What was held back, once the tokens ended without a stop string."""
        text = self.tokenizer.decode(self.generated)
        return self._show(text, len(text))

    def _show(self, text: str, upto: int) -> str:
        if upto <= self.shown:
            return ""
        piece, self.shown = text[self.shown:upto], upto
        return piece


def stream_text(tokens: Iterator[int], tokenizer: Tokenizer, stop_strings: list[str]
                ) -> Iterator[str]:
    """The text of `tokens` piece by piece (`TextStream`); output ends before the first stop
    string. `tokens` (a generator) is closed when this ends or is closed."""
    stream = TextStream(tokenizer, stop_strings)
    try:
        for token in tokens:
            piece = stream.push(token)
            if piece:
                yield piece
            if stream.stopped:
                return
        piece = stream.end()
        if piece:
            yield piece
    finally:
        tokens.close()  # lets the token source free what it holds now, not when collected
