"""Turn a stream of text pieces into lines, and keep only the end of the log.

Pure and bounded: a build that prints a gigabyte, or one gigabyte-long line,
costs at most ``max_line`` + ``max_bytes`` characters here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

MAX_LINE = 16 * 1024
MAX_TAIL = 64 * 1024


class LineSplitter:
    """Feed text pieces, get whole lines; a line longer than ``max_line`` is cut."""

    def __init__(self, max_line: int = MAX_LINE):
        self.max_line = max_line
        self._pending: list[str] = []
        self._pending_len = 0
        self._dropped = 0

    def feed(self, text: str) -> Iterator[str]:
        """Yield each line that ``text`` completes, without its newline."""
        start = 0
        while True:
            end = text.find("\n", start)
            if end < 0:
                self._keep(text[start:])
                return
            self._keep(text[start:end])
            yield self._take()
            start = end + 1

    def flush(self) -> Iterator[str]:
        """Yield the last line when the stream did not end with a newline."""
        if self._pending_len or self._dropped:
            yield self._take()

    def _keep(self, piece: str) -> None:
        room = self.max_line - self._pending_len
        if len(piece) > room:
            self._dropped += len(piece) - max(room, 0)
            piece = piece[:max(room, 0)]
        if piece:
            self._pending.append(piece)
            self._pending_len += len(piece)

    def _take(self) -> str:
        line = "".join(self._pending).rstrip("\r")
        if self._dropped:
            line += f" [... {self._dropped} more characters cut]"
        self._pending, self._pending_len, self._dropped = [], 0, 0
        return line


class LogTail:
    """The last ``max_chars`` characters of a log, kept as whole lines."""

    def __init__(self, max_chars: int = MAX_TAIL):
        self.max_chars = max_chars
        self._lines: deque[str] = deque()
        self._chars = 0

    def append(self, line: str) -> None:
        self._lines.append(line)
        self._chars += len(line) + 1
        while self._chars > self.max_chars and len(self._lines) > 1:
            self._chars -= len(self._lines.popleft()) + 1

    def text(self) -> str:
        return "\n".join(self._lines) + ("\n" if self._lines else "")
