"""ASGI middleware in front of the routes: the API key, the request body size, bodies read as
JSON whatever their content type says, and the cap on requests in flight."""

from __future__ import annotations

import hmac

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

PUBLIC_PATHS = frozenset({"/health", "/ready"})


def error_body(message: str, kind: str) -> dict:
    """The OpenAI error shape, which its clients read."""
    return {"error": {"message": message, "type": kind}}


class Guard:
    """Refuses a request without `Authorization: Bearer KEY` (when a key is set; except the
    public paths) with 401, and a body over `max_body_bytes` with 413: at once when its
    Content-Length says so, else as soon as that many bytes have arrived. Every body is read as
    JSON, the only format the API takes (`curl -d` labels it a form)."""

    def __init__(self, app, *, api_key: str | None, max_body_bytes: int):
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.expected is not None and scope["path"] not in PUBLIC_PATHS:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = JSONResponse(
                    error_body("missing or wrong API key: send 'Authorization: Bearer KEY'",
                               "authentication_error"),
                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body_bytes:
            response = JSONResponse(error_body(self._too_large(int(length)),
                                               "invalid_request_error"), status_code=413)
            return await response(scope, receive, send)
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise HTTPException(413, self._too_large(received, at_least=True))
            return message

        scope = {**scope, "headers": [*((name, value) for name, value in scope["headers"]
                                        if name != b"content-type"),
                                      (b"content-type", b"application/json")]}
        await self.app(scope, counting_receive, send)

    def _too_large(self, size: int, at_least: bool = False) -> str:
        return (f"request body of {'at least ' if at_least else ''}{size} bytes is over the "
                f"limit of {self.max_body_bytes} bytes")


class ConcurrencyLimit:
    """Answers 429 with Retry-After to a request under /v1/ arriving while `limit` of them are
    in flight (a stream is in flight until its last event is sent)."""

    RETRY_AFTER_S = 1

    def __init__(self, app, *, limit: int):
        self.app = app
        self.limit = limit
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        if self.in_flight >= self.limit:
            response = JSONResponse(
                error_body(f"{self.in_flight} requests are in flight, the server's limit "
                           f"(--max-concurrent {self.limit}); retry shortly",
                           "rate_limit_error"),
                status_code=429, headers={"Retry-After": str(self.RETRY_AFTER_S)})
            return await response(scope, receive, send)
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
