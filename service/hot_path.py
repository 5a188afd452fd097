"""Every POST route, straight from ASGI, past FastAPI's router, dependency injection and body
handling: the one path that answers them (service.routes.POST_ROUTES; /docs is built from
declarations that are never mounted).

Profiled under 32 concurrent single-sentence clients, FastAPI's machinery was over half of the
event loop's time, and on 2 cores the event loop shares the CPU with ONNX Runtime. Here the body
is validated by pydantic's JSON parser in one call, the route's `*_payload` function builds the
answer, errors map through service.errors as the app's handlers map the GET routes' errors, and
a client that disconnects cancels its request.
"""

from __future__ import annotations

import asyncio
import gc
import json
import threading
from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from .edge import send_json, send_pieces
from .errors import MalformedBody, TooLarge, clip, error_body, known_error, validation_error
from .models import pick, ready_engines
from .responses import Written, json_bytes
from .routes import LIST_LIMITS, POST_ROUTES

# bodies larger than this are parsed off the event loop: a 2 MB body of a million integers
# held /health for seconds when parsed on it
BIG_BODY_BYTES = 256 * 1024
MESSAGE_CHARS = 1000  # our messages are shorter; one that quotes client text stays bounded
T = TypeVar("T")


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionAbortedError("client went away")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


MAX_FIELDS = 64  # keys of one JSON object: the API's objects have a dozen


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def load_json(body: bytes) -> Any:
    """orjson, which refuses a lone UTF-16 surrogate (JSON can spell one, "\\ud800"); Python's
    parser takes it, so such a body is parsed again that way and gets the schema's 422 naming
    the text. Nesting past either parser's limit is a 400 (it was a RecursionError, 500)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
        raise MalformedBody("request body is not valid JSON (or not UTF-8)") from None


def check_sizes(document: Any, max_items: int, limit: str = "max_inputs") -> None:
    """Counts before validation: pydantic reports every bad item of a list, and a 2 MB body of
    10^6 integers took 8 s and 1.3 GB to refuse. Every list may hold max_items items (inputs,
    pairs, targets: the route's `limit` setting), every object MAX_FIELDS keys. Iterative:
    nesting is the parser's limit."""
    stack: list[tuple[str, Any]] = [("the body", document)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, list):
            if len(value) > max_items:
                raise TooLarge(f"{where} has {len(value)} items, over {limit} {max_items}")
            stack.extend(
                (f"{where}[{i}]", v) for i, v in enumerate(value) if isinstance(v, (list, dict))
            )
        elif isinstance(value, dict):
            if len(value) > MAX_FIELDS:
                raise MalformedBody(f"{where} has {len(value)} fields, over {MAX_FIELDS}")
            stack.extend(
                (clip(str(k)) if where == "the body" else f"{where}.{clip(str(k))}", v)
                for k, v in value.items()
                if isinstance(v, (list, dict))
            )


def parse(schema: type[BaseModel], body: bytes, max_items: int, limit: str = "max_inputs") -> Any:
    """The request model of `body`: parsed, counted, then validated by pydantic."""
    document = load_json(body)
    check_sizes(document, max_items, limit)
    return schema.model_validate(document)


class CollectorPause:
    """The cyclic garbage collector off while big bodies are parsed: a JSON tree has no cycles,
    and a million containers made it walk the whole heap again and again (10^6 `[]`: 0.24 s
    with it, 0.06 s without; seconds in a process with a large heap). Counted across the
    parsing threads: back on when the last one ends, unless it was off before."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = 0
        self.paused = False  # whether we turned it off

    def __enter__(self) -> None:
        with self.lock:
            if self.active == 0 and gc.isenabled():
                gc.disable()
                self.paused = True
            self.active += 1

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.active -= 1
            if self.active == 0 and self.paused:
                gc.enable()
                self.paused = False


_collector_pause = CollectorPause()


def parse_big(
    schema: type[BaseModel], body: bytes, max_items: int, limit: str = "max_inputs"
) -> Any:
    """parse, for a body over BIG_BODY_BYTES (run off the event loop), with the collector off."""
    with _collector_pause:
        return parse(schema, body, max_items, limit)


async def _unless_disconnected(work: Awaitable[T], receive: Receive) -> T:
    """Awaits `work` in this task while a watcher waits for the client's disconnect, which
    cancels this task (and so `work`): the request's queued sequences are then dropped before
    compute (the batcher counts them as cancelled). One task per request, not two plus a wait
    (profiled under 32 single-sentence clients)."""
    this = asyncio.current_task()
    assert this is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        this.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if gone:
            raise ConnectionAbortedError("client went away") from None
        raise
    finally:
        watcher.cancel()


class HotPathMiddleware:
    def __init__(self, app: ASGIApp, state: Any) -> None:
        self.app = app
        self.state = state  # the FastAPI app.state: settings, metrics, engines, responses, ready

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = POST_ROUTES.get(scope["path"]) if scope["type"] == "http" else None
        if route is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        schema, handler = route
        headers: dict[str, str] = {}
        held = None
        try:
            body = await read_body(receive)
            engines = ready_engines(self.state)
            held = self.state.responses.open()  # this answer's bytes in flight, until sent
            limit = LIST_LIMITS.get(scope["path"], "max_inputs")
            max_items = getattr(self.state.settings, limit)
            if len(body) > BIG_BODY_BYTES:  # parsing would stall every other request
                request = await asyncio.to_thread(parse_big, schema, body, max_items, limit)
            else:
                request = parse(schema, body, max_items, limit)
            engine = pick(engines, request.model)  # 404 for a model not served
            answer = await _unless_disconnected(
                handler(request, engine, self.state.settings), receive
            )
            status = 200
            if isinstance(answer, Written):  # big: written off the loop, sent in pieces
                await send_pieces(send, status, answer.pieces, answer.size)
                return
            content = json_bytes(answer)
        except ConnectionAbortedError:
            return
        except ValidationError as exc:
            status, kind, message = validation_error(exc.errors())
            content = error_body(kind, message)
        except Exception as exc:
            known = known_error(exc, self.state.metrics)
            if known is None:
                raise  # a bug: the edge logs it and answers 500
            status, kind, headers = known
            content = error_body(kind, clip(str(exc), MESSAGE_CHARS))
        finally:
            if held is not None:
                self.state.responses.close(held)
        await send_json(send, status, content, headers)
