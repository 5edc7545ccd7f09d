"""Prometheus metrics of one Slipway process, and `GET /metrics`.

Each `Metrics` owns its own `CollectorRegistry`, so two apps in one process
(tests run many) never share or collide on a counter. The queue depth is not
kept in memory: it is read from the job store at every scrape, so it is right
even when another process (a separate worker) changes the queue."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest

from .runtime import current_runtime

log = logging.getLogger(__name__)

# Docker builds take seconds to tens of minutes; the default buckets stop at 10 s.
BUILD_DURATION_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)


class _QueueDepthCollector:
    """Reads the queue depth when Prometheus scrapes, not when a job moves."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def describe(self):
        # Without describe(), registering would call collect() (and the store) at once.
        return [GaugeMetricFamily("slipway_queue_depth", "Jobs waiting for a worker.")]

    def collect(self):
        source = self._metrics.queue_depth_source
        if source is None:
            return
        try:
            depth = source()
        except Exception:  # a scrape must still answer when the store does not
            log.warning("queue depth unavailable for /metrics", exc_info=True)
            return
        yield GaugeMetricFamily("slipway_queue_depth", "Jobs waiting for a worker.", value=depth)


class _LastSweepCollector:
    """The last redelivery sweep of any process, read from the store when Prometheus scrapes."""

    _FAILED = ("slipway_redeliver_failed_in_window",
               "Deliveries of events Slipway acts on that GitHub could not deliver, in the "
               "last sweep's window (REDELIVER_WINDOW), asked for again or received since.")
    _FINISHED = ("slipway_redeliver_last_sweep_timestamp_seconds",
                 "When the last sweep of the App's delivery log finished (unix seconds).")

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def describe(self):
        return [GaugeMetricFamily(*self._FAILED), GaugeMetricFamily(*self._FINISHED)]

    def collect(self):
        source = self._metrics.last_sweep_source
        if source is None:
            return
        try:
            record = source()
        except Exception:  # a scrape must still answer when the store does not
            log.warning("last redelivery sweep unavailable for /metrics", exc_info=True)
            return
        if record.finished_at is None or not record.summary:
            return
        yield GaugeMetricFamily(*self._FAILED, value=record.summary.get("failed", 0))
        yield GaugeMetricFamily(*self._FINISHED, value=record.finished_at)


