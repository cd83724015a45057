"""Classify micro-batching: concurrent requests share onnxruntime calls and get the results
each would get alone."""

import threading

from .conftest import client_for
from .test_app import GatedSession
from .test_concurrency import wait_until

REQUESTS = [["abc"], ["Zz Top", "hello there"], ["a"], ["the quick brown fox"], ["xyz", "q"],
            ["hello"], ["a b c d e f g"], ["mm"], ["zzzz", "yy", "x"], ["ok then"]] * 2


class RowCounting:
    def __init__(self, session):
        self.session, self.rows = session, []

    def run(self, names, feeds):
        self.rows.append(len(feeds["input_ids"]))
        return self.session.run(names, feeds)


def classify_all_at_once(client) -> tuple[list, int]:
    """Every request of REQUESTS from its own thread, the others sent while the first one's
    onnxruntime call is held, so they gather; their results and the number of calls taken."""
    session = GatedSession(RowCounting(client.app.state.model.classifier.session), free=0)
    client.app.state.model.classifier.session = session
    results: dict[int, list] = {}

    def post(i):
        response = client.post("/v1/classify", json={"input": REQUESTS[i]})
        assert response.status_code == 200
        results[i] = response.json()["data"]

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(REQUESTS))]
    batcher = client.app.state.model.batcher
    try:
        threads[0].start()
        wait_until(lambda: session.calls == 1)
        for thread in threads[1:]:
            thread.start()
        if batcher is not None:
            wait_until(lambda: batcher.waiting == len(REQUESTS) - 1)
    finally:
        session.gate.set()
    for thread in threads:
        thread.join()
    return [results[i] for i in range(len(REQUESTS))], session.session.rows


def test_concurrent_requests_share_calls_and_get_their_unbatched_results(classifier_folder):
    with client_for(classifier_folder) as client:
        batched, rows = classify_all_at_once(client)
    assert rows == [1, sum(map(len, REQUESTS)) - 1]  # the held one, then all the others
    with client_for(classifier_folder, classify_batching=False) as client:
        assert client.app.state.model.batcher is None
        alone = [client.post("/v1/classify", json={"input": texts}).json()["data"]
                 for texts in REQUESTS]
    assert batched == alone


def test_a_batch_holds_at_most_max_batch_texts(classifier_folder):
    with client_for(classifier_folder, classify_max_batch=4) as client:
        _, rows = classify_all_at_once(client)
    # after the held call, 29 texts in requests of 1 to 3, each request's texts in one call
    assert rows[0] == 1 and sum(rows) == sum(map(len, REQUESTS))
    assert max(rows) <= 4 and len(rows) < len(REQUESTS)
