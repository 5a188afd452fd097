"""The edge middleware, as plain ASGI (Starlette's BaseHTTPMiddleware costs a task and a
stream per request): API key, body size and draining checks, then request metrics.

What the edge can answer from the headers alone (the probes, and every refusal) it also
answers without the ASGI app: `immediate`, which bert-serve's HTTP protocol calls before it
starts a request's task (http_limits.py). Under a flood of 500 connections the event loop's
turn was 250 ms of queued requests, and a probe waited its turn behind them (p99 262 ms)."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .batcher import Overloaded, ShuttingDown
from .errors import error_body, known_error
from .metrics import Metrics
from .settings import Settings

log = logging.getLogger("bertserve")
# open without the API key: the probes and the scrape, as orchestrators call them; /docs and
# /openapi.json need the key like every route they describe (as TEI keeps them)
OPEN_PATHS = {"/health", "/ready", "/metrics"}
UNCOUNTED = {"/metrics"}
# nginx's status for a request whose client closed the connection first: not a 5xx, so that an
# error-rate alert does not fire on client timeouts
CLIENT_CLOSED = 499
UNMATCHED = "unmatched"  # the one route label of every path the app has no route for
PROBES = {"/health", "/ready"}
ADMITTED = "bertserve.admitted"  # scope key: the protocol's immediate() found nothing to refuse


def probe_answer(state: Any, path: str) -> tuple[int, bytes]:
    """/health: every model's batcher is alive; /ready: every model is loaded and warm (in
    every worker), and the server is not draining."""
    if path == "/health":
        batchers = getattr(state, "batchers", None) or []
        alive = bool(batchers) and all(batcher.alive for batcher in batchers)
        return (200 if alive else 503), b'{"status":"ok"}' if alive else b'{"status":"down"}'
    peers_ready = getattr(state, "peers_ready", None)  # with --workers: every worker is warm
    ok = bool(getattr(state, "ready", False)) and (peers_ready is None or peers_ready())
    return (200 if ok else 503), b'{"ready":true}' if ok else b'{"ready":false}'


def _json_head(status: int, size: int, headers: dict[str, str] | None = None) -> Message:
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(size).encode()),
            *extra,
        ],
    }


async def send_json(
    send: Send, status: int, content: bytes, headers: dict[str, str] | None = None
) -> None:
    """A whole JSON response in two ASGI messages."""
    await send(_json_head(status, len(content), headers))
    await send({"type": "http.response.body", "body": content})


async def send_pieces(send: Send, status: int, pieces: list[bytes], size: int) -> None:
    """A large JSON response written in pieces, sent in ~1 MB messages (no joined copy; the
    server waits for the client to read each before taking the next)."""
    await send(_json_head(status, size))
    chunk: list[bytes] = []
    filled = 0
    for index, piece in enumerate(pieces):
        chunk.append(piece)
        filled += len(piece)
        if filled >= 1 << 20 or index == len(pieces) - 1:
            last = index == len(pieces) - 1
            await send(
                {"type": "http.response.body", "body": b"".join(chunk), "more_body": not last}
            )
            chunk, filled = [], 0
    pieces.clear()


def _content_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit():
            return int(value)
    return 0


_timeout = getattr(asyncio, "timeout", None)  # wait_for costs a task per receive (profiled)


class BodyTimeout(HTTPException):
    """The client stopped sending its body (408). An HTTPException, because FastAPI turns any
    other exception raised while it reads a body into a 400."""

    def __init__(self, message: str) -> None:
        super().__init__(408, message)


def timed_receive(receive: Receive, timeout_s: float) -> Receive:
    """`receive`, with each wait for the next piece of the body bounded by `timeout_s`; once
    the body is complete, waits (for a disconnect) are not bounded."""
    body_done = False

    async def wrapped() -> Message:
        nonlocal body_done
        if body_done:
            return await receive()
        try:
            if _timeout is not None:  # Python 3.11+: a deadline on this task, no new task
                async with _timeout(timeout_s):
                    message = await receive()
            else:
                message = await asyncio.wait_for(receive(), timeout_s)
        except (TimeoutError, asyncio.TimeoutError):  # distinct classes before Python 3.11
            raise BodyTimeout(
                f"request body not received within body_timeout_s {timeout_s:g}"
            ) from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            body_done = True
        return message

    return wrapped


class EdgeMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        settings: Settings,
        metrics: Metrics,
        state: Any,
        routes: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.state = state  # the FastAPI app.state, for the draining flag
        # the app's route paths: metric labels come from this set only, so random paths
        # cannot grow a series each (63k series and a 10 s /metrics were measured)
        self.routes = routes
        # Content-Length of the requests being read, parsed or answered: their bodies and what
        # is parsed from them are in memory until the answer is sent
        self.body_bytes_in_flight = 0

    def refusal(self, scope: Scope) -> tuple[int, str, str, dict[str, str]] | None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        settings = self.settings
        if settings.api_key and scope["path"] not in OPEN_PATHS:
            if sum(k == b"authorization" for k, _ in scope["headers"]) > 1:
                # which one counts differs between proxies and servers: refuse, do not pick
                return 400, "invalid_request", "more than one Authorization header", {}
            auth = headers.get("authorization", "")
            given = auth[7:] if auth.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(given.encode(), settings.api_key.encode()):
                return (
                    401,
                    "unauthorized",
                    ("missing or wrong API key (send 'Authorization: Bearer <key>')"),
                    {},
                )
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return 400, "invalid_request", "Content-Length is not a number", {}
            if int(length) > settings.max_body_bytes:
                return (
                    413,
                    "too_large",
                    (
                        f"request body of {length} bytes exceeds "
                        f"max_body_bytes {settings.max_body_bytes}"
                    ),
                    {},
                )
            body = int(length)
            if self.body_bytes_in_flight and (
                self.body_bytes_in_flight + body > settings.max_body_bytes_in_flight
            ):
                return (
                    429,
                    "overloaded",
                    (
                        f"server busy: {self.body_bytes_in_flight} bytes of request bodies in "
                        f"flight + {body} would exceed max_body_bytes_in_flight "
                        f"{settings.max_body_bytes_in_flight}"
                    ),
                    {"Retry-After": "1"},
                )
        elif scope["method"] == "POST" and "transfer-encoding" in headers:
            return 411, "length_required", "send Content-Length (chunked bodies are refused)", {}
        if getattr(self.state, "draining", False):
            return 503, "shutting_down", "server is shutting down", {}
        batcher = getattr(self.state, "batcher", None)
        if scope["method"] == "POST" and batcher is not None:
            try:  # a full queue refuses before the body is read and parsed (bursts)
                batcher.precheck(2)
            except (Overloaded, ShuttingDown) as exc:
                known = known_error(exc, self.metrics)  # the table every route answers by
                assert known is not None
                return known[0], known[1], str(exc), known[2]
        return None

    def immediate(self, scope: Scope) -> tuple[int, bytes, dict[str, str]] | None:
        """The answer to a request that needs neither its body nor a task, counted as the
        ASGI path counts it; None for every other request."""
        started = time.perf_counter()
        refused = self.refusal(scope)
        if refused is not None:
            status, kind, message, headers = refused
            body = error_body(kind, message)
        elif scope["method"] == "GET" and scope["path"] in PROBES:
            (status, body), headers = probe_answer(self.state, scope["path"]), {}
        else:
            scope[ADMITTED] = True  # the ASGI path need not check the headers again
            return None
        self._count(scope["path"], status, started)
        return status, body, headers

    def _count(self, path: str, status: int, started: float) -> None:
        if path not in UNCOUNTED:
            route = path if path in self.routes else UNMATCHED
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.request_duration.labels(route).observe(time.perf_counter() - started)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope["path"]
        status = 500
        started_response = False

        async def send_and_record(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                status, started_response = message["status"], True
            await send(message)

        held = 0
        try:
            refused = None if scope.get(ADMITTED) else self.refusal(scope)
            if refused is None:
                held = _content_length(scope)
                self.body_bytes_in_flight += held
                try:
                    await self.app(
                        scope, timed_receive(receive, self.settings.body_timeout_s), send_and_record
                    )
                    if not started_response:  # the client went away before its answer
                        status = CLIENT_CLOSED
                except BodyTimeout as exc:
                    if started_response:  # nothing more can be said
                        raise
                    status = 408
                    await send_json(send, status, error_body("timeout", str(exc.detail)))
                except Exception:  # a bug: logged, and answered in our error shape
                    if started_response:  # FastAPI's error middleware answered (GET routes)
                        raise
                    log.exception("unhandled error answering %s %s", scope["method"], path)
                    status = 500
                    await send_json(
                        send, status, error_body("internal_error", "internal server error")
                    )
            else:
                status, kind, message, headers = refused
                await send_json(send, status, error_body(kind, message), headers)
        finally:
            self.body_bytes_in_flight -= held
            self._count(path, status, started)
