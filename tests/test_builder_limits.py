"""Every build is bounded: past its timeout it is stopped in the engine, over its
memory limit its step is killed; nothing is pushed. Real engine and registry."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from builder_helpers import BASE, make_context

from builder import BuildOutOfMemory, BuildTimedOut, build_artifact
from builder.registry import list_tags

pytestmark = pytest.mark.docker


def step_containers(docker_client, marker: str) -> list:
    """The containers (running or not) whose command holds `marker`: a build step's."""
    found = []
    for container in docker_client.api.containers(all=True):
        if marker in (container.get("Command") or ""):
            found.append(container)
    return found


def test_a_build_past_its_timeout_is_stopped_in_the_engine_and_pushes_nothing(
        docker_client, registry, published, unique_name, tmp_path):
    """`RUN sleep 600` with a 3 s limit: BuildTimedOut after ~3 s, the step's container
    gone within seconds, no tag in the registry."""
    marker = f"slipway-timeout-{uuid.uuid4().hex[:8]}"
    context = make_context(tmp_path, BASE + f"RUN echo {marker} && sleep 600\n")
    published.add(unique_name, "1.0.0")
    seen_running = threading.Event()

    def on_log(line: str) -> None:
        # The step printed its marker: its container runs now.
        if line.strip() == marker and step_containers(docker_client, marker):
            seen_running.set()

    started = time.monotonic()
    with pytest.raises(BuildTimedOut) as caught:
        build_artifact(unique_name, "1.0.0", context=str(context), registry=registry.address,
                       network="host", on_log=on_log, timeout=3)
    elapsed = time.monotonic() - started
    assert seen_running.is_set(), "the step's container was never seen running"
    assert 3 <= elapsed < 15
    assert "time limit of 3 s" in str(caught.value)
    assert f"echo {marker}" in (caught.value.step or "")
    deadline = time.monotonic() + 10
    while step_containers(docker_client, marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert step_containers(docker_client, marker) == [], "the step still has a container"
    assert list_tags(registry.address, unique_name) == []


def test_a_step_over_the_memory_limit_fails_saying_it_ran_out_of_memory(
        registry, published, unique_name, tmp_path):
    """With a 64 MiB limit, a step that fills 256 MiB is killed; the error says so."""
    context = make_context(
        tmp_path, BASE + 'RUN python3 -c "b = b\'x\' * (256 * 1024 * 1024); print(len(b))"\n')
    published.add(unique_name, "1.0.0")
    with pytest.raises(BuildOutOfMemory) as caught:
        build_artifact(unique_name, "1.0.0", context=str(context), registry=registry.address,
                       network="host", memory=64 * 1024**2)
    message = str(caught.value)
    assert "ran out of memory" in message and "64 MiB" in message
    assert "137" in caught.value.detail
    assert caught.value.blame == "repository"


def test_the_same_step_under_a_higher_memory_limit_builds(
        registry, published, unique_name, tmp_path):
    """The memory limit is what killed the step above: with 1 GiB the same step passes."""
    context = make_context(
        tmp_path, BASE + 'RUN python3 -c "b = b\'x\' * (256 * 1024 * 1024); print(len(b))"\n')
    published.add(unique_name, "1.0.0")
    result = build_artifact(unique_name, "1.0.0", context=str(context),
                            registry=registry.address, network="host", memory=1024**3)
    assert result.digest.startswith("sha256:")
