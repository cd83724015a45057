"""The FastAPI app serving a loaded bundle: OpenAI-compatible completions over one shared
generation engine, classification, tokenization, health, readiness and bundle information."""

from __future__ import annotations

import asyncio
import json
import platform
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from lmforge.errors import LmforgeError
from lmforge.plugins.runtime.classify import Classifier
from lmforge.plugins.runtime.generate import Engine, Sampling, prompt_ids
from lmforge.plugins.serve.batching import MicroBatcher
from lmforge.plugins.serve.guard import ConcurrencyLimit, Guard, error_body
from lmforge.plugins.serve.metrics import Metrics, MetricsMiddleware
from lmforge.plugins.serve.schemas import ClassifyRequest, CompletionRequest, TokenizeRequest
from lmforge.plugins.tasks.generation_text import TextStream

MAX_STOP_STRINGS = 4  # as OpenAI's API
# how often a non-streamed generation checks whether its client is still there
DISCONNECT_POLL_S = 0.25


@dataclass(frozen=True)
class ServeSettings:
    """How the app serves: the API key (None: no auth), the largest request body, the engine's
    slots (None: the bundle's max_batch), the most texts one classify request may hold, the
    most requests under /v1/ in flight (more are answered 429) and the seconds a request may
    take (None: no limit; past it 504, and its generation is cancelled), and whether
    concurrent classify requests are gathered into one onnxruntime call (of at most
    classify_max_batch texts, waiting at most classify_max_wait_ms for more)."""

    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    max_batch: int | None = None
    max_inputs: int = 256
    max_concurrent: int = 256
    request_timeout: float | None = None
    classify_batching: bool = True
    classify_max_batch: int = 64
    classify_max_wait_ms: float = 5.0

    def __post_init__(self) -> None:
        if self.max_concurrent < 1:
            raise LmforgeError(f"max_concurrent must be >= 1, found {self.max_concurrent}")
        if self.request_timeout is not None and self.request_timeout <= 0:
            raise LmforgeError(f"request_timeout must be > 0 seconds, found "
                               f"{self.request_timeout}")
        if self.classify_max_batch < 1 or self.classify_max_wait_ms < 0:
            raise LmforgeError(f"classify batching needs max_batch >= 1 and max_wait_ms >= 0, "
                               f"found {self.classify_max_batch} and "
                               f"{self.classify_max_wait_ms}")


def invalid(message: str, status: int = 422) -> HTTPException:
    return HTTPException(status, message)


def timed_out(seconds: float) -> HTTPException:
    return HTTPException(504, f"the request took longer than the server's timeout of {seconds} "
                              f"s (--request-timeout); its work was cancelled")


class _Model:
    """What the routes share: the bundle, its engine or classifier, and readiness."""

    def __init__(self, bundle, settings: ServeSettings):
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.name = bundle.manifest.name
        self.settings = settings
        self.metrics = Metrics()
        self.engine: Engine | None = None
        self.classifier: Classifier | None = None
        self.batcher: MicroBatcher | None = None
        self.ready = False

    def start(self) -> None:
        """Make the engine or classifier and run one warm-up inference."""
        if self.manifest.task == "lm":
            self.engine = Engine.for_bundle(self.bundle, self.settings.max_batch)
            self.engine.session = self.metrics.metered(self.engine.session, "decode")
            self.metrics.watch_engine(self.engine)
            self.engine.start()
            warm_up = self.engine.submit([self.manifest.tokenizer.eos_id],
                                         Sampling(max_new_tokens=1, temperature=0))
            list(warm_up.tokens())
        else:
            self.classifier = Classifier(self.bundle)
            self.classifier.session = self.metrics.metered(self.classifier.session, "model")
            if self.settings.classify_batching:
                max_batch = self.settings.classify_max_batch
                self.batcher = MicroBatcher(
                    lambda texts: self.classifier.predict(texts, batch_size=max_batch),
                    max_batch=max_batch, max_wait_s=self.settings.classify_max_wait_ms / 1000)
            self.classifier.predict(["warm-up"])
        self.ready = True

    def stop(self) -> None:
        self.ready = False
        if self.engine is not None:
            self.engine.close()

    async def classify(self, texts: list[str]) -> list[dict]:
        if self.batcher is not None:
            return await self.batcher(texts)
        return await run_in_threadpool(self.classifier.predict, texts)

    def check_model(self, requested: str | None) -> None:
        if requested is not None and requested != self.name:
            raise invalid(f"model {requested!r} is not served here; this server serves "
                          f"{self.name!r}", 404)

    def need(self, task: str, route: str):
        if self.manifest.task != task:
            raise invalid(f"{route}: model {self.name!r} is a {self.manifest.task} model; "
                          f"this route needs a {task} model", 400)


