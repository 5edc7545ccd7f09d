"""Exactly once across crashes, with the fault at the real boundary: a `worker` process
SIGKILLed the moment the registry answers its push (the manifest PUT), before Slipway
could hear of it, let alone record it.

The real engine, registry, store and fake GitHub; Slipway's code is not stubbed. The
registry is reached through a TCP proxy (tests/tcp_proxy.py) that sees the registry's
`201` to the manifest PUT, kills the worker, and never forwards that answer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from github_app.jobs import BuildState, JobState
from tests.slipway_harness import SECRET, Harness
from tests.tcp_proxy import Proxy

pytestmark = pytest.mark.docker

APP = b"print('hello')\n"
# No base layers: through the proxy's new registry address nothing large is uploaded.
SCRATCH = "FROM scratch\nCOPY app.py /app.py\n"


def releases(registry, repo) -> list[str]:
    """The repository's release tags (X.Y.Z), without the floating ones (X.Y, X, latest)."""
    return sorted(tag for tag in registry.tags(repo.name) if tag.count(".") == 2)


def only(items):
    assert len(items) == 1, items
    return items[0]


def worker_process(fake_github, address, data_dir, key_path) -> subprocess.Popen:
    key_path.write_bytes(fake_github.private_key_pem)
    env = {
        **os.environ,
        "GITHUB_APP_ID": str(fake_github.app_id),
        "GITHUB_PRIVATE_KEY_PATH": str(key_path),
        "GITHUB_WEBHOOK_SECRET": SECRET,
        "GITHUB_API_URL": fake_github.url,
        "REGISTRY": address,
        "DATA_DIR": str(data_dir),
        "BUILD_NETWORK": "host",
        "PUBLIC_URL": "http://slipway.example",
        "ALLOWED_OWNERS": "octo-org",
        "WORKER_THREADS": "1",
    }
    return subprocess.Popen([sys.executable, "-m", "github_app", "worker"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_killed_as_the_push_lands_the_resumed_job_reports_that_image_and_pushes_nothing(
        fake_github, registry, data_dir, tmp_path):
    """semver:patch pushes 0.0.1 and the worker dies before it learns so. The job, resumed,
    reuses its stored 0.0.1 (a fresh bump would now give 0.0.2), finds it in the registry
    built from this merge, and reports that digest: one version, one digest, one success."""
    killed = threading.Event()
    worker = None

    def kill_the_worker():
        worker.send_signal(signal.SIGKILL)
        killed.set()

    proxy = Proxy(registry.address, on_manifest_put=kill_the_worker)
    proxy.up()
    harness = Harness(fake_github, proxy.address, data_dir)
    try:
        repo = harness.repository({"Dockerfile": SCRATCH, "app.py": APP})
        harness.deliver("pull_request", repo.merged(labels=["semver:patch"]))
        worker = worker_process(fake_github, proxy.address, data_dir, tmp_path / "app.pem")
        assert killed.wait(120), "the push never reached the registry"
        worker.wait(timeout=10)
        stderr = worker.stderr.read().decode(errors="replace")

        # The kill hit the gap: pushed, not recorded.
        pushed = registry.manifest_digest(repo.name, "0.0.1")
        build = only(harness.store.recent_builds(repository=repo.full_name))
        assert build.version == "0.0.1"
        assert build.state is BuildState.RUNNING and build.digest is None, stderr[-3000:]
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
        log = harness.store.build_log(build.id).read()[0]
        assert "already in the registry" in log and "not pushing again" in log
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
        harness.close()
        proxy.down()
