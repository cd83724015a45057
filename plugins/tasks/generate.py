"""Sampling from language models token by token, streamed as token ids or as text."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence

import torch

from lmforge.errors import LmforgeError
from lmforge.interfaces.model import LanguageModel
from lmforge.interfaces.task import eval_mode
from lmforge.interfaces.tokenizer import Tokenizer
from lmforge.plugins.tasks.generation_text import check_sampling, check_stop_strings, stream_text


def sample_next(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, repetition_penalty: float = 1.0,
                seen: torch.Tensor | None = None, generator: torch.Generator | None = None
                ) -> int:
    """One token id drawn from next-token logits (V,).

    In order: the repetition penalty on the tokens marked in `seen` (V,) bool (as in CTRL and
    Hugging Face: positive logits divided by it, negative ones multiplied, so a penalty > 1
    always makes them less likely); temperature (0: the argmax, nothing drawn); top-k; top-p
    (the smallest set of most likely tokens whose probabilities reach top_p); then a draw.
    """
    logits = logits.float()
    if repetition_penalty != 1.0 and seen is not None:
        penalized = torch.where(logits > 0, logits / repetition_penalty,
                                logits * repetition_penalty)
        logits = torch.where(seen, penalized, logits)
    if temperature == 0:
        return int(torch.argmax(logits))
    logits = logits / temperature
    if top_k is not None and top_k < logits.numel():
        kth_largest = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token once the more likely ones already reach top_p: the first always stays.
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = torch.empty_like(drop_sorted)
        drop[order] = drop_sorted
        logits = logits.masked_fill(drop, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def generate(model: LanguageModel, prompt_ids: Sequence[int], *, max_new_tokens: int,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             repetition_penalty: float = 1.0, seed: int | None = None,
             stop_ids: Collection[int] | None = None) -> Iterator[int]:
    """New token ids after `prompt_ids`, yielded one by one as soon as each is sampled.

    Sampling is `sample_next`'s (temperature 0 is greedy); the repetition penalty applies to
    every token of prompt and output so far. It stops after `max_new_tokens`, or when it samples
    a token of `stop_ids` (not yielded). Draws come from a private CPU `torch.Generator` seeded
    with `seed` (fresh entropy when None), so the global RNG is untouched and a seed gives the
    same tokens on any device up to the model's numerics. The model runs in eval mode without
    autograd and gets its mode back when the iterator ends or is closed.

    Each step feeds only the new token through `model.generate_step` with the carried state.
    When the model has a `max_context` and the next step would pass it, the state is dropped
    and the last max_context - 1 tokens are recomputed, which leaves room for one cached step:
    past the context limit a new token costs about max_context / 2 token positions of compute
    on average instead of one (a model with learned positions cannot just shift its cache).
    Arguments are checked here, before the first token is asked for.
    """
    check_sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty)
    if len(prompt_ids) == 0:
        raise LmforgeError("generate: the prompt is empty; give at least one token id (a "
                           "document boundary such as the tokenizer's eos id starts afresh)")
    return _generate(model, list(prompt_ids), max_new_tokens,
                     dict(temperature=temperature, top_k=top_k, top_p=top_p,
                          repetition_penalty=repetition_penalty),
                     seed, frozenset(stop_ids or ()))


# As a decorator on a generator function, no_grad applies while the generator runs and is undone
# at each yield, so the caller's code between tokens keeps its own grad mode.
@torch.no_grad()
def _generate(model: LanguageModel, ids: list[int], max_new_tokens: int,
              sampling: dict, seed: int | None, stop_ids: frozenset[int]) -> Iterator[int]:
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    window = model.max_context
    with eval_mode(model) as device:
        state, cached, pending = None, 0, ids
        seen = None  # (V,) bool: tokens of prompt and output so far, for the repetition penalty
        for _ in range(max_new_tokens):
            if window is not None and cached + len(pending) > window:
                state, cached = None, 0
                pending = ids[-max(window - 1, 1):]
            idx = torch.tensor([pending], dtype=torch.long, device=device)  # (1, t)
            logits, state = model.generate_step(idx, state)  # (1, V)
            cached += len(pending)
            logits = logits[0].float().cpu()  # (V,)
            if seen is None and sampling["repetition_penalty"] != 1.0:
                seen = torch.zeros(logits.numel(), dtype=torch.bool)
                seen[torch.tensor(ids)] = True
            token = sample_next(logits, seen=seen, generator=generator, **sampling)
            if token in stop_ids:
                return
            yield token
            ids.append(token)
            if seen is not None:
                seen[token] = True
            pending = [token]


def generate_text(model: LanguageModel, tokenizer: Tokenizer, prompt: str, *,
                  max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, repetition_penalty: float = 1.0,
                  seed: int | None = None, stop_ids: Collection[int] | None = None,
                  stop_strings: Sequence[str] = ()) -> Iterator[str]:
    """The continuation of `prompt` as text, yielded piece by piece as tokens are sampled.

    Sampling is `generate`'s. An empty prompt starts from the tokenizer's eos id (a document
    boundary), and `stop_ids` defaults to {eos}. Each step decodes all the generated ids and
    yields the new end of the text (quadratic in the output length, negligible next to the
    model for the lengths generated here); an incomplete multi-byte character is held back until
    it is complete. Output stops before the first stop string, which is not yielded; text that
    could be the start of a stop string is held back until that is settled.
    """
    check_stop_strings(stop_strings)
    prompt_ids = tokenizer.encode(prompt) or [tokenizer.eos_id]
    if stop_ids is None:
        stop_ids = {tokenizer.eos_id}
    tokens = generate(model, prompt_ids, max_new_tokens=max_new_tokens, temperature=temperature,
                      top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                      seed=seed, stop_ids=stop_ids)
    return stream_text(tokens, tokenizer, list(stop_strings))
