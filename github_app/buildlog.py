"""Build logs on disk: ``DATA_DIR/logs/<build_id>.log``.

The worker appends the build's output a line at a time and flushes each line,
so ``GET /builds/<id>`` can follow the log live with ``read(offset)``; the check
run's text takes its ``tail``. A log holds no secret (every line goes through
``redact`` before it is written) and never grows past ``max_bytes``: past the
cap it ends with one ``[log truncated: ...]`` line and drops the rest.

Offsets are byte offsets into the file. Disk I/O only.
"""

from __future__ import annotations

import os
import threading
import urllib.parse
from collections.abc import Iterable
from pathlib import Path

REDACTED = "[REDACTED]"
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
# Lines of a multi-line secret (a PEM key) are redacted one by one, because the
# log is written a line at a time; shorter lines ("-----END...", "") are not secret.
_MIN_SECRET_LINE = 16


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret (and its URL-encoded spelling) replaced by [REDACTED]."""
    return _Redactor(secrets).redact(text)


class _Redactor:
    def __init__(self, secrets: Iterable[str | None]):
        values: set[str] = set()
        for secret in secrets:
            if not secret:
                continue
            values.add(secret)
            # A password in a URL (https://user:p%40ss@host) is spelled encoded.
            values.add(urllib.parse.quote(secret, safe=""))
            if "\n" in secret:
                values.add(secret.replace("\n", "\\n"))
                values.update(
                    line.strip()
                    for line in secret.splitlines()
                    if len(line.strip()) >= _MIN_SECRET_LINE
                )
        # Longest first, so a secret that contains another is removed whole.
        self.values = sorted(values, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for value in self.values:
            text = text.replace(value, REDACTED)
        return text


def log_path(data_dir: str | Path, build_id: int) -> Path:
    """Where the log of a build lives."""
    # int(): a build id from a URL must not name a path outside logs/.
    return Path(data_dir) / "logs" / f"{int(build_id)}.log"


class BuildLogFile:
    """The log of one build: append while it runs, read while or after it runs.

    Appending is safe from several threads of one process; one build has one
    writer process (its worker).
    """

    def __init__(
        self,
        data_dir: str | Path,
        build_id: int,
        *,
        secrets: Iterable[str | None] = (),
        max_bytes: int = DEFAULT_MAX_BYTES,
    ):
        self.path = log_path(data_dir, build_id)
        self.build_id = int(build_id)
        self.max_bytes = max_bytes
        self._redactor = _Redactor(secrets)
        self._lock = threading.Lock()
        self._file = None
        self._size: int | None = None
        self._truncated = False

    def __enter__(self) -> BuildLogFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    @property
    def truncated(self) -> bool:
        """Whether lines have been dropped because the log reached its cap."""
        with self._lock:
            self._open()
            return self._truncated

    def size(self) -> int:
        """The log's length in bytes (0 before the first line)."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def append(self, line: str) -> bool:
        """Write one line (a newline is added if missing); False when it was dropped.

        A string holding several lines is written whole. Each call reaches the
        file before it returns, so a reader sees the line at once.
        """
        text = self._redactor.redact(line)
        if not text.endswith("\n"):
            text += "\n"
        data = text.encode("utf-8", errors="replace")
        with self._lock:
            self._open()
            if self._truncated:
                return False
            marker = self._truncation_marker()
            if self._size + len(data) > self.max_bytes - len(marker):
                self._write(marker)
                self._truncated = True
                return False
            self._write(data)
            return True

    def _truncation_marker(self) -> bytes:
        mib = self.max_bytes / (1024 * 1024)
        return (
            f"[log truncated: the log reached its limit of {mib:g} MiB;"
            " further lines were dropped]\n"
        ).encode()

    def _open(self) -> None:
        if self._file is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - kept open across appends
        self._size = os.fstat(self._file.fileno()).st_size
        # A worker that restarts mid-build reopens the log: keep honouring the cap.
        self._truncated = self._ends_with_marker()

    def _ends_with_marker(self) -> bool:
        if self._size == 0:
            return False
        with open(self.path, "rb") as file:
            file.seek(max(0, self._size - 200))
            last_line = file.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
        return last_line.startswith(b"[log truncated: ")

    def _write(self, data: bytes) -> None:
        # Unbuffered and one write() per line: a reader never sees half a line
        # of a short write, and nothing waits in a buffer for a flush.
        written = 0
        while written < len(data):
            written += self._file.write(data[written:])
        self._size += len(data)

    def read(self, offset: int = 0, limit: int | None = None) -> tuple[str, int]:
        """The text from byte ``offset`` on (at most ``limit`` bytes) and the offset to read next.

        Stops before a line still being written and never splits a UTF-8
        character, so repeated calls with the returned offset follow the log
        without gaps or garbled text. A log not yet written reads as "".
        """
        if offset < 0:
            raise ValueError("offset must be 0 or more")
        try:
            with open(self.path, "rb") as file:
                file.seek(offset)
                data = file.read() if limit is None else file.read(limit)
        except FileNotFoundError:
            return "", offset
        end = data.rfind(b"\n") + 1
        if end == 0 and limit is not None and len(data) == limit:
            # One line longer than the limit: hand it out in pieces.
            end = _utf8_boundary(data)
        return data[:end].decode("utf-8", errors="replace"), offset + end

    def tail(self, max_bytes: int) -> str:
        """The end of the log, at most ``max_bytes`` bytes, starting at a line when it can."""
        size = self.size()
        start = max(0, size - max_bytes)
        try:
            with open(self.path, "rb") as file:
                file.seek(start)
                data = file.read(max_bytes)
        except FileNotFoundError:
            return ""
        if start > 0:
            newline = data.find(b"\n")
            # Drop the partial first line, unless the tail is one long line.
            cut = newline + 1 if 0 <= newline < len(data) - 1 else _utf8_start(data)
            data = data[cut:]
        return data.decode("utf-8", errors="replace")


def _utf8_boundary(data: bytes) -> int:
    """The largest prefix length of ``data`` that does not end inside a UTF-8 character."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0b1100_0000 == 0b1000_0000:  # continuation byte: keep looking for the lead
            continue
        if byte < 0b1000_0000:  # ASCII
            return len(data)
        needed = 2 if byte >= 0b1100_0000 else 1
        needed = 3 if byte >= 0b1110_0000 else needed
        needed = 4 if byte >= 0b1111_0000 else needed
        return len(data) if back >= needed else len(data) - back
    return len(data)


def _utf8_start(data: bytes) -> int:
    """The index of the first byte of ``data`` that starts a UTF-8 character."""
    for index, byte in enumerate(data[:4]):
        if byte & 0b1100_0000 != 0b1000_0000:
            return index
    return 0
