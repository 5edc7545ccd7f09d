"""Stopping and supervision with real processes and real signals: `python -m github_app
worker` and `serve` on SIGTERM, leases across processes, and a worker thread that dies."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import requests

from github_app.jobs import BuildState, JobState
from tests.slipway_harness import SECRET, TINY_DOCKERFILE, Harness
from tests.test_e2e import APP, _free_port, _wait, only, slipway_env

pytestmark = pytest.mark.docker


def slow_dockerfile(seconds: int) -> str:
    # A new token each run: a cached step would not be slow.
    return TINY_DOCKERFILE.replace(
        "RUN python3 -c \"print('compiled', 1 + 1)\"",
        f"RUN echo slow-{time.time_ns()} && sleep {seconds} && echo done",
    )


@pytest.fixture
def harness(fake_github, registry, data_dir):
    h = Harness(fake_github, registry.address, data_dir)
    yield h
    h.close()
    assert fake_github.rejections == [], "the fake GitHub refused a request Slipway sent"


def start_worker(env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "github_app", "worker"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _start_serve(env: dict, url: str) -> subprocess.Popen:
    """`serve` in its own process group, once its /healthz answers (slowly, on a busy host)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "github_app", "serve", "--host", "127.0.0.1"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )

    def up():
        try:
            return requests.get(f"{url}/healthz", timeout=10).status_code in (200, 503)
        except requests.RequestException:
            return False

    try:
        _wait(up, "serve to answer /healthz")
    except BaseException:  # never leave a serve behind when it did not come up
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return proc


def wait_until_building(harness, repo) -> None:
    _wait(lambda: [r for r in harness.final_check_runs(repo) if r["status"] == "in_progress"],
          "the check run to open")
    time.sleep(1.5)  # inside the slow RUN step


def test_sigterm_lets_a_running_build_finish_within_stop_grace_and_exits_0(
        harness, fake_github, registry, data_dir, tmp_path):
    """SIGTERM mid-build: the worker takes no new job, the build finishes and is reported,
    and the process exits 0."""
    repo = harness.repository({"Dockerfile": slow_dockerfile(4), "app.py": APP})
    other = harness.repository({"Dockerfile": TINY_DOCKERFILE, "app.py": APP})
    harness.deliver("pull_request", repo.merged(labels=["version:1.0.0"]))
    worker = start_worker(slipway_env(fake_github, registry, data_dir, tmp_path / "k.pem",
                                      WORKER_THREADS="1", STOP_GRACE="60"))
    wait_until_building(harness, repo)
    harness.deliver("pull_request", other.merged(labels=["version:1.0.0"]))
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=90) == 0, worker.stderr.read()[-3000:]

    run = only(harness.final_check_runs(repo))
    assert (run["status"], run["conclusion"]) == ("completed", "success")
    assert "1.0.0" in registry.tags(repo.name)
    assert harness.final_check_runs(other) == [], "a stopping worker claims no new job"
    assert harness.store.job_counts()[JobState.QUEUED] == 1


def test_sigterm_hands_back_a_build_still_running_after_stop_grace_not_counted(
        harness, fake_github, registry, data_dir, tmp_path):
    """Past STOP_GRACE the job goes back to the queue at once, its attempt not counted, the
    process exits 0, and the next worker finishes the same check run."""
    repo = harness.repository({"Dockerfile": slow_dockerfile(30), "app.py": APP})
    harness.deliver("pull_request", repo.merged(labels=["version:2.0.0"]))
    worker = start_worker(slipway_env(fake_github, registry, data_dir, tmp_path / "k.pem",
                                      WORKER_THREADS="1", STOP_GRACE="2"))
    wait_until_building(harness, repo)
    stopped = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, worker.stderr.read()[-3000:]
    assert time.monotonic() - stopped < 12, "the job waited for its build, not for STOP_GRACE"
    assert "handed back to the queue" in worker.stderr.read()

    job = only(list(harness.store.recent_builds(repository=repo.full_name)))
    queued = harness.store.get_job(job.job_id)
    assert (queued.state, queued.lease_until) == (JobState.QUEUED, None)
    assert (queued.attempts, queued.handed_back) == (1, 1), "handed back: not an interruption"
    assert only(harness.final_check_runs(repo))["status"] == "in_progress"
    assert registry.tags(repo.name) == [], "nothing was pushed by the stopped worker"


