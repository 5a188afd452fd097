"""Response bytes: one bound per response, one bound on all responses being built or sent, and
where a response is written.

Four /embed requests for token vectors (78 MB of JSON each) took the server from 190 MiB to
2.7 GiB and it stayed there; /fill-mask had no bound at all (120 MB in one answer). So:
  - every route estimates its answer's size once the inputs are tokenized, before the model
    runs; over `max_response_bytes` it is 413 naming the limit (and the real size is checked
    again when written);
  - the estimate is held against `max_response_bytes_in_flight` until the answer is sent:
    past it, 429 (retry soon), so memory follows the limits, not the traffic;
  - a big answer is built and written on a worker thread in pieces (the GIL changes hands
    between pieces, so the event loop keeps answering /health) and sent in pieces, without a
    joined copy; after one, freed memory is handed back to the OS (glibc keeps it otherwise).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel

from . import heap
from .batcher import Overloaded

T = TypeVar("T")
OFF_LOOP_BYTES = 256 * 1024  # answers estimated larger are built and written off the loop
TRIM_AFTER_BYTES = 8 * 1024 * 1024  # answers larger than this hand memory back when sent
# JSON bytes per float32 as orjson writes it ("-0.012345678," is 13; a few have exponents)
FLOAT_JSON_BYTES = 13
FLOAT_BASE64_BYTES = 16 / 3  # 4 bytes in base64


class ResponseTooLarge(Exception):
    """An answer over max_response_bytes (413)."""


def vector_bytes(dimensions: int, encoding_format: str) -> int:
    per_float = FLOAT_BASE64_BYTES if encoding_format == "base64" else FLOAT_JSON_BYTES
    return int(dimensions * per_float) + 8


def _model_dict(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def json_bytes(payload: Any) -> bytes:
    """orjson writes numpy vectors directly: no per-float Python objects, no re-validation of
    a response model (the models in schemas.py still document the shapes in /docs)."""
    return orjson.dumps(payload, default=_model_dict, option=orjson.OPT_SERIALIZE_NUMPY)


PIECE_BYTES = 64 * 1024  # one orjson call writes about this much: well under a millisecond


def json_pieces(value: Any, out: list[bytes]) -> None:
    """`value` as JSON, appended to `out` in pieces of about PIECE_BYTES: objects are walked,
    lists of big items (rows holding long lists) item by item, other lists a slice of items
    per orjson call. Between calls the GIL changes hands; one call per number (as first
    written) spent 85% of a /tokenize answer's time in call overhead."""
    if isinstance(value, dict):
        out.append(b"{")
        for index, (key, item) in enumerate(value.items()):
            out.append(b"," + orjson.dumps(key) + b":" if index else orjson.dumps(key) + b":")
            json_pieces(item, out)
        out.append(b"}")
    elif isinstance(value, list) and len(value) > 1 and _holds_long_list(value[0]):
        out.append(b"[")
        for index, item in enumerate(value):
            if index:
                out.append(b",")
            json_pieces(item, out)
        out.append(b"]")
    elif isinstance(value, list) and len(value) > 1:
        per_piece = max(1, PIECE_BYTES // len(json_bytes(value[0])))
        out.append(b"[")
        for start in range(0, len(value), per_piece):
            if start:
                out.append(b",")
            out.append(json_bytes(value[start : start + per_piece])[1:-1])  # without [ ]
        out.append(b"]")
    else:
        out.append(json_bytes(value))


def _holds_long_list(value: Any) -> bool:
    """A row worth walking: a list, or an object holding one, of more than a few items (the
    answers' rows are alike, so the first stands for all)."""
    if isinstance(value, list):
        return len(value) > 16
    if isinstance(value, dict):
        return any(_holds_long_list(item) for item in value.values())
    return False


class Written:
    """An answer already written as JSON: its pieces, their total size, and the bytes it held
    in flight (given back once it is sent)."""

    __slots__ = ("pieces", "size")

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces
        self.size = sum(len(p) for p in pieces)


_held: contextvars.ContextVar[list[int]] = contextvars.ContextVar("bertserve_response_bytes")


class ResponseBudget:
    def __init__(self, max_response_bytes: int, max_in_flight: int) -> None:
        self.max_response_bytes = max_response_bytes
        self.max_in_flight = max_in_flight
        self.in_flight = 0  # estimated bytes of answers reserved and not yet sent

    # -- one request's reservation (the hot path opens and closes it) ------------------------
    def open(self) -> contextvars.Token[list[int]]:
        return _held.set([0])

    def close(self, token: contextvars.Token[list[int]]) -> None:
        """Ends a request's reservation; after a large answer free memory goes back to the OS
        (long model calls give theirs back where they end, backend.py)."""
        held = _held.get()[0]
        self.in_flight -= held
        _held.reset(token)
        if held > TRIM_AFTER_BYTES:
            # measured: RSS stayed at 2.7 GiB after a burst of large answers (see heap.py)
            asyncio.get_running_loop().run_in_executor(None, heap.give_back)

    def reserve(self, estimate: int, remedy: str = "ask for fewer inputs") -> None:
        """Holds `estimate` bytes for this request's answer until it is sent: 413 when one
        answer is over max_response_bytes, 429 when all answers in flight would be over
        max_response_bytes_in_flight (an answer alone always gets its turn)."""
        if estimate > self.max_response_bytes:
            raise ResponseTooLarge(
                f"the answer would take about {estimate} bytes, over max_response_bytes "
                f"{self.max_response_bytes} ({remedy})"
            )
        if self.in_flight and self.in_flight + estimate > self.max_in_flight:
            raise Overloaded(
                f"server busy: {self.in_flight} bytes of answers in flight + {estimate} would "
                f"exceed max_response_bytes_in_flight {self.max_in_flight}",
                1,
            )
        held = _held.get(None)
        if held is None:  # not inside a request (a test calling a payload directly)
            return
        held[0] += estimate
        self.in_flight += estimate

    async def write(self, answer: Any, estimate: int) -> Written | Any:
        """The answer as JSON pieces, written off the loop when it is big; small answers are
        returned as they are (the hot path writes them in one call)."""
        if estimate <= OFF_LOOP_BYTES:
            return answer
        pieces: list[bytes] = []
        await asyncio.to_thread(json_pieces, answer, pieces)
        written = Written(pieces)
        if written.size > self.max_response_bytes:  # the estimate is typical, not a bound
            raise ResponseTooLarge(
                f"the answer takes {written.size} bytes, over max_response_bytes "
                f"{self.max_response_bytes}"
            )
        return written


async def off_loop(estimate: int, build: Callable[..., T], *args: Any) -> T:
    """`build(*args)` on a worker thread when the answer it builds is big: a Python loop
    there gives up the GIL every few milliseconds, so the event loop keeps serving."""
    if estimate <= OFF_LOOP_BYTES:
        return build(*args)
    return await asyncio.to_thread(build, *args)