class Metrics:
    """The counters, histogram and gauge that Slipway exports."""

    def __init__(self, queue_depth: Callable[[], int] | None = None):
        self.registry = CollectorRegistry()
        self.queue_depth_source = queue_depth
        # JobStore.last_sweep: the sweeps of every process share the store.
        self.last_sweep_source: Callable[[], Any] | None = None
        self.webhooks_received = Counter(
            "slipway_webhooks_received",
            "Webhook deliveries received, by event and what Slipway did with them.",
            ["event", "outcome"],
            registry=self.registry,
        )
        self.builds = Counter(
            "slipway_builds",
            "Finished builds, by conclusion (success, failure, error).",
            ["conclusion"],
            registry=self.registry,
        )
        self.build_duration = Histogram(
            "slipway_build_duration_seconds",
            "Time from the start of a build to its conclusion.",
            buckets=BUILD_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.github_api_calls = Counter(
            "slipway_github_api_calls",
            "Calls to the GitHub API, by HTTP status ('error' when no answer came).",
            ["status"],
            registry=self.registry,
        )
        self.redeliver_sweeps = Counter(
            "slipway_redeliver_sweeps",
            "Sweeps of the App's delivery log for deliveries Slipway missed (this process).",
            registry=self.registry,
        )
        self.redeliver_missed_deliveries = Counter(
            "slipway_redeliver_missed_deliveries",
            "Deliveries found failed in GitHub's log that Slipway never received (each once).",
            registry=self.registry,
        )
        self.redeliveries_asked = Counter(
            "slipway_redeliveries_asked",
            "Redeliveries GitHub accepted to make (POST .../attempts answered 202).",
            registry=self.registry,
        )
        self.redeliver_errors = Counter(
            "slipway_redeliver_errors",
            "Errors of the redelivery sweep, by stage (read, redeliver, store, sweep).",
            ["stage"],
            registry=self.registry,
        )
        self.pruned_items = Counter(
            "slipway_pruned",
            "Things pruning removed, by what (builds, logs, jobs, images, work_folders).",
            ["what"],
            registry=self.registry,
        )
        self.pruned_bytes = Counter(
            "slipway_pruned_bytes",
            "Bytes pruning freed, by what (logs, images).",
            ["what"],
            registry=self.registry,
        )
        self.reports_abandoned = Counter(
            "slipway_reports_abandoned",
            "Finished builds whose report GitHub never took, given up after REPORT_GIVE_UP.",
            registry=self.registry,
        )
        self.worker_threads_replaced = Counter(
            "slipway_worker_threads_replaced",
            "Worker threads that died and were started again.",
            registry=self.registry,
        )
        self.registry.register(_QueueDepthCollector(self))
        self.registry.register(_LastSweepCollector(self))
        self._webhook_children: dict[tuple[str, str], Any] = {}

    def bind_queue_depth(self, source: Callable[[], int]) -> None:
        """Read the queue depth from `source` (usually `JobStore.queue_depth`) at each scrape."""
        self.queue_depth_source = source

    def webhook_received(self, event: str, outcome: str) -> None:
        """Count one delivery: outcome is e.g. accepted, ignored, duplicate, rejected."""
        key = (event or "unknown", outcome)
        # On the webhook's hot path: `labels()` takes a lock and builds a key each time.
        child = self._webhook_children.get(key)
        if child is None:
            child = self._webhook_children[key] = self.webhooks_received.labels(*key)
        child.inc()

    def build_finished(self, conclusion: str, duration_seconds: float | None) -> None:
        """Count one finished build and observe how long it took."""
        self.builds.labels(conclusion=str(conclusion)).inc()
        if duration_seconds is not None:
            self.build_duration.observe(duration_seconds)

    def pruned(self, what: str, count: int, size: int = 0) -> None:
        """Count what one pruning pass removed (and the bytes it freed)."""
        self.pruned_items.labels(what=what).inc(count)
        if size:
            self.pruned_bytes.labels(what=what).inc(size)

    def github_api_call(self, status: int | str | None) -> None:
        """Count one GitHub API call by its HTTP status; None means no answer came."""
        self.github_api_calls.labels(status=str(status) if status is not None else "error").inc()

    def redeliver_swept(self) -> None:
        """Count one finished sweep of the delivery log."""
        self.redeliver_sweeps.inc()

    def redeliver_missed(self, count: int) -> None:
        """Count deliveries found failed for the first time."""
        self.redeliver_missed_deliveries.inc(count)

    def redelivery_asked(self) -> None:
        """Count one redelivery GitHub accepted."""
        self.redeliveries_asked.inc()

    def redeliver_error(self, stage: str, count: int = 1) -> None:
        """Count errors of the sweep at one stage (a fixed word, never a name from GitHub)."""
        self.redeliver_errors.labels(stage=stage).inc(count)

    def exposition(self) -> bytes:
        """The Prometheus text format of everything in this registry."""
        return generate_latest(self.registry)


bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics_endpoint() -> Response:
    runtime = current_runtime()
    if runtime.metrics is None:  # an app wired without metrics still answers the scrape
        runtime.metrics = Metrics()
    metrics: Metrics = runtime.metrics
    if metrics.queue_depth_source is None and runtime.store is not None:
        metrics.bind_queue_depth(runtime.store.queue_depth)
    if metrics.last_sweep_source is None and runtime.store is not None:
        metrics.last_sweep_source = runtime.store.last_sweep
    return Response(metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})
