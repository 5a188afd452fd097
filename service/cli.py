"""`bert-serve --model ARTIFACT_DIR`: flags generated from `Settings`, so every setting has one
flag, one environment variable (BERTSERVE_*) and one description.

Exit codes: 0 clean shutdown, 2 bad input (missing, tampered, unreadable or incompatible
artifact; bad flag), 3 cannot listen on the address (port in use, no permission), 1 internal
error. Every refusal is one line on stderr.
"""

from __future__ import annotations

import argparse
import socket
import sys
import typing
from collections.abc import Iterator
from typing import Any

from pydantic import ValidationError

from .settings import Settings


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
        help_text = field.description or ""
        if default is not None and "default" not in help_text:  # else the text says it
            help_text += f" (default: {default})"
        if field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
            continue
        if typing.get_origin(field.annotation) is list:  # repeated: --model a --model b
            parser.add_argument(flag, dest=name, action="append", help=help_text)
            continue
        choices = None
        args = typing.get_args(field.annotation)
        literal = next((a for a in args if typing.get_origin(a) is typing.Literal), None)
        # only literals (or None): choices; a literal beside another type (int | "auto") is
        # checked by the validator
        others = [
            a for a in args if a is not type(None) and typing.get_origin(a) is not typing.Literal
        ]
        if typing.get_origin(field.annotation) is typing.Literal:
            choices = list(typing.get_args(field.annotation))
        elif literal is not None and not others:
            choices = list(typing.get_args(literal))
        parser.add_argument(flag, dest=name, choices=choices, help=help_text)
    return parser


EXIT_BAD_INPUT = 2
EXIT_CANNOT_LISTEN = 3


def main(argv: list[str] | None = None) -> int:
    args: dict[str, Any] = vars(build_parser().parse_args(argv))
    try:
        settings = Settings(**args)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        flag = "-".join(str(x) for x in first["loc"]).replace("_", "-")
        print(f"bert-serve: error: --{flag}: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from .workers import resolve_count, supervise

    count = resolve_count(settings)
    if count > 1:  # a supervisor that binds the port, and the workers
        return supervise(settings, count)
    served = load_or_refuse(settings)
    if isinstance(served, str):
        print(f"bert-serve: error: {served}", file=sys.stderr)
        return EXIT_BAD_INPUT
    listener = listen_or_refuse(settings)
    if listener is None:
        return EXIT_CANNOT_LISTEN
    from .app import create_app

    app = create_app(settings, models=served)
    print(
        f"bert-serve: {summary(served)}, http://{settings.host}:{settings.port}",
        file=sys.stderr,
        flush=True,
    )
    serve(app, settings, listener)
    return 0


def load_or_refuse(settings: Settings) -> list[Any] | str:
    """Every model loaded and verified (ServedModel each), or the one line that says why not."""
    import onnxruntime as ort

    from .artifact import ArtifactError
    from .models import load_models, parse_spec

    ort.set_default_logger_severity(4)  # a broken graph is reported once, by us, in one line
    try:  # every model verified before any serves
        return load_models([parse_spec(spec) for spec in settings.model], settings)
    except ArtifactError as exc:
        return str(exc)
    except PermissionError as exc:  # e.g. a folder the service's user cannot enter
        return f"permission denied: {exc.filename}"


def listen_or_refuse(settings: Settings, **options: bool) -> socket.socket | None:
    """The listening socket (`options`: listen's), or None once the one line saying why not
    is printed."""
    try:
        return listen(settings.host, settings.port, **options)
    except OSError as exc:
        print(
            f"bert-serve: error: cannot listen on {settings.host}:{settings.port} "
            f"({exc.strerror or exc})",
            file=sys.stderr,
        )
        return None


def summary(served: list[Any]) -> str:
    """What the start-up line says about the models and the threads."""
    default = served[0].backend
    names = ", ".join(f"{m.name}: {m.backend.precision} on {m.backend.provider}" for m in served)
    return (
        f"{names}; {default.workers} model thread(s) x {default.threads_per_call} "
        "ONNX Runtime thread(s)"
    )


def serve(app: Any, settings: Settings, listener: socket.socket) -> None:
    """uvicorn on `listener` with the limits of `settings`, until SIGTERM or SIGINT drains it."""
    import uvicorn

    from .http_limits import uvicorn_http_options

    config = uvicorn.Config(
        app,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=DRAIN_TIMEOUT_S,
        lifespan="on",
        **uvicorn_http_options(settings, app.front.immediate if app.front else None),
    )
    _serve(config, listener)


DRAIN_TIMEOUT_S = 30  # in-flight requests answered after SIGTERM, at most this long


def _serve(config: Any, listener: socket.socket) -> None:
    """uvicorn's Server, except that a SIGTERM or SIGINT it has already answered by draining
    is not raised again at exit: a clean shutdown exits 0, as orchestrators expect."""
    import contextlib

    import uvicorn

    class DrainingServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                yield
                captured = getattr(self, "_captured_signals", None)
                if isinstance(captured, list):
                    captured.clear()

    DrainingServer(config).run(sockets=[listener])


def listen(host: str, port: int, *, shared: bool = False, accept: bool = True) -> socket.socket:
    """The listening socket, bound here so that a taken port is our one-line error rather than
    a traceback from inside uvicorn. `shared` (SO_REUSEPORT): the workers of --workers each
    listen on the port and the kernel spreads new connections evenly among them (one shared
    socket let the first worker awake accept a whole burst); the supervisor binds without
    `accept`, holding the port and taking no connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if accept:
            sock.listen(2048)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


def settings_table() -> str:
    """The README's settings table, generated from `Settings` (a test keeps them equal)."""
    rows = ["| flag | environment | default | description |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = field.default
        if isinstance(default, list):
            default = ",".join(default)
        default = "" if default is None else str(default)
        rows.append(f"| `{flag}` | `BERTSERVE_{name.upper()}` | {default} | {field.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    raise SystemExit(main())
