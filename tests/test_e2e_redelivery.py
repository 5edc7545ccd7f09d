"""End to end: merges GitHub could not deliver while Slipway was down are built once it is up.

The fake GitHub delivers to the App's webhook URL and logs each attempt; Slipway (a real
`python -m github_app serve` process, or the harness's app with a sweeper) reads that log,
asks for redeliveries, and the real engine and registry build and publish the merge.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace

import pytest
import requests
from stub_endpoint import StubEndpoint

from github_app.jobs import JobStore
from github_app.sweep import Sweeper
from tests.slipway_harness import SECRET, TINY_DOCKERFILE, Harness
from tests.test_e2e import _free_port, _start_serve, _wait, only, slipway_env

pytestmark = pytest.mark.docker

APP = b"print('hello from a redelivered merge')\n"


@pytest.fixture
def harness(fake_github, registry, data_dir):
    h = Harness(fake_github, registry.address, data_dir / "harness")
    fake_github.webhook_secret = SECRET
    yield h
    h.close()
    assert fake_github.rejections == [], "the fake GitHub refused a request Slipway sent"


def tiny_repo(harness):
    return harness.repository({"Dockerfile": TINY_DOCKERFILE, "app.py": APP})


def asks_for(fake, guid) -> list:
    """The POST .../attempts requests for the deliveries of `guid`."""
    ids = {a.id for a in fake.deliveries.of_guid(guid)}
    return [r for r in fake.requests
            if r.method == "POST" and r.path.endswith("/attempts")
            and int(r.path.split("/")[-2]) in ids]


def log_reads(fake) -> list:
    return [r for r in fake.requests if r.path == "/app/hook/deliveries"]


def completed(harness, repo) -> bool:
    runs = harness.final_check_runs(repo)
    return bool(runs) and all(run["status"] == "completed" for run in runs)


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)


def test_merges_missed_while_down_or_refused_with_503_are_built_after_start_up(
        harness, fake_github, registry, data_dir, tmp_path):
    """One delivery could not connect (status 0), one got a 503: serve builds both at start-up."""
    down, refused = tiny_repo(harness), tiny_repo(harness)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    fake_github.webhook_url = f"{url}/webhook"
    missed = fake_github.send_webhook("pull_request", down.merged(labels=["version:1.0.0"]))
    assert missed.status_code == 0
    with StubEndpoint(status=503) as balancer:  # a load balancer with no Slipway behind it
        fake_github.webhook_url = f"{balancer.url}/webhook"
        answered = fake_github.send_webhook("pull_request",
                                            refused.merged(labels=["version:2.0.0"]))
    assert answered.status_code == 503
    fake_github.webhook_url = f"{url}/webhook"

    env = slipway_env(fake_github, registry, data_dir / "serve", tmp_path / "app.pem",
                      PUBLIC_URL=url, PORT=str(port), REDELIVER_INTERVAL="2")
    serve = _start_serve(env, url)
    try:
        _wait(lambda: completed(harness, down) and completed(harness, refused),
              "both missed merges to be built", timeout=120)
    finally:
        stop(serve)
    assert only(harness.final_check_runs(down))["conclusion"] == "success"
    assert only(harness.final_check_runs(refused))["conclusion"] == "success"
    assert "1.0.0" in registry.tags(down.name) and "2.0.0" in registry.tags(refused.name)
    for delivery in (missed, answered):
        assert len(asks_for(fake_github, delivery.guid)) == 1
        redelivered = fake_github.deliveries.of_guid(delivery.guid)[-1]
        assert (redelivered.redelivery, redelivered.status_code) == (True, 202)
    with JobStore.from_data_dir(data_dir / "serve") as store:
        assert store.get_job_by_delivery(missed.guid) is not None
        assert store.get_job_by_delivery(answered.guid) is not None


def run_sweeper(harness):
    """The harness's app sweeping every second (REDELIVER_INTERVAL=1) in a thread."""
    sweeper = Sweeper(replace(harness.config, redeliver_interval=1), harness.store,
                      harness.github(), metrics=harness.runtime.metrics)
    stop_event = threading.Event()
    thread = threading.Thread(target=sweeper.run, args=(stop_event,), daemon=True)
    thread.start()
    return stop_event, thread


