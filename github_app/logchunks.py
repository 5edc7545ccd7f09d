"""Build logs in the store, in chunks, so that any web node serves any build's log.

A chunk is the bytes of whole lines, keyed by the build and the byte offset
where it starts; a log is its chunks in order. The worker that holds the job
writes them (`StoredBuildLog` batches lines into chunks); every write carries
the claim's `Fence` and is refused once that claim is no longer the job's.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from .buildlog import DEFAULT_MAX_BYTES, _Redactor, _utf8_boundary, _utf8_start
from .fencing import FENCE_HOLDS, Fence, LeaseLost

# Lines are sent to the store together, at most this often, so a chatty
# build (pip, npm) makes a few writes a second, not one per line.
FLUSH_SECONDS = 0.5
FLUSH_BYTES = 64 * 1024


class LogChunks:
    """Chunk reads and writes; mixed into `JobStore`, which gives the connection."""

    def append_log_chunk(self, build_id: int, start: int, data: bytes, *,
                         fence: Fence | None = None) -> bool:
        """Store ``data`` at byte ``start`` of the build's log; False when refused.

        Refused when another chunk already starts there (another worker wrote
        this log since) or when ``fence`` no longer holds the job.
        """
        params: list[Any] = [int(build_id), int(start), bytes(data)]
        query = "INSERT INTO build_log_chunks (build_id, start, data) SELECT ?, ?, ?"
        if fence is not None:
            query += " WHERE " + FENCE_HOLDS
            params += [fence.job_id, fence.attempt, self.clock()]
        else:
            query += " WHERE 1 = 1"  # SQLite needs a WHERE before an upsert's ON CONFLICT
        query += " ON CONFLICT (build_id, start) DO NOTHING"
        if self._connection().execute(query, params).rowcount == 1:
            return True
        # A write that reached the store but whose answer was lost is retried;
        # the chunk it left is ours, not a refusal.
        row = self._connection().execute(
            "SELECT data FROM build_log_chunks WHERE build_id = ? AND start = ?",
            (int(build_id), int(start)),
        ).fetchone()
        return row is not None and bytes(row["data"]) == bytes(data) and (
            fence is None or self.holds(fence)
        )

    def log_size(self, build_id: int) -> int:
        """The length in bytes of what the store holds of the build's log."""
        row = self._connection().execute(
            "SELECT start + length(data) AS size FROM build_log_chunks WHERE build_id = ?"
            " ORDER BY start DESC LIMIT 1",
            (int(build_id),),
        ).fetchone()
        return int(row["size"]) if row else 0

    def read_log_bytes(self, build_id: int, offset: int, limit: int | None = None) -> bytes:
        """The log's bytes from ``offset`` on (at most ``limit``)."""
        rows = self._connection().execute(
            "SELECT start, data FROM build_log_chunks WHERE build_id = ? AND start >= COALESCE("
            " (SELECT max(start) FROM build_log_chunks WHERE build_id = ? AND start <= ?), 0)"
            " ORDER BY start",
            (int(build_id), int(build_id), int(offset)),
        ).fetchall()
        pieces, wanted = [], limit
        for row in rows:
            data = bytes(row["data"])[max(0, offset - row["start"]):]
            if wanted is not None:
                data = data[:wanted]
                wanted -= len(data)
            pieces.append(data)
            if wanted == 0:
                break
        return b"".join(pieces)


