"""`bert-serve --workers N`: a supervisor process binds the port and runs N workers that accept
from its socket, each with its own event loop, batcher and ONNX Runtime sessions (one event
loop spends ~0.3-0.5 ms of CPU per request: on a many-core host, or a GPU, it is the limit).

Written here rather than taken from uvicorn's `--workers` supervisor because the contract
differs: a worker's start-up error is the server's one-line refusal (exit 2) before anything
serves; /ready waits for every worker; a dead worker is restarted with backoff, and its live
gauges leave the shared metrics; the ONNX Runtime threads are divided among the workers.

Each worker is `python -m bertserve.service.worker`, given its settings on stdin (the API key
stays out of argv) and a status pipe as an inherited descriptor; it listens on the port itself
with SO_REUSEPORT, so the kernel spreads connections evenly (from one inherited socket, the
first worker to wake accepted whole bursts: 2 workers measured 1.0-1.4x of one, unsteady). The
supervisor holds the port bound, not listening. A worker says on the pipe that it is ready, or
why it cannot start.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from .cli import EXIT_BAD_INPUT, EXIT_CANNOT_LISTEN  # one definition of the exit codes
from .settings import Settings

AUTO_CPU = 1  # measured on 2 cores: the model takes them (BENCHMARKS.md "Workers")
AUTO_CUDA = 4  # one event loop feeds a GPU a fraction of what it can do
FIRST_RESTART_DELAY_S = 0.5
MAX_RESTART_DELAY_S = 30.0
STEADY_AFTER_S = 60.0  # a worker up this long restarts at the first delay again


def resolve_count(settings: Settings) -> int:
    if settings.workers != "auto":
        return int(settings.workers)
    if settings.device == "cpu":
        return AUTO_CPU
    import onnxruntime as ort

    return AUTO_CUDA if "CUDAExecutionProvider" in ort.get_available_providers() else AUTO_CPU


def share(total: int, count: int, index: int) -> int:
    """Worker `index`'s part of `total` (threads, model calls): the remainder to the first."""
    base, extra = divmod(total, count)
    return max(1, base + (1 if index < extra else 0))


def worker_settings(settings: Settings, count: int, index: int) -> dict[str, Any]:
    """The settings one worker runs with: threads and model calls are totals, divided."""
    values = settings.model_dump(mode="json")
    total = settings.threads or len(os.sched_getaffinity(0))
    values["threads"] = share(total, count, index)
    if settings.model_workers:
        values["model_workers"] = share(settings.model_workers, count, index)
    values["workers"] = 1
    return values


@dataclass
class Worker:
    index: int
    process: subprocess.Popen[bytes] | None = None
    status_fd: int | None = None  # read end of the worker's status pipe
    pending: bytes = b""  # a status line not yet complete
    ready: bool = False
    started: float = 0.0
    delay: float = FIRST_RESTART_DELAY_S  # before the next restart
    restart_at: float | None = None
    summary: str = ""
    error: str | None = None  # the start-up refusal it reported
    error_code: int = EXIT_BAD_INPUT
    restarts: int = 0
    announced: bool = True  # a restarted worker's return is logged once


