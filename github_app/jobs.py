"""The durable job store: SQLite in DATA_DIR.

A webhook delivery that should build becomes a *job* (the request); a job
produces one *build* per service, each with its own check run and image.
The web process enqueues, workers claim; both may run as threads of one
process or as separate processes on the same file.

Rules this module keeps:

- one job per ``X-GitHub-Delivery`` id: a UNIQUE column decides, never a
  check-then-insert;
- jobs of one repository run one at a time, so two merges close together never
  resolve the same ``semver:*`` bump to the same version;
- a claimed job holds a lease; a job whose worker died goes back to the queue
  (``requeue_interrupted``) until it has been tried ``max_attempts`` times.

Timestamps are unix seconds (float, UTC) read from the store's clock, which
tests replace. Disk I/O only: no network, no Flask.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson

from .errors import SlipwayError
from .webhooks import BuildKind

SCHEMA_VERSION = 2
DATABASE_NAME = "slipway.sqlite3"
DEFAULT_LEASE_SECONDS = 300.0
DEFAULT_MAX_ATTEMPTS = 3
# Long enough to ride out another process's write transaction, short enough
# that /healthz answers before a load balancer gives up.
BUSY_TIMEOUT_MS = 5000


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


# One vocabulary for what a delivery asks: merge, rerun_check_run, rerun_check_suite.
JobKind = BuildKind


class BuildState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the repository's fault: version, Dockerfile, build step
    ERRORED = "errored"  # the infrastructure's fault: engine, registry, GitHub


FINISHED_BUILD_STATES = (BuildState.SUCCEEDED, BuildState.FAILED, BuildState.ERRORED)


class StoreError(SlipwayError):
    """Base of the job store's errors."""


class StoreUnavailable(StoreError):
    """The store's file cannot be opened, read or written."""


class UnknownBuild(StoreError, LookupError):
    """No build has this id."""


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


@dataclass(frozen=True)
class Build:
    id: int
    job_id: int
    repository: str
    service: str
    pr_number: int | None
    head_sha: str
    merge_sha: str
    check_run_name: str
    state: BuildState
    created_at: float
    check_run_id: int | None = None
    version: str | None = None
    version_source: str | None = None
    reference: str | None = None
    digest: str | None = None
    image_id: str | None = None
    size: int | None = None
    duration: float | None = None
    summary: str | None = None
    error: str | None = None
    failure_kind: str | None = None  # "repository" | "infrastructure"
    started_at: float | None = None
    finished_at: float | None = None
    reported: bool = False  # GitHub accepted the final check run and status

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_BUILD_STATES


# Fields update_build may set, with the conversion from Python to a column value.
_BUILD_UPDATABLE: dict[str, Callable[[Any], Any]] = {
    "state": lambda v: BuildState(v).value,
    "check_run_id": int,
    "version": str,
    "version_source": str,
    "reference": str,
    "digest": str,
    "image_id": str,
    "size": int,
    "duration": float,
    "summary": str,
    "error": str,
    "failure_kind": str,
    "started_at": float,
    "finished_at": float,
    "reported": lambda v: int(bool(v)),
}
_FAILURE_KINDS = ("repository", "infrastructure")

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS jobs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id TEXT    NOT NULL UNIQUE,
    repository  TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    request     TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    worker_id   TEXT,
    created_at  REAL    NOT NULL,
    started_at  REAL,
    finished_at REAL,
    lease_until REAL,
    error       TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, id);
CREATE INDEX IF NOT EXISTS jobs_by_repository_state ON jobs (repository, state);

