"""The store's side of the redelivery sweep (mixin of `JobStore`).

- which delivery ids (guids) the store already holds: those reached Slipway;
- `redeliveries`: one row per guid Slipway asked GitHub to deliver again, so no guid is
  asked twice while a request is pending, whichever process sweeps;
- `sweeps`: one lease row, so one sweep runs at a time across processes and nodes, and
  the last sweep's summary (for `doctor` and /metrics).

Plain SQL with `?` parameters, no SQLite-only syntax, so that a PostgreSQL backend can run
it as it is; the tables are store.py's migration v5. Reaches the database only through
`_connection()` and `clock()`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from github_app.redelivery import Requested

SWEEP_NAME = "redeliver"
# GitHub keeps three days of deliveries: a request older than that can never matter again.
KEEP_REQUESTS_SECONDS = 3 * 24 * 3600
# SQLite's smallest limit on bound parameters is 999.
_CHUNK = 500

@dataclass(frozen=True)
class SweepRecord:
    """The sweep lease row: who holds it, until when, and the last finished sweep."""

    holder: str | None
    lease_until: float | None
    started_at: float | None
    finished_at: float | None
    summary: dict[str, Any] | None


class Redeliveries:
    """What the sweep keeps in the store. Mixed into `JobStore`."""

    # -- what reached Slipway ----------------------------------------------------------------

    def deliveries_seen(self, guids: Iterable[str]) -> set[str]:
        """The guids among `guids` that the store holds as a job's delivery id."""
        return set(self._select_in("SELECT delivery_id FROM jobs WHERE delivery_id IN", guids))

    # -- requests ----------------------------------------------------------------------------

    def redelivery_requests(self, guids: Iterable[str]) -> dict[str, Requested]:
        """The earlier requests of these guids, by guid."""
        rows = self._select_in(
            "SELECT guid, delivery_id, after_id, requested_at, times FROM redeliveries"
            " WHERE guid IN", guids, whole_rows=True)
        return {row[0]: Requested(row[0], row[1], row[2], row[3], row[4]) for row in rows}

    def note_redelivery(self, request: Requested, *, event: str, action: str | None,
                        replacing: Requested | None) -> bool:
        """Record that `request` is about to be made; False when another sweep made it first.

        Compare and set: a first request inserts, a later one replaces exactly the request
        the caller read (`replacing`), so two sweeps can never both ask for one guid.
        """
        connection = self._connection()
        if replacing is None:
            cursor = connection.execute(
                "INSERT INTO redeliveries (guid, delivery_id, after_id, event, action,"
                " requested_at, times) VALUES (?, ?, ?, ?, ?, ?, 1)"
                " ON CONFLICT (guid) DO NOTHING",
                (request.guid, request.delivery_id, request.after_id, event, action,
                 request.requested_at))
        else:
            cursor = connection.execute(
                "UPDATE redeliveries SET delivery_id = ?, after_id = ?, requested_at = ?,"
                " times = times + 1 WHERE guid = ? AND requested_at = ? AND after_id = ?",
                (request.delivery_id, request.after_id, request.requested_at, request.guid,
                 replacing.requested_at, replacing.after_id))
        return cursor.rowcount == 1

    def unnote_redelivery(self, request: Requested) -> None:
        """GitHub did not take the request: let the next sweep ask again."""
        self._connection().execute(
            "UPDATE redeliveries SET requested_at = 0 WHERE guid = ? AND requested_at = ?",
            (request.guid, request.requested_at))

    def forget_redeliveries(self, *, before: float) -> int:
        """Drop requests older than GitHub's log reaches; return how many."""
        return self._connection().execute(
            "DELETE FROM redeliveries WHERE requested_at < ?",
            (before,)).rowcount

    # -- one sweep at a time -----------------------------------------------------------------

    def claim_sweep(self, holder: str, *, lease_seconds: float, due_before: float) -> bool:
        """Take the sweep lease when no live lease holds it and no sweep started after
        `due_before`; True when `holder` now holds it."""
        now = self.clock()
        cursor = self._connection().execute(
            "UPDATE sweeps SET holder = ?, lease_until = ?, started_at = ?"
            " WHERE name = ? AND (lease_until IS NULL OR lease_until < ?)"
            " AND (started_at IS NULL OR started_at <= ?)",
            (holder, now + lease_seconds, now, SWEEP_NAME, now, due_before))
        return cursor.rowcount == 1

    def renew_sweep(self, holder: str, *, lease_seconds: float) -> bool:
        """Extend the lease; False when `holder` no longer holds it (it lapsed, another took it)."""
        now = self.clock()
        cursor = self._connection().execute(
            "UPDATE sweeps SET lease_until = ? WHERE name = ? AND holder = ? AND lease_until >= ?",
            (now + lease_seconds, SWEEP_NAME, holder, now))
        return cursor.rowcount == 1

    def finish_sweep(self, holder: str, summary: dict[str, Any]) -> bool:
        """Release the lease and keep the summary; False when the lease was no longer ours."""
        cursor = self._connection().execute(
            "UPDATE sweeps SET lease_until = NULL, holder = NULL, finished_at = ?, summary = ?"
            " WHERE name = ? AND holder = ?",
            (self.clock(), json.dumps(summary), SWEEP_NAME, holder))
        return cursor.rowcount == 1

    def last_sweep(self) -> SweepRecord:
        """The lease row: the sweep running now, if any, and the last one that finished."""
        row = self._connection().execute(
            "SELECT holder, lease_until, started_at, finished_at, summary FROM sweeps"
            " WHERE name = ?", (SWEEP_NAME,)).fetchone()
        if row is None:
            return SweepRecord(None, None, None, None, None)
        summary = json.loads(row[4]) if row[4] else None
        return SweepRecord(row[0], row[1], row[2], row[3], summary)

    # -- helpers -----------------------------------------------------------------------------

    def _select_in(self, query: str, values: Iterable[str], *, whole_rows: bool = False):
        values = list(dict.fromkeys(values))
        found = []
        for start in range(0, len(values), _CHUNK):
            chunk = values[start:start + _CHUNK]
            marks = ", ".join("?" for _ in chunk)
            rows = self._connection().execute(f"{query} ({marks})", chunk).fetchall()
            found += [tuple(row) if whole_rows else row[0] for row in rows]
        return found
