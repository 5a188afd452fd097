"""Every Prometheus metric of the service, in one place. Prefix bertserve_, units in names."""

from __future__ import annotations

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
            buckets=_LATENCY,
            registry=r,
        )
        self.inference_duration = Histogram(
            f"{p}inference_duration_seconds", "model time per batch", buckets=_LATENCY, registry=r
        )
        self.queue_depth = Gauge(f"{p}queue_depth", "sequences waiting", registry=r)
        self.queue_tokens = Gauge(f"{p}queue_tokens", "tokens waiting", registry=r)
        self.batch_size = Histogram(
            f"{p}batch_size", "sequences per batch", buckets=_SIZES, registry=r
        )
        self.batch_tokens = Histogram(
            f"{p}batch_tokens", "padded tokens per batch", buckets=_TOKENS, registry=r
        )
        self.batch_padding_ratio = Histogram(
            f"{p}batch_padding_ratio",
            "share of a batch's tokens that are padding",
            buckets=_RATIOS,
            registry=r,
        )
        self.tokens = Counter(f"{p}tokens_total", "input tokens processed", ["route"], registry=r)
        self.rejected = Counter(
            f"{p}rejected_total", "requests refused before compute", ["reason"], registry=r
        )
        self.ready = Gauge(f"{p}ready", "1 once the model is loaded, verified and warm", registry=r)
        self.model_info = Gauge(
            f"{p}model_info",
            "the model being served",
            ["model", "precision", "provider"],
            registry=r,
        )
