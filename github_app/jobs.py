"""The durable job store: `JobStore`, one entry point over the store's parts.

    store.py      SQLite file or PostgreSQL database: connections, transactions, migrations
    postgres.py   the PostgreSQL backend (DATABASE_URL): pool, retries, rows
    jobqueue.py   jobs: enqueue, dedupe, claim, leases, heartbeat, requeue
    records.py    builds: one record per service of a job
    redeliveries.py  the redelivery sweep: requests asked for, its lease
    logchunks.py  build logs, in chunks
    fencing.py    a claim's writes are taken only while the claim holds the job
    liveness.py   worker heartbeats (/healthz)
    pruning.py    what retention removes (PruneRecords)

Callers use `JobStore` and the names re-exported here; the parts stay small.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .fencing import Fence, LeaseLost
from .jobqueue import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_MAX_ATTEMPTS,
    EnqueueResult,
    Job,
    JobKind,
    JobQueue,
    JobState,
)
from .liveness import WorkerHeartbeats
from .logchunks import LogChunks, StoredBuildLog
from .pruning import PruneRecords
from .records import FINISHED_BUILD_STATES, Build, BuildRecords, BuildState, UnknownBuild
from .redeliveries import Redeliveries
from .store import DATABASE_NAME, SCHEMA_VERSION, Store, StoreError, StoreUnavailable

__all__ = [
    "DATABASE_NAME",
    "DEFAULT_LEASE_SECONDS",
    "DEFAULT_MAX_ATTEMPTS",
    "FINISHED_BUILD_STATES",
    "SCHEMA_VERSION",
    "Build",
    "BuildState",
    "EnqueueResult",
    "Fence",
    "LeaseLost",
    "StoredBuildLog",
    "Job",
    "JobKind",
    "JobState",
    "JobStore",
    "StoreError",
    "StoreUnavailable",
    "UnknownBuild",
]


class JobStore(JobQueue, BuildRecords, Redeliveries, LogChunks, WorkerHeartbeats,
               PruneRecords, Store):
    """Jobs and builds in one store, shared by threads and processes."""

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ):
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        super().__init__(path, clock=clock)

    @classmethod
    def from_data_dir(cls, data_dir: str | Path, **options: Any) -> JobStore:
        """The store in ``DATA_DIR/slipway.sqlite3``."""
        return cls(Path(data_dir) / DATABASE_NAME, **options)

    @classmethod
    def from_config(cls, config, **options: Any) -> JobStore:
        """The store the configuration names: PostgreSQL at DATABASE_URL, else SQLite."""
        options.setdefault("lease_seconds", config.lease_seconds)
        if config.database_url:
            return cls(config.database_url, **options)
        return cls.from_data_dir(config.data_dir, **options)

    def build_log(self, build_id: int, **options: Any) -> StoredBuildLog:
        """The log of a build, as the store keeps it (see `logchunks.StoredBuildLog`)."""
        return StoredBuildLog(self, build_id, **options)
