"""Worker heartbeats, shared through the store: /healthz reads them from any process.

Each running `Worker` writes its name and the time every few seconds, whether
or not it is building; a web process that builds nothing (WORKER_THREADS=0)
learns from them that a separate worker is alive. A mixin of `JobStore`
(table `workers`, schema v4).
"""

from __future__ import annotations

# A worker that has not beaten for this long is presumed gone (DESIGN.md: 60 s).
WORKER_SILENCE_LIMIT = 60.0
# Rows of workers gone for a day are dropped: every process start adds one.
_FORGET_AFTER = 86400.0

class WorkerHeartbeats:
    """The store's record of which workers are alive."""

    def beat(self, worker: str) -> None:
        """Record that `worker` is alive now."""
        now = self.clock()
        with self._write() as connection:
            connection.execute(
                "INSERT INTO workers (name, heartbeat_at) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                (worker, now),
            )
            connection.execute("DELETE FROM workers WHERE heartbeat_at < ?",
                               (now - _FORGET_AFTER,))

    def last_heartbeat(self) -> float | None:
        """When any worker last showed it is alive (None: never)."""
        row = self._connection().execute("SELECT max(heartbeat_at) FROM workers").fetchone()
        return row[0] if row else None


def worker_problem(*, queued: int, last_heartbeat: float | None, now: float) -> str | None:
    """Why /healthz must answer 503 for the worker, or None when it need not."""
    if queued == 0:
        return None
    silent = None if last_heartbeat is None else now - last_heartbeat
    if silent is not None and silent <= WORKER_SILENCE_LIMIT:
        return None
    since = "ever" if silent is None else f"for {silent:.0f} s"
    return (f"{queued} job(s) wait and no worker has shown a heartbeat {since}: start "
            "`python -m github_app worker`, or give serve WORKER_THREADS above 0")
