"""End to end, a registry that is away for a few seconds (a restart) does not fail the
builds claimed meanwhile: Slipway waits for it (up to `registry_patience` per call or
push) and publishes once it is back. The registry is reached through a real TCP proxy
on its own loopback port that the test takes away and brings back."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest

from tests.slipway_harness import Harness

pytestmark = pytest.mark.docker

APP = b"print('hello')\n"
# No base layers: pushed to a registry address the engine has not seen, every layer of a
# real base image would be uploaded again (minutes on a busy machine), not mounted.
SCRATCH = "FROM scratch\nCOPY app.py /app.py\n"


class Outage:
    """A TCP proxy on its own loopback port in front of the shared registry, which can be
    taken away (nothing listens: connections are refused, open ones cut) and brought back.

    To the engine and Slipway it is the registry at `address`; its layers are the shared
    registry's, so nothing large moves."""

    def __init__(self, upstream: str):
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
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
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@pytest.fixture
def outage(registry):
    proxy = Outage(registry.address)
    yield proxy
    proxy.down()


@pytest.fixture
def make_harness(fake_github, data_dir):
    made = []

    def make(address, **config) -> Harness:
        harness = Harness(fake_github, address, data_dir, **config)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


def only(items):
    assert len(items) == 1, items
    return items[0]


def test_a_registry_back_3_s_after_the_merge_gets_its_image(outage, make_harness, registry):
    """The registry is away when the job starts (the version needs its tags) and is
    back 3 s later: the build waits, then publishes 0.0.1; check run success."""
    harness = make_harness(outage.address, registry_patience=30)
    repo = harness.repository({"Dockerfile": SCRATCH, "app.py": APP})
    harness.deliver("pull_request", repo.merged(labels=["semver:patch"]))
    started = time.monotonic()
    starter = threading.Timer(3.0, outage.up)
    starter.start()
    try:
        harness.run_worker()
    finally:
        starter.join()
    assert time.monotonic() - started >= 3
    run = only(harness.final_check_runs(repo))
    assert run["conclusion"] == "success", run["output"]["summary"]
    assert "0.0.1" in registry.tags(repo.name)


def test_a_registry_away_at_the_push_gets_the_image_once_it_is_back(
        outage, make_harness, registry, data_dir):
    """The registry goes away while the image builds and comes back only after the push
    found it away: the push is tried again, lands once, and the check run has its digest."""
    outage.up()
    harness = make_harness(outage.address, registry_patience=30)
    repo = harness.repository({"Dockerfile": SCRATCH, "app.py": APP})
    harness.deliver("pull_request", repo.merged(labels=["version:1.2.0"]))

    def log_says(text: str, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in log.read_text() for log in (data_dir / "logs").glob("*.log")):
                return True
            time.sleep(0.01)
        return False

    def away_during_the_build():
        log_says("Step 1/")  # building: the version was read, the push is still to come
        outage.down()
        log_says("does not answer; pushing again")
        time.sleep(1)
        outage.up()

    mover = threading.Thread(target=away_during_the_build)
    mover.start()
    harness.run_worker()
    mover.join()
    run = only(harness.final_check_runs(repo))
    assert run["conclusion"] == "success", run["output"]["summary"]
    digest = registry.manifest_digest(repo.name, "1.2.0")
    assert digest in run["output"]["summary"]
    log = only(list((data_dir / "logs").glob("*.log"))).read_text()
    assert "does not answer; pushing again" in log
    assert log.count(": digest: sha256:") == 1  # pushed once


def test_a_registry_that_stays_away_fails_the_build_after_the_patience(outage, make_harness):
    """Never back: after `registry_patience` (2 s here) the build fails, infrastructure."""
    harness = make_harness(outage.address, registry_patience=2)
    repo = harness.repository({"Dockerfile": SCRATCH, "app.py": APP})
    harness.deliver("pull_request", repo.merged(labels=["version:1.0.0"]))
    started = time.monotonic()
    harness.run_worker()
    assert 2 <= time.monotonic() - started < 20
    run = only(harness.final_check_runs(repo))
    assert run["conclusion"] == "failure"
    assert "infrastructure" in run["output"]["summary"]
    assert harness.statuses(repo)[-1]["state"] == "error"
