"""The GET routes, plain FastAPI routes: the probes (/health, /ready, /metrics: no API key) and
/info and /v1/models. The POST routes are in routes.py."""

from __future__ import annotations

import os
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from .edge import probe_answer
from .engine import Engine
from .models import ready_engines
from .rerank import can_rerank
from .route_docs import ERRORS
from .settings import Settings
from .shared_metrics import latest


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


# what /docs shows for errors: our {"error": {...}} body, not FastAPI's {"detail": ...}
api = APIRouter(responses=ERRORS)  # mounted: GET /info


open_routes = APIRouter()


def _probe(request: Request) -> Response:
    # bert-serve answers the probes in its HTTP protocol (edge.immediate); these routes answer
    # them under any other ASGI server, and declare them in /docs
    status, body = probe_answer(request.app.state, request.scope["path"])
    return Response(body, status_code=status, media_type="application/json")


@open_routes.get("/health")
async def health(request: Request) -> Response:
    return _probe(request)


@open_routes.get("/ready")
async def ready(request: Request) -> Response:
    return _probe(request)


@open_routes.get("/metrics")
async def metrics(request: Request) -> Response:
    # with --workers: every worker's series merged, whichever worker answers
    return Response(latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def model_info(engine: Engine) -> dict[str, Any]:
    """What one model is and can do: /info's top level for the default model, and an entry of
    /info's `models` and of /v1/models for each."""
    return {
        "model": engine.model_name,
        "artifact": engine.artifact.name,
        "precision": engine.backend.precision,
        "provider": engine.backend.provider,
        "hidden_size": engine.artifact.hidden_size,
        "max_seq_len": engine.artifact.max_seq_len,
        "pooling": engine.artifact.pooling,
        "normalize": engine.artifact.normalize,
        # `dimensions` the model was trained to be cut to; others work, less well
        "matryoshka_dims": engine.artifact.matryoshka_dims,
        "capabilities": {
            "embed": True,
            "pooler": engine.backend.has_pooler,
            "fill_mask": engine.backend.has_mlm,
            "next_sentence": engine.backend.has_nsp,
            "classify": engine.backend.has_classifier,
            "rerank": can_rerank(engine),
        },
        "labels": engine.artifact.labels or None,
        "problem_type": engine.artifact.manifest.get("problem_type"),
        "batch_invariant": engine.backend.batch_invariant,
        "model_workers": engine.backend.workers,  # model calls that run at once
        "variants": {
            name: {"rejected": v.rejected, "batch_invariant": v.batch_invariant}
            for name, v in engine.artifact.variants.items()
        },
    }


LIMITS = (
    "max_inputs",
    "max_input_chars",
    "max_body_bytes",
    "max_top_k",
    "max_rerank_documents",
    "max_batch_tokens",
    "max_batch_size",
    "max_wait_ms",
    "max_queued_tokens",
    "request_timeout_s",
)


@api.get("/info")
async def info(request: Request, settings: SettingsDep) -> dict[str, Any]:
    """The default model at the top level (as when one model was served), every model in
    `models`, and the limits, which all models share."""
    from importlib.metadata import PackageNotFoundError, version

    engines = ready_engines(request.app.state)
    try:
        ours = version("bertserve")
    except PackageNotFoundError:
        ours = "dev"
    limits = {name: getattr(settings, name) for name in LIMITS}
    default = next(iter(engines.values()))
    return {
        **model_info(default),
        "models": [{**model_info(engine), "limits": limits} for engine in engines.values()],
        "limits": limits,
        "version": ours,
        # which process of `--workers N` answered (each has its own batcher and sessions)
        "workers": request.app.state.worker.count,
        "worker": {"index": request.app.state.worker.index, "pid": os.getpid()},
    }


@api.get("/v1/models")
async def list_models(request: Request, settings: SettingsDep) -> dict[str, Any]:
    """OpenAI's model list; each entry also says what the model can do."""
    engines = ready_engines(request.app.state)
    created = int(request.app.state.started)
    return {
        "object": "list",
        "data": [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "bertserve",
                **{k: v for k, v in model_info(engine).items() if k != "model"},
                "max_input_tokens": engine.artifact.max_seq_len,
            }
            for name, engine in engines.items()
        ],
    }