def create_app(bundle, settings: ServeSettings | None = None) -> FastAPI:
    """The app over a loaded bundle (`lmforge.plugins.runtime.bundle.load_bundle`). Its
    lifespan starts the engine and warms it up (then /ready answers 200) and closes it."""
    settings = settings or ServeSettings()
    model = _Model(bundle, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(model.start)
        try:
            yield
        finally:
            await run_in_threadpool(model.stop)

    app = FastAPI(title=f"lmforge: {model.name}", lifespan=lifespan,
                  description=f"A {model.manifest.task} model exported by lmforge, on onnxruntime.")
    app.state.model = model
    app.add_middleware(ConcurrencyLimit, limit=settings.max_concurrent)  # after the key check
    app.add_middleware(Guard, api_key=settings.api_key, max_body_bytes=settings.max_body_bytes)
    _error_handlers(app)

    @app.get("/health")
    async def health() -> dict:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """200 once the model is loaded and has run one inference; 503 before and after."""
        if model.ready:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready"}, status_code=503)

    @app.get("/info")
    async def info() -> dict:
        """The model, its task, limits, generation defaults, versions and file hashes."""
        manifest = model.manifest
        return {"model": model.name, "architecture": manifest.model, "task": manifest.task,
                "labels": manifest.labels, "vocab_size": manifest.vocab_size,
                "limits": {**manifest.limits.model_dump(),
                           "max_body_bytes": settings.max_body_bytes,
                           "max_inputs": settings.max_inputs},
                "generation": manifest.generation.model_dump(),
                "quantized": bundle.quantized, "files": manifest.files,
                "versions": {"bundle": manifest.versions, "server": _server_versions()}}

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics: requests by route and status, latency, tokens generated, the
        generation queue and batch sizes."""
        return Response(generate_latest(model.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict:
        """The one model served, as OpenAI lists models."""
        return {"object": "list", "data": [{"id": model.name, "object": "model",
                                            "created": 0, "owned_by": "lmforge"}]}

    @app.post("/v1/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict:
        """The token ids the model reads for a text (a classifier's after its run's
        preprocessing)."""
        model.check_model(body.model)
        if not body.input:
            raise invalid("input is empty")
        text = body.input
        if model.manifest.task == "classify":
            [text] = await run_in_threadpool(bundle.preprocess, [text])
        ids = await run_in_threadpool(bundle.tokenizer.encode, text)
        return {"model": model.name, "tokens": ids, "count": len(ids)}

    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest) -> dict:
        """One text or a list -> each text's label and every label's probability."""
        model.check_model(body.model)
        model.need("classify", "/v1/classify")
        texts = [body.input] if isinstance(body.input, str) else body.input
        _check_texts(texts, settings.max_inputs)
        try:
            async with asyncio.timeout(settings.request_timeout):
                results = await model.classify(texts)
        except TimeoutError:
            raise timed_out(settings.request_timeout) from None
        return {"object": "list", "model": model.name,
                "data": [{"index": i, **result} for i, result in enumerate(results)]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        """An OpenAI-compatible completion; `stream: true` sends server-sent events ending in
        `data: [DONE]`. A client that goes away cancels its generation."""
        model.check_model(body.model)
        model.need("lm", "/v1/completions")
        job = _Generation.start(model, body)
        if body.stream:
            return EventSourceResponse(job.events(), ping=15)
        return await job.complete(request)

    app.add_middleware(MetricsMiddleware, metrics=model.metrics,  # outermost: sees every answer
                       routes=frozenset(route.path for route in app.routes))
    return app


def _check_texts(texts: list[str], max_inputs: int) -> None:
    if not texts:
        raise invalid("input is empty: give a text or a non-empty list of texts")
    if len(texts) > max_inputs:
        raise invalid(f"input holds {len(texts)} texts, over the limit of {max_inputs}")
    empty = [i for i, text in enumerate(texts) if not text]
    if empty:
        raise invalid(f"input: texts {empty} are empty")


class _Generation:
    """One completion request running on the shared engine."""

    def __init__(self, model: _Model, ids: list[int], stop: list[str], sampling: Sampling):
        self.model = model
        self.prompt_tokens = len(ids)
        self.stop = stop
        self.stopped = False  # a stop string ended the text
        self.request = model.engine.submit(ids, sampling)
        timeout = model.settings.request_timeout
        self.deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())

    @classmethod
    def start(cls, model: _Model, body: CompletionRequest) -> _Generation:
        """Check the request against the model's limits (422 naming the numbers) and submit
        it."""
        manifest = model.manifest
        problems = []
        if body.n != 1:
            problems.append(f"n must be 1, found {body.n}")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise invalid(f"prompt: one prompt per request, found a list of {len(prompts)}")
        [prompt] = prompts
        if not prompt:
            problems.append("prompt is empty")
        ids = prompt_ids(model.bundle.tokenizer, prompt)
        context = manifest.limits.context_length
        if context is not None and len(ids) > context:
            problems.append(f"prompt has {len(ids)} tokens, over the model's context of "
                            f"{context}")
        defaults = manifest.generation
        max_tokens = defaults.max_new_tokens if body.max_tokens is None else body.max_tokens
        limit = manifest.limits.max_new_tokens
        if max_tokens > limit:
            problems.append(f"max_tokens is {max_tokens}, over the limit of {limit}")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > MAX_STOP_STRINGS or any(not s for s in stop):
            problems.append(f"stop: at most {MAX_STOP_STRINGS} non-empty strings, found "
                            f"{stop!r}")
        if problems:
            raise invalid("; ".join(problems))

        def chosen(value, default):
            return default if value is None else value

        try:
            sampling = Sampling(max_tokens, chosen(body.temperature, defaults.temperature),
                                chosen(body.top_k, defaults.top_k),
                                chosen(body.top_p, defaults.top_p),
                                chosen(body.repetition_penalty, defaults.repetition_penalty),
                                body.seed)
        except LmforgeError as exc:
            raise invalid(str(exc)) from None
        try:
            return cls(model, ids, stop, sampling)
        except LmforgeError as exc:  # the engine is closing: the server is shutting down
            raise invalid(str(exc), 503) from None

    async def pieces(self) -> AsyncIterator[str]:
        """The generated text piece by piece as `lmforge generate` streams it, each token
        awaited without holding a thread; a stop string ends it (cancelling the request)."""
        stream = TextStream(self.model.bundle.tokenizer, self.stop)
        tokens = self.request.async_tokens()
        try:
            while True:
                try:
                    async with asyncio.timeout_at(self.deadline):
                        token = await anext(tokens)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise timed_out(self.model.settings.request_timeout) from None
                self.model.metrics.tokens.inc()
                piece = stream.push(token)
                if piece:
                    yield piece
                if stream.stopped:
                    self.stopped = True
                    return
            piece = stream.end()
            if piece:
                yield piece
        finally:
            await tokens.aclose()

    async def _text(self) -> str:
        return "".join([piece async for piece in self.pieces()])

    def _finish_reason(self) -> str:
        return "length" if self.request.finish_reason == "length" and not self.stopped else "stop"

    def _usage(self) -> dict:
        completion = len(self.request.generated)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}

    def _body(self, text: str, finish_reason: str | None) -> dict:
        return {"id": self.id, "object": "text_completion", "created": self.created,
                "model": self.model.name,
                "choices": [{"text": text, "index": 0, "logprobs": None,
                             "finish_reason": finish_reason}]}

    async def events(self) -> AsyncIterator[str]:
        """The completion as SSE data: a chunk per piece of text, a last chunk with the
        finish reason and usage, then [DONE]. Cancelled with the response (the client
        left)."""
        try:
            async for piece in self.pieces():
                yield json.dumps(self._body(piece, None))
            yield json.dumps({**self._body("", self._finish_reason()), "usage": self._usage()})
            yield "[DONE]"
        except HTTPException as exc:  # the timeout, after the response began: its last event
            yield json.dumps(error_body(exc.detail, "timeout_error"))
        finally:
            self.request.cancel()

    async def complete(self, request: Request) -> dict:
        """The whole completion; the generation is cancelled if the client disconnects."""
        collecting = asyncio.ensure_future(self._text())
        try:
            while True:
                done, _ = await asyncio.wait({collecting}, timeout=DISCONNECT_POLL_S)
                if done:
                    break
                if await request.is_disconnected():
                    self.request.cancel()
            text = collecting.result()
        finally:
            self.request.cancel()
        return {**self._body(text, self._finish_reason()), "usage": self._usage()}


def _error_handlers(app: FastAPI) -> None:
    """Errors in OpenAI's shape; malformed JSON is 400, other invalid bodies 422."""

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(error["type"] == "json_invalid" for error in errors):
            message = "; ".join(f"malformed JSON: {error.get('ctx', {}).get('error', '')} "
                                f"at character {error['loc'][-1]}" for error in errors)
            return JSONResponse(error_body(message, "invalid_request_error"), status_code=400)
        message = "; ".join(f"{'.'.join(str(p) for p in error['loc'][1:]) or 'body'}: "
                            f"{error['msg']} (found {error.get('input')!r:.100})"
                            for error in errors)
        return JSONResponse(error_body(message, "invalid_request_error"), status_code=422)


def _server_versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("lmforge", "onnxruntime", "fastapi", "uvicorn"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found
