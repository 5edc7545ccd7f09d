"""Stopping a build or push from another thread, the way the engine understands.

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
from collections.abc import Iterator


@contextlib.contextmanager
def cancellable(client, cancel: threading.Event | None) -> Iterator[None]:
    """While the block runs, setting `cancel` closes this thread's streams from `client`."""
    if cancel is None:
        yield
        return
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
        return response

    def watch() -> None:
        while not done.is_set():
            if cancel.wait(0.2):
                with lock:
                    for response in responses:
                        _shut(response)
                return

    hooks = client.api.hooks["response"]
    hooks.append(record)
    watcher = threading.Thread(target=watch, daemon=True, name="build-cancel")
    watcher.start()
    try:
        yield
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
