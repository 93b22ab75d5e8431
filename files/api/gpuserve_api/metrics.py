"""Gateway metrics (Prometheus). Engine metrics stay vLLM's own ``vllm:*``.

Each app gets its own registry (no module-level metric objects). With several uvicorn
workers, ``PROMETHEUS_MULTIPROC_DIR`` is set by the CLI and /metrics aggregates the
workers' files.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from .context import RequestInfo

_LAT_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.multiproc = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.requests = Counter(
            "gpuserve_gateway_requests",
            "Requests by route, model, API key name and status.",
            ["route", "model", "key", "status"],
            registry=r,
        )
        self.duration = Histogram(
            "gpuserve_gateway_request_duration_seconds",
            "Total request time (streams: until the last byte).",
            ["route", "model"],
            buckets=_LAT_BUCKETS,
            registry=r,
        )
        self.ttfb = Histogram(
            "gpuserve_gateway_time_to_first_byte_seconds",
            "Time to the first response body byte (streams: the first token chunk).",
            ["route", "model"],
            buckets=_LAT_BUCKETS,
            registry=r,
        )
        self.chunks = Counter(
            "gpuserve_gateway_stream_chunks",
            "SSE events relayed to clients.",
            ["route", "model"],
            registry=r,
        )
        self.tokens = Counter(
            "gpuserve_gateway_tokens",
            "Tokens from upstream `usage` (prompt|completion).",
            ["model", "kind"],
            registry=r,
        )
        self.in_flight = Gauge(
            "gpuserve_gateway_in_flight",
            "Requests being processed.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.upstream_errors = Counter(
            "gpuserve_gateway_upstream_errors",
            "Upstream failures by kind (unavailable|timeout|status_5xx|broken_stream).",
            ["model", "kind"],
            registry=r,
        )
        self.rejected = Counter(
            "gpuserve_gateway_rejected",
            "Requests refused by the gateway, by reason.",
            ["reason"],
            registry=r,
        )

    def observe(self, info: RequestInfo, start: float, end: float, first: float | None) -> None:
        """Count one finished request (HTTP or gRPC) from its ``RequestInfo``."""
        self.requests.labels(info.route, info.model, info.key, str(info.status)).inc()
        self.duration.labels(info.route, info.model).observe(end - start)
        if first is not None:
            self.ttfb.labels(info.route, info.model).observe(first - start)
        if info.chunks:
            self.chunks.labels(info.route, info.model).inc(info.chunks)
        if info.prompt_tokens:
            self.tokens.labels(info.model, "prompt").inc(info.prompt_tokens)
        if info.completion_tokens:
            self.tokens.labels(info.model, "completion").inc(info.completion_tokens)
        if info.upstream_error:
            self.upstream_errors.labels(info.model, info.upstream_error).inc()

    def render(self) -> bytes:
        if self.multiproc:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
