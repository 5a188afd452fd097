"""Every Prometheus metric of the service, in one place. Prefix bertserve_, units in names.
What happens per model (queue, batches, tokens, refusals) carries a `model` label, bounded: a
request naming any other model is a 404 before it counts."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_TOKENS = (16, 64, 256, 1024, 4096, 16384, 65536)
_RATIOS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)


class Metrics:
    """One instance per app, each with its own registry, so tests can run many apps."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        p = "bertserve_"
        self.requests = Counter(
            f"{p}requests_total",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            f"{p}request_duration_seconds",
            "request latency",
            ["route"],
            buckets=_LATENCY,
            registry=r,
        )
        self.queue_duration = Histogram(
            f"{p}queue_duration_seconds",
            "time a sequence waited before its batch ran",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.inference_duration = Histogram(
            f"{p}inference_duration_seconds",
            "model time per batch",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        # multiprocess_mode: how workers' values merge (--workers; ignored in one process)
        self.queue_depth = Gauge(
            f"{p}queue_depth",
            "sequences waiting",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_tokens = Gauge(
            f"{p}queue_tokens",
            "tokens waiting",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.batch_size = Histogram(
            f"{p}batch_size", "sequences per batch", ["model"], buckets=_SIZES, registry=r
        )
        self.batch_tokens = Histogram(
            f"{p}batch_tokens", "padded tokens per batch", ["model"], buckets=_TOKENS, registry=r
        )
        self.batch_padding_ratio = Histogram(
            f"{p}batch_padding_ratio",
            "share of a batch's tokens that are padding",
            ["model"],
            buckets=_RATIOS,
            registry=r,
        )
        self.tokens = Counter(
            f"{p}tokens_total", "input tokens processed", ["route", "model"], registry=r
        )
        self.rejected = Counter(
            f"{p}rejected_total",
            "requests refused before compute",
            ["reason", "model"],
            registry=r,
        )
        self.ready = Gauge(
            f"{p}ready",
            "1 once every model is loaded, verified and warm (with --workers: in every worker)",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.workers = Gauge(
            f"{p}workers",
            "worker processes serving, each warm",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.model_info = Gauge(
            f"{p}model_info",
            "the models being served",
            ["model", "precision", "provider"],
            registry=r,
            multiprocess_mode="livemax",
        )

    def of(self, model: str) -> ModelMetrics:
        """The per-model series of one model, bound once (a label lookup per use would cost
        the event loop on every batch)."""
        return ModelMetrics(
            name=model,
            queue_duration=self.queue_duration.labels(model),
            inference_duration=self.inference_duration.labels(model),
            queue_depth=self.queue_depth.labels(model),
            queue_tokens=self.queue_tokens.labels(model),
            batch_size=self.batch_size.labels(model),
            batch_tokens=self.batch_tokens.labels(model),
            batch_padding_ratio=self.batch_padding_ratio.labels(model),
            parent=self,
        )


@dataclass(frozen=True)
class ModelMetrics:
    """One model's series: what its batcher and engine record."""

    name: str
    queue_duration: Histogram
    inference_duration: Histogram
    queue_depth: Gauge
    queue_tokens: Gauge
    batch_size: Histogram
    batch_tokens: Histogram
    batch_padding_ratio: Histogram
    parent: Metrics

    def rejected(self, reason: str) -> None:
        self.parent.rejected.labels(reason, self.name).inc()

    def tokens(self, route: str, count: int) -> None:
        self.parent.tokens.labels(route, self.name).inc(count)
