"""The redelivery sweep against the fake GitHub's delivery log and a real store.

Real HTTP, real JWTs, a real SQLite store; what reaches the App's webhook URL is recorded by
a stub endpoint (the end-to-end tests put Slipway itself there: test_e2e_redelivery.py).
"""

from __future__ import annotations

import threading
import time

import pytest
from stub_endpoint import StubEndpoint

from github_app.config import Config
from github_app.github import GitHubApp
from github_app.jobs import JobStore
from github_app.metrics import Metrics
from github_app.retries import RetryPolicy
from github_app.sweep import Sweeper
from tests.payloads import load_event, merged_pull_request

DAY = 24 * 3600


@pytest.fixture
def store(store_location):
    """The store, SQLite and then PostgreSQL: the sweep's SQL runs on both."""
    with JobStore(store_location) as store:
        yield store


@pytest.fixture
def sqlite_store(data_dir):
    """For the tests that wait on the clock: once is enough."""
    with JobStore.from_data_dir(data_dir) as store:
        yield store


@pytest.fixture
def receiver(fake_github):
    """What sits at the App's webhook URL: records every delivery, answers 202."""
    with StubEndpoint(status=202) as stub:
        fake_github.webhook_url = stub.url + "/webhook"
        fake_github.webhook_secret = "sweep secret"
        yield stub


def make_sweeper(fake, store, *, metrics=None, sleeps=None, name=None, **settings):
    config = Config(app_id=str(fake.app_id), private_key=fake.private_key_pem,
                    webhook_secret="sweep secret", api_url=fake.url, **settings)
    sleeps = sleeps if sleeps is not None else []
    github = GitHubApp(fake.url, fake.app_id, fake.private_key_pem,
                       retry=RetryPolicy(max_attempts=3, base_delay=0.01, max_total_wait=30,
                                         sleep=sleeps.append, jitter=lambda: 0.0))
    return Sweeper(config, store, github, metrics=metrics, name=name)


def sweep(sweeper):
    """One sweep now, as at start-up; its summary."""
    summary = sweeper.sweep_if_due(due_before=time.time())
    assert summary is not None, "the sweep lease was not free"
    return summary


def failed_merge(fake, status_code=0, **options):
    return fake.deliveries.record("pull_request", merged_pull_request(), status_code=status_code,
                                  **options)


def log_reads(fake) -> list:
    return [r for r in fake.requests if r.path == "/app/hook/deliveries"]


def asks(fake) -> list:
    return [r for r in fake.requests if r.path.endswith("/attempts")]


def test_a_delivery_that_could_not_connect_is_asked_for_once(fake_github, store, receiver):
    """Status 0: asked for, redelivered with its guid; the next sweep asks nothing more."""
    missed = failed_merge(fake_github, status_code=0)
    sweeper = make_sweeper(fake_github, store)
    summary = sweep(sweeper)
    assert summary.asked == [missed.guid] and summary.failed == 1
    fake_github.deliveries.wait_for_redeliveries()
    [(headers, _)] = receiver.received
    assert headers["X-Github-Delivery"] == missed.guid
    again = sweep(sweeper)
    assert again.asked == [] and again.failed == 0  # the redelivery succeeded
    assert len(asks(fake_github)) == 1


def test_a_503_is_asked_for_and_a_pending_request_is_not_asked_twice(fake_github, store):
    """Asked, GitHub has not tried yet: the next sweeps leave it pending."""
    missed = failed_merge(fake_github, status_code=503)
    fake_github.webhook_url = None  # GitHub's redelivery attempt has not happened yet
    fake_github.fail_next("POST", r"/attempts$", 202, body={})
    sweeper = make_sweeper(fake_github, store)
    assert sweep(sweeper).asked == [missed.guid]
    second = sweep(sweeper)
    assert (second.asked, second.pending) == ([], 1)
    assert len(asks(fake_github)) == 1


def test_deliveries_that_succeeded_or_that_the_store_holds_are_not_asked_for(
        fake_github, store, receiver):
    fake_github.deliveries.record("pull_request", merged_pull_request(), status_code=202)
    held = failed_merge(fake_github, status_code=0)  # Slipway took it, GitHub timed out
    store.enqueue(held.guid, repository="octo/app", kind="merge", request={})
    retried = failed_merge(fake_github, status_code=0)
    fake_github.deliveries.record("pull_request", merged_pull_request(), status_code=202,
                                  guid=retried.guid, redelivery=True)
    summary = sweep(make_sweeper(fake_github, store))
    assert summary.asked == [] and (summary.failed, summary.received) == (1, 1)
    assert asks(fake_github) == []


