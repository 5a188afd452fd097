"""`bert-serve --model ARTIFACT_DIR`: flags generated from `Settings`, so every setting has one
flag, one environment variable (BERTSERVE_*) and one description.

Exit codes: 0 clean shutdown, 2 bad input (missing, tampered or incompatible artifact; bad flag),
1 internal error.
"""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bert-serve",
        description="Serve a bert-export artifact over HTTP. Every flag can also be set with "
        "the environment variable BERTSERVE_<FLAG> (upper case, '-' as '_').",
        argument_default=argparse.SUPPRESS,
    )
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = field.default
        help_text = f"{field.description} (default: {default})"
        if field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
            continue
        choices = None
        args = typing.get_args(field.annotation)
        literal = next((a for a in args if typing.get_origin(a) is typing.Literal), None)
        if typing.get_origin(field.annotation) is typing.Literal:
            choices = list(typing.get_args(field.annotation))
        elif literal is not None:
            choices = list(typing.get_args(literal))
        parser.add_argument(flag, dest=name, choices=choices, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    args: dict[str, Any] = vars(build_parser().parse_args(argv))
    try:
        settings = Settings(**args)
    except ValidationError as exc:
        first = exc.errors()[0]
        print(
            f"bert-serve: error: --{'-'.join(str(x) for x in first['loc'])}: {first['msg']}",
            file=sys.stderr,
        )
        return 2
    import uvicorn

    from service.app import create_app
    from service.artifact import ArtifactError, load_artifact
    from service.backend import OnnxBackend

    try:
        artifact = load_artifact(Path(settings.model))
        backend = OnnxBackend(artifact, settings.device, settings.precision, settings.threads)
    except ArtifactError as exc:
        print(f"bert-serve: error: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings, backend, artifact)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=30,
    )
    return 0


def settings_table() -> str:
    """The README's settings table, generated from `Settings` (a test keeps them equal)."""
    rows = ["| flag | environment | default | description |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = "" if field.default is None else str(field.default)
        rows.append(f"| `{flag}` | `BERTSERVE_{name.upper()}` | {default} | {field.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    raise SystemExit(main())
