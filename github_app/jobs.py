"""The durable job store: `JobStore`, one entry point over the store's parts.

    store.py      the SQLite file: connections, transactions, schema migrations
    jobqueue.py   jobs: enqueue, dedupe, claim, leases, heartbeat, requeue
    records.py    builds: one record per service of a job
    redeliveries.py  the redelivery sweep: requests asked for, its lease

Callers use `JobStore` and the names re-exported here; the parts stay small.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .jobqueue import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_MAX_ATTEMPTS,
    EnqueueResult,
    Job,
    JobKind,
    JobQueue,
    JobState,
)
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
    "Job",
    "JobKind",
    "JobState",
    "JobStore",
    "StoreError",
    "StoreUnavailable",
    "UnknownBuild",
]


class JobStore(JobQueue, BuildRecords, Redeliveries, Store):
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
