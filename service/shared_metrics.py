"""Metrics of several worker processes as one: prometheus-client's multiprocess mode. The
supervisor gives every worker the same private PROMETHEUS_MULTIPROC_DIR (set before the worker
imports prometheus_client, which reads it at import); each worker's values live in files there,
and a scrape of any worker merges all of them. Without the variable (one process, the tests)
each app keeps its own registry."""

from __future__ import annotations

import glob
import os

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

ENV = "PROMETHEUS_MULTIPROC_DIR"


def shared_dir() -> str | None:
    return os.environ.get(ENV) or None


def latest(registry: CollectorRegistry) -> bytes:
    """The /metrics body: this process's registry, or every worker's files merged (counters
    and histograms summed, each gauge by its multiprocess_mode)."""
    folder = shared_dir()
    if folder is None:
        return generate_latest(registry)
    merged = CollectorRegistry()
    MultiProcessCollector(merged, path=folder)  # type: ignore[no-untyped-call]
    return generate_latest(merged)


def live_sum(name: str) -> float:
    """The sum over live workers of a `livesum` gauge (e.g. bertserve_workers: how many are
    warm), read from the shared files; 0 without them."""
    folder = shared_dir()
    if folder is None:
        return 0.0
    files = glob.glob(os.path.join(folder, "gauge_livesum_*.db"))
    total = 0.0
    for metric in MultiProcessCollector.merge(files, accumulate=False):  # type: ignore[no-untyped-call]
        if metric.name == name:
            total += sum(sample.value for sample in metric.samples)
    return total


def forget(pid: int, folder: str) -> None:
    """A dead worker's live gauges leave the merge (its counters stay: counts are not lost)."""
    mark_process_dead(pid, path=folder)  # type: ignore[no-untyped-call]
