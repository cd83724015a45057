"""Tests of lmforge.plugins.tasks.generate: sampling, state handling, stopping and streamed text."""

import pytest
import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.interfaces.model import LanguageModel, ModelSpec
from lmforge.interfaces.tokenizer import Tokenizer
from lmforge.plugins.models.gpt import Gpt
from lmforge.plugins.tasks.generate import generate, generate_text, sample_next


class Scripted(LanguageModel):
    """Predicts `script[i]` at its i-th call, whatever it is fed; records every call."""

    def __init__(self, script, vocab=257, max_context=None):
        super().__init__()
        self.script, self.vocab, self.max_context = script, vocab, max_context
        self.weight = nn.Parameter(torch.zeros(1))
        self.calls = []  # (ids fed, training, grad enabled)

    def generate_step(self, idx, state):
        logits = torch.zeros(1, self.vocab)
        logits[0, self.script[len(self.calls)]] = 100.0  # a sure draw
        self.calls.append((idx[0].tolist(), self.training, torch.is_grad_enabled()))
        return logits, "state"

    def flops_per_token(self):
        return 0


class Fixed(LanguageModel):
    """The same next-token logits at every step."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits)

    def generate_step(self, idx, state):
        return self.logits[None], None

    def flops_per_token(self):
        return 0


class Bytes(Tokenizer):
    """UTF-8 bytes as ids 0-255 and eos as 256; decoding shows broken characters as U+FFFD."""

    def train(self, texts):
        pass

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    @property
    def vocab_size(self):
        return 257

    @property
    def special_tokens(self):
        return {"eos": 256}

    def get_state(self):
        return None

    def set_state(self, state):
        pass


def tiny_gpt(vocab=50):
    torch.manual_seed(0)
    settings = Gpt.Settings(n_layer=1, n_head=2, n_embd=16, block_size=32, kernels="reference")
    return Gpt(settings).build(ModelSpec("lm", vocab)).eval()


def test_yields_each_token_as_soon_as_it_is_sampled():
    model = Scripted([5, 6, 7])
    tokens = generate(model, [1, 2], max_new_tokens=3)
    assert next(tokens) == 5 and len(model.calls) == 1
    assert list(tokens) == [6, 7]
    # the prompt once, then only the newest token on top of the carried state
    assert [ids for ids, _, _ in model.calls] == [[1, 2], [5], [6]]


def test_eval_mode_and_no_grad_inside_restored_outside():
    model = Scripted([5, 6, 7]).train()
    tokens = generate(model, [1], max_new_tokens=3)
    next(tokens)
    assert torch.is_grad_enabled()  # the caller's grad mode between tokens
    tokens.close()
    assert model.training
    assert all(not training and not grad for _, training, grad in model.calls)


def test_stop_ids_and_max_new_tokens():
    assert list(generate(Scripted([5, 6, 7, 8]), [1], max_new_tokens=4, stop_ids={7})) == [5, 6]
    assert list(generate(Scripted([5, 6, 7, 8]), [1], max_new_tokens=2)) == [5, 6]
    assert list(generate(Scripted([5]), [1], max_new_tokens=0)) == []


def test_context_limit_recomputes_the_last_tokens():
    model = Scripted(list(range(10, 20)), max_context=4)
    assert list(generate(model, [1, 2, 3], max_new_tokens=4)) == [10, 11, 12, 13]
    fed = [ids for ids, _, _ in model.calls]
    # 3 + 1 fit; the next would make 5 > 4: recompute the last 3, then one cached step
    assert fed == [[1, 2, 3], [10], [3, 10, 11], [12]]


def test_a_long_prompt_is_cropped():
    model = Scripted([10], max_context=4)
    list(generate(model, [1, 2, 3, 4, 5, 6], max_new_tokens=1))
    assert model.calls[0][0] == [4, 5, 6]


def test_seed_repeats_and_different_seeds_differ():
    model = tiny_gpt()
    first = list(generate(model, [1, 2], max_new_tokens=20, seed=1))
    assert list(generate(model, [1, 2], max_new_tokens=20, seed=1)) == first
    assert list(generate(model, [1, 2], max_new_tokens=20, seed=2)) != first


def test_global_rng_untouched():
    model = tiny_gpt()
    before = torch.get_rng_state()
    list(generate(model, [1], max_new_tokens=5, seed=3))
    list(generate(model, [1], max_new_tokens=5))
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("filtering", [dict(top_k=1), dict(top_p=1e-6), dict(temperature=0)])
def test_filters_down_to_one_token_are_greedy(filtering):
    model = tiny_gpt()
    ids = [1, 2]
    with torch.no_grad():  # greedy by hand: the argmax of a full forward, one token at a time
        for _ in range(15):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    greedy = ids[2:]
    for seed in range(3):
        sampled = generate(model, [1, 2], max_new_tokens=15, seed=seed, **filtering)
        assert list(sampled) == greedy


def test_top_k_and_top_p_keep_the_expected_tokens():
    logits = torch.tensor([0.5, 0.3, 0.2]).log()
    generator = torch.Generator().manual_seed(0)

    def draws(**filtering):
        return {sample_next(logits, generator=generator, **filtering) for _ in range(300)}

    assert draws() == {0, 1, 2}
    assert draws(top_k=2) == {0, 1}
    assert draws(top_p=0.7) == {0, 1}  # 0.5 alone falls short of 0.7; 0.5 + 0.3 reaches it
    assert draws(top_p=0.5) == {0}


def test_repetition_penalty_on_positive_and_negative_logits():
    positive = Fixed([0.0, 2.0, 1.9, -3.0])
    assert list(generate(positive, [1], max_new_tokens=2, temperature=0)) == [1, 1]
    # 2.0 / 1.5 = 1.33 < 1.9, then 1.9 / 1.5 = 1.27 < 1.33: generated tokens count too
    assert list(generate(positive, [1], max_new_tokens=2, temperature=0,
                         repetition_penalty=1.5)) == [2, 1]
    negative = Fixed([-1.0, -1.2, -5.0])
    assert list(generate(negative, [0], max_new_tokens=1, temperature=0)) == [0]
    # a negative logit is multiplied: -1.0 * 1.5 = -1.5 < -1.2
    assert list(generate(negative, [0], max_new_tokens=1, temperature=0,
                         repetition_penalty=1.5)) == [1]


@pytest.mark.parametrize("arguments, message", [
    (dict(temperature=-1.0), "temperature must be >= 0"),
    (dict(top_k=0), "top_k must be >= 1"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(repetition_penalty=0.0), "repetition_penalty must be > 0"),
    (dict(max_new_tokens=-1), "max_new_tokens must be >= 0"),
])
def test_bad_arguments_fail_at_the_call(arguments, message):
    with pytest.raises(LmforgeError, match=message):
        generate(Scripted([5]), [1], **{"max_new_tokens": 1, **arguments})


def test_empty_prompt_fails():
    with pytest.raises(LmforgeError, match="prompt is empty"):
        generate(Scripted([5]), [], max_new_tokens=1)


TEXT = "héllo wörld\n\nbye"


def scripted_text(text, then=(256,)):
    return Scripted(list(text.encode("utf-8")) + list(then))


def test_text_streams_whole_characters_and_stops_at_eos():
    model = scripted_text(TEXT, then=(256, 65, 66))
    pieces = list(generate_text(model, Bytes(None), "hi", max_new_tokens=50))
    assert "".join(pieces) == TEXT
    assert len(pieces) > 5 and not any("\ufffd" in piece for piece in pieces)
    assert model.calls[0][0] == [104, 105]


def test_empty_prompt_text_starts_from_eos():
    model = scripted_text("ok")
    assert "".join(generate_text(model, Bytes(None), "", max_new_tokens=5)) == "ok"
    assert model.calls[0][0] == [256]


@pytest.mark.parametrize("stops, expected", [
    (["\n\n"], "héllo wörld"),
    (["ld\n", "xyz"], "héllo wör"),  # the "l" waits until the stop string is settled
    (["bye", "ö"], "héllo w"),
    (["absent"], TEXT),
])
def test_text_stops_before_a_stop_string(stops, expected):
    model = scripted_text(TEXT)
    pieces = list(generate_text(model, Bytes(None), "hi", max_new_tokens=50, stop_strings=stops))
    assert "".join(pieces) == expected


def test_text_stop_restores_the_model_mode():
    model = scripted_text(TEXT).train()
    list(generate_text(model, Bytes(None), "hi", max_new_tokens=50, stop_strings=["\n"]))
    assert model.training and len(model.calls) < len(TEXT)


def test_empty_stop_string_fails():
    with pytest.raises(LmforgeError, match="non-empty"):
        generate_text(Scripted([5]), Bytes(None), "hi", max_new_tokens=1, stop_strings=[""])