def test_a_redelivered_merge_is_built_once_and_one_that_succeeded_is_not_sent_again(
        harness, fake_github, registry):
    harness_url = f"{harness.url}/webhook"
    missed_repo, live_repo = tiny_repo(harness), tiny_repo(harness)
    fake_github.webhook_url = f"http://127.0.0.1:{_free_port()}/webhook"
    missed = fake_github.send_webhook("pull_request", missed_repo.merged(labels=["version:3.0.0"]))
    fake_github.webhook_url = harness_url
    live = fake_github.send_webhook("pull_request", live_repo.merged(labels=["version:4.0.0"]))
    assert (missed.status_code, live.status_code) == (0, 202)

    stop_event, thread = run_sweeper(harness)
    try:
        _wait(lambda: harness.store.get_job_by_delivery(missed.guid) is not None,
              "the missed merge to be redelivered")
        harness.run_worker()
        reads = len(log_reads(fake_github))
        _wait(lambda: len(log_reads(fake_github)) >= reads + 2, "two more sweeps")
    finally:
        stop_event.set()
        thread.join(10)
    # A person presses "Redeliver" too: the delivery id is the same, nothing builds twice.
    assert harness.deliver("pull_request", missed_repo.merged(labels=["version:3.0.0"]),
                           delivery_id=missed.guid).status_code == 200
    harness.run_worker()

    assert len(asks_for(fake_github, missed.guid)) == 1
    assert asks_for(fake_github, live.guid) == []
    assert only(harness.final_check_runs(missed_repo))["conclusion"] == "success"
    assert only(harness.final_check_runs(live_repo))["conclusion"] == "success"
    assert "3.0.0" in registry.tags(missed_repo.name)
    assert len(harness.store.recent_builds(repository=missed_repo.full_name)) == 1
    assert harness.store.last_sweep().summary["failed"] == 0


def test_a_merge_missed_before_a_full_page_of_later_deliveries_is_found_on_page_two(
        harness, fake_github, registry):
    repo = tiny_repo(harness)
    fake_github.webhook_url = None  # nothing at the URL: status 0
    missed = fake_github.send_webhook("pull_request", repo.merged(labels=["version:5.0.0"]))
    for _ in range(120):  # later deliveries that Slipway answered
        fake_github.deliveries.record("ping", {"zen": "Mind your words."}, status_code=200)
    fake_github.webhook_url = f"{harness.url}/webhook"

    stop_event, thread = run_sweeper(harness)
    try:
        _wait(lambda: harness.store.get_job_by_delivery(missed.guid) is not None,
              "the missed merge on page two to be redelivered")
    finally:
        stop_event.set()
        thread.join(10)
    harness.run_worker()
    assert [r.query.get("cursor") is not None for r in log_reads(fake_github)][:2] == \
        [False, True]
    assert "5.0.0" in registry.tags(repo.name)
    assert len(asks_for(fake_github, missed.guid)) == 1


def serve_process(env: dict) -> subprocess.Popen:
    # Its own process group: the test ends Granian and its worker process together.
    return subprocess.Popen(
        [sys.executable, "-m", "github_app", "serve", "--host", "127.0.0.1"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


def test_two_processes_on_one_store_sweep_once(harness, fake_github, registry, data_dir,
                                               tmp_path):
    """Two serve processes start together on one DATA_DIR: one sweep, one redelivery, one build."""
    repo = tiny_repo(harness)
    ports = [_free_port(), _free_port()]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    fake_github.webhook_url = f"{urls[0]}/webhook"
    missed = fake_github.send_webhook("pull_request", repo.merged(labels=["version:6.0.0"]))
    processes = [
        serve_process(slipway_env(fake_github, registry, data_dir / "shared",
                                  tmp_path / f"app{i}.pem", PUBLIC_URL=url, PORT=str(port),
                                  REDELIVER_INTERVAL="120"))
        for i, (port, url) in enumerate(zip(ports, urls, strict=True))]
    try:
        _wait(lambda: all(answers(url) for url in urls), "both processes to answer")
        _wait(lambda: completed(harness, repo), "the missed merge to be built", timeout=120)
        time.sleep(2)  # room for a second sweep, were there one
    finally:
        for process in processes:
            stop(process)
    assert len(log_reads(fake_github)) == 1
    assert len(asks_for(fake_github, missed.guid)) == 1
    assert only(harness.final_check_runs(repo))["conclusion"] == "success"
    with JobStore.from_data_dir(data_dir / "shared") as store:
        assert len(store.recent_builds(repository=repo.full_name)) == 1