def test_serve_without_worker_threads_leaves_a_running_workers_job_alone(
        harness, fake_github, registry, data_dir, tmp_path):
    """`serve` with WORKER_THREADS=0 starting beside a building `worker` does not take its
    job: the worker finishes it once, and serve's /healthz shows the worker's heartbeat."""
    repo = harness.repository({"Dockerfile": slow_dockerfile(6), "app.py": APP})
    harness.deliver("pull_request", repo.merged(labels=["version:3.0.0"]))
    env = slipway_env(fake_github, registry, data_dir, tmp_path / "k.pem", WORKER_THREADS="1")
    worker = start_worker(env)
    serve = None
    try:
        wait_until_building(harness, repo)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        serve = _start_serve({**env, "WORKER_THREADS": "0", "PORT": str(port),
                              "PUBLIC_URL": url}, url)
        job = harness.store.get_job(only(harness.store.recent_builds()).job_id)
        assert (job.state, job.attempts) == (JobState.RUNNING, 1), "serve took the job back"
        health = requests.get(f"{url}/healthz", timeout=10).json()
        assert health["checks"]["worker"] == "ok" and health["worker_heartbeat_age"] < 15

        _wait(lambda: harness.final_check_runs(repo)[0]["status"] == "completed",
              "the worker to finish", timeout=90)
        run = only(harness.final_check_runs(repo))
        assert run["conclusion"] == "success"
        assert len([s for s in harness.statuses(repo) if s["state"] == "success"]) == 1
        assert harness.store.get_job(job.id).attempts == 1
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            assert worker.wait(timeout=60) == 0
        finally:
            if serve is not None:
                os.killpg(serve.pid, signal.SIGTERM)
                assert serve.wait(timeout=60) == 0


def test_serve_on_sigterm_hands_back_its_build_and_exits_0(
        harness, fake_github, registry, data_dir, tmp_path):
    """`serve` builds in a web process: SIGTERM there also hands the job back after STOP_GRACE,
    and the whole process group exits 0."""
    repo = harness.repository({"Dockerfile": slow_dockerfile(30), "app.py": APP})
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = slipway_env(fake_github, registry, data_dir, tmp_path / "k.pem", PORT=str(port),
                      PUBLIC_URL=url, STOP_GRACE="2", WORKER_THREADS="1")
    serve = _start_serve(env, url)
    harness.deliver("pull_request", repo.merged(labels=["version:4.0.0"]))
    wait_until_building(harness, repo)
    os.killpg(serve.pid, signal.SIGTERM)
    assert serve.wait(timeout=45) == 0
    job = harness.store.get_job(only(harness.store.recent_builds()).job_id)
    assert (job.state, job.attempts - job.handed_back) == (JobState.QUEUED, 0)


def test_a_worker_thread_that_dies_is_logged_and_replaced(harness, registry, caplog):
    """The store locked past its busy timeout kills a worker thread's claim; the thread is
    logged and replaced, and the next merge is built."""
    caplog.set_level(logging.WARNING)
    worker = harness.worker(threads=1)
    running = threading.Thread(target=worker.run, daemon=True)
    running.start()
    try:
        _wait(lambda: harness.store.last_heartbeat() is not None, "the worker to start")
        locker = sqlite3.connect(harness.store.path, isolation_level=None, timeout=10)
        locker.execute("BEGIN EXCLUSIVE")
        time.sleep(7)  # past the store's 5 s busy timeout: claim() raises
        locker.execute("ROLLBACK")
        locker.close()
        _wait(lambda: "worker thread 0 started again" in caplog.text, "the thread to be replaced",
              timeout=20)
        assert "worker thread 0 died; starting another" in caplog.text
        assert "database is locked" in caplog.text

        repo = harness.repository({"Dockerfile": TINY_DOCKERFILE, "app.py": APP})
        harness.deliver("pull_request", repo.merged(labels=["version:5.0.0"]))
        _wait(lambda: [r for r in harness.final_check_runs(repo) if r["status"] == "completed"],
              "the replacement thread to build", timeout=90)
        assert only(harness.store.recent_builds()).state is BuildState.SUCCEEDED
    finally:
        worker.stop()
        running.join(timeout=60)
    samples = harness.runtime.metrics.exposition().decode()
    assert "slipway_worker_threads_replaced_total 1.0" in samples
    assert SECRET not in caplog.text
