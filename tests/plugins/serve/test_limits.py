"""The cap on requests in flight (429 with Retry-After) and the per-request timeout (504, the
generation cancelled and its slot freed)."""

import json
import threading

import pytest

from lmforge.errors import LmforgeError
from lmforge.plugins.serve.app import ServeSettings

from .conftest import client_for
from .test_app import GatedSession, sse_data
from .test_concurrency import streamed_text, wait_until


def recording_submits(engine, monkeypatch) -> list:
    submitted = []
    original = engine.submit
    monkeypatch.setattr(engine, "submit", lambda *a, **k: submitted.append(
        original(*a, **k)) or submitted[-1])
    return submitted


def test_a_burst_past_the_cap_is_429_with_retry_after_until_a_request_ends(lm_folder):
    with client_for(lm_folder, max_concurrent=3) as client:
        engine = client.app.state.model.engine
        engine.session = GatedSession(engine.session, free=0)
        texts = []
        threads = [threading.Thread(target=lambda: texts.append(streamed_text(client, "ab", 3)))
                   for _ in range(3)]
        for thread in threads:
            thread.start()
        wait_until(lambda: engine.waiting + engine.running == 3)
        refused = [client.post("/v1/completions", json={"prompt": "ab", "max_tokens": 3})
                   for _ in range(5)]
        assert {response.status_code for response in refused} == {429}
        assert refused[0].headers["retry-after"] == "1"
        assert "limit (--max-concurrent 3)" in refused[0].json()["error"]["message"]
        assert client.get("/health").status_code == 200  # not capped
        assert client.get("/info").status_code == 200
        engine.session.gate.set()
        for thread in threads:
            thread.join()
        assert len(texts) == 3
        assert client.post("/v1/completions", json={"prompt": "ab", "max_tokens": 3}
                           ).status_code == 200


def test_a_completion_past_the_timeout_is_504_and_frees_its_slot(lm_folder, monkeypatch):
    with client_for(lm_folder, request_timeout=0.2) as client:
        engine = client.app.state.model.engine
        engine.session = GatedSession(engine.session, free=0)
        submitted = recording_submits(engine, monkeypatch)
        response = client.post("/v1/completions", json={"prompt": "ab", "max_tokens": 50})
        assert response.status_code == 504
        assert "timeout of 0.2 s" in response.json()["error"]["message"]
        request = {"prompt": "ab", "max_tokens": 50, "stream": True}
        with client.stream("POST", "/v1/completions", json=request) as streamed:
            events = sse_data(streamed.read().decode())
        assert "timeout of 0.2 s" in json.loads(events[-1])["error"]["message"]
        assert [generation.finish_reason for generation in submitted] == ["cancelled"] * 2
        engine.session.gate.set()
        wait_until(lambda: engine.waiting + engine.running == 0)


def test_a_classification_past_the_timeout_is_504(classifier_folder):
    with client_for(classifier_folder, request_timeout=0.2) as client:
        classifier = client.app.state.model.classifier
        classifier.session = GatedSession(classifier.session, free=0)
        response = client.post("/v1/classify", json={"input": "abc"})
        classifier.session.gate.set()
        assert response.status_code == 504


@pytest.mark.parametrize(("settings", "message"), [
    ({"max_concurrent": 0}, "max_concurrent must be >= 1, found 0"),
    ({"request_timeout": 0}, "request_timeout must be > 0 seconds, found 0"),
])
def test_bad_limits_are_refused(settings, message):
    with pytest.raises(LmforgeError, match=message):
        ServeSettings(**settings)
