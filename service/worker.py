"""One worker process of `bert-serve --workers N` (started by workers.py, never by hand): reads
its settings from stdin, serves on the port beside the other workers (SO_REUSEPORT), and says
on its status pipe when it is warm, or in one line why it cannot start."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time
from typing import Any

PR_SET_PDEATHSIG = 1


def _exit_with(parent: int) -> None:
    """SIGTERM (a drain) when the supervisor dies, even by SIGKILL: no orphans keep the port."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the supervisor's stop() is all there is
        return
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


class PeersReady:
    """/ready's question in a worker: are all `count` workers warm? Read from the shared
    metrics (bertserve_workers, a live sum), at most once a second once the answer is yes."""

    def __init__(self, count: int):
        self.count = count
        self.yes_until = 0.0

    def __call__(self) -> bool:
        from .shared_metrics import live_sum

        now = time.monotonic()
        if now < self.yes_until:
            return True
        if live_sum("bertserve_workers") >= self.count:
            self.yes_until = now + 1.0
            return True
        return False


def main() -> int:
    config: dict[str, Any] = json.loads(sys.stdin.read())
    _exit_with(config["parent"])
    status = os.fdopen(config["status_fd"], "w", buffering=1)

    def report(**message: Any) -> None:
        status.write(json.dumps(message) + "\n")
        status.flush()

    from .cli import listen, load_or_refuse, serve, summary
    from .settings import Settings
    from .worker_place import WorkerPlace

    settings = Settings(**config["settings"])
    served = load_or_refuse(settings)
    if isinstance(served, str):
        report(error=served)
        return 2
    from .app import create_app

    try:
        listener = listen(settings.host, config["port"], shared=True)
    except OSError as exc:
        report(error=f"cannot listen on {settings.host}:{config['port']} ({exc})", code=3)
        return 3
    app = create_app(
        settings, models=served, on_ready=lambda: report(ready=True, summary=summary(served))
    )
    app.state.worker = WorkerPlace(config["index"], config["count"])
    app.state.peers_ready = PeersReady(config["count"])
    serve(app, settings, listener)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