class StoredBuildLog:
    """The log of one build in the store: append while it runs, read while or after.

    The same reading interface as `buildlog.BuildLogFile`. Appended lines wait
    at most FLUSH_SECONDS in memory; `close()` writes what is left. With a
    `fence`, a refused write raises `LeaseLost` from the next `append`, so the
    build that feeds the log stops.
    """

    def __init__(self, store, build_id: int, *, secrets: Iterable[str | None] = (),
                 max_bytes: int = DEFAULT_MAX_BYTES, fence: Fence | None = None):
        self.store = store
        self.build_id = int(build_id)
        self.max_bytes = max_bytes
        self.fence = fence
        self._redactor = _Redactor(secrets)
        self._lock = threading.Lock()
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._size: int | None = None
        self._truncated = False
        self._lost: LeaseLost | None = None
        self._wake = threading.Event()
        self._closed = False
        self._flusher: threading.Thread | None = None

    def __enter__(self) -> StoredBuildLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------

    def append(self, line: str) -> bool:
        """Queue one line (a newline is added if missing); False when the cap dropped it."""
        if self._lost is not None:
            raise self._lost
        text = self._redactor.redact(line)
        if not text.endswith("\n"):
            text += "\n"
        data = text.encode("utf-8", errors="replace")
        with self._lock:
            if self._size is None:
                self._size = self.store.log_size(self.build_id)
                self._truncated = self._ends_with_marker()
                self._start_flusher()
            if self._truncated:
                return False
            marker = self._truncation_marker()
            if self._size + self._pending_bytes + len(data) > self.max_bytes - len(marker):
                self._pending.append(marker)
                self._pending_bytes += len(marker)
                self._truncated = True
                accepted = False
            else:
                self._pending.append(data)
                self._pending_bytes += len(data)
                accepted = True
            if self._pending_bytes >= FLUSH_BYTES:
                self._flush_locked()
        if self._lost is not None:
            raise self._lost
        return accepted

    def flush(self) -> None:
        """Write the queued lines now; raise `LeaseLost` when the store refused them."""
        with self._lock:
            self._flush_locked()
        if self._lost is not None:
            raise self._lost

    def close(self) -> None:
        """Write what is queued and stop the flusher; a refused write is not raised here."""
        self._closed = True
        self._wake.set()
        with self._lock:
            self._flush_locked()
        if self._flusher is not None and self._flusher is not threading.current_thread():
            self._flusher.join(timeout=5)

    def _start_flusher(self) -> None:
        self._flusher = threading.Thread(target=self._flush_periodically, daemon=True,
                                         name=f"log-{self.build_id}")
        self._flusher.start()

    def _flush_periodically(self) -> None:
        while not self._closed:
            self._wake.wait(FLUSH_SECONDS)
            with self._lock:
                try:
                    self._flush_locked()
                except Exception as exc:  # the store is down: the next append tries again
                    if self._closed:
                        return
                    del exc

    def _flush_locked(self) -> None:
        if not self._pending or self._lost is not None:
            return
        data = b"".join(self._pending)
        if not self.store.append_log_chunk(self.build_id, self._size, data, fence=self.fence):
            self._lost = LeaseLost(
                f"The store refused the log of build {self.build_id}: this worker's claim "
                "of the job has lapsed and another worker may hold it; the build stops here"
            )
            self._pending, self._pending_bytes = [], 0
            return
        self._size += len(data)
        self._pending, self._pending_bytes = [], 0

    def _truncation_marker(self) -> bytes:
        mib = self.max_bytes / (1024 * 1024)
        return (
            f"[log truncated: the log reached its limit of {mib:g} MiB;"
            " further lines were dropped]\n"
        ).encode()

    def _ends_with_marker(self) -> bool:
        if not self._size:
            return False
        data = self.store.read_log_bytes(self.build_id, max(0, self._size - 200))
        return data.rstrip(b"\n").rsplit(b"\n", 1)[-1].startswith(b"[log truncated: ")

    # -- reading -------------------------------------------------------------

    @property
    def truncated(self) -> bool:
        """Whether lines have been dropped because the log reached its cap."""
        if self._size is not None:
            return self._truncated
        size = self.store.log_size(self.build_id)
        if not size:
            return False
        data = self.store.read_log_bytes(self.build_id, max(0, size - 200))
        return data.rstrip(b"\n").rsplit(b"\n", 1)[-1].startswith(b"[log truncated: ")

    def size(self) -> int:
        """The log's length in bytes as stored (lines still queued are not counted)."""
        return self.store.log_size(self.build_id)

    def read(self, offset: int = 0, limit: int | None = None) -> tuple[str, int]:
        """The text from byte ``offset`` on (at most ``limit`` bytes) and the offset to read next.

        Chunks hold whole lines, so a reader following the log with the
        returned offset sees no gap and no half line or character.
        """
        if offset < 0:
            raise ValueError("offset must be 0 or more")
        data = self.store.read_log_bytes(self.build_id, offset, limit)
        end = data.rfind(b"\n") + 1
        if end == 0 and limit is not None and len(data) == limit:
            end = _utf8_boundary(data)
        return data[:end].decode("utf-8", errors="replace"), offset + end

    def tail(self, max_bytes: int) -> str:
        """The end of the log, at most ``max_bytes`` bytes, starting at a line when it can."""
        if self._size is not None:
            with self._lock:
                self._flush_locked()
        size = self.store.log_size(self.build_id)
        start = max(0, size - max_bytes)
        data = self.store.read_log_bytes(self.build_id, start, max_bytes)
        if start > 0:
            newline = data.find(b"\n")
            cut = newline + 1 if 0 <= newline < len(data) - 1 else _utf8_start(data)
            data = data[cut:]
        return data.decode("utf-8", errors="replace")
