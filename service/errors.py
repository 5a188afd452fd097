"""Which exception becomes which HTTP error, shared by the FastAPI handlers and the hot path."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from .batcher import DeadlineExceeded, ModelError, Overloaded, RequestTooLarge, ShuttingDown
from .engine import InvalidInput, MissingHead
from .metrics import Metrics
from .responses import ResponseTooLarge
from .text import InputTooLong, TooManyWindows


class TooLarge(Exception):
    """A request over a size limit (413)."""


class MalformedBody(ValueError):
    """A body that is not JSON, not UTF-8, or nested past the parser's limit (400)."""


class NotReady(Exception):
    """The model is not loaded yet, or the server is draining (503)."""


class ModelNotFound(LookupError):
    """A request named a model this server does not serve (404)."""


# exception type -> (status, error type in the body)
STATUS: dict[type[Exception], tuple[int, str]] = {
    MalformedBody: (400, "invalid_request"),
    InvalidInput: (422, "validation_error"),
    InputTooLong: (422, "input_too_long"),
    TooLarge: (413, "too_large"),
    TooManyWindows: (413, "too_large"),
    ResponseTooLarge: (413, "too_large"),
    RequestTooLarge: (413, "too_large"),
    MissingHead: (424, "missing_head"),
    ModelNotFound: (404, "model_not_found"),
    NotReady: (503, "not_ready"),
    ShuttingDown: (503, "shutting_down"),
    DeadlineExceeded: (504, "deadline_exceeded"),
    ModelError: (500, "model_error"),
    Overloaded: (429, "overloaded"),
}


ECHO_CHARS = 100  # client text quoted in an error message is cut to this many characters


def clip(text: str, limit: int = ECHO_CHARS) -> str:
    """Client text as an error message may quote it: at most `limit` characters (a 1 MB key
    came back whole in a 422), and valid Unicode (a lone surrogate cannot be written as JSON)."""
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text)} characters)"
    return text.encode("utf-8", "replace").decode("utf-8")


def error_body(kind: str, message: str) -> bytes:
    try:
        return orjson.dumps({"error": {"type": kind, "message": message}})
    except orjson.JSONEncodeError:  # a lone surrogate quoted from the request
        return orjson.dumps({"error": {"type": kind, "message": clip(message, len(message))}})


def known_error(exc: Exception, metrics: Metrics) -> tuple[int, str, dict[str, str]] | None:
    """(status, kind, headers) for an exception the API documents, None for a bug; counts
    the 429s in bertserve_rejected_total."""
    for exc_type, (status, kind) in STATUS.items():
        if isinstance(exc, exc_type):
            if isinstance(exc, Overloaded):
                metrics.rejected.labels("queue_full", exc.model).inc()
                return status, kind, {"Retry-After": str(exc.retry_after_s)}
            return status, kind, {}
    return None


def validation_error(errors: Sequence[Any]) -> tuple[int, str, str]:
    """(status, kind, message) for pydantic errors: 400 for a body that is not JSON, else 422
    naming the first few fields at fault."""
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "invalid_request", "request body is not valid JSON (or not UTF-8)"
    parts = []
    for e in errors[:5]:
        where = ".".join(clip(str(x)) for x in e.get("loc", ()) if x != "body")
        what = clip(str(e.get("msg", "invalid")), 4 * ECHO_CHARS)
        parts.append(f"{where}: {what}" if where else what)
    return 422, "validation_error", "; ".join(parts)
