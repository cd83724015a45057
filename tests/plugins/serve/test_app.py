"""The app's routes in-process: completions (whole and streamed), models, classify, tokenize,
health, readiness, info, and each class of bad input."""

import json
import threading
import time

import pytest

from lmforge.plugins.runtime.bundle import load_bundle

from ..runtime.tiny_bundles import LABELS, classifier_logits, kv_greedy
from .conftest import client_for


def greedy_text(folder, prompt, n):
    tokenizer = load_bundle(folder).tokenizer
    return tokenizer.decode(kv_greedy(tokenizer.encode(prompt), n, context=16))


def sse_data(body: str) -> list[str]:
    return [line[len("data: "):] for line in body.splitlines() if line.startswith("data: ")]


def test_a_completion_is_the_models_greedy_continuation_with_usage(lm, lm_folder):
    response = lm.post("/v1/completions", json={"model": "tiny", "prompt": "the cat",
                                                  "max_tokens": 6, "temperature": 0})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "text_completion" and body["model"] == "tiny"
    [choice] = body["choices"]
    assert choice["text"] == greedy_text(lm_folder, "the cat", 6)
    assert choice["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 6, "total_tokens": 13}


def test_a_streamed_completion_sends_the_same_text_then_done(lm, lm_folder):
    request = {"prompt": "the cat", "max_tokens": 6, "temperature": 0, "stream": True}
    with lm.stream("POST", "/v1/completions", json=request) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_data(response.read().decode())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == greedy_text(lm_folder,
                                                                           "the cat", 6)
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["usage"]["completion_tokens"] == 6


def test_a_stop_string_ends_the_completion_before_it(lm, lm_folder):
    full = greedy_text(lm_folder, "the cat", 8)
    stop = full[3:5]
    body = lm.post("/v1/completions", json={"prompt": "the cat", "max_tokens": 8,
                                            "temperature": 0, "stop": [stop]}).json()
    assert body["choices"][0]["text"] == full[:full.index(stop)]
    assert body["choices"][0]["finish_reason"] == "stop"


def test_models_info_health_and_ready(lm, lm_folder):
    assert lm.get("/v1/models").json()["data"][0]["id"] == "tiny"
    assert lm.get("/health").json() == {"status": "ok"}
    assert lm.get("/ready").status_code == 200
    info = lm.get("/info").json()
    assert info["task"] == "lm" and info["limits"]["context_length"] == 16
    manifest = json.loads((lm_folder / "lmforge.json").read_text())
    assert info["files"] == manifest["files"]
    assert info["versions"]["bundle"] == {"lmforge": "test"}
    assert "onnxruntime" in info["versions"]["server"]


def test_ready_is_503_until_the_warm_up_ran_and_after_shutdown(lm_folder):
    client = client_for(lm_folder)
    assert client.get("/ready").status_code == 503  # lifespan not started: nothing loaded
    with client:
        assert client.get("/ready").status_code == 200
    assert client.app.state.model.ready is False


def test_classify_one_text_or_a_list(classifier):
    one = classifier.post("/v1/classify", json={"input": "abc"}).json()
    assert len(one["data"]) == 1
    texts = ["abc", "Zz Top", "hello there"]
    body = classifier.post("/v1/classify", json={"input": texts}).json()
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    for item in body["data"]:
        assert set(item["probabilities"]) == set(LABELS)
        assert sum(item["probabilities"].values()) == pytest.approx(1, abs=1e-5)
        assert item["label"] == max(item["probabilities"], key=item["probabilities"].get)
    assert body["data"][0] == {"index": 0, **one["data"][0]}


def test_classify_applies_the_runs_preprocessing(classifier, classifier_folder):
    upper, lower = (classifier.post("/v1/classify", json={"input": text}).json()["data"][0]
                    for text in ("HELLO", "hello"))
    assert upper == lower
    tokenizer = load_bundle(classifier_folder).tokenizer
    expected = classifier_logits([tokenizer.encode("hello")])[0]
    probabilities = list(lower["probabilities"].values())
    assert LABELS[int(expected.argmax())] == lower["label"]
    assert probabilities.index(max(probabilities)) == int(expected.argmax())


def test_tokenize_gives_the_ids_the_model_reads(classifier, classifier_folder):
    tokenizer = load_bundle(classifier_folder).tokenizer
    body = classifier.post("/v1/tokenize", json={"input": "HeLLo"}).json()
    assert body["tokens"] == tokenizer.encode("hello") and body["count"] == 5


def test_the_wrong_task_and_the_wrong_model_name_are_refused(lm, classifier):
    response = lm.post("/v1/classify", json={"input": "abc"})
    assert response.status_code == 400 and "lm model" in response.json()["error"]["message"]
    response = classifier.post("/v1/completions", json={"prompt": "abc"})
    assert response.status_code == 400
    response = lm.post("/v1/completions", json={"model": "gpt-4", "prompt": "abc"})
    assert response.status_code == 404 and "'tiny'" in response.json()["error"]["message"]


@pytest.mark.parametrize(("request_body", "message"), [
    ({"prompt": "abcdefghijklmnopqrstu"}, "prompt has 21 tokens, over the model's context of 16"),
    ({"prompt": "abc", "max_tokens": 300}, "max_tokens is 300, over the limit of 256"),
    ({"prompt": "abc", "temperature": 2.5}, "temperature: Input should be less than or equal "
                                            "to 2 (found 2.5)"),
    ({"prompt": "abc", "top_p": 0}, "top_p: Input should be greater than 0 (found 0)"),
    ({"prompt": "abc", "top_p": 1.5}, "top_p: Input should be less than or equal to 1"),
    ({"prompt": ""}, "prompt is empty"),
    ({"prompt": "abc", "n": 2}, "n must be 1, found 2"),
    ({"prompt": "abc", "seed": -1}, "seed: Input should be greater than or equal to 0"),
    ({"prompt": ["abc", "def"]}, "one prompt per request, found a list of 2"),
    ({"prompt": "abc", "stop": [""]}, "stop: at most 4 non-empty strings"),
    ({"max_tokens": 3}, "prompt: Field required"),
    ({"prompt": "abc", "max_tokens": "many"}, "max_tokens: Input should be a valid integer"),
])
def test_invalid_completions_are_422_with_the_numbers(lm, request_body, message):
    response = lm.post("/v1/completions", json=request_body)
    assert response.status_code == 422
    assert message in response.json()["error"]["message"]


@pytest.mark.parametrize(("request_body", "message"), [
    ({"input": ""}, "texts [0] are empty"),
    ({"input": []}, "input is empty"),
    ({"input": ["a", ""]}, "texts [1] are empty"),
    ({"input": ["a"] * 257}, "input holds 257 texts, over the limit of 256"),
    ({"input": 5}, "input"),
])
def test_invalid_classify_inputs_are_422(classifier, request_body, message):
    response = classifier.post("/v1/classify", json=request_body)
    assert response.status_code == 422
    assert message in response.json()["error"]["message"]


def test_an_empty_text_to_tokenize_is_422(lm):
    assert lm.post("/v1/tokenize", json={"input": ""}).status_code == 422


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/classify", "/v1/tokenize"])
@pytest.mark.parametrize("content_type", ["application/json", None,
                                          "application/x-www-form-urlencoded"])
def test_malformed_json_is_400_whatever_the_content_type(lm, route, content_type):
    headers = {"content-type": content_type} if content_type else {}
    response = lm.post(route, content=b'{"prompt": "abc",', headers=headers)
    assert response.status_code == 400
    assert "malformed JSON" in response.json()["error"]["message"]


def test_a_json_body_without_its_content_type_is_read(classifier):
    response = classifier.post("/v1/classify", content=b'{"input": ["abc"]}',
                               headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200 and len(response.json()["data"]) == 1


def test_an_oversized_body_is_413_declared_or_streamed(classifier_folder):
    with client_for(classifier_folder, max_body_bytes=100) as client:
        big = json.dumps({"input": "a" * 200}).encode()
        response = client.post("/v1/classify", content=big)
        assert response.status_code == 413 and "over the limit of 100 bytes" in response.text

        def chunks():  # no Content-Length: the size is only known as it arrives
            yield big[:60]
            yield big[60:]

        assert client.post("/v1/classify", content=chunks()).status_code == 413
        assert client.post("/v1/classify", json={"input": "abc"}).status_code == 200


class GatedSession:
    """A decode session whose steps after the first `free` wait for `gate`."""

    def __init__(self, session, free):
        self.session, self.free, self.calls = session, free, 0
        self.gate = threading.Event()

    def run(self, names, feeds):
        self.calls += 1
        if self.calls > self.free:
            self.gate.wait()
        return self.session.run(names, feeds)


def test_a_client_that_leaves_a_stream_cancels_its_generation(lm_folder, monkeypatch):
    submitted = []
    with client_for(lm_folder) as client:
        engine = client.app.state.model.engine
        engine.session = GatedSession(engine.session, free=3)
        original_submit = engine.submit
        monkeypatch.setattr(engine, "submit", lambda *a, **k: submitted.append(
            original_submit(*a, **k)) or submitted[-1])
        request = {"prompt": "abc", "max_tokens": 200, "temperature": 0, "stream": True}
        with client.stream("POST", "/v1/completions", json=request) as response:
            assert next(line for line in response.iter_lines() if line.startswith("data: "))
        [generation] = submitted
        for _ in range(1000):  # the engine is stuck on the gate: only a cancel ends it
            if generation.done:
                break
            time.sleep(0.01)
        engine.session.gate.set()
        assert generation.finish_reason == "cancelled"
        assert len(generation.generated) < 200
