"""The continuous-batching engine on fake decode graphs: batched decoding gives each request
the tokens the torch path gives it alone; requests join, leave and reuse slots."""

import asyncio
import threading

import pytest

from lmforge.errors import LmforgeError
from lmforge.plugins.runtime.generate import Engine, Sampling
from lmforge.plugins.runtime.manifest import BundleError
from lmforge.plugins.tasks.generate import generate, generate_text

from .fake_decode import (
    KvModel,
    KvSession,
    Letters,
    RecurrentModel,
    RecurrentSession,
    kv_graph,
    recurrent_graph,
)

EOS = 0
PROMPTS = [[5], [3, 9, 1], [7, 7, 2, 30, 11, 4, 8], [12, 1], [25, 3, 3, 6, 20], [2] * 15]


def kv_engine(session, context=10, max_batch=3):
    return Engine(session, kv_graph(), context_length=context, max_batch=max_batch, eos_id=EOS)


def recurrent_engine(session, max_batch=3):
    return Engine(session, recurrent_graph(), context_length=None, max_batch=max_batch,
                  eos_id=EOS)


def torch_tokens(model, prompt, sampling):
    return list(generate(model, prompt, max_new_tokens=sampling.max_new_tokens,
                         temperature=sampling.temperature, top_k=sampling.top_k,
                         top_p=sampling.top_p, repetition_penalty=sampling.repetition_penalty,
                         stop_ids={EOS}))


@pytest.mark.parametrize("kind", ["kv_cache", "recurrent"])
def test_batched_decoding_gives_each_request_its_torch_path_tokens(kind):
    if kind == "kv_cache":  # a context of 10 makes the longer requests recompute past it
        session, model = KvSession(), KvModel(max_context=10)
        engine = kv_engine(session)
    else:
        session, model = RecurrentSession(), RecurrentModel()
        engine = recurrent_engine(session)
    samplings = [Sampling(max_new_tokens=n, temperature=0, repetition_penalty=p)
                 for n, p in zip([20, 3, 25, 12, 18, 9], [1.0, 1.0, 1.3, 1.0, 0.8, 1.0],
                                 strict=True)]
    # Three requests start; the rest join while they run, as slots free up.
    requests = [engine.submit(p, s) for p, s in zip(PROMPTS[:3], samplings[:3], strict=True)]
    for _ in range(2):
        engine.step()
    requests += [engine.submit(p, s) for p, s in zip(PROMPTS[3:], samplings[3:], strict=True)]
    while engine.step():
        assert engine.running <= 3
    for request, prompt, sampling in zip(requests, PROMPTS, samplings, strict=True):
        assert request.done
        assert request.generated == torch_tokens(model, prompt, sampling)
    assert max(session.batch_sizes) == 3  # decoding really ran batched
    lengths = {len(r.generated) for r in requests}
    assert len(lengths) > 2  # requests left at different steps (eos or their own limit)


def test_prompts_of_one_length_are_prefilled_in_one_call():
    session = KvSession()
    engine = kv_engine(session, context=None, max_batch=4)
    for prompt in ([1, 2, 3], [4, 5, 6], [7, 8], [9]):
        engine.submit(prompt, Sampling(max_new_tokens=3, temperature=0))
    engine.step()
    assert sorted(session.batch_sizes) == [1, 1, 2]  # [9] alone: nothing else has one token
    engine.step()
    assert session.batch_sizes[-1] == 4  # then every request decodes in one batch


def test_a_request_decoded_alone_and_in_a_batch_draws_the_same_seeded_tokens():
    sampling = Sampling(max_new_tokens=30, temperature=1.0, top_k=8, top_p=0.9, seed=4)
    alone = kv_engine(KvSession(), context=None, max_batch=1)
    expected = list(alone.submit(PROMPTS[2], sampling).tokens())
    engine = kv_engine(KvSession(), context=None, max_batch=4)
    others = [engine.submit(p, Sampling(max_new_tokens=25, temperature=1.0, seed=i))
              for i, p in enumerate(PROMPTS[:3])]
    engine.step()
    request = engine.submit(PROMPTS[2], sampling)
    assert list(request.tokens()) == expected
    assert len(expected) > 3
    assert all(r.generated for r in others)


def test_finished_and_cancelled_requests_free_their_slots_for_waiting_ones():
    session = KvSession()
    engine = kv_engine(session, context=None, max_batch=2)
    long_one = engine.submit([4, 5], Sampling(max_new_tokens=50, temperature=0))
    doomed = engine.submit([6], Sampling(max_new_tokens=50, temperature=0))
    waiting = engine.submit([8, 1, 2], Sampling(max_new_tokens=6, temperature=0))
    engine.step()
    assert (engine.running, engine.waiting) == (2, 1)
    doomed.cancel()
    engine.step()
    assert doomed.finish_reason == "cancelled"
    assert (engine.running, engine.waiting) == (2, 0)  # the waiting request took its slot
    while engine.step():
        pass
    assert waiting.generated == torch_tokens(KvModel(None), [8, 1, 2], waiting.sampling)
    assert long_one.generated == torch_tokens(KvModel(None), [4, 5], long_one.sampling)
    assert engine.running == 0


def test_a_request_in_a_reused_slot_never_sees_its_predecessor_s_cache():
    engine = kv_engine(KvSession(), context=None, max_batch=2)
    running = engine.submit([4, 5, 6], Sampling(max_new_tokens=30, temperature=0), stop_ids=())
    short = engine.submit([9, 9, 9, 9], Sampling(max_new_tokens=4, temperature=0), stop_ids=())
    while not short.done:
        engine.step()
    # a one-token prompt joins the batch at once, in the slot `short` left with its entries
    joining = engine.submit([7], Sampling(max_new_tokens=12, temperature=0), stop_ids=())
    while engine.step():
        pass
    for request in (running, joining):
        assert request.generated == list(generate(
            KvModel(None), request.prompt_ids, max_new_tokens=request.sampling.max_new_tokens,
            temperature=0, stop_ids=set()))


