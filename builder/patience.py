"""Riding out a registry that is away for a moment (a restart, a deploy).

Inside `with patience(seconds):`, a request to the registry that cannot connect,
and a push the engine could not deliver because the registry did not answer, are
tried again with backoff for up to `seconds` each, instead of failing the build at
once. Outside such a block nothing is retried (the CLI, `doctor`: an answer now).
A context variable, so each worker thread has its own.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar

_SECONDS: ContextVar[float] = ContextVar("registry_patience", default=0.0)
FIRST_DELAY = 0.25
MAX_DELAY = 4.0


@contextlib.contextmanager
def patience(seconds: float) -> Iterator[None]:
    token = _SECONDS.set(max(0.0, float(seconds)))
    try:
        yield
    finally:
        _SECONDS.reset(token)


def delays() -> Iterator[float]:
    """The waits before each new try, doubling, until the patience of this call is spent."""
    deadline = time.monotonic() + _SECONDS.get()
    delay = FIRST_DELAY
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        yield min(delay, left)
        delay = min(delay * 2, MAX_DELAY)
