"""The redelivery sweep: at start-up and every REDELIVER_INTERVAL, ask GitHub to send again
the deliveries Slipway missed (DESIGN.md, "Deliveries missed while Slipway was down").

One sweep: read the App's delivery log newest first, page by page, only as far back as
REDELIVER_WINDOW; decide with the pure rules of `redelivery.plan`; ask for each missed
delivery once. Every process of `serve` and `worker` runs `Sweeper.run`, but the store's
lease row lets one sweep run at a time and one per interval across all of them. `serve`
sweeps at start-up, once its port accepts connections; a `worker` joins the periodic sweeps
one interval after it starts.

GitHub calls go through `GitHubApp` (its retry rules, rate limits included); the store
through its `Redeliveries` methods.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable

from github_app import redelivery, webhooks
from github_app.errors import GitHubError
from github_app.redeliveries import KEEP_REQUESTS_SECONDS
from github_app.redelivery import Attempt, History, Requested, Summary

log = logging.getLogger(__name__)

# A sweep renews its lease at every page and request; one killed mid-sweep blocks the
# next for at most this long.
LEASE_SECONDS = 600.0
# Started within this long after another process's sweep, a process does not sweep at
# start-up: the log it would read is the one just read.
STARTUP_MARGIN = 60.0
# Statuses after which asking for more redeliveries now would only fail the same way.
_STOP_ASKING = (None, 401, 403, 429)


class Sweeper:
    """Runs the sweep of one process: at start-up, then whenever one is due."""

    def __init__(self, config, store, github, *, metrics=None,
                 clock: Callable[[], float] = time.time, name: str | None = None):
        self.config = config
        self.store = store
        self.github = github
        self.metrics = metrics
        self.clock = clock
        self.name = name or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"

    @property
    def interval(self) -> float:
        return float(self.config.redeliver_interval)

    @property
    def window(self) -> float:
        """Seconds back the sweep reads."""
        return self.config.redeliver_window * 3600.0

    def run(self, stop: threading.Event, *, at_start: bool = True) -> None:
        """Sweep at start-up, then whenever the last sweep of any process is an interval old.

        `at_start=False` (the `worker` command): no sweep at start-up and none within the
        first interval. Redeliveries go to the web processes, so the sweep at start-up is
        theirs; one asked for before any of them listens would fail.
        """
        if not self.config.redeliver_enabled:
            log.info("redelivery sweep off (REDELIVER_INTERVAL or REDELIVER_WINDOW is 0)")
            return
        started = self.clock()
        if at_start:
            self.sweep_if_due(due_before=started - min(self.interval, STARTUP_MARGIN))
        # Look often enough that the sweeps of all processes stay close to one interval apart.
        tick = min(max(self.interval / 4, 0.5), 30.0)
        while not stop.wait(tick):
            now = self.clock()
            if at_start or now - started >= self.interval:
                self.sweep_if_due(due_before=now - self.interval)

    def sweep_if_due(self, *, due_before: float) -> Summary | None:
        """Sweep if no sweep started after `due_before` and none runs; the summary, or None."""
        try:
            if not self.store.claim_sweep(self.name, lease_seconds=LEASE_SECONDS,
                                          due_before=due_before):
                return None
        except Exception:  # the store is unavailable: /healthz says so; try at the next tick
            log.warning("redelivery sweep: the store cannot be read", exc_info=True)
            self._count_error("store")
            return None
        summary = Summary(started_at=self.clock(), window_hours=self.config.redeliver_window)
        try:
            self.sweep(summary)
        except Exception as exc:  # the timer thread must outlive any one sweep
            log.exception("redelivery sweep failed")
            summary.errors.append(f"{type(exc).__name__}: {exc}")
            self._count_error("sweep")
        finally:
            summary.finished_at = self.clock()
            try:
                self.store.finish_sweep(self.name, summary.to_json())
            except Exception:
                log.warning("redelivery sweep: the summary could not be stored", exc_info=True)
        return summary

    def sweep(self, summary: Summary) -> None:
        """One sweep, written into `summary`; call it holding the lease."""
        now = summary.started_at
        cutoff = now - self.window
        attempts = self._read_log(summary, cutoff)
        histories = redelivery.group_by_guid(attempts)
        failed = [h.guid for h in histories if h.failed]
        requested = self.store.redelivery_requests(failed)
        result = redelivery.plan(
            histories, cutoff=cutoff, now=now, seen=self.store.deliveries_seen(failed),
            requested=requested, acts_on=webhooks.acts_on)
        summary.failed, summary.received = len(result.failed), len(result.received)
        summary.pending = len(result.pending)
        missed = sum(1 for h in result.ask if h.guid not in requested)
        if self.metrics is not None and missed:
            self.metrics.redeliver_missed(missed)
        for history in result.ask:
            if not self._ask(history, requested.get(history.guid), summary):
                break
        self.store.forget_redeliveries(before=now - KEEP_REQUESTS_SECONDS)
        log.info("redelivery sweep: %s", summary.describe(),
                 extra={"sweep": {"pages": summary.pages, "read": summary.read,
                                  "failed": summary.failed, "asked": summary.asked,
                                  "pending": summary.pending, "received": summary.received}})
        if self.metrics is not None:
            self.metrics.redeliver_swept()

    def _read_log(self, summary: Summary, cutoff: float) -> list[Attempt]:
        """The attempts of the window, page by page, newest first; stops at the window's end."""
        attempts: list[Attempt] = []
        cursor = None
        while True:
            try:
                items, cursor = self.github.hook_deliveries(
                    per_page=redelivery.PAGE_SIZE, cursor=cursor)
            except GitHubError as exc:
                # Deciding on the pages read is safe: newer attempts come first, so a
                # history is cut only where its older attempts would be.
                summary.errors.append(str(exc))
                log.warning("redelivery sweep: the delivery log cannot be read: %s", exc)
                self._count_error("read")
                break
            page, problems = redelivery.parse_page(items)
            summary.pages += 1
            summary.read += len(page)
            attempts += page
            if problems:
                log.warning("redelivery sweep: %d item(s) of the delivery log skipped: %s",
                            len(problems), problems[0])
                self._count_error("read", len(problems))
            if cursor is None or not page or redelivery.reaches_back_to(page, cutoff):
                break
            if not self.store.renew_sweep(self.name, lease_seconds=LEASE_SECONDS):
                summary.errors.append("the sweep's lease lapsed while reading the log")
                break
        return attempts

    def _ask(self, history: History, earlier: Requested | None, summary: Summary) -> bool:
        """Ask GitHub to deliver `history` again; False when asking more now is pointless."""
        newest = history.newest
        request = Requested(history.guid, delivery_id=newest.id, after_id=newest.id,
                            requested_at=self.clock(),
                            times=(earlier.times + 1) if earlier else 1)
        if not self.store.renew_sweep(self.name, lease_seconds=LEASE_SECONDS):
            summary.errors.append("the sweep's lease lapsed before asking for redeliveries")
            return False
        if not self.store.note_redelivery(request, event=newest.event, action=newest.action,
                                          replacing=earlier):
            summary.pending += 1  # another sweep asked for it since this one read the store
            return True
        first = history.attempts[-1]
        try:
            self.github.redeliver(newest.id)
        except GitHubError as exc:
            self.store.unnote_redelivery(request)
            summary.errors.append(str(exc))
            log.warning("redelivery sweep: GitHub did not take the redelivery of %s %s: %s",
                        newest.event, newest.action, exc, extra={"delivery_id": history.guid})
            self._count_error("redeliver")
            return exc.status not in _STOP_ASKING
        summary.asked.append(history.guid)
        log.info("asked GitHub to redeliver %s %s (repository id %s), first attempted %s "
                 "(%s), %d attempt(s) failed", newest.event, newest.action,
                 newest.repository_id, _iso(first.delivered_at), first.status or
                 first.status_code, len(history.attempts), extra={"delivery_id": history.guid})
        if self.metrics is not None:
            self.metrics.redelivery_asked()
        return True

    def _count_error(self, stage: str, n: int = 1) -> None:
        if self.metrics is not None:
            self.metrics.redeliver_error(stage, n)


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