def test_kv_cache_without_a_context_limit_grows():
    engine = kv_engine(KvSession(), context=None, max_batch=2)
    request = engine.submit([3] * 200, Sampling(max_new_tokens=300, temperature=0), stop_ids=())
    expected = list(generate(KvModel(None), [3] * 200, max_new_tokens=300, temperature=0,
                             stop_ids=set()))
    assert list(request.tokens()) == expected
    assert engine._capacity == 512  # 256 positions first, doubled once


def test_text_streams_and_stops_like_the_torch_path():
    tokenizer = Letters()
    for stop_strings in ([], ["c"], ["xy", "d"]):
        sampling = Sampling(max_new_tokens=40, temperature=0)
        engine = kv_engine(KvSession(), context=12)
        request = engine.submit(tokenizer.encode("bad"), sampling)
        pieces = list(request.text(tokenizer, stop_strings))
        expected = list(generate_text(KvModel(12), tokenizer, "bad", max_new_tokens=40,
                                      temperature=0, stop_strings=stop_strings))
        assert pieces == expected
        stopped = any(s in tokenizer.decode(request.generated) for s in stop_strings)
        assert request.finish_reason == ("stop" if stopped or len(request.generated) < 40
                                         else "length")
        while engine.step():
            pass
        assert engine.running == 0  # a stop string frees the slot


def test_closing_the_token_stream_cancels_the_request():
    engine = kv_engine(KvSession(), context=None)
    request = engine.submit([1, 2], Sampling(max_new_tokens=100, temperature=0))
    tokens = request.tokens()
    next(tokens)
    tokens.close()
    assert request.finish_reason == "cancelled"
    engine.step()
    assert engine.running == 0


def test_a_failing_graph_call_fails_its_requests_and_not_the_others():
    engine = kv_engine(KvSession(fail_on_token=31), context=None)
    bad = engine.submit([31, 2], Sampling(max_new_tokens=5, temperature=0))
    good = engine.submit([3, 4, 5], Sampling(max_new_tokens=5, temperature=0))  # another call
    with pytest.raises(LmforgeError, match="generation failed: the graph failed"):
        list(bad.tokens())
    assert bad.finish_reason == "error"
    assert list(good.tokens()) == torch_tokens(KvModel(None), [3, 4, 5], good.sampling)


def test_a_graph_returning_the_whole_cache_is_refused_with_the_reason():
    engine = kv_engine(KvSession(full_present=True), context=None)
    request = engine.submit([1, 2, 3], Sampling(max_new_tokens=5, temperature=0))
    with pytest.raises(LmforgeError, match="must return only the new entries"):
        list(request.tokens())


def test_bad_arguments_are_refused_at_submission():
    engine = kv_engine(KvSession())
    with pytest.raises(LmforgeError, match="temperature must be >= 0.*top_p must be in"):
        Sampling(max_new_tokens=5, temperature=-1, top_p=2.0)
    with pytest.raises(LmforgeError, match="the prompt is empty"):
        engine.submit([], Sampling(max_new_tokens=5))
    nothing = engine.submit([1], Sampling(max_new_tokens=0))
    assert (list(nothing.tokens()), nothing.finish_reason) == ([], "length")
    with pytest.raises(LmforgeError, match="stop strings must be non-empty"):
        list(engine.submit([1], Sampling(max_new_tokens=3)).text(Letters(), [""]))


def test_a_decode_graph_with_an_input_the_runtime_cannot_feed_is_refused():
    graph = kv_graph().model_copy(update={"inputs": [
        *kv_graph().inputs, kv_graph().inputs[0].model_copy(update={"name": "token_type_ids"})]})
    with pytest.raises(BundleError, match="inputs must be input_ids.*token_type_ids"):
        Engine(KvSession(), graph, context_length=8, max_batch=2, eos_id=EOS)


def test_the_background_loop_serves_threads_at_once():
    session = RecurrentSession()
    engine = recurrent_engine(session, max_batch=4)
    engine.start()
    results = {}

    def client(i):
        sampling = Sampling(max_new_tokens=15 + i, temperature=0)
        results[i] = list(engine.submit(PROMPTS[i], sampling).tokens())

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    engine.close()
    for i in range(6):
        sampling = Sampling(max_new_tokens=15 + i, temperature=0)
        assert results[i] == torch_tokens(RecurrentModel(), PROMPTS[i], sampling)
    with pytest.raises(LmforgeError, match="closed"):
        engine.submit([1], Sampling(max_new_tokens=2))


def test_close_cancels_what_is_still_running():
    engine = kv_engine(KvSession(), context=None)
    request = engine.submit([1, 2], Sampling(max_new_tokens=100, temperature=0))
    engine.step()
    engine.close()
    assert request.finish_reason == "cancelled"
    assert engine.running == 0


def test_async_tokens_are_the_tokens_and_need_the_background_loop():
    engine = kv_engine(KvSession(fail_on_token=31), context=None)
    sampling = Sampling(max_new_tokens=6, temperature=0)

    async def collect(request):
        return [token async for token in request.async_tokens()]

    with pytest.raises(LmforgeError, match="background loop"):
        asyncio.run(collect(engine.submit([3, 4], sampling)))
    engine.start()
    try:
        assert asyncio.run(collect(engine.submit([3, 4], sampling))) == torch_tokens(
            KvModel(None), [3, 4], sampling)
        with pytest.raises(LmforgeError, match="generation failed: the graph failed"):
            asyncio.run(collect(engine.submit([31, 2], sampling)))
    finally:
        engine.close()
