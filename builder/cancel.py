"""Stopping a build or push from another thread or at a deadline, the way the engine understands.

The classic builder stops a build, and the engine a push, when the client
closes the stream (measured: the running step's container is gone within a
second). The Docker SDK gives no handle on the stream, so `cancellable`
records the HTTP responses this thread opens through the client (a requests
session hook) and, when `cancel` is set, shuts their sockets down: the read
loop ends at once, even inside a `RUN sleep` that prints nothing.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

CANCELLED = "cancelled"
TIMED_OUT = "timed_out"


@dataclass
class Stop:
    """Why the streams were closed: None (they were not), CANCELLED or TIMED_OUT."""

    reason: str | None = None

    def wait_for(self, seconds: float) -> bool:
        """Sleep up to `seconds`, less if the block is stopped meanwhile; True if it was."""
        deadline = time.monotonic() + seconds
        while self.reason is None and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        return self.reason is not None


@contextlib.contextmanager
def cancellable(client, cancel: threading.Event | None) -> Iterator[None]:
    """While the block runs, setting `cancel` closes this thread's streams from `client`."""
    with stoppable(client, cancel=cancel):
        yield


@contextlib.contextmanager
def stoppable(client, *, cancel: threading.Event | None = None,
              timeout: float | None = None) -> Iterator[Stop]:
    """While the block runs, close this thread's streams from `client` when `cancel` is
    set or `timeout` seconds have passed; the `Stop` it yields says which happened."""
    stop = Stop()
    if cancel is None and timeout is None:
        yield stop
        return
    deadline = None if timeout is None else time.monotonic() + timeout
    thread = threading.get_ident()
    responses = []
    lock = threading.Lock()
    done = threading.Event()

    def record(response, *args, **kwargs):
        # Hooks run in the thread that made the request; another thread's
        # build on a shared client is not ours to stop.
        if threading.get_ident() == thread:
            with lock:
                responses.append(response)
                if stop.reason is not None:  # opened after the stop: closed at once
                    _shut(response)
        return response

    def watch() -> None:
        while not done.is_set():
            if cancel is not None and cancel.is_set():
                reason = CANCELLED
            elif deadline is not None and time.monotonic() >= deadline:
                reason = TIMED_OUT
            else:
                (cancel or done).wait(0.1)
                continue
            with lock:
                stop.reason = reason
                for response in responses:
                    _shut(response)
            return

    hooks = client.api.hooks["response"]
    hooks.append(record)
    watcher = threading.Thread(target=watch, daemon=True, name="build-cancel")
    watcher.start()
    try:
        yield stop
    finally:
        done.set()
        hooks.remove(record)
        watcher.join(timeout=2)


def _shut(response) -> None:
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