class Supervisor:
    def __init__(self, settings: Settings, count: int, listener: socket.socket, folder: str):
        self.settings = settings
        self.count = count
        self.listener = listener
        self.folder = folder  # PROMETHEUS_MULTIPROC_DIR of every worker
        self.workers = [Worker(i) for i in range(count)]
        self.selector = selectors.DefaultSelector()
        self.stopping = False

    # -- processes
    def spawn(self, worker: Worker) -> None:
        read_fd, write_fd = os.pipe()
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": self.folder}
        config = {
            "settings": worker_settings(self.settings, self.count, worker.index),
            "index": worker.index,
            "count": self.count,
            "port": self.listener.getsockname()[1],  # the bound one, when --port is 0
            "status_fd": write_fd,
            "parent": os.getpid(),
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "bertserve.service.worker"],
            stdin=subprocess.PIPE,
            pass_fds=(write_fd,),
            env=env,
            start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor, which drains
        )
        os.close(write_fd)
        assert process.stdin is not None
        process.stdin.write(json.dumps(config).encode())
        process.stdin.close()
        os.set_blocking(read_fd, False)
        self.selector.register(read_fd, selectors.EVENT_READ, worker)
        worker.process, worker.status_fd, worker.pending = process, read_fd, b""
        worker.ready, worker.error, worker.restart_at = False, None, None
        worker.started = time.monotonic()

    def read_status(self, timeout: float) -> None:
        """Waits up to `timeout` for status lines and takes them in."""
        for key, _ in self.selector.select(timeout):
            worker: Worker = key.data
            try:
                chunk = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:  # the worker closed its end (it exited)
                self._close_status(worker)
                continue
            worker.pending += chunk
            while b"\n" in worker.pending:
                line, worker.pending = worker.pending.split(b"\n", 1)
                self._take(worker, json.loads(line))

    def _take(self, worker: Worker, message: dict[str, Any]) -> None:
        if "error" in message:
            worker.error = str(message["error"])
            worker.error_code = int(message.get("code", EXIT_BAD_INPUT))
        elif message.get("ready"):
            worker.ready = True
            worker.summary = str(message.get("summary", ""))

    def _close_status(self, worker: Worker) -> None:
        if worker.status_fd is not None:
            self.selector.unregister(worker.status_fd)
            os.close(worker.status_fd)
            worker.status_fd = None

    def reap(self, worker: Worker) -> int | None:
        """The worker's exit status once it has exited (its pipe drained first), else None."""
        if worker.process is None:
            return None
        code = worker.process.poll()
        if code is None:
            return None
        if worker.status_fd is not None:  # what it said before it exited
            os.set_blocking(worker.status_fd, True)
            rest = b""
            with contextlib.suppress(OSError):
                while chunk := os.read(worker.status_fd, 65536):
                    rest += chunk
            for line in (worker.pending + rest).split(b"\n"):
                if line.strip():
                    self._take(worker, json.loads(line))
            self._close_status(worker)
        from .shared_metrics import forget

        forget(worker.process.pid, self.folder)
        return code

    # -- phases
    def start(self) -> int | None:
        """Every worker started and warm: None; else the exit code, the one line printed."""
        for worker in self.workers:
            self.spawn(worker)
        while not all(w.ready for w in self.workers):
            if self.stopping:
                return 0
            self.read_status(0.2)
            for worker in self.workers:
                code = self.reap(worker)
                if code is None:
                    continue
                if worker.error is not None:
                    print(f"bert-serve: error: {worker.error}", file=sys.stderr, flush=True)
                    return worker.error_code
                print(
                    f"bert-serve: error: worker {worker.index} {_describe(code)} before it "
                    "was ready",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
        return None

    def watch(self) -> None:
        """Restarts a worker that exits, with backoff, until SIGTERM or SIGINT."""
        while not self.stopping:
            self.read_status(0.2)
            now = time.monotonic()
            for worker in self.workers:
                if worker.restart_at is not None:
                    if now >= worker.restart_at:
                        self.spawn(worker)
                        worker.restarts += 1
                        worker.announced = False
                    continue
                if worker.ready and not worker.announced:
                    assert worker.process is not None
                    print(
                        f"bert-serve: worker {worker.index} (pid {worker.process.pid}) is "
                        f"serving again (restart {worker.restarts})",
                        file=sys.stderr,
                        flush=True,
                    )
                    worker.announced = True
                assert worker.process is not None
                pid = worker.process.pid
                code = self.reap(worker)
                if code is None:
                    continue
                if now - worker.started >= STEADY_AFTER_S:
                    worker.delay = FIRST_RESTART_DELAY_S
                why = f": {worker.error}" if worker.error else ""
                print(
                    f"bert-serve: worker {worker.index} (pid {pid}) {_describe(code)}{why}; "
                    f"restarting in {worker.delay:g} s",
                    file=sys.stderr,
                    flush=True,
                )
                worker.restart_at = now + worker.delay
                worker.delay = min(worker.delay * 2, MAX_RESTART_DELAY_S)

    def stop(self, drain_timeout_s: float) -> None:
        """SIGTERM to every worker (each drains: in-flight requests answered), then SIGKILL to
        any still running after the drain timeout."""
        alive = [w.process for w in self.workers if w.process and w.process.poll() is None]
        for process in alive:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + drain_timeout_s + 5
        for process in alive:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for worker in self.workers:
            self.reap(worker)


def _describe(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def supervise(settings: Settings, count: int) -> int:
    """The supervisor's life: bind, start every worker, watch them, drain at SIGTERM/SIGINT."""
    from .cli import DRAIN_TIMEOUT_S, listen_or_refuse

    listener = listen_or_refuse(settings, shared=True, accept=False)  # the port, held
    if listener is None:
        return EXIT_CANNOT_LISTEN
    folder = tempfile.mkdtemp(prefix="bertserve-metrics-")  # private, empty: no old series
    supervisor = Supervisor(settings, count, listener, folder)

    def stop(signum: int, frame: Any) -> None:
        supervisor.stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = supervisor.start()
        if code is not None:
            return code
        print(
            f"bert-serve: {supervisor.workers[0].summary}; {count} workers, "
            f"http://{settings.host}:{settings.port}",
            file=sys.stderr,
            flush=True,
        )
        supervisor.watch()
        return 0
    finally:
        supervisor.stop(DRAIN_TIMEOUT_S)
        listener.close()
        shutil.rmtree(folder, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
