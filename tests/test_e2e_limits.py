"""End to end, the operating bounds of a build: its time limit and memory limit,
through the webhook, the worker, the real engine and registry and the fake GitHub."""

from __future__ import annotations

import time
import uuid

import pytest

from github_app.jobs import BuildState
from tests.slipway_harness import Harness

pytestmark = pytest.mark.docker

APP = b"print('hello')\n"
BASE = "FROM python:3.11-slim\n"
HOG = 'RUN python3 -c "b = b\'x\' * (256 * 1024 * 1024); print(len(b))"\n'


def only(items):
    assert len(items) == 1, items
    return items[0]


@pytest.fixture
def make_harness(fake_github, registry, data_dir):
    made = []

    def make(**config) -> Harness:
        harness = Harness(fake_github, registry.address, data_dir, **config)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()
    assert fake_github.rejections == [], "the fake GitHub refused a request Slipway sent"


def step_containers(docker_client, marker: str) -> list:
    return [c for c in docker_client.api.containers(all=True)
            if marker in (c.get("Command") or "")]


def test_a_build_past_build_timeout_concludes_timed_out_and_pushes_nothing(
        make_harness, registry, docker_client):
    """BUILD_TIMEOUT=3 and `RUN sleep 600`: check run `timed_out` naming the limit and
    BUILD_TIMEOUT, status `failure`, no tag, the step's container gone."""
    harness = make_harness(build_timeout=3)
    marker = f"slipway-hang-{uuid.uuid4().hex[:8]}"
    repo = harness.repository({"Dockerfile": BASE + f"RUN echo {marker} && sleep 600\n",
                               "app.py": APP})
    harness.deliver("pull_request", repo.merged(labels=["version:1.0.0"]))
    started = time.monotonic()
    harness.run_worker()
    assert time.monotonic() - started < 30

    run = only(harness.final_check_runs(repo))
    assert run["status"] == "completed" and run["conclusion"] == "timed_out"
    summary = run["output"]["summary"]
    assert "time limit of 3 s" in summary
    assert "`BUILD_TIMEOUT` (3 s)" in summary and ".github/slipway.yml" in summary
    assert marker in run["output"]["text"]  # the log tail shows the step that hung
    assert harness.statuses(repo)[-1]["state"] == "failure"
    assert registry.tags(repo.name) == []
    deadline = time.monotonic() + 10  # the engine removes the step's container in seconds
    while step_containers(docker_client, marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert step_containers(docker_client, marker) == []
    build = only(harness.store.recent_builds(repository=repo.full_name))
    assert build.state is BuildState.FAILED and build.failure_kind == "timeout"


def test_a_service_timeout_in_slipway_yml_applies_and_is_named(make_harness, registry):
    """`timeout: 2` in .github/slipway.yml beats the 1800 s default; the report names it."""
    harness = make_harness()
    service = f"slow-{uuid.uuid4().hex[:8]}"
    repo = harness.repository({
        "Dockerfile": BASE + "RUN sleep 600\n", "app.py": APP,
        ".github/slipway.yml": f"services:\n  - name: {service}\n    timeout: 2\n",
    })
    harness.deliver("pull_request", repo.merged(labels=["version:1.0.0"]))
    started = time.monotonic()
    harness.run_worker()
    assert time.monotonic() - started < 30
    run = only(harness.final_check_runs(repo))
    assert run["conclusion"] == "timed_out"
    assert "time limit of 2 s" in run["output"]["summary"]
    assert "`timeout: 2`" in run["output"]["summary"]


def test_a_step_over_build_memory_fails_saying_it_ran_out_of_memory(make_harness, registry):
    """BUILD_MEMORY=64m and a step filling 256 MiB: failure, out of memory, BUILD_MEMORY named."""
    harness = make_harness(build_memory=64 * 1024**2)
    repo = harness.repository({"Dockerfile": BASE + HOG, "app.py": APP})
    harness.deliver("pull_request", repo.merged(labels=["version:1.0.0"]))
    harness.run_worker()
    run = only(harness.final_check_runs(repo))
    assert run["conclusion"] == "failure"
    assert "ran out of memory" in run["output"]["title"]
    assert "ran out of memory" in run["output"]["summary"]
    assert "`BUILD_MEMORY`" in run["output"]["summary"]
    assert harness.statuses(repo)[-1]["state"] == "failure"
    assert registry.tags(repo.name) == []
