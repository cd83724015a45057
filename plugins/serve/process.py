"""Running the app under uvicorn: SIGTERM turns /ready to 503, lets in-flight requests finish
and exits 0."""

from __future__ import annotations

import signal

import uvicorn
from fastapi import FastAPI
from sse_starlette.sse import AppStatus


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI):
        super().__init__(config)
        self.served = app

    def handle_exit(self, sig, frame) -> None:
        self.served.state.model.ready = False
        super().handle_exit(sig, frame)


def run_server(app: FastAPI, host: str, port: int) -> None:
    """Serve `app` until SIGINT or SIGTERM, then drain: uvicorn stops accepting connections,
    waits for the open ones, and runs the app's shutdown."""
    # uvicorn re-raises the signal that stopped it once it has shut down; with the default
    # handler that SIGTERM would end the process with -15 instead of 0
    signal.signal(signal.SIGTERM, lambda *_: None)
    # sse-starlette ends every open stream at the first signal; a stream in flight ends by
    # itself (max_tokens, the request timeout, a client gone), so let it finish like the rest
    AppStatus.disable_automatic_graceful_drain()
    _DrainingServer(uvicorn.Config(app, host=host, port=port, log_level="info"), app).run()
