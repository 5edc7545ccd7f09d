"""End to end, a registry that is away for a few seconds (a restart) does not fail the
builds claimed meanwhile: Slipway waits for it (up to `registry_patience` per call or
push) and publishes once it is back. The registry is reached through a real TCP proxy
on its own loopback port that the test takes away and brings back."""

from __future__ import annotations

import threading
import time

import pytest

from tests.slipway_harness import Harness
from tests.tcp_proxy import Proxy

pytestmark = pytest.mark.docker

APP = b"print('hello')\n"
# No base layers: pushed to a registry address the engine has not seen, every layer of a
# real base image would be uploaded again (minutes on a busy machine), not mounted.
SCRATCH = "FROM scratch\nCOPY app.py /app.py\n"


@pytest.fixture
def outage(registry):
    proxy = Proxy(registry.address)
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


def log_of(harness, build_id: int) -> str:
    return harness.store.build_log(build_id).read()[0]


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
            if any(text in log_of(harness, build.id)
                   for build in harness.store.recent_builds(repository=repo.full_name)):
                return True
            time.sleep(0.05)
        return False

    def away_during_the_build():
        log_says("Step 1/")  # building: the version was read, the push is still to come
        outage.down()
        log_says("does not answer")  # the push, or the confirmation read after it
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
    log = log_of(harness, only(harness.store.recent_builds(repository=repo.full_name)).id)
    # Which request meets the outage first (the push, or the tag confirmation
    # after it) depends on the machine's speed; either way Slipway waited for it.
    assert "does not answer" in log
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
