"""`lmforge serve` and the built-in `onnx` server, added through the plugin hooks.

The server's modules import fastapi, uvicorn and onnxruntime (the `serve` extra) only when a
server starts, so lmforge works without the extra until then.
"""

from __future__ import annotations

from pathlib import Path

import click

from lmforge import hookimpl
from lmforge.errors import LmforgeError
from lmforge.host.manager import load_plugins
from lmforge.interfaces.export import Server
from lmforge.settings import NoSettings

DEFAULT_SERVER = "onnx"


class OnnxServer(Server):
    """Serves a bundle with onnxruntime behind an OpenAI-compatible HTTP API (FastAPI +
    uvicorn): /v1/completions (streamed as server-sent events on request), /v1/models,
    /v1/classify, /v1/tokenize, /health, /ready, /info and /metrics. Generations share one
    engine that batches them step by step; concurrent classify requests are gathered into one
    onnxruntime call. Requests in flight are capped (429 past the cap) and may be given a
    timeout (504, the generation cancelled). An API key, when set, is required as a bearer
    token on every route but /health and /ready. SIGTERM drains: /ready turns 503, requests
    in flight finish, the process exits 0. Needs the `serve` extra."""

    def serve(self, bundle_dir: Path, *, host: str = "127.0.0.1", port: int = 8000,
              api_key: str | None = None, quantized: bool = False,
              threads: int | None = None, **options) -> None:
        try:
            from lmforge.plugins.runtime.bundle import available_cores, load_bundle
            from lmforge.plugins.serve.app import ServeSettings, create_app
            from lmforge.plugins.serve.process import run_server
        except ImportError as exc:
            raise LmforgeError(f"the onnx server needs the `serve` extra ({exc}): pip install "
                               f"'lmforge[serve]'") from None
        # One core stays with the HTTP side: on two cores, onnxruntime on both made the demo
        # GPT's completions under load 1.26x slower (benchmarks/RESULTS.md).
        bundle = load_bundle(bundle_dir, quantized=quantized,
                             threads=threads or max(1, available_cores() - 1))
        app = create_app(bundle, ServeSettings(api_key=api_key or None, **options))
        run_server(app, host, port)


@click.command("serve")
@click.argument("bundle_dir", type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="The address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--api-key", envvar="LMFORGE_API_KEY", metavar="KEY",
              help="Require 'Authorization: Bearer KEY' (but on /health and /ready) "
                   "[env: LMFORGE_API_KEY].")
@click.option("--quantized", is_flag=True, help="Serve the bundle's int8 graphs.")
@click.option("--threads", type=click.IntRange(1), metavar="N",
              help="onnxruntime's threads per inference [default: the cores less one, left "
                   "to the HTTP side; at least 1].")
@click.option("--max-batch", type=click.IntRange(1), metavar="N",
              help="Generations decoded together [default: the bundle's max_batch].")
@click.option("--max-concurrent", default=256, show_default=True, type=click.IntRange(1),
              metavar="N", help="Requests under /v1/ in flight at once; more are answered 429 "
                                "with Retry-After.")
@click.option("--request-timeout", type=click.FloatRange(0, min_open=True), metavar="SECONDS",
              help="Answer 504 to a request still running after this long, cancelling its "
                   "generation [default: no limit].")
@click.option("--no-classify-batching", "classify_batching", is_flag=True, default=True,
              flag_value=False, help="Classify each request on its own instead of gathering "
                                     "concurrent ones into one onnxruntime call.")
@click.option("--server", "name", default=DEFAULT_SERVER, show_default=True, metavar="NAME",
              help="A registered server.")
@click.pass_obj
def serve_command(host_obj, bundle_dir: str, host: str, port: int, api_key: str | None,
                  quantized: bool, threads: int | None, max_batch: int | None,
                  max_concurrent: int,
                  request_timeout: float | None, classify_batching: bool, name: str) -> None:
    """Serve an exported bundle (`lmforge export RUN`) over an OpenAI-compatible HTTP API."""
    if name == DEFAULT_SERVER:  # the built-in: no plugin host, so nothing imports torch
        server = OnnxServer(NoSettings())
    else:
        server = (host_obj or load_plugins()).registry.get("server", name).create({})
    server.serve(Path(bundle_dir), host=host, port=port, api_key=api_key, quantized=quantized,
                 threads=threads, max_batch=max_batch, max_concurrent=max_concurrent,
                 request_timeout=request_timeout, classify_batching=classify_batching)


@hookimpl
def register_servers(register):
    register("onnx", OnnxServer)


@hookimpl
def register_commands(cli):
    cli.add_command(serve_command)
