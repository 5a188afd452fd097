"""The FastAPI app: a thin factory, errors mapped to status codes, the model in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.artifact import Artifact, load_artifact
from service.backend import Backend, OnnxBackend
from service.batcher import Batcher, DeadlineExceeded, ModelError, Overloaded, ShuttingDown
from service.edge import EdgeMiddleware
from service.engine import Engine, InvalidInput, MissingHead
from service.metrics import Metrics
from service.routes import NotReady, TooLarge, api, open_routes
from service.settings import Settings
from service.text import InputTooLong

log = logging.getLogger("bertserve")


def error(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"type": kind, "message": message}}, status_code=status, headers=headers
    )


def _validation_message(exc: RequestValidationError) -> tuple[int, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "request body is not valid JSON (or not UTF-8)"
    parts = []
    for e in errors[:5]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else str(e.get("msg")))
    return 422, "; ".join(parts)


def create_app(
    settings: Settings, backend: Backend | None = None, artifact: Artifact | None = None
) -> FastAPI:
    """`backend` and `artifact` let tests inject fakes; by default both come from
    settings.model, verified, in the lifespan."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = artifact or load_artifact(settings.model)
        model = backend or OnnxBackend(
            loaded, settings.device, settings.precision, settings.threads
        )
        batcher = Batcher(
            model,
            metrics,
            pad_id=loaded.special_tokens.get("[PAD]", 0),
            max_batch_tokens=settings.max_batch_tokens,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queued_tokens=settings.max_queued_tokens,
            request_timeout_s=settings.request_timeout_s,
            max_padding_ratio=settings.max_padding_ratio,
        )
        batcher.start()
        app.state.batcher = batcher
        app.state.engine = Engine(loaded, model, batcher, metrics)
        metrics.model_info.labels(loaded.name, model.precision, model.provider).set(1)
        if settings.warmup:
            tokens = app.state.engine.text.encode(["warm up the model"])
            await app.state.engine.run(tokens, "warmup")
        app.state.ready = True
        metrics.ready.set(1)
        log.info("serving %s (%s on %s)", loaded.name, model.precision, model.provider)
        try:
            yield
        finally:
            app.state.ready = False
            app.state.draining = True
            metrics.ready.set(0)
            await batcher.stop()

    app = FastAPI(
        title="bertserve",
        version="0.1.0",
        lifespan=lifespan,
        description="BERT embeddings, fill-mask and next-sentence over ONNX Runtime.",
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.ready = False
    app.state.draining = False
    app.include_router(open_routes)
    app.include_router(api)

    app.add_middleware(EdgeMiddleware, settings=settings, metrics=metrics, state=app.state)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found" if exc.status_code == 404 else "invalid_request"
        message = "request body is not valid JSON" if exc.status_code == 400 else str(exc.detail)
        return error(exc.status_code, kind, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        status, message = _validation_message(exc)
        return error(status, "invalid_request" if status == 400 else "validation_error", message)

    handlers: list[tuple[type[Exception], int, str]] = [
        (InvalidInput, 422, "validation_error"),
        (InputTooLong, 422, "input_too_long"),
        (TooLarge, 413, "too_large"),
        (MissingHead, 424, "missing_head"),
        (NotReady, 503, "not_ready"),
        (ShuttingDown, 503, "shutting_down"),
        (DeadlineExceeded, 504, "deadline_exceeded"),
        (ModelError, 500, "model_error"),
    ]
    for exc_type, status, kind in handlers:
        app.add_exception_handler(exc_type, _handler(status, kind))

    @app.exception_handler(Overloaded)
    async def _overloaded(_: Request, exc: Overloaded) -> JSONResponse:
        metrics.rejected.labels("queue_full").inc()
        return error(429, "overloaded", str(exc), headers={"Retry-After": "1"})

    return app


def _handler(status: int, kind: str) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handle(_: Request, exc: Exception) -> JSONResponse:
        return error(status, kind, str(exc))

    return handle
