"""A real server process on a loopback port, driven by the official `openai` client: completions
whole and streamed, every other route over HTTP, the key never in its output, no torch, and a
clean exit on SIGTERM, draining the requests in flight."""

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

openai = pytest.importorskip("openai")

from .conftest import KEY  # noqa: E402
from .test_app import greedy_text  # noqa: E402

# `lmforge serve`, reporting at exit whether torch was imported
SERVER = """
import atexit, sys
atexit.register(lambda: print("torch imported:", "torch" in sys.modules, file=sys.stderr))
from lmforge.cli import main
main(["serve", *sys.argv[1:]])
"""
# the same, with every decode step taking 10 ms more, so that requests are still in flight
# when the test signals
SLOW_SERVER = SERVER.replace("from lmforge.cli import main", """
import time
from lmforge.plugins.runtime.generate import Engine
step = Engine.step
Engine.step = lambda self: (time.sleep(0.01), step(self))[1]
from lmforge.cli import main""")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`lmforge serve BUNDLE` on a free loopback port, with the key in
    LMFORGE_API_KEY, its output in a file."""

    def __init__(self, bundle, log_path, script=SERVER):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        with log_path.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", script, str(bundle), "--port", str(port),
                 "--max-concurrent", "8", "--request-timeout", "60"], stdout=log,
                stderr=subprocess.STDOUT, env={**os.environ, "LMFORGE_API_KEY": KEY})
        for _ in range(600):  # wait until it answers (loading a bundle takes a moment)
            if self.process.poll() is not None:
                break
            try:
                if httpx.get(f"{self.url}/ready").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)

    def terminate(self) -> tuple[int, str]:
        """SIGTERM it; its exit code and output."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        return code, self.log_path.read_text()


@pytest.fixture
def server(lm_folder, tmp_path):
    started = ServerProcess(lm_folder, tmp_path / "server.log")
    assert started.process.poll() is None, started.log_path.read_text()
    yield started
    started.terminate()


def test_the_openai_client_completes_and_streams(server, lm_folder):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    expected = greedy_text(lm_folder, "the cat", 6)
    completion = client.completions.create(model="tiny", prompt="the cat", max_tokens=6,
                                           temperature=0)
    assert completion.choices[0].text == expected
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 6 and completion.usage.prompt_tokens == 7
    pieces = list(client.completions.create(model="tiny", prompt="the cat", max_tokens=6,
                                            temperature=0, stream=True))
    assert "".join(piece.choices[0].text for piece in pieces) == expected
    assert pieces[-1].choices[0].finish_reason == "length"
    assert [model.id for model in client.models.list()] == ["tiny"]
    with pytest.raises(openai.UnprocessableEntityError, match="over the limit of 256"):
        client.completions.create(model="tiny", prompt="abc", max_tokens=1000)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong",
                      max_retries=0).models.list()


def test_every_route_over_http_then_sigterm_exits_cleanly(server):
    url, auth = server.url, {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{url}/ready").status_code == 200
    assert httpx.get(f"{url}/info").status_code == 401
    assert httpx.get(f"{url}/info", headers=auth).json()["task"] == "lm"
    assert httpx.post(f"{url}/v1/tokenize", json={"input": "abc"}, headers=auth
                      ).json()["count"] == 3
    assert httpx.post(f"{url}/v1/classify", json={"input": "abc"}, headers=auth
                      ).status_code == 400  # an lm bundle
    assert httpx.get(f"{url}/openapi.json", headers=auth).json()["paths"].keys() >= {
        "/v1/completions", "/v1/classify", "/v1/tokenize", "/v1/models"}
    assert "lmforge_requests_total" in httpx.get(f"{url}/metrics", headers=auth).text
    httpx.get(f"{url}/info", headers={"Authorization": "Bearer not-the-key"})
    code, output = server.terminate()
    assert code == 0, output
    assert "torch imported: False" in output
    assert KEY not in output and "not-the-key" not in output


def test_sigterm_lets_the_requests_in_flight_finish(lm_folder, tmp_path):
    server = ServerProcess(lm_folder, tmp_path / "server.log", script=SLOW_SERVER)
    auth = {"Authorization": f"Bearer {KEY}"}
    body = {"prompt": "the cat", "max_tokens": 60, "temperature": 0}
    try:
        with httpx.Client(base_url=server.url, headers=auth, timeout=60) as client, \
                concurrent.futures.ThreadPoolExecutor(1) as pool:
            whole = pool.submit(client.post, "/v1/completions", json=body)
            with client.stream("POST", "/v1/completions", json={**body, "stream": True}
                               ) as stream:
                lines = stream.iter_lines()
                first = next(line for line in lines if line.startswith("data:"))
                server.process.send_signal(signal.SIGTERM)  # 60 steps of 10 ms still to go
                events = [first, *(line for line in lines if line.startswith("data:"))]
            response = whole.result()
    finally:
        code, output = server.terminate()
    assert code == 0, output
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(event.removeprefix("data:")) for event in events[:-1]]
    streamed = "".join(chunk["choices"][0]["text"] for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 60
    assert response.json()["choices"][0]["text"] == streamed  # greedy: the same 60 tokens
