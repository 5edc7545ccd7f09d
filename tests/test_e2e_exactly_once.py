"""Exactly once across crashes, with the fault at the real boundary: a `worker` process
SIGKILLed right after its push is observed in the registry, before it could record it.

The real engine, registry, SQLite store and fake GitHub; Slipway's code is not stubbed.
To hit the gap between the push and the record every time (it is milliseconds wide),
the test holds the store's write lock from inside the build step until the tag shows in
the registry: the worker's write of the result waits on the lock, and is killed there.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid

import pytest

from github_app.jobs import BuildState, JobState
from github_app.store import DATABASE_NAME
from tests.slipway_harness import SECRET, Harness

pytestmark = pytest.mark.docker

APP = b"print('hello')\n"


def releases(registry, repo) -> list[str]:
    """The repository's release tags (X.Y.Z), without the floating ones (X.Y, X, latest)."""
    return sorted(tag for tag in registry.tags(repo.name) if tag.count(".") == 2)


def only(items):
    assert len(items) == 1, items
    return items[0]


def worker_process(fake_github, registry, data_dir, key_path) -> subprocess.Popen:
    key_path.write_bytes(fake_github.private_key_pem)
    env = {
        **os.environ,
        "GITHUB_APP_ID": str(fake_github.app_id),
        "GITHUB_PRIVATE_KEY_PATH": str(key_path),
        "GITHUB_WEBHOOK_SECRET": SECRET,
        "GITHUB_API_URL": fake_github.url,
        "REGISTRY": registry.address,
        "DATA_DIR": str(data_dir),
        "BUILD_NETWORK": "host",
        "PUBLIC_URL": "http://slipway.example",
        "ALLOWED_OWNERS": "octo-org",
        "WORKER_THREADS": "1",  # the one thread builds; no idle thread needs the store
    }
    return subprocess.Popen([sys.executable, "-m", "github_app", "worker"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for(what: str, condition, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def test_killed_after_the_push_the_resumed_job_reports_that_image_and_pushes_nothing(
        fake_github, registry, data_dir, tmp_path):
    """semver:patch pushes 0.0.1; the worker dies before recording it. The job, resumed,
    reuses its stored 0.0.1 (a fresh bump would now give 0.0.2), finds it in the registry
    built from this merge, and reports that digest: one version, one digest, one success."""
    harness = Harness(fake_github, registry.address, data_dir)
    worker = None
    try:
        token = f"exactly-once-{uuid.uuid4().hex[:8]}"
        dockerfile = ("FROM python:3.11-slim\nCOPY app.py /app/app.py\n"
                      f"RUN echo {token} && sleep 2\n")
        repo = harness.repository({"Dockerfile": dockerfile, "app.py": APP})
        harness.deliver("pull_request", repo.merged(labels=["semver:patch"]))
        worker = worker_process(fake_github, registry, data_dir, tmp_path / "app.pem")

        def building():
            builds = harness.store.recent_builds(repository=repo.full_name)
            if not builds or builds[0].version is None:
                return None
            log = data_dir / "logs" / f"{builds[0].id}.log"
            return builds[0] if log.exists() and token in log.read_text() else None

        build = wait_for("the build step to run", building)
        assert build.version == "0.0.1" and build.state is BuildState.RUNNING

        lock = sqlite3.connect(data_dir / DATABASE_NAME, isolation_level=None, timeout=10)
        try:
            lock.execute("BEGIN IMMEDIATE")
            wait_for("the push", lambda: "0.0.1" in registry.tags(repo.name))
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        stderr = worker.stderr.read().decode(errors="replace")

        # The crash hit the gap: pushed, not recorded.
        pushed = registry.manifest_digest(repo.name, "0.0.1")
        lost = harness.store.get_build(build.id)
        assert lost.state is BuildState.RUNNING and lost.digest is None, stderr[-3000:]
        assert harness.store.job_counts()[JobState.RUNNING] == 1

        # Once the killed worker's lease lapses (LEASE_SECONDS) the job runs again.
        assert harness.store.requeue_interrupted(now=time.time() + 61)
        harness.run_worker()

        assert releases(registry, repo) == ["0.0.1"]  # no second version
        assert registry.manifest_digest(repo.name, "0.0.1") == pushed  # not pushed again
        run = only(harness.final_check_runs(repo))
        assert run["status"] == "completed" and run["conclusion"] == "success"
        assert f"{repo.name}:0.0.1@{pushed}" in run["output"]["summary"]
        done = harness.store.get_build(build.id)
        assert done.state is BuildState.SUCCEEDED and done.digest == pushed and done.reported
        log = (data_dir / "logs" / f"{build.id}.log").read_text()
        assert "already in the registry" in log and "not pushing again" in log
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
        harness.close()
