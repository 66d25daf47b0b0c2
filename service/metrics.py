"""Prometheus metrics (SPEC section 6), one ``Metrics`` per application.

Counters and histograms are updated where things happen (requests, ingest outcomes, append
batches, watchdog timeouts, stream clients). Positions and lag are read from the database when
``/metrics`` is scraped, so they are right even in a process that does not run the projector.

With ``serve --workers N`` every process writes its values to files in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode, set up by ``serve``), and a
scrape of any worker aggregates all of them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST


class _Incrementable(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Metrics:
    """Every metric jobtrail exports, registered in a registry of its own."""

    def __init__(self) -> None:
        # Each request counts itself twice; ``labels()`` validates, stringifies and locks on
        # every call, so the children are looked up once per label values and kept here.
        self._children: dict[tuple[str, str, str], _Incrementable] = {}
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "jobtrail_http_requests",
            "HTTP requests by route and status.",
            ["route", "code"],
            registry=r,
        )
        self.ingest = Counter(
            "jobtrail_ingest",
            "Ingest attempts by signature scheme and outcome.",
            ["scheme", "outcome"],
            registry=r,
        )
        self.append_seconds = Histogram(
            "jobtrail_append_seconds",
            "Duration of one group-commit append transaction.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.append_batch_size = Histogram(
            "jobtrail_append_batch_size",
            "Events committed by one append transaction.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
            registry=r,
        )
        self.projector_position = Gauge(
            "jobtrail_projector_position",
            "Position of the last event each projection applied.",
            ["projection"],
            registry=r,
            multiprocess_mode="max",
        )
        self.head_position = Gauge(
            "jobtrail_head_position",
            "Position of the last event in the log.",
            registry=r,
            multiprocess_mode="max",
        )
        self.lag_events = Gauge(
            "jobtrail_projector_lag_events",
            "Events in the log a projection has not applied.",
            ["projection"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.lag_seconds = Gauge(
            "jobtrail_projector_lag_seconds",
            "Age of the oldest event a projection has not applied.",
            ["projection"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.watchdog_timeouts = Counter(
            "jobtrail_watchdog_timeouts", "Jobs the watchdog timed out.", registry=r
        )
        self.sse_clients = Gauge(
            "jobtrail_sse_clients",
            "Connected live-stream clients.",
            registry=r,
            multiprocess_mode="livesum",
        )

    def count_request(self, route: str, code: int) -> None:
        key = ("requests", route, str(code))
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(route, key[2])
        child.inc()

    def count_ingest(self, scheme: str, outcome: str) -> None:
        key = ("ingest", scheme, outcome)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.ingest.labels(scheme, outcome)
        child.inc()

    def observe_batch(self, size: int, seconds: float) -> None:
        self.append_batch_size.observe(size)
        self.append_seconds.observe(seconds)

    def set_progress(self, progress: Iterable[dict[str, Any]]) -> None:
        """Positions and lag from ``projections.reads.projection_progress``."""
        for p in progress:
            self.projector_position.labels(p["name"]).set(p["position"])
            self.head_position.set(p["head_position"])
            self.lag_events.labels(p["name"]).set(p["lag_events"])
            self.lag_seconds.labels(p["name"]).set(p["lag_s"])

    def render(self) -> bytes:
        """The text exposition of this process, or of every worker in multiprocess mode."""
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
