"""Schemathesis against the served OpenAPI schema: requests generated from it, valid and
invalid, to a real server process; none may be answered with a 5xx."""

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402

from .conftest import KEY  # noqa: E402
from .test_process import ServerProcess  # noqa: E402

AUTH = {"Authorization": f"Bearer {KEY}"}
EXAMPLES = 40  # per operation and generation mode, at most (an operation without inputs has few)
MINIMUM_REQUESTS = 300


def fuzz(server) -> list[tuple[str, int]]:
    """Every operation of the server's schema with generated valid and invalid requests; the
    (operation, status) of each response."""
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", headers=AUTH)
    answered = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in schemathesis.GenerationMode:
            @settings(max_examples=EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def call(case):
                response = case.call(headers=AUTH, timeout=60)
                answered.append((case.operation.label, response.status_code))
                assert response.status_code < 500, (case.as_curl_command(), response.text)

            try:
                call()
            except Unsatisfiable:  # invalid requests of an operation that takes no input
                assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label
    return answered


@pytest.mark.slow
def test_generated_requests_get_no_server_error(lm_folder, classifier_folder, tmp_path):
    answered = []
    for name, folder in (("lm", lm_folder), ("classifier", classifier_folder)):
        server = ServerProcess(folder, tmp_path / f"{name}.log")
        try:
            answered += fuzz(server)
        finally:
            code, output = server.terminate()
        assert code == 0, output
    print(f"{len(answered)} generated requests, statuses "
          f"{sorted({status for _, status in answered})}")
    assert len(answered) >= MINIMUM_REQUESTS
    assert {status for _, status in answered} & {200} and max(s for _, s in answered) < 500
