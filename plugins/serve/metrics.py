"""Prometheus metrics of one app (its own registry): requests by route and status, latency,
tokens generated, the engine's queue and the batch size of every graph call."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

UNMATCHED = "unmatched"  # the route label of a path no route serves: keeps the labels few
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The app's metrics; `registry` is what /metrics exposes."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("lmforge_requests", "HTTP requests answered, by route and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("lmforge_request_seconds",
                                 "Time from a request's arrival to the end of its response",
                                 ["route"], registry=self.registry)
        self.tokens = Counter("lmforge_generated_tokens", "Tokens generated for completions",
                              registry=self.registry)
        self.queue_depth = Gauge("lmforge_queue_depth",
                                 "Generations waiting for a free slot of the engine",
                                 registry=self.registry)
        self.running = Gauge("lmforge_running_generations", "Generations holding a slot",
                             registry=self.registry)
        self.batch_size = Histogram("lmforge_batch_size",
                                    "Rows of each onnxruntime call, by graph (decode: the "
                                    "generations advanced together by one engine step; model: "
                                    "the texts classified together)",
                                    ["graph"], buckets=BATCH_BUCKETS, registry=self.registry)

    def watch_engine(self, engine) -> None:
        self.queue_depth.set_function(lambda: engine.waiting)
        self.running.set_function(lambda: engine.running)

    def metered(self, session, graph: str) -> MeteredSession:
        return MeteredSession(session, self.batch_size.labels(graph))


class MeteredSession:
    """An onnxruntime session that records the batch size of every call."""

    def __init__(self, session, histogram):
        self.session = session
        self.histogram = histogram

    def run(self, output_names, feeds):
        self.histogram.observe(len(feeds["input_ids"]))
        return self.session.run(output_names, feeds)


class MetricsMiddleware:
    """Counts every request by method, route and status (401s, 413s and 429s included) and
    times it until its response, streamed or not, has been sent."""

    def __init__(self, app, *, metrics: Metrics, routes: frozenset[str]):
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in self.routes else UNMATCHED
        status = 500  # unless a response starts

        async def noting_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, noting_send)
        finally:
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
