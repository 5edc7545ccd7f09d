"""Stopping a build from another thread: the engine stops it and nothing is pushed."""

from __future__ import annotations

import threading
import time

import pytest

from builder import BuildCancelled, build_artifact

pytestmark = pytest.mark.docker


def test_a_cancelled_build_stops_in_the_engine_and_pushes_nothing(
        tmp_path, docker_client, registry, unique_name):
    """Setting the event mid-`RUN sleep` ends the build within seconds: its step's container
    is gone from the engine and the registry never gets the tag."""
    (tmp_path / "Dockerfile").write_text(
        f"FROM python:3.11-slim\nRUN echo {unique_name} && sleep 60\n")
    cancel = threading.Event()
    lines: list[str] = []

    def on_log(line: str) -> None:
        lines.append(line)
        if unique_name in line and "echo" not in line:
            threading.Timer(1.0, cancel.set).start()

    started = time.monotonic()
    with pytest.raises(BuildCancelled, match="stopped"):
        build_artifact(unique_name, "1.0.0", context=str(tmp_path), registry=registry.address,
                       network="none", on_log=on_log, cancel=cancel)
    assert time.monotonic() - started < 20
    time.sleep(1)
    sleeping = [c for c in docker_client.containers.list(all=True)
                if unique_name in " ".join(c.attrs["Config"].get("Cmd") or [])]
    assert sleeping == [], "the build step's container outlived the cancelled build"
    assert registry.tags(unique_name) == []
