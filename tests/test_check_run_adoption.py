"""A check run whose creation got no answer is adopted, never opened twice;
a resumed job that fails ends the check run it opened, rather than adding one.

GitHub may create a check run and the answer never arrive: GitHub timed out,
or Slipway was killed between GitHub's answer and writing the id down. A
second check run would leave the first `in_progress` on the pull request for
good (and branch protection waiting on it). Both cases at the real boundary:
the fake GitHub handles the POST late, after the client gave up or died.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from github_app.jobs import BuildState
from tests.slipway_harness import SECRET, TINY_DOCKERFILE, Harness

LEASE_LAPSED = 61  # seconds past LEASE_SECONDS' default: the dead worker's lease is over

pytestmark = pytest.mark.docker

APP = b"print('hello from the service')\n"


def slow_repo(harness, seconds: int):
    # A new token each run, so the step is not cached and takes `seconds`.
    dockerfile = TINY_DOCKERFILE.replace(
        "RUN python3 -c \"print('compiled', 1 + 1)\"",
        f"RUN echo adoption-{time.time_ns()} && sleep {seconds}")
    return harness.repository({"Dockerfile": dockerfile, "app.py": APP})


def wait_for(condition, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def test_a_check_run_created_after_github_timed_out_is_completed_not_doubled(
        fake_github, registry, data_dir):
    """GitHub creates the check run after the client's 10 s read timeout: one run, completed."""
    harness = Harness(fake_github, registry.address, data_dir)
    try:
        repo = slow_repo(harness, 2)
        fake_github.delay_next("POST", r"/check-runs$", 10.5)
        harness.deliver("pull_request", repo.merged(labels=["version:1.0.0"]))
        harness.run_worker()
        runs = harness.final_check_runs(repo)
        assert len(runs) == 1, [(r["id"], r["status"]) for r in runs]
        assert runs[0]["status"] == "completed" and runs[0]["conclusion"] == "success"
        assert "1.0.0" in registry.tags(repo.name)
        assert fake_github.rejections == []
    finally:
        harness.close()


def test_killed_while_github_creates_the_check_run_the_next_worker_adopts_it(
        fake_github, registry, data_dir, tmp_path):
    """A worker killed before GitHub answered the create: the next one completes that run."""
    harness = Harness(fake_github, registry.address, data_dir)
    try:
        repo = slow_repo(harness, 1)
        key = tmp_path / "app.pem"
        key.write_bytes(fake_github.private_key_pem)
        env = {**os.environ, "GITHUB_APP_ID": str(fake_github.app_id),
               "GITHUB_PRIVATE_KEY_PATH": str(key), "GITHUB_WEBHOOK_SECRET": SECRET,
               "GITHUB_API_URL": fake_github.url, "REGISTRY": registry.address,
               "DATA_DIR": str(data_dir), "BUILD_NETWORK": "host",
               "PUBLIC_URL": "http://slipway.example", "ALLOWED_OWNERS": "octo-org"}
        fake_github.delay_next("POST", r"/check-runs$", 3.0)
        harness.deliver("pull_request", repo.merged(labels=["version:2.0.0"]))
        worker = subprocess.Popen([sys.executable, "-m", "github_app", "worker"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: fake_github.pending_delays == 0, "the worker's POST check-runs")
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
        # GitHub goes on with the request the dead worker sent.
        wait_for(lambda: harness.final_check_runs(repo), "GitHub to create the check run")
        assert harness.final_check_runs(repo)[0]["status"] == "in_progress"

        # Once the dead worker's lease lapses, its job goes back in the queue.
        assert harness.store.requeue_interrupted(now=time.time() + LEASE_LAPSED)
        harness.run_worker()
        runs = harness.final_check_runs(repo)
        assert len(runs) == 1, [(r["id"], r["status"]) for r in runs]
        assert runs[0]["status"] == "completed" and runs[0]["conclusion"] == "success"
        assert "2.0.0" in registry.tags(repo.name)
        assert fake_github.rejections == []
    finally:
        harness.close()


def test_a_resumed_job_that_cannot_read_its_services_ends_the_check_run_it_opened(
        fake_github, registry, data_dir, tmp_path):
    """Killed mid-build, then GitHub fails: the job's one check run completes, none is added."""
    harness = Harness(fake_github, registry.address, data_dir)
    try:
        repo = slow_repo(harness, 8)
        key = tmp_path / "app.pem"
        key.write_bytes(fake_github.private_key_pem)
        env = {**os.environ, "GITHUB_APP_ID": str(fake_github.app_id),
               "GITHUB_PRIVATE_KEY_PATH": str(key), "GITHUB_WEBHOOK_SECRET": SECRET,
               "GITHUB_API_URL": fake_github.url, "REGISTRY": registry.address,
               "DATA_DIR": str(data_dir), "BUILD_NETWORK": "host",
               "PUBLIC_URL": "http://slipway.example", "ALLOWED_OWNERS": "octo-org"}
        harness.deliver("pull_request", repo.merged(labels=["version:3.0.0"]))
        worker = subprocess.Popen([sys.executable, "-m", "github_app", "worker"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: [r for r in harness.final_check_runs(repo)
                              if r["status"] == "in_progress"], "the check run to open", 60)
            time.sleep(1.5)  # inside the slow RUN step
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)

        # GitHub fails every read of .github/slipway.yml the resumed job makes.
        fake_github.fail_next("GET", r"/contents/", 502, times=50)
        assert harness.store.requeue_interrupted(now=time.time() + LEASE_LAPSED)
        harness.run_worker()
        runs = harness.final_check_runs(repo)
        assert len(runs) == 1, [(r["id"], r["status"], r["name"]) for r in runs]
        assert runs[0]["status"] == "completed" and runs[0]["conclusion"] == "failure"
        assert "502" in runs[0]["output"]["summary"]
        builds = harness.store.recent_builds(10)
        assert [b.state for b in builds] == [BuildState.ERRORED]
        assert fake_github.rejections == []
    finally:
        harness.close()
