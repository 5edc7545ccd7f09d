"""The store's PostgreSQL backend (``DATABASE_URL=postgresql://...``), through psycopg 3.

The store's queries are written once, with ``?`` placeholders and SQL that
SQLite and PostgreSQL share; this module runs them on PostgreSQL:

- `Database.execute` runs one statement on a pooled connection in autocommit
  mode and returns its rows already read (`Result`), so the connection goes
  back to the pool at once;
- `Database.transaction` holds one connection for a block of statements
  (READ COMMITTED: the queue's claim relies on row locks and a unique index,
  not on a serial writer as on SQLite);
- rows read like ``sqlite3.Row``: by column name or by index, and ``dict(row)``.

When PostgreSQL restarts or a connection breaks, a statement is tried again
on a fresh connection for up to ``retry_seconds`` before the caller gets
`StoreUnavailable`: every single-statement write of the store is idempotent
(a unique key or a compare-and-set decides), so a retry never doubles one.

Network I/O only: no Flask, no Docker.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors

from .store import StoreUnavailable

log = logging.getLogger(__name__)

# Two nodes starting at once must not both migrate: one transaction-level
# advisory lock (a number of Slipway's own) makes the second wait.
MIGRATION_LOCK = 0x51195A7
# Rides out a restart of PostgreSQL, and stays within GitHub's 10 s for a webhook.
DEFAULT_RETRY_SECONDS = 5.0
CONNECT_TIMEOUT = 5

# Errors that say "unique key taken": the claim tries the next job on them.
IntegrityError = psycopg.IntegrityError


def redacted_url(url: str) -> str:
    """The URL without its password, fit for a log line or an error."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@functools.lru_cache(maxsize=512)
def to_pyformat(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


class Row(tuple):
    """One row, read by column name or index, like ``sqlite3.Row``."""

    __slots__ = ()
    _index: dict[str, int] = {}

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


def _row_factory(cursor: psycopg.Cursor) -> Callable[[Sequence[Any]], Row]:
    names = [column.name for column in cursor.description or ()]
    row_class = type("Row", (Row,), {"__slots__": (), "_index": {n: i for i, n in
                                                                  enumerate(names)}})
    return lambda values: row_class(values)


class Result:
    """A statement's rows, read before the connection went back to the pool."""

    def __init__(self, rows: list[Row], rowcount: int):
        self.rows = rows
        self.rowcount = rowcount

    def fetchone(self) -> Row | None:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[Row]:
        return list(self.rows)

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)


def _run(connection: psycopg.Connection, sql: str, params: Sequence[Any]) -> Result:
    cursor = connection.execute(to_pyformat(sql), tuple(params), prepare=False)
    rows = cursor.fetchall() if cursor.description else []
    return Result(rows, cursor.rowcount)


class Transaction:
    """The statements of one transaction, on the connection that holds it."""

    def __init__(self, connection: psycopg.Connection, url: str):
        self._connection = connection
        self._url = url

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        try:
            return _run(self._connection, sql, params)
        except psycopg.OperationalError as exc:
            raise _unavailable(self._url, exc) from exc


def _unavailable(url: str, exc: Exception) -> StoreUnavailable:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return StoreUnavailable(
        f"The job store at {redacted_url(url)} cannot be reached: {reason}; check that "
        "PostgreSQL is up and that DATABASE_URL names it (host, port, user, password, database)"
    )


class Database:
    """A pool of connections to one PostgreSQL database."""

    def __init__(self, url: str, *, max_size: int = 10,
                 retry_seconds: float = DEFAULT_RETRY_SECONDS):
        self.url = url
        self.retry_seconds = retry_seconds
        self._lock = threading.Lock()
        self._pool = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            kwargs={"autocommit": True, "row_factory": _row_factory,
                    "connect_timeout": CONNECT_TIMEOUT,
                    # A peer that vanished (a cut link) fails a query within
                    # seconds instead of TCP's minutes.
                    "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
                    "keepalives_count": 3, "tcp_user_timeout": 10_000},
            open=False,
            timeout=retry_seconds,
            name="slipway",
        )
        try:
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT * 2)
        except (psycopg_pool.PoolTimeout, psycopg.Error) as exc:
            self._pool.close()
            raise _unavailable(url, exc) from exc

    def close(self) -> None:
        self._pool.close()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        """Run one statement in autocommit mode, again on a fresh connection if one broke."""
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.1
        while True:
            try:
                with self._pool.connection() as connection:
                    return _run(connection, sql, params)
            except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
                if isinstance(exc, pg_errors.QueryCanceled) or time.monotonic() > deadline:
                    raise _unavailable(self.url, exc) from exc
                log.warning("the job store did not answer (%s); trying again", _first_line(exc))
                self._pool.check()  # drop the broken connections the restart left
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One transaction on one connection; committed when the block ends."""
        connection = self._answering_connection()
        try:
            with connection.transaction():
                yield Transaction(connection, self.url)
        finally:
            self._pool.putconn(connection)

    def _answering_connection(self) -> psycopg.Connection:
        """A pooled connection that answered a probe: a block never starts on a dead one."""
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.1
        while True:
            try:
                connection = self._pool.getconn()
            except psycopg_pool.PoolTimeout as exc:
                raise _unavailable(self.url, exc) from exc
            try:
                psycopg_pool.ConnectionPool.check_connection(connection)
                return connection
            except psycopg.OperationalError as exc:
                self._pool.putconn(connection)  # a broken one is discarded, not kept
                if time.monotonic() > deadline:
                    raise _unavailable(self.url, exc) from exc
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def migrate(self, migrations: dict[int, str], version: int) -> None:
        """Bring the schema to ``version``, one numbered step after another."""
        try:
            with self._pool.connection() as connection, connection.transaction():
                connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                connection.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
                )
                row = connection.execute("SELECT version FROM schema_version").fetchone()
                current = row[0] if row else 0
                if row is None:
                    connection.execute("INSERT INTO schema_version (version) VALUES (0)")
                if current > version:
                    raise StoreUnavailable(
                        f"The job store at {redacted_url(self.url)} has schema version "
                        f"{current}, newer than this Slipway's {version}: upgrade Slipway"
                    )
                while current < version:
                    script = migrations.get(current, "")
                    for statement in script.split(";"):
                        if statement.strip():
                            connection.execute(statement)
                    current += 1
                    connection.execute("UPDATE schema_version SET version = %s", (current,))
        except psycopg.OperationalError as exc:
            raise _unavailable(self.url, exc) from exc

    def schema_version(self) -> int:
        row = self.execute("SELECT version FROM schema_version").fetchone()
        return row[0] if row else 0


def probe(url: str) -> tuple[str, int | None]:
    """PostgreSQL's version and the store's schema version (None: no tables yet).

    For `doctor`: one connection, reads only; a write is tried in a
    transaction that is rolled back, so nothing changes."""
    try:
        with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT) as connection:
            server = connection.execute("SHOW server_version").fetchone()[0]
            exists = connection.execute("SELECT to_regclass('schema_version')").fetchone()[0]
            version = None
            if exists is not None:
                row = connection.execute("SELECT version FROM schema_version").fetchone()
                version = row[0] if row else 0
            with connection.transaction(force_rollback=True):
                connection.execute("CREATE TEMPORARY TABLE slipway_doctor (n integer)")
    except psycopg.Error as exc:
        raise _unavailable(url, exc) from exc
    return server, version


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
