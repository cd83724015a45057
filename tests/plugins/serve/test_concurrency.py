"""Many requests at once in-process: open streams hold no thread while they wait for tokens."""

import json
import threading
import time

from .conftest import client_for
from .test_app import GatedSession, greedy_text, sse_data

STREAMS = 60


def wait_until(condition) -> None:
    for _ in range(2000):
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError("the condition never held")


def streamed_text(client, prompt: str, max_tokens: int) -> str:
    request = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    with client.stream("POST", "/v1/completions", json=request) as response:
        assert response.status_code == 200
        events = sse_data(response.read().decode())
    assert events[-1] == "[DONE]"
    return "".join(json.loads(event)["choices"][0]["text"] for event in events[:-1])


def test_sixty_streams_wait_on_a_stuck_engine_without_using_up_the_thread_pool(lm_folder):
    prompts = [("abcdefghijklmnopqrstuvwxyz"[i % 26] * (1 + i % 3)) for i in range(STREAMS)]
    texts: dict[int, str] = {}
    with client_for(lm_folder, max_batch=64) as client:
        engine = client.app.state.model.engine
        engine.session = GatedSession(engine.session, free=0)

        def stream(i):
            texts[i] = streamed_text(client, prompts[i], 5)

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(STREAMS)]
        for thread in threads:
            thread.start()
        wait_until(lambda: engine.waiting + engine.running == STREAMS)
        # the engine is stuck on the gate; a route that needs the thread pool still answers,
        # which it could not if each waiting stream held one of its 40 threads
        assert client.post("/v1/tokenize", json={"input": "abc"}).json()["count"] == 3
        engine.session.gate.set()
        for thread in threads:
            thread.join()
    assert texts == {i: greedy_text(lm_folder, prompts[i], 5) for i in range(STREAMS)}