def test_events_slipway_ignores_are_not_asked_for(fake_github, store, receiver):
    fake_github.deliveries.record("issues", load_event("issues", "opened"), status_code=0)
    fake_github.deliveries.record("pull_request", load_event("pull_request", "assigned"),
                                  status_code=0)
    assert sweep(make_sweeper(fake_github, store)).failed == 0
    assert asks(fake_github) == []


def test_pages_are_followed_past_the_first_one(fake_github, store, receiver):
    """250 deliveries newer than the missed one: three pages of 100, then it is asked for."""
    missed = failed_merge(fake_github)
    for _ in range(250):
        fake_github.deliveries.record("ping", {"zen": "Design for failure."}, status_code=200)
    summary = sweep(make_sweeper(fake_github, store))
    assert (summary.pages, summary.read) == (3, 251)
    assert summary.asked == [missed.guid]
    assert [r.query.get("per_page") for r in log_reads(fake_github)] == ["100"] * 3


def test_pages_stop_at_the_window(fake_github, store, receiver):
    """A missed delivery older than REDELIVER_WINDOW is left alone, and older pages unread."""
    now = time.time()
    for hours in (47, 46, 45):
        failed_merge(fake_github, delivered_at=now - hours * 3600)
    for _ in range(150):
        fake_github.deliveries.record("ping", {}, status_code=200, delivered_at=now - 3 * 3600)
    for _ in range(100):
        fake_github.deliveries.record("ping", {}, status_code=200)
    summary = sweep(make_sweeper(fake_github, store, redeliver_window=24))
    # Page 3 holds the three old deliveries: read, since it starts inside the window, but
    # nothing there is asked for, and no fourth page is asked for.
    assert summary.pages == 3 and summary.failed == 0 and summary.asked == []
    assert len(log_reads(fake_github)) == 3


def test_the_window_ends_the_reading_early(fake_github, store, receiver):
    now = time.time()
    for _ in range(300):
        fake_github.deliveries.record("ping", {}, status_code=200, delivered_at=now - 30 * 3600)
    fake_github.deliveries.record("ping", {}, status_code=200)
    summary = sweep(make_sweeper(fake_github, store, redeliver_window=24))
    assert summary.pages == 1 and len(log_reads(fake_github)) == 1


def test_a_rate_limit_is_waited_out_as_github_asks(fake_github, store, receiver):
    missed = failed_merge(fake_github)
    fake_github.fail_next("GET", r"^/app/hook/deliveries$", 429, headers={"Retry-After": "7"},
                          body={"message": "You have exceeded a secondary rate limit."})
    sleeps = []
    summary = sweep(make_sweeper(fake_github, store, sleeps=sleeps))
    assert sleeps == [7.0]
    assert summary.asked == [missed.guid] and summary.errors == []


def test_a_log_that_cannot_be_read_is_an_error_counted_and_kept(fake_github, store, receiver):
    """GitHub answers 500 to every read: the sweep ends with the error, counted in /metrics."""
    fake_github.fail_next("GET", r"^/app/hook/deliveries$", 500, times=3)
    metrics = Metrics()
    summary = sweep(make_sweeper(fake_github, store, metrics=metrics))
    assert summary.pages == 0 and "500" in summary.errors[0]
    assert store.last_sweep().summary["errors"] == summary.errors
    text = metrics.exposition().decode()
    assert 'slipway_redeliver_errors_total{stage="read"} 1.0' in text


def test_a_redelivery_github_refused_is_asked_again_next_sweep(fake_github, store, receiver):
    missed = failed_merge(fake_github)
    fake_github.fail_next("POST", r"/attempts$", 422,
                          body={"message": "Validation Failed", "documentation_url": "x"})
    sweeper = make_sweeper(fake_github, store)
    first = sweep(sweeper)
    assert first.asked == [] and "422" in first.errors[0]
    assert sweep(sweeper).asked == [missed.guid]