CREATE TABLE IF NOT EXISTS builds (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id         INTEGER NOT NULL REFERENCES jobs (id),
    repository     TEXT    NOT NULL,
    service        TEXT    NOT NULL,
    pr_number      INTEGER,
    head_sha       TEXT    NOT NULL,
    merge_sha      TEXT    NOT NULL,
    check_run_name TEXT    NOT NULL,
    check_run_id   INTEGER,
    state          TEXT    NOT NULL,
    version        TEXT,
    version_source TEXT,
    reference      TEXT,
    digest         TEXT,
    image_id       TEXT,
    size           INTEGER,
    duration       REAL,
    summary        TEXT,
    error          TEXT,
    failure_kind   TEXT,
    created_at     REAL    NOT NULL,
    started_at     REAL,
    finished_at    REAL,
    reported       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS builds_by_job ON builds (job_id);
CREATE INDEX IF NOT EXISTS builds_by_check_run ON builds (repository, check_run_id);
CREATE INDEX IF NOT EXISTS builds_by_head_sha ON builds (repository, head_sha);
CREATE INDEX IF NOT EXISTS builds_by_repository ON builds (repository, service, id);
CREATE INDEX IF NOT EXISTS builds_unreported ON builds (reported, state);

CREATE TABLE IF NOT EXISTS health (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at REAL NOT NULL
);
"""

# Migrations from version N to N+1, run in order inside one write transaction.
# v2: every index is one more page written per enqueue, on the webhook's hot
# path; claim() finds the few running jobs through jobs_by_state alone.
_SCHEMA_V2 = "DROP INDEX IF EXISTS jobs_by_repository_state"

_MIGRATIONS: dict[int, str] = {0: _SCHEMA_V1, 1: _SCHEMA_V2}


class JobStore:
    """Jobs and builds in one SQLite file, shared by threads and processes.

    Each thread gets its own connection (sqlite3 connections must not be used
    by two threads at once); WAL mode lets readers go on while one writer
    commits, and ``busy_timeout`` makes a writer wait for another instead of
    failing at once.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ):
        self.path = Path(path)
        self.clock = clock
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(
                f"Cannot create the directory of the job store {self.path}: {exc}"
            ) from exc
        self._migrate()

    @classmethod
    def from_data_dir(cls, data_dir: str | Path, **options: Any) -> JobStore:
        """The store in ``DATA_DIR/slipway.sqlite3``."""
        return cls(Path(data_dir) / DATABASE_NAME, **options)

    # -- connections ---------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._connect()
            self._local.connection = connection
        return connection

    def _connect(self) -> sqlite3.Connection:
        try:
            # isolation_level=None: no implicit transactions; writes that must
            # be atomic open their own with BEGIN IMMEDIATE.
            connection = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,  # only so close() may close every thread's
            )
            connection.row_factory = sqlite3.Row
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            connection.execute("PRAGMA journal_mode = WAL")
            # NORMAL in WAL mode: a committed job survives a crash or kill of
            # the process (the WAL is written before the 202); only a power cut
            # within the last checkpoint could lose one. FULL closes that gap
            # at one fsync per delivery, which capped the webhook handler at a
            # fraction of Probot's throughput (bench/webhook_load.py).
            connection.execute("PRAGMA synchronous = NORMAL")
            connection.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"Cannot open the job store {self.path}: {exc}") from exc
        with self._connections_lock:
            self._connections.append(connection)
        return connection

    def close(self) -> None:
        """Close every thread's connection; the store reopens on next use."""
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()
        self._local = threading.local()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the write lock up front.

        BEGIN IMMEDIATE, not a deferred BEGIN: two claimers that both read
        first and then try to write would deadlock or read a stale queue.
        """
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            if connection.in_transaction:  # SQLite may have rolled back already (disk full)
                connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def _migrate(self) -> None:
        try:
            self._apply_migrations()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"Cannot open the job store {self.path}: {exc}") from exc

    def _apply_migrations(self) -> None:
        with self._write() as connection:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreUnavailable(
                    f"The job store {self.path} has schema version {version}, newer than "
                    f"this Slipway's {SCHEMA_VERSION}: upgrade Slipway or use another DATA_DIR"
                )
            while version < SCHEMA_VERSION:
                for statement in _MIGRATIONS[version].split(";"):
                    if statement.strip():
                        connection.execute(statement)
                version += 1
                connection.execute(f"PRAGMA user_version = {version}")

    def schema_version(self) -> int:
        return self._connection().execute("PRAGMA user_version").fetchone()[0]

    # -- jobs ----------------------------------------------------------------

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
            cursor = connection.execute(
                "INSERT INTO jobs (delivery_id, repository, kind, request, state, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (delivery_id) DO NOTHING",
                row,
            )
            if cursor.rowcount == 1:
                return EnqueueResult(job_id=cursor.lastrowid, created=True)
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
        """Take the oldest queued job whose repository has no running job."""
        now = self.clock()
        with self._write() as connection:
            row = connection.execute(
                "SELECT id FROM jobs AS queued WHERE state = ? AND NOT EXISTS ("
                "  SELECT 1 FROM jobs AS running"
                "  WHERE running.repository = queued.repository AND running.state = ?)"
                " ORDER BY id LIMIT 1",
                (JobState.QUEUED.value, JobState.RUNNING.value),
            ).fetchone()
            if row is None:
                return None
            connection.execute(
                "UPDATE jobs SET state = ?, worker_id = ?, started_at = ?, lease_until = ?,"
                " attempts = attempts + 1, finished_at = NULL, error = NULL WHERE id = ?",
                (JobState.RUNNING.value, worker_id, now, now + self.lease_seconds, row["id"]),
            )
            claimed = connection.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone()
        return _job(claimed)

    def heartbeat(self, job_id: int, *, worker_id: str | None = None) -> bool:
        """Extend a running job's lease; False when the job is no longer this worker's."""
        query = "UPDATE jobs SET lease_until = ? WHERE id = ? AND state = ?"
        params: list[Any] = [self.clock() + self.lease_seconds, job_id, JobState.RUNNING.value]
        if worker_id is not None:
            query += " AND worker_id = ?"
            params.append(worker_id)
        return self._connection().execute(query, params).rowcount == 1

    def finish(
        self,
        job_id: int,
        state: JobState | str,
        error: str | None = None,
        *,
        worker_id: str | None = None,
    ) -> bool:
        """Mark a job finished (SUCCEEDED or FAILED) or back in the queue (QUEUED).

        With ``worker_id``, only while that worker still holds the job: a
        worker whose lease ran out must not overwrite the next one's result.
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
        return self._connection().execute(query, params).rowcount == 1

    def requeue_interrupted(self, *, now: float | None = None, force: bool = False) -> list[int]:
        """Put running jobs whose worker died back in the queue; return their ids.

        A job is taken when its lease has run out, or, with ``force``, in any
        case: ``serve`` passes force at start-up because, being the only
        process, every running job it finds was left by its previous life.
        A job already tried ``max_attempts`` times fails instead, and its
        unfinished builds end ERRORED and unreported, so the report retry
        completes their check runs.
        """
        now = self.clock() if now is None else now
        with self._write() as connection:
            query = "SELECT id, attempts FROM jobs WHERE state = ?"
            params: list[Any] = [JobState.RUNNING.value]
            if not force:
                query += " AND (lease_until IS NULL OR lease_until < ?)"
                params.append(now)
            requeued = []
            for row in connection.execute(query + " ORDER BY id", params).fetchall():
                if row["attempts"] < self.max_attempts:
                    connection.execute(
                        "UPDATE jobs SET state = ?, worker_id = NULL, lease_until = NULL"
                        " WHERE id = ?",
                        (JobState.QUEUED.value, row["id"]),
                    )
                    requeued.append(row["id"])
                else:
                    self._give_up(connection, row["id"], row["attempts"], now)
        return requeued

    def _give_up(self, connection: sqlite3.Connection, job_id: int, attempts: int, now: float):
        error = (
            f"The job was interrupted {attempts} times (the worker stopped before it finished)"
            " and will not be tried again; use Re-run on the check run to build again"
        )
        connection.execute(
            "UPDATE jobs SET state = ?, error = ?, finished_at = ?, lease_until = NULL"
            " WHERE id = ?",
            (JobState.FAILED.value, error, now, job_id),
        )
        connection.execute(
            "UPDATE builds SET state = ?, error = ?, failure_kind = 'infrastructure',"
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

    def job_counts(self) -> dict[JobState, int]:
        """Jobs per state, every state present (for /metrics)."""
        counts = dict.fromkeys(JobState, 0)
        for row in self._connection().execute(
            "SELECT state, count(*) AS n FROM jobs GROUP BY state"
        ):
            counts[JobState(row["state"])] = row["n"]
        return counts

    # -- builds --------------------------------------------------------------

    def create_build(
        self,
        job_id: int,
        *,
        repository: str,
        service: str,
        pr_number: int | None,
        head_sha: str,
        merge_sha: str,
        check_run_name: str,
    ) -> int:
        """Record a QUEUED build of one service for a job; return its id."""
        cursor = self._connection().execute(
            "INSERT INTO builds (job_id, repository, service, pr_number, head_sha, merge_sha,"
            " check_run_name, state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job_id,
                repository,
                service,
                pr_number,
                head_sha,
                merge_sha,
                check_run_name,
                BuildState.QUEUED.value,
                self.clock(),
            ),
        )
        return cursor.lastrowid

    def update_build(self, build_id: int, **fields: Any) -> Build:
        """Set some of a build's fields; return the build as stored.

        Fields: state, check_run_id, version, version_source, reference,
        digest, image_id, size, duration, summary, error, failure_kind,
        started_at, finished_at, reported. ``None`` clears a field.
        """
        unknown = sorted(set(fields) - set(_BUILD_UPDATABLE))
        if unknown:
            raise TypeError(f"update_build() got fields it cannot set: {', '.join(unknown)}")
        if fields.get("failure_kind") not in (None, *_FAILURE_KINDS):
            raise ValueError(f"failure_kind must be one of {_FAILURE_KINDS}")
        if "state" in fields and fields["state"] is None:
            raise ValueError("a build always has a state")
        if "reported" in fields and fields["reported"] is None:
            raise ValueError("reported is True or False")
        with self._write() as connection:
            if fields:
                assignments = ", ".join(f"{name} = ?" for name in fields)
                values = [
                    None if value is None else _BUILD_UPDATABLE[name](value)
                    for name, value in fields.items()
                ]
                connection.execute(
                    f"UPDATE builds SET {assignments} WHERE id = ?", (*values, build_id)
                )
            row = connection.execute("SELECT * FROM builds WHERE id = ?", (build_id,)).fetchone()
            if row is None:
                raise UnknownBuild(f"There is no build {build_id}")
        return _build(row)

    def get_build(self, build_id: int) -> Build | None:
        return self._one_build("SELECT * FROM builds WHERE id = ?", (build_id,))

    def builds_for_job(self, job_id: int) -> list[Build]:
        return self._builds("SELECT * FROM builds WHERE job_id = ? ORDER BY id", (job_id,))

    def find_build_by_check_run(self, repository: str, check_run_id: int) -> Build | None:
        """The build that reported to this check run (the latest, if several did)."""
        return self._one_build(
            "SELECT * FROM builds WHERE repository = ? AND check_run_id = ?"
            " ORDER BY id DESC LIMIT 1",
            (repository, check_run_id),
        )

    def find_builds_by_head_sha(self, repository: str, head_sha: str) -> list[Build]:
        """Builds of a pull request's head commit (for "Re-run all checks"), oldest first."""
        return self._builds(
            "SELECT * FROM builds WHERE repository = ? AND head_sha = ? ORDER BY id",
            (repository, head_sha),
        )

    def recent_builds(
        self,
        limit: int = 50,
        repository: str | None = None,
        state: BuildState | str | None = None,
    ) -> list[Build]:
        """The newest builds first, optionally of one repository and/or in one state."""
        conditions, params = [], []
        if repository is not None:
            conditions.append("repository = ?")
            params.append(repository)
        if state is not None:
            conditions.append("state = ?")
            params.append(BuildState(state).value)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        return self._builds(
            f"SELECT * FROM builds{where} ORDER BY id DESC LIMIT ?", (*params, int(limit))
        )

    def latest_finished_build(self, repository: str, service: str | None = None) -> Build | None:
        """The build that finished last (for the badge), of one service if given."""
        query = "SELECT * FROM builds WHERE repository = ? AND state IN (?, ?, ?)"
        params: list[Any] = [repository, *(s.value for s in FINISHED_BUILD_STATES)]
        if service is not None:
            query += " AND service = ?"
            params.append(service)
        return self._one_build(query + " ORDER BY finished_at DESC, id DESC LIMIT 1", params)

    def unreported_builds(self) -> list[Build]:
        """Finished builds whose final report did not reach GitHub, oldest first."""
        return self._builds(
            "SELECT * FROM builds WHERE reported = 0 AND state IN (?, ?, ?) ORDER BY id",
            tuple(s.value for s in FINISHED_BUILD_STATES),
        )

    def _one_build(self, query: str, params: Any) -> Build | None:
        row = self._connection().execute(query, params).fetchone()
        return _build(row) if row else None

    def _builds(self, query: str, params: Any) -> list[Build]:
        return [_build(row) for row in self._connection().execute(query, params)]

    # -- health --------------------------------------------------------------

    def healthcheck(self) -> None:
        """Read and write the store; raise StoreUnavailable saying why when it cannot."""
        try:
            connection = self._connection()
            connection.execute("SELECT count(*) FROM jobs").fetchone()
            connection.execute(
                "INSERT INTO health (id, checked_at) VALUES (1, ?)"
                " ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
                (self.clock(),),
            )
        except sqlite3.Error as exc:
            raise StoreUnavailable(
                f"The job store {self.path} cannot be read or written: {exc}"
            ) from exc


def _job(row: sqlite3.Row) -> Job:
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
    )


def _build(row: sqlite3.Row) -> Build:
    values = dict(row)
    values["state"] = BuildState(values["state"])
    values["reported"] = bool(values["reported"])
    return Build(**values)
