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

# v8: several machines. The database itself keeps one repository's jobs
# from running at once (a unique index over running jobs), build logs live in
# the store in chunks, and the App credentials /setup stores live in
# `settings` when the store is shared.
_SQLITE_V8 = """
CREATE UNIQUE INDEX jobs_one_running_per_repository ON jobs (repository) WHERE state = 'running';
CREATE TABLE build_log_chunks (
    build_id INTEGER NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    start    INTEGER NOT NULL,
    data     BLOB    NOT NULL,
    PRIMARY KEY (build_id, start)
);
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
)
"""

# v9: worker heartbeats (liveness.py), read by /healthz from any process; the
# attempts a stopping worker handed back (not crashes: jobqueue.hand_back); and
# when the report retry gave a build up (reports.py), so it stops retrying it.
# The same statements on both backends.
_SCHEMA_V9 = """
CREATE TABLE workers (
    name         TEXT PRIMARY KEY,
    heartbeat_at DOUBLE PRECISION NOT NULL
);
ALTER TABLE jobs ADD COLUMN handed_back INTEGER NOT NULL DEFAULT 0;
ALTER TABLE builds ADD COLUMN report_abandoned_at DOUBLE PRECISION
"""

# Migrations from version N to N+1, run in order inside one write transaction.
MIGRATIONS: dict[int, str] = {
    0: _SCHEMA_V1, 1: _SCHEMA_V2, 2: _SCHEMA_V3, 3: _SCHEMA_V4, 4: _SCHEMA_V5, 5: _SCHEMA_V6,
    6: _SCHEMA_V7, 7: _SQLITE_V8, 8: _SCHEMA_V9,
}
SCHEMA_VERSION = max(MIGRATIONS) + 1

# PostgreSQL: no store of this kind existed before schema version 8, so its
# first step creates the whole schema as SQLite's steps 0-7 leave it (with
# PostgreSQL's types: 64-bit ids, as GitHub's check run ids need, and double
# precision timestamps); the next steps are empty. A new version adds one step
# to both MIGRATIONS and POSTGRES_MIGRATIONS, with the same number.
_POSTGRES_V8 = """
CREATE TABLE jobs (
    id          BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    delivery_id TEXT             NOT NULL UNIQUE,
    repository  TEXT             NOT NULL,
    kind        TEXT             NOT NULL,
    request     TEXT             NOT NULL,
    state       TEXT             NOT NULL,
    attempts    INTEGER          NOT NULL DEFAULT 0,
    worker_id   TEXT,
    created_at  DOUBLE PRECISION NOT NULL,
    started_at  DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    lease_until DOUBLE PRECISION,
    error       TEXT
);
CREATE INDEX jobs_by_state ON jobs (state, id);
CREATE UNIQUE INDEX jobs_one_running_per_repository ON jobs (repository) WHERE state = 'running';

CREATE TABLE builds (
    id             BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    job_id         BIGINT           NOT NULL REFERENCES jobs (id),
    repository     TEXT             NOT NULL,
    service        TEXT             NOT NULL,
    pr_number      BIGINT,
    head_sha       TEXT             NOT NULL,
    merge_sha      TEXT             NOT NULL,
    check_run_name TEXT             NOT NULL,
    check_run_id   BIGINT,
    state          TEXT             NOT NULL,
    version        TEXT,
    version_source TEXT,
    reference      TEXT,
    digest         TEXT,
    image_id       TEXT,
    size           BIGINT,
    duration       DOUBLE PRECISION,
    failure_kind   TEXT,
    error          TEXT,
    failure_cause  TEXT,
    created_at     DOUBLE PRECISION NOT NULL,
    started_at     DOUBLE PRECISION,
    finished_at    DOUBLE PRECISION,
    reported       INTEGER          NOT NULL DEFAULT 0,
    staged_reference TEXT,
    published_from   TEXT,
    floating_tags    TEXT,
    version_reason   TEXT,
    note             TEXT,
    artifact         TEXT,
    private          INTEGER
);
CREATE INDEX builds_by_job ON builds (job_id);
CREATE INDEX builds_by_check_run ON builds (repository, check_run_id);
CREATE INDEX builds_by_head_sha ON builds (repository, head_sha);
CREATE INDEX builds_by_repository ON builds (repository, service, id);
CREATE INDEX builds_unreported ON builds (reported, state);
CREATE INDEX builds_by_pull_request ON builds (repository, pr_number);

CREATE TABLE health (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE build_log_chunks (
    build_id BIGINT NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    start    BIGINT NOT NULL,
    data     BYTEA  NOT NULL,
    PRIMARY KEY (build_id, start)
);

CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE redeliveries (
    guid         TEXT             PRIMARY KEY,
    delivery_id  BIGINT           NOT NULL,
    after_id     BIGINT           NOT NULL,
    event        TEXT             NOT NULL,
    action       TEXT,
    requested_at DOUBLE PRECISION NOT NULL,
    times        INTEGER          NOT NULL
);
CREATE TABLE sweeps (
    name        TEXT PRIMARY KEY,
    holder      TEXT,
    lease_until DOUBLE PRECISION,
    started_at  DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    summary     TEXT
);
INSERT INTO sweeps (name) VALUES ('redeliver') ON CONFLICT (name) DO NOTHING
"""