def test_metrics_count_missed_asked_and_sweeps_without_names(fake_github, store, receiver):
    payload = merged_pull_request()
    fake_github.deliveries.record("pull_request", payload, status_code=0)
    fake_github.deliveries.record("pull_request", merged_pull_request(), status_code=503)
    metrics = Metrics()
    sweeper = make_sweeper(fake_github, store, metrics=metrics)
    sweep(sweeper)
    fake_github.deliveries.wait_for_redeliveries()
    sweep(sweeper)
    text = metrics.exposition().decode()
    assert "slipway_redeliver_missed_deliveries_total 2.0" in text
    assert "slipway_redeliveries_asked_total 2.0" in text
    assert "slipway_redeliver_sweeps_total 2.0" in text
    for name in (payload["repository"]["name"], payload["repository"]["owner"]["login"]):
        assert name not in text


def test_one_sweep_at_a_time_and_one_per_interval_across_sweepers(fake_github, store, receiver,
                                                                  store_location):
    """Two processes' sweepers on one store: the second finds the lease taken or the sweep done."""
    failed_merge(fake_github)
    first = make_sweeper(fake_github, store, name="node-a", redeliver_interval=300)
    second = make_sweeper(fake_github, JobStore(store_location), name="node-b",
                          redeliver_interval=300)
    assert store.claim_sweep("node-a", lease_seconds=600, due_before=time.time())
    assert second.sweep_if_due(due_before=time.time()) is None  # node-a holds the lease
    store.finish_sweep("node-a", {"note": "done"})
    assert second.sweep_if_due(due_before=time.time() - 300) is None  # swept just now
    assert first.sweep_if_due(due_before=time.time()) is not None
    assert len(asks(fake_github)) == 1


def test_a_lease_left_by_a_killed_sweeper_lapses(fake_github, store_location, receiver):
    clock = [time.time()]
    store = JobStore(store_location, clock=lambda: clock[0])
    assert store.claim_sweep("killed", lease_seconds=600, due_before=clock[0])
    assert not store.claim_sweep("other", lease_seconds=600, due_before=clock[0])
    clock[0] += 601
    assert store.claim_sweep("other", lease_seconds=600, due_before=clock[0])
    assert not store.renew_sweep("killed", lease_seconds=600)


def test_the_sweeper_sweeps_at_start_up_and_then_every_interval(fake_github, sqlite_store,
                                                                receiver):
    sweeper = make_sweeper(fake_github, sqlite_store, redeliver_interval=1)
    stop = threading.Event()
    thread = threading.Thread(target=sweeper.run, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while len(log_reads(fake_github)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(5)
    assert len(log_reads(fake_github)) >= 3
    assert sqlite_store.last_sweep().finished_at is not None


def test_interval_0_never_sweeps(fake_github, sqlite_store, receiver):
    stop = threading.Event()
    make_sweeper(fake_github, sqlite_store, redeliver_interval=0).run(stop)  # returns at once
    assert log_reads(fake_github) == []


def test_a_worker_process_joins_only_the_periodic_sweeps(fake_github, sqlite_store, receiver):
    """at_start=False: no sweep at start-up, none within the first interval."""
    sweeper = make_sweeper(fake_github, sqlite_store, redeliver_interval=2)
    stop = threading.Event()
    thread = threading.Thread(target=sweeper.run, args=(stop,), kwargs={"at_start": False},
                              daemon=True)
    thread.start()
    try:
        time.sleep(1.2)
        assert log_reads(fake_github) == []
        deadline = time.monotonic() + 10
        while not log_reads(fake_github) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert log_reads(fake_github) != []
    finally:
        stop.set()
        thread.join(5)


def test_metrics_show_the_last_sweep_of_any_process_from_the_store(fake_github, data_dir,
                                                                    receiver):
    """/metrics of a web process that did not sweep: the failed deliveries of the last sweep."""
    from github_app import create_app

    failed_merge(fake_github, status_code=0)
    failed_merge(fake_github, status_code=503)
    config = Config(app_id=str(fake_github.app_id), private_key=fake_github.private_key_pem,
                    webhook_secret="sweep secret", api_url=fake_github.url, data_dir=data_dir)
    app = create_app(config, engine_ping=lambda: None)
    store = app.extensions["slipway"].store
    before = app.test_client().get("/metrics").get_data(as_text=True)
    assert "slipway_redeliver_failed_in_window" not in before  # no sweep yet
    sweep(make_sweeper(fake_github, JobStore(store.path)))
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert "slipway_redeliver_failed_in_window 2.0" in text
    [value] = [line.split()[1] for line in text.splitlines()
               if line.startswith("slipway_redeliver_last_sweep_timestamp_seconds ")]
    assert float(value) == pytest.approx(store.last_sweep().finished_at)
