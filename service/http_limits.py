"""Limits below the ASGI app, in uvicorn's httptools protocol: header size, header count, the time
a client may take to send its headers, and what shutdown does to a body still arriving.

uvicorn's httptools protocol accepts headers of any size and number, and waits for them forever
(measured: a 2 MB header and 10,000 headers were accepted; a connection that dribbles its
headers was never closed). Shutdown waits for every request in flight, so one client sending its
body slowly held it for the full grace period and then got a 500. The ASGI app cannot help: it
only sees a request once its headers are complete. So this subclass counts while parsing:
  - headers over `max_header_bytes` (request line included) or `max_headers`: 431, closed;
  - headers not complete `header_timeout_s` after the request's first byte: 408, closed;
  - at shutdown, a request whose body is still arriving: 503 at once, closed (the app sees the
    client disconnect), instead of holding shutdown.
It also answers, without starting an ASGI task, what the edge can answer from the headers
alone (`immediate`: the probes, refusals): under a flood the loop's queue of request tasks is
what a probe waited behind. And a connection told to retry later (429 or 503 with
Retry-After) is not read again until then (at most `MAX_REFUSAL_PAUSE_S`): 500 connections
resending at once kept the loop busy refusing 3,500 requests a second, and every probe
waited behind them (p99 150 ms).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from .errors import clip, error_body

_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    408: b"Request Timeout",
    411: b"Length Required",
    413: b"Content Too Large",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}
MAX_REFUSAL_PAUSE_S = 1.0
# (status, JSON body, extra headers) for a request answered from its headers, or None
Immediate = Callable[[dict[str, Any]], "tuple[int, bytes, dict[str, str]] | None"]


def _response(
    status: int,
    body: bytes,
    defaults: list[tuple[bytes, bytes]],
    headers: dict[str, str],
    close: bool,
) -> bytes:
    """A whole JSON response written by the protocol itself (no ASGI app involved)."""
    head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))]
    head += [name + b": " + value + b"\r\n" for name, value in defaults]
    head += [k.lower().encode() + b": " + v.encode() + b"\r\n" for k, v in headers.items()]
    head.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
    if close:
        head.append(b"connection: close\r\n")
    return b"".join(head) + b"\r\n" + body


def limited_protocol(
    max_header_bytes: int,
    max_headers: int,
    header_timeout_s: float,
    immediate: Immediate | None = None,
) -> type:
    """An HttpToolsProtocol class with these limits (uvicorn.Config(http=...) takes a class)."""

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        _header_bytes = 0
        _header_count = 0
        _header_timer: asyncio.TimerHandle | None = None
        _in_headers = False
        _refusal: str | None = None  # why the headers were refused (431)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._header_bytes = self._header_count = 0
            self._in_headers = True
            self._cancel_header_timer()
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def on_url(self, url: bytes) -> None:
            self._count(len(url), 0)
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4, 1)  # "name: value\r\n"
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_headers = False
            self._cancel_header_timer()
            super().on_headers_complete()

        def _count(self, size: int, headers: int) -> None:
            self._header_bytes += size
            self._header_count += headers
            if self._header_bytes > max_header_bytes:
                self._refusal = f"request headers exceed max_header_bytes {max_header_bytes}"
            elif self._header_count > max_headers:
                self._refusal = f"request has more than max_headers {max_headers} headers"
            else:
                return
            # httptools turns a callback's exception into a parser error, which uvicorn
            # answers with a bare 400 through send_400_response: ours answers instead
            raise ValueError(self._refusal)

        def send_400_response(self, msg: str) -> None:
            if self._refusal is not None:
                self._refuse(431, "too_large", self._refusal)
                return
            # uvicorn answers a framing error with text/plain: ours is in the API's shape,
            # naming what the parser refused (called inside data_received's except clause)
            error = sys.exc_info()[1]
            detail = f" ({clip(str(error))})" if error is not None and str(error) else ""
            self._refuse(400, "invalid_request", f"malformed HTTP request{detail}")

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self._in_headers and not self.transport.is_closing():
                self._refuse(
                    408,
                    "timeout",
                    f"request headers not received within header_timeout_s {header_timeout_s:g}",
                )

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
            answer = immediate(cycle.scope) if immediate is not None else None  # type: ignore[arg-type]
            if answer is None:
                super()._start_asgi_task(cycle, app)
                return
            status, body, headers = answer
            chunked = any(name == b"transfer-encoding" for name, _ in cycle.scope["headers"])
            if chunked or (status >= 400 and cycle.waiting_for_100_continue):
                # a chunked body is refused (411) and not read: a parser error in it would be
                # a second answer to the one request; a client waiting for 100 Continue may
                # never send the body the parser still expects. Close after this answer.
                cycle.keep_alive = False
            self.transport.write(_response(status, body, cycle.default_headers, headers,
                                           close=not cycle.keep_alive))  # fmt: skip
            # as uvicorn completes a response: a body still arriving is read and dropped, the
            # next request on the connection (or the pipelined one) starts
            cycle.response_started = cycle.response_complete = True
            cycle.message_event.set()
            if not cycle.keep_alive:
                self.transport.close()
            cycle.on_response()
            retry_after = headers.get("Retry-After", "")
            if retry_after.isdigit() and not self.transport.is_closing():
                self.flow.pause_reading()
                pause = min(float(retry_after), MAX_REFUSAL_PAUSE_S)
                self.loop.call_later(pause, self._resume_after_refusal)

        def _resume_after_refusal(self) -> None:
            if not self.transport.is_closing():
                self.flow.resume_reading()

        def _refuse(self, status: int, kind: str, message: str) -> None:
            self._cancel_header_timer()
            if self.transport.is_closing():
                return
            body = error_body(kind, message)
            defaults = self.server_state.default_headers
            self.transport.write(_response(status, body, defaults, {}, close=True))
            self.transport.close()

        def shutdown(self) -> None:
            cycle = self.cycle
            if cycle is not None and not cycle.response_started and cycle.more_body:
                # the body is still arriving: answer now rather than hold shutdown for it
                self._refuse(503, "shutting_down", "the server is shutting down")
                cycle.disconnected = True
                cycle.message_event.set()
                return
            if self._in_headers:
                self._refuse(503, "shutting_down", "the server is shutting down")
                return
            super().shutdown()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

    return LimitedHttpToolsProtocol


def uvicorn_http_options(settings: Any, immediate: Immediate | None = None) -> dict[str, Any]:
    """uvicorn.Config arguments that apply the limits of `settings`, answering what
    `immediate` answers without the app."""
    return {
        "http": limited_protocol(
            settings.max_header_bytes, settings.max_headers, settings.header_timeout_s, immediate
        ),
        # the same header budget should uvicorn ever parse with h11
        "h11_max_incomplete_event_size": settings.max_header_bytes,
    }
