"""GET /metrics: the Prometheus text of the app's own registry."""

from prometheus_client.parser import text_string_to_metric_families

from .conftest import KEY, client_for


def samples(client, **headers) -> dict[tuple, float]:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples}


def test_requests_latency_tokens_queue_and_batch_sizes_are_counted(lm):
    for _ in range(2):
        body = lm.post("/v1/completions", json={"prompt": "the cat", "max_tokens": 4,
                                                "temperature": 0}).json()
        assert body["usage"]["completion_tokens"] == 4
    assert lm.post("/v1/completions", json={"prompt": ""}).status_code == 422
    lm.get("/nowhere/1")
    found = samples(lm)
    route = (("method", "POST"), ("route", "/v1/completions"))
    assert found[("lmforge_requests_total", (*route, ("status", "200")))] == 2
    assert found[("lmforge_requests_total", (*route, ("status", "422")))] == 1
    assert found[("lmforge_requests_total", (("method", "GET"), ("route", "unmatched"),
                                             ("status", "404")))] == 1
    assert found[("lmforge_request_seconds_count", (("route", "/v1/completions"),))] == 3
    assert found[("lmforge_generated_tokens_total", ())] == 8
    assert found[("lmforge_queue_depth", ())] == 0
    assert found[("lmforge_running_generations", ())] == 0
    # the warm-up (one call), then for each completion its prompt and three more steps: every
    # call one row, since the requests came one after another
    decode = (("graph", "decode"),)
    assert found[("lmforge_batch_size_count", decode)] == 1 + 2 * 4
    assert found[("lmforge_batch_size_sum", decode)] == 1 + 2 * 4


def test_classify_batch_sizes_and_the_key(classifier_folder):
    with client_for(classifier_folder, api_key=KEY) as client:
        auth = {"Authorization": f"Bearer {KEY}"}
        assert client.get("/metrics").status_code == 401
        client.post("/v1/classify", json={"input": ["abc", "de", "f"]}, headers=auth)
        found = samples(client, **auth)
    model = (("graph", "model"),)
    assert found[("lmforge_batch_size_count", model)] == 2  # the warm-up, then one call
    assert found[("lmforge_batch_size_sum", model)] == 1 + 3
    assert found[("lmforge_requests_total", (("method", "GET"), ("route", "/metrics"),
                                             ("status", "401")))] == 1