# The same versions on PostgreSQL (DATABASE_URL): one numbered step each.
POSTGRES_MIGRATIONS: dict[int, str] = {
    0: _POSTGRES_V8, 1: "", 2: "", 3: "", 4: "", 5: "", 6: "", 7: "", 8: _SCHEMA_V9,
}


def is_database_url(location: str | Path) -> bool:
    """Whether the store's location is a PostgreSQL URL (DATABASE_URL), not a file."""
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


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
    """The store's connections: one SQLite file, or a PostgreSQL database.

    SQLite (the default): each thread gets its own connection (sqlite3
    connections must not be used by two threads at once); WAL mode lets
    readers go on while one writer commits, and ``busy_timeout`` makes a
    writer wait for another instead of failing at once.

    PostgreSQL (``location`` is a ``postgresql://`` URL): a pool of
    connections shared by threads (`postgres.Database`), for several
    processes on several machines. ``dialect`` says which; the few queries
    that differ read it.

    Timestamps are unix seconds from ``clock``, which tests replace.
    """

    dialect = "sqlite"
    # What a unique key that is taken raises (the claim tries the next job).
    conflicts: tuple[type[Exception], ...] = (sqlite3.IntegrityError,)

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time):
        self.clock = clock
        self._database = None
        self._url: str | None = None
        if is_database_url(path):
            self._open_postgres(str(path))
            return
        self.path = Path(path)
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

    def _open_postgres(self, url: str) -> None:
        from . import postgres

        self.dialect = "postgresql"
        self.conflicts = (sqlite3.IntegrityError, postgres.IntegrityError)
        self._url = url
        self.path = postgres.redacted_url(url)  # what error messages name
        self._database = postgres.Database(url)
        self._database.migrate(POSTGRES_MIGRATIONS, SCHEMA_VERSION)

    def _connection(self):
        if self._url is not None:
            return self._postgres()
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._connect()
            self._local.connection = connection
        return connection

    def _postgres(self):
        if self._database is None:  # closed: reopen on next use, as SQLite does
            from . import postgres

            self._database = postgres.Database(self._url)
        return self._database

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
        """Close every thread's connection (or the pool); the store reopens on next use."""
        if self._url is not None:
            if self._database is not None:
                self._database.close()
                self._database = None
            return
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

        SQLite: BEGIN IMMEDIATE, not a deferred BEGIN: two claimers that both
        read first and then try to write would deadlock or read a stale queue.
        PostgreSQL: a READ COMMITTED transaction; what must not happen twice is
        kept out by row locks, unique keys and compare-and-set updates.
        """
        if self._url is not None:
            with self._postgres().transaction() as transaction:
                yield transaction
            return
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
        if self._url is not None:
            return self._postgres().schema_version()
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

    def get_setting(self, name: str) -> str | None:
        """A value the store keeps for every node (the App's credentials from /setup)."""
        row = self._connection().execute(
            "SELECT value FROM settings WHERE name = ?", (name,)
        ).fetchone()
        return row["value"] if row else None

    def put_setting_once(self, name: str, value: str) -> bool:
        """Keep ``value`` under ``name`` unless one is there; False when one was."""
        rows = self._connection().execute(
            "INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING"
            " RETURNING name",
            (name, value),
        ).fetchall()
        return bool(rows)
