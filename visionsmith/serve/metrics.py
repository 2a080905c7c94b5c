"""Prometheus metrics of one app: requests by status (499: the client went away before its answer),
latency, batch sizes, queue depth, request-body bytes in flight, connections closed by a limit.

Each app gets its own ``CollectorRegistry`` (not prometheus_client's global one), so several apps
in one process (tests, the benchmark) count separately.  ``GET /metrics`` serves ``render(accept)``.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

# Seconds; from sub-millisecond (tiny model, warm) to seconds (big batch on a busy CPU).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The counters and histograms; label ``handler`` is a route template, never a raw URL, so a
    scan of random paths cannot blow up the number of series."""

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("visionsmith_requests", "HTTP requests by handler, method and status code",
                                ["handler", "method", "status"], registry=r)
        self.latency = Histogram("visionsmith_request_latency_seconds", "Request latency (whole request) by handler",
                                 ["handler"], buckets=LATENCY_BUCKETS, registry=r)
        self.images = Counter("visionsmith_images", "Images answered, by model", ["model"], registry=r)
        self.batch_size = Histogram("visionsmith_batch_size", "Images per model call (dynamic batching)",
                                    ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.inference_seconds = Histogram("visionsmith_inference_seconds", "Time of one batched model call",
                                           ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("visionsmith_queue_depth", "Images waiting for the model", ["model"], registry=r)
        # The app sets these to read its in-flight budget (``uploads.InflightBytes``) when scraped.
        self.inflight_bytes = Gauge("visionsmith_inflight_bytes",
                                    "Bytes of request bodies held now (received or reserved, until answered)",
                                    registry=r)
        self.inflight_limit = Gauge("visionsmith_inflight_limit_bytes",
                                    "Limit on request-body bytes in flight (--max-inflight-mb; 0: none)", registry=r)
        self.connections_closed = Counter(
            "visionsmith_connections_closed", "Connections the server closed before a request reached the app: "
            "header_timeout, idle_timeout (sent nothing), body_timeout (body still arriving after an early "
            "answer), head_too_large", ["reason"], registry=r)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """(body, content type) in the format the scraper's Accept header asks for: Prometheus
        text 0.0.4 by default (what every Prometheus understands), 1.0.0 or OpenMetrics on request."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type
