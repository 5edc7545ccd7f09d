"""A real TCP proxy on its own loopback port in front of a registry, for faults at the
network boundary: taken away (connections refused, open ones cut) and brought back,
or a hook when the registry answers a manifest PUT (a push, as the registry sees it)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable


class Proxy:
    def __init__(self, upstream: str, *, on_manifest_put: Callable[[], None] | None = None):
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.on_manifest_put = on_manifest_put
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            connections, self._open = self._open, []
        if listener is not None:
            listener.close()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # taken down
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._open += [client, server]
            putting = threading.Event()  # a manifest PUT went up this connection
            threading.Thread(target=self._pump, args=(client, server, putting, True),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, putting, False),
                             daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, putting: threading.Event,
              upward: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if self.on_manifest_put is not None:
                    if upward and data.startswith(b"PUT /v2/") and b"/manifests/" in data[:300]:
                        putting.set()
                    elif not upward and putting.is_set() and data.startswith(b"HTTP/1.1 201"):
                        hook, self.on_manifest_put = self.on_manifest_put, None
                        hook()  # the registry holds the tag; its answer goes nowhere
                        return
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
