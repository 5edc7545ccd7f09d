"""The queue of jobs: enqueue, dedupe, claim, leases, heartbeat, requeue.

A webhook delivery that should build becomes a *job* (the request). The web
process enqueues, workers claim; both may run as threads of one process or as
separate processes on the same store.

Rules this module keeps:

- one job per ``X-GitHub-Delivery`` id: a UNIQUE column decides, never a
  check-then-insert;
- jobs of one repository run one at a time, so two merges close together never
  resolve the same ``semver:*`` bump to the same version;
- a claimed job holds a lease; a job whose worker died goes back to the queue
  (``requeue_interrupted``, by any node) until it has been tried
  ``max_attempts`` times;
- each claim is an attempt (``Job.attempts`` after the claim, its `Fence`):
  heartbeats and the completion of an attempt whose lease lapsed are refused.

One repository never has two running jobs: the claim looks for none, and a
unique index over running jobs (schema v4) refuses a second one even when two
nodes claim at the same moment on PostgreSQL.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from .fencing import FENCE_HOLDS, Fence
from .records import BuildState
from .store import StoreUnavailable
from .webhooks import REFRESH, BuildKind

DEFAULT_LEASE_SECONDS = 60.0
# A crash that has nothing to do with the job (a host reboot, an OOM kill of
# Slipway, a deploy by SIGKILL) must not cost a merge: the chaos soak lost
# merges with 3. The bound is for a job that kills its own worker every time;
# each try waits out a lease, so 10 tries still end such a job in minutes.
DEFAULT_MAX_ATTEMPTS = 10


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


# One vocabulary for what a delivery asks: merge, rerun_check_run, rerun_check_suite.
JobKind = BuildKind


@dataclass(frozen=True)
class EnqueueResult:
    job_id: int
    created: bool  # False: this delivery id was seen before and job_id is its job


@dataclass(frozen=True)
class Job:
    id: int
    delivery_id: str
    repository: str
    kind: JobKind
    request: dict[str, Any]
    state: JobState
    attempts: int
    worker_id: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    lease_until: float | None
    error: str | None
    handed_back: int = 0  # attempts a stopping worker handed back (not crashes)


class JobQueue:
    """The queue's operations; mixed into `JobStore`, which gives the connection.

    Needs ``_connection()``, ``_write()``, ``clock``, ``path``, ``lease_seconds``
    and ``max_attempts`` from the class it is mixed into.
    """

    lease_seconds: float = DEFAULT_LEASE_SECONDS
    max_attempts: int = DEFAULT_MAX_ATTEMPTS

    def enqueue(
        self, delivery_id: str, *, repository: str, kind: str, request: dict[str, Any]
    ) -> EnqueueResult:
        """Queue a job for this delivery, or return the job it already has.

        One INSERT decides under the UNIQUE delivery_id: a redelivery racing
        the first delivery cannot create a second job.
        """
        row = (
            delivery_id,
            repository,
            JobKind(kind).value,
            orjson.dumps(request).decode(),
            JobState.QUEUED.value,
            self.clock(),
        )
        try:
            connection = self._connection()
            # fetchall(): SQLite keeps the statement (and its write) open until
            # every RETURNING row is read.
            created = connection.execute(
                "INSERT INTO jobs (delivery_id, repository, kind, request, state, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (delivery_id) DO NOTHING RETURNING id",
                row,
            ).fetchall()
            if created:
                return EnqueueResult(job_id=created[0]["id"], created=True)
            existing = connection.execute(
                "SELECT id FROM jobs WHERE delivery_id = ?", (delivery_id,)
            ).fetchone()
        except sqlite3.OperationalError as exc:
            # The handler answers 503 and GitHub shows the delivery as failed,
            # so it can be redelivered once the disk is back.
            raise StoreUnavailable(f"Cannot queue the job in {self.path}: {exc}") from exc
        return EnqueueResult(job_id=existing["id"], created=False)

    def get_job(self, job_id: int) -> Job | None:
        row = self._connection().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def get_job_by_delivery(self, delivery_id: str) -> Job | None:
        row = (
            self._connection()
            .execute("SELECT * FROM jobs WHERE delivery_id = ?", (delivery_id,))
            .fetchone()
        )
        return _job(row) if row else None

    def claim(self, worker_id: str) -> Job | None:
        """Take the oldest queued job whose repository has no running job.

        On PostgreSQL the candidate row is locked (SKIP LOCKED: two nodes
        take two different jobs), and the update only takes a job still
        queued; a job whose repository another node started meanwhile hits
        the unique index of running jobs, and the next candidate is tried.
        """
        skip_locked = " FOR UPDATE SKIP LOCKED" if self.dialect == "postgresql" else ""
        for _ in range(10):
            now = self.clock()
            try:
                with self._write() as connection:
                    row = connection.execute(
                        "SELECT id FROM jobs AS queued WHERE state = ? AND NOT EXISTS ("
                        "  SELECT 1 FROM jobs AS running"
                        "  WHERE running.repository = queued.repository AND running.state = ?)"
                        " ORDER BY id LIMIT 1" + skip_locked,
                        (JobState.QUEUED.value, JobState.RUNNING.value),
                    ).fetchone()
                    if row is None:
                        return None
                    claimed = connection.execute(
                        "UPDATE jobs SET state = ?, worker_id = ?, started_at = ?,"
                        " lease_until = ?, attempts = attempts + 1, finished_at = NULL,"
                        " error = NULL WHERE id = ? AND state = ? RETURNING *",
                        (JobState.RUNNING.value, worker_id, now, now + self.lease_seconds,
                         row["id"], JobState.QUEUED.value),
                    ).fetchall()
            except self.conflicts:
                continue  # another node started a job of this repository first
            if claimed:
                return _job(claimed[0])
        return None

    def heartbeat(self, job_id: int, *, worker_id: str | None = None,
                  attempt: int | None = None) -> bool:
        """Extend a running job's lease; False when the job is no longer this worker's.

        With ``attempt`` (the claim's `Fence`), a lease that has lapsed is not
        renewed: another node may have claimed the job, or may at any moment.
        """
        now = self.clock()
        query = "UPDATE jobs SET lease_until = ? WHERE id = ? AND state = ?"
        params: list[Any] = [now + self.lease_seconds, job_id, JobState.RUNNING.value]
        if worker_id is not None:
            query += " AND worker_id = ?"
            params.append(worker_id)
        if attempt is not None:
            query += " AND attempts = ? AND lease_until >= ?"
            params += [attempt, now]
        return self._connection().execute(query, params).rowcount == 1

    def holds(self, fence: Fence) -> bool:
        """Whether this claim still holds its job (running, same attempt, lease not lapsed)."""
        row = self._connection().execute(
            "SELECT 1 AS held WHERE " + FENCE_HOLDS, (fence.job_id, fence.attempt, self.clock())
        ).fetchone()
        return row is not None

    def finish(
        self,
        job_id: int,
        state: JobState | str,
        error: str | None = None,
        *,
        worker_id: str | None = None,
        attempt: int | None = None,
    ) -> bool:
        """Mark a job finished (SUCCEEDED or FAILED) or back in the queue (QUEUED).

        With ``worker_id``, only while that worker still holds the job: a
        worker whose lease ran out must not overwrite the next one's result.
        With ``attempt`` too, only while that claim's lease has not lapsed.
        Returns whether the job was updated.
        """
        state = JobState(state)
        if state is JobState.RUNNING:
            raise ValueError("finish() ends a job; claim() is what starts one")
        finished_at = None if state is JobState.QUEUED else self.clock()
        query = (
            "UPDATE jobs SET state = ?, error = ?, finished_at = ?, lease_until = NULL,"
            " worker_id = CASE WHEN ? THEN NULL ELSE worker_id END WHERE id = ?"
        )
        params: list[Any] = [state.value, error, finished_at, state is JobState.QUEUED, job_id]
        if worker_id is not None:
            query += " AND worker_id = ? AND state = ?"
            params += [worker_id, JobState.RUNNING.value]
        if attempt is not None:
            query += " AND attempts = ? AND state = ? AND lease_until >= ?"
            params += [attempt, JobState.RUNNING.value, self.clock()]
        return self._connection().execute(query, params).rowcount == 1

    def requeue_interrupted(self, *, now: float | None = None) -> list[int]:
        """Put running jobs whose lease ran out back in the queue; return their ids.

        Leases decide, never who is asking: a process that starts does not know
        whether a running job is its previous life's or a live worker's, so it
        takes only jobs whose worker stopped renewing the lease (LEASE_SECONDS).
        A job already tried ``max_attempts`` times fails instead, and its
        unfinished builds end ERRORED and unreported, so the report retry
        completes their check runs.
        """
        now = self.clock() if now is None else now
        with self._write() as connection:
            query = ("SELECT id, attempts, handed_back FROM jobs WHERE state = ?"
                     " AND (lease_until IS NULL OR lease_until < ?)")
            params: list[Any] = [JobState.RUNNING.value, now]
            if self.dialect == "postgresql":
                # Nodes sweep at the same time: each takes the rows no other holds.
                query += " ORDER BY id FOR UPDATE SKIP LOCKED"
            else:
                query += " ORDER BY id"
            requeued = []
            for row in connection.execute(query, params).fetchall():
                # Attempts handed back by a stopping worker (SIGTERM) were not crashes.
                if row["attempts"] - row["handed_back"] < self.max_attempts:
                    # Only the attempt that was seen lapsing: never a new claim.
                    connection.execute(
                        "UPDATE jobs SET state = ?, worker_id = NULL, lease_until = NULL"
                        " WHERE id = ? AND state = ? AND attempts = ?",
                        (JobState.QUEUED.value, row["id"], JobState.RUNNING.value,
                         row["attempts"]),
                    )
                    requeued.append(row["id"])
                else:
                    self._give_up(connection, row["id"], row["attempts"], now,
                                  interrupted=row["attempts"] - row["handed_back"])
        return requeued

    def hand_back(self, job_id: int, *, worker_id: str) -> bool:
        """Put a job this worker holds back in the queue at once, not counted as a crash.

        For a worker that stops (SIGTERM) before the job finished: the next
        worker claims it without waiting for the lease to lapse. The attempt
        number goes on (it fences the old claim's writes); `handed_back` keeps
        the count of interrupted attempts honest."""
        return self._connection().execute(
            "UPDATE jobs SET state = ?, worker_id = NULL, lease_until = NULL,"
            " handed_back = handed_back + 1"
            " WHERE id = ? AND worker_id = ? AND state = ?",
            (JobState.QUEUED.value, job_id, worker_id, JobState.RUNNING.value),
        ).rowcount == 1

    def _give_up(self, connection, job_id: int, attempts: int, now: float, *,
                 interrupted: int | None = None):
        count = attempts if interrupted is None else interrupted
        error = (
            f"The job was interrupted {count} times (the worker stopped before it finished)"
            " and will not be tried again; use Re-run on the check run to build again"
        )
        connection.execute(
            "UPDATE jobs SET state = ?, error = ?, finished_at = ?, lease_until = NULL"
            " WHERE id = ? AND state = ? AND attempts = ?",
            (JobState.FAILED.value, error, now, job_id, JobState.RUNNING.value, attempts),
        )
        connection.execute(
            "UPDATE builds SET state = ?, error = ?, failure_cause = 'infrastructure',"
            " finished_at = ?, reported = 0"
            " WHERE job_id = ? AND state IN (?, ?)",
            (
                BuildState.ERRORED.value,
                error,
                now,
                job_id,
                BuildState.QUEUED.value,
                BuildState.RUNNING.value,
            ),
        )

    def queue_depth(self) -> int:
        """How many jobs wait to be claimed."""
        return (
            self._connection()
            .execute("SELECT count(*) FROM jobs WHERE state = ?", (JobState.QUEUED.value,))
            .fetchone()[0]
        )

    def newer_head(self, repository: str, pr_number: int, after_job_id: int,
                   head_sha: str) -> str | None:
        """The head of a later job of the same pull request, when it is another commit.

        A newer push supersedes the build of an older head (the newest job wins)."""
        rows = self._connection().execute(
            "SELECT request FROM jobs WHERE repository = ? AND kind IN (?, ?) AND id > ?"
            " ORDER BY id DESC",
            (repository, JobKind.PRE_MERGE.value, JobKind.MERGE.value, after_job_id),
        )
        for row in rows:
            request = orjson.loads(row["request"])
            if request.get("action") == REFRESH:  # Slipway's own re-preview, not a push
                continue
            if request.get("pr_number") == pr_number and request.get("head_sha") != head_sha:
                return request.get("head_sha")
        return None

    def open_pull_requests(self, repository: str, *, window: int = 1000) -> list[dict]:
        """The latest pre-merge request of each pull request of `repository` not yet closed.

        Open means Slipway saw no merge or close of it among the last `window` jobs."""
        latest: dict[int, dict] = {}
        closed: set[int] = set()
        rows = self._connection().execute(
            "SELECT kind, request FROM jobs WHERE repository = ? ORDER BY id DESC LIMIT ?",
            (repository, window),
        )
        for row in rows:
            request = orjson.loads(row["request"])
            number = request.get("pr_number")
            if number is None:
                continue
            if row["kind"] in (JobKind.MERGE.value, JobKind.CLOSED.value):
                closed.add(number)
            elif row["kind"] == JobKind.PRE_MERGE.value and number not in latest:
                latest[number] = request
        return [request for number, request in sorted(latest.items()) if number not in closed]

    def job_counts(self) -> dict[JobState, int]:
        """Jobs per state, every state present (for /metrics)."""
        counts = dict.fromkeys(JobState, 0)
        for row in self._connection().execute(
            "SELECT state, count(*) AS n FROM jobs GROUP BY state"
        ):
            counts[JobState(row["state"])] = row["n"]
        return counts


def _job(row) -> Job:
    return Job(
        id=row["id"],
        delivery_id=row["delivery_id"],
        repository=row["repository"],
        kind=JobKind(row["kind"]),
        request=json.loads(row["request"]),
        state=JobState(row["state"]),
        attempts=row["attempts"],
        worker_id=row["worker_id"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        lease_until=row["lease_until"],
        error=row["error"],
        handed_back=row["handed_back"],
    )
