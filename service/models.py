"""The models one process serves: what `--model` names, loading and verifying every artifact
before any is served, and choosing the engine a request's `model` field names.

`--model NAME=DIR` (repeated, or BERTSERVE_MODELS=a=DIR,b=DIR) serves DIR as NAME; a bare
`--model DIR` is named by its artifact (the manifest's name). The first is the default, used by
requests that name no model. Each model has its own ONNX Runtime sessions, tokenizer and
batcher queue; they share the model threads (threads.ModelThreads) and the event loop.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifact import Artifact, ArtifactError, load_artifact
from .backend import Backend, OnnxBackend
from .engine import Engine
from .errors import ModelNotFound, NotReady, clip

MAX_MODEL_NAME = 256  # a request's `model` is echoed and looked up: it stays short


@dataclass(frozen=True)
class ModelSpec:
    name: str | None  # None: the artifact's own name
    root: Path


def parse_spec(text: str) -> ModelSpec:
    """NAME=DIR, or a bare DIR (also when the whole text is an existing path with a '=')."""
    name, sep, root = text.partition("=")
    if not sep or not name.strip() or not root.strip() or Path(text).exists():
        return ModelSpec(None, Path(text))
    return ModelSpec(name.strip(), Path(root.strip()))


@dataclass(frozen=True)
class ServedModel:
    name: str
    artifact: Artifact
    backend: Backend


def load_models(specs: Sequence[ModelSpec], settings: Any) -> list[ServedModel]:
    """Every artifact loaded, verified and given its sessions, in order, before any serves;
    raises ArtifactError naming the model at fault (one bad artifact stops them all)."""
    served: list[ServedModel] = []
    for spec in specs:
        try:
            artifact = load_artifact(spec.root)
            backend = OnnxBackend.for_settings(artifact, settings)
        except ArtifactError as exc:
            if len(specs) == 1:
                raise
            raise ArtifactError(f"model {spec.name or spec.root}: {exc}") from None
        served.append(ServedModel(spec.name or artifact.name, artifact, backend))
    check_names([m.name for m in served])
    return served


def check_names(names: Sequence[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if len(name) > MAX_MODEL_NAME:
            raise ArtifactError(f"model name {clip(name)!r} is over {MAX_MODEL_NAME} characters")
        if name in seen:
            raise ArtifactError(f"two models are named {name!r}: name them with --model NAME=DIR")
        seen.add(name)


def ready_engines(state: Any) -> Mapping[str, Engine]:
    """Every model's engine, once all are loaded and warm; `state` is the FastAPI app.state."""
    engines: Mapping[str, Engine] | None = getattr(state, "engines", None)
    if not engines or not state.ready:
        raise NotReady("the model is not ready yet")
    return engines


def pick(engines: Mapping[str, Engine], name: str | None) -> Engine:
    """The engine a request names; the default (first) when it names none."""
    if name is None:
        return next(iter(engines.values()))
    engine = engines.get(name)
    if engine is None:
        names = ", ".join(repr(n) for n in engines)
        close = difflib.get_close_matches(name, list(engines), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ModelNotFound(f"model {clip(name)!r} is not served{hint}; served: {names}")
    return engine
