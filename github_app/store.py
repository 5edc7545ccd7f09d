"""The store's plumbing: the SQLite file, its connections, transactions and schema.

Every other part of the store (the queue in `jobqueue`, the build records in
`records`, the redelivery sweep's rows in `redeliveries`) reaches the database
only through `Store._connection()` and `Store._write()`, and writes plain SQL
with `?` parameters and no SQLite-only syntax beyond `ON CONFLICT ... DO
NOTHING/UPDATE` (which PostgreSQL shares).
So a second backend (PostgreSQL for DATABASE_URL) replaces this module's
connection and migration code, not the queries.

Disk I/O only: no network, no Flask.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import SlipwayError

DATABASE_NAME = "slipway.sqlite3"
# Long enough to ride out another process's write transaction, short enough
# that /healthz answers before a load balancer gives up.
BUSY_TIMEOUT_MS = 5000


class StoreError(SlipwayError):
    """Base of the job store's errors."""


class StoreUnavailable(StoreError):
    """The store's file cannot be opened, read or written."""


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

# v2: every index is one more page written per enqueue, on the webhook's hot
# path; claim() finds the few running jobs through jobs_by_state alone.
_SCHEMA_V2 = "DROP INDEX IF EXISTS jobs_by_repository_state"

# v3: the columns say what they hold. `summary` held the FailureKind (what
# failed) and `failure_kind` the cause (repository or infrastructure).
# Two steps through a spare name, since the new `failure_kind` is the old `summary`.
_SCHEMA_V3 = """
ALTER TABLE builds RENAME COLUMN failure_kind TO failure_cause;
ALTER TABLE builds RENAME COLUMN summary TO failure_kind
"""

# v4: pull requests before the merge. A pre-merge build records where it staged its
# image; a merge build whether it was published from that stage and which floating
# tags it moved; `note` holds what a pre-merge report needs besides (the commit that
# superseded a cancelled build, the owner of a fork that was not built).
_SCHEMA_V4 = """
ALTER TABLE builds ADD COLUMN staged_reference TEXT;
ALTER TABLE builds ADD COLUMN published_from TEXT;
ALTER TABLE builds ADD COLUMN floating_tags TEXT;
ALTER TABLE builds ADD COLUMN version_reason TEXT;
ALTER TABLE builds ADD COLUMN note TEXT;
CREATE INDEX IF NOT EXISTS builds_by_pull_request ON builds (repository, pr_number)
"""

# v5: the redelivery sweep (redeliveries.py): the redeliveries asked for, one row per
# guid, and the lease row that lets one sweep run at a time. GitHub's delivery ids are int64.
_SCHEMA_V5 = """
CREATE TABLE IF NOT EXISTS redeliveries (
    guid         TEXT    PRIMARY KEY,
    delivery_id  BIGINT  NOT NULL,
    after_id     BIGINT  NOT NULL,
    event        TEXT    NOT NULL,
    action       TEXT,
    requested_at REAL    NOT NULL,
    times        INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sweeps (
    name        TEXT PRIMARY KEY,
    holder      TEXT,
    lease_until REAL,
    started_at  REAL,
    finished_at REAL,
    summary     TEXT
);
INSERT INTO sweeps (name) VALUES ('redeliver') ON CONFLICT (name) DO NOTHING
"""

# v6: what a `type: ami` build registered (the AMI, its region, snapshot and phase
# times), as JSON: the check run is rebuilt from the record alone.
_SCHEMA_V6 = "ALTER TABLE builds ADD COLUMN artifact TEXT"

# v7: whether the build's repository is private (repository.private of its delivery):
# its pages, log and badge are shown only to people who may read the repository.
# NULL (builds recorded before v7) counts as private.
_SCHEMA_V7 = "ALTER TABLE builds ADD COLUMN private INTEGER"

# Migrations from version N to N+1, run in order inside one write transaction.
MIGRATIONS: dict[int, str] = {
    0: _SCHEMA_V1, 1: _SCHEMA_V2, 2: _SCHEMA_V3, 3: _SCHEMA_V4, 4: _SCHEMA_V5, 5: _SCHEMA_V6,
    6: _SCHEMA_V7,
}
SCHEMA_VERSION = max(MIGRATIONS) + 1


def _enable_wal(connection: sqlite3.Connection) -> None:
    """Switch to WAL, waiting as long as busy_timeout for a process that opens it too.

    Two processes opening a new store at once (serve and worker started together): the
    switch needs the file to itself, and SQLite answers "database is locked" at once
    instead of calling the busy handler.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class Store:
    """One SQLite file shared by threads and processes.

    Each thread gets its own connection (sqlite3 connections must not be used
    by two threads at once); WAL mode lets readers go on while one writer
    commits, and ``busy_timeout`` makes a writer wait for another instead of
    failing at once. Timestamps are unix seconds from ``clock``, which tests replace.
    """

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.clock = clock
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
            _enable_wal(connection)
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

    def __enter__(self):
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
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
                        connection.execute(statement)
                version += 1
                connection.execute(f"PRAGMA user_version = {version}")

    def schema_version(self) -> int:
        return self._connection().execute("PRAGMA user_version").fetchone()[0]

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
