"""The job store on real SQLite files: dedupe, restart, claim order, requeue, builds."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from itertools import pairwise

import pytest

from github_app.jobs import (
    SCHEMA_VERSION,
    BuildState,
    EnqueueResult,
    JobKind,
    JobState,
    JobStore,
    StoreUnavailable,
    UnknownBuild,
)


def enqueue(store, delivery_id, repository="octo/app", kind="merge", **request):
    return store.enqueue(
        delivery_id, repository=repository, kind=kind, request={"pr": 1, **request}
    )


def new_build(store, job_id, service="app", head_sha="h" * 40, **fields):
    build_id = store.create_build(
        job_id,
        repository=store.get_job(job_id).repository,
        service=service,
        pr_number=7,
        head_sha=head_sha,
        merge_sha="m" * 40,
        check_run_name="docker build",
    )
    return store.update_build(build_id, **fields) if fields else store.get_build(build_id)


# -- enqueue -------------------------------------------------------------------


def test_enqueue_is_idempotent_per_delivery_id(store):
    """A redelivered webhook returns the job of its first delivery and creates none."""
    first = enqueue(store, "d-1")
    again = enqueue(store, "d-1", pr=2)
    other = enqueue(store, "d-2")

    assert first == EnqueueResult(job_id=first.job_id, created=True)
    assert again == EnqueueResult(job_id=first.job_id, created=False)
    assert other.created and other.job_id != first.job_id
    assert store.get_job(first.job_id).request == {"pr": 1}
    assert store.queue_depth() == 2


def test_enqueue_stores_the_request(store, clock):
    """A queued job carries its request decoded, its kind and repository, and no worker."""
    result = store.enqueue(
        "d-1",
        repository="octo/app",
        kind="rerun_check_run",
        request={"pr": 5, "labels": ["a", "b"]},
    )
    job = store.get_job(result.job_id)
    assert job.delivery_id == "d-1"
    assert job.repository == "octo/app"
    assert job.kind is JobKind.RERUN_CHECK_RUN
    assert job.request == {"pr": 5, "labels": ["a", "b"]}
    assert job.state is JobState.QUEUED
    assert (job.attempts, job.worker_id, job.started_at) == (0, None, None)
    assert job.created_at == clock.now
    assert store.get_job_by_delivery("d-1") == job
    assert store.get_job(9999) is None


def test_enqueue_rejects_an_unknown_kind(store):
    with pytest.raises(ValueError):
        enqueue(store, "d-1", kind="deploy")


def test_concurrent_enqueues_of_one_delivery_create_one_job(store_location):
    """16 threads racing with the same delivery id get one job and the same id."""
    store = JobStore(store_location)
    barrier = threading.Barrier(16)
    results = []

    def deliver():
        barrier.wait()
        results.append(enqueue(store, "same-delivery"))

    threads = [threading.Thread(target=deliver) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.close()

    assert len(results) == 16
    assert len({r.job_id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    with JobStore(store_location) as reopened:
        assert reopened.job_counts()[JobState.QUEUED] == 1


def test_a_job_survives_a_restart(store_location):
    """A job queued before the process stops is still queued after it starts again."""
    with JobStore(store_location) as store:
        job_id = enqueue(store, "d-1", title="Release 1.4.0").job_id

    with JobStore(store_location) as reopened:
        job = reopened.get_job(job_id)
        assert job.state is JobState.QUEUED
        assert job.request == {"pr": 1, "title": "Release 1.4.0"}
        assert enqueue(reopened, "d-1") == EnqueueResult(job_id, created=False)
        assert reopened.claim("w1").id == job_id


def test_the_schema_is_versioned_and_wal(data_dir):
    """The file records its schema version and runs in WAL mode."""
    with JobStore.from_data_dir(data_dir) as store:
        assert store.schema_version() == SCHEMA_VERSION
        with sqlite3.connect(store.path) as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_both_backends_reach_the_same_schema_version(store):
    """Migrations bring SQLite and PostgreSQL to one numbered version, applied at start."""
    assert store.schema_version() == SCHEMA_VERSION


def test_the_database_refuses_a_second_running_job_of_one_repository(store):
    """Not only the claim's query: the schema itself holds one running job per repository."""
    first, second = enqueue(store, "d-1").job_id, enqueue(store, "d-2").job_id
    store.claim("w1")
    with pytest.raises(store.conflicts), store._write() as connection:
        connection.execute("UPDATE jobs SET state = 'running' WHERE id = ?", (second,))
    assert store.get_job(first).state is JobState.RUNNING
    assert store.get_job(second).state is JobState.QUEUED


def test_a_newer_schema_is_refused(data_dir):
    """A store written by a newer Slipway is not opened (and not damaged)."""
    path = data_dir / "slipway.sqlite3"
    with sqlite3.connect(path) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreUnavailable, match="newer"):
        JobStore(path)


def test_a_version_2_store_keeps_its_failures_under_the_new_column_names(data_dir):
    """Upgrading renames summary -> failure_kind and failure_kind -> failure_cause, data kept."""
    from github_app.store import MIGRATIONS

    path = data_dir / "slipway.sqlite3"
    with sqlite3.connect(path) as raw:
        for version in (0, 1):
            raw.executescript(MIGRATIONS[version])
        raw.execute("PRAGMA user_version = 2")
        raw.execute("INSERT INTO jobs (delivery_id, repository, kind, request, state, created_at)"
                    " VALUES ('d-1', 'o/r', 'merge', '{}', 'failed', 1.0)")
        raw.execute("INSERT INTO builds (job_id, repository, service, head_sha, merge_sha,"
                    " check_run_name, state, summary, failure_kind, error, created_at)"
                    " VALUES (1, 'o/r', 'app', 'h', 'm', 'docker build', 'failed',"
                    " 'build_step', 'repository', 'RUN false failed', 1.0)")
    raw.close()
    with JobStore(path) as upgraded:
        build = upgraded.get_build(1)
        assert upgraded.schema_version() == SCHEMA_VERSION
    assert (build.failure_kind, build.failure_cause) == ("build_step", "repository")
    assert build.error == "RUN false failed"


# -- claim ---------------------------------------------------------------------


def test_claim_takes_the_oldest_job_and_marks_it_running(store, clock):
    """claim() returns the oldest queued job, RUNNING, with its worker, start and lease."""
    first = enqueue(store, "d-1", repository="octo/a").job_id
    enqueue(store, "d-2", repository="octo/b")

    job = store.claim("worker-1")

    assert job.id == first
    assert job.state is JobState.RUNNING
    assert job.worker_id == "worker-1"
    assert job.attempts == 1
    assert job.started_at == clock.now
    assert job.lease_until == clock.now + 60
    assert store.queue_depth() == 1


def test_claim_on_an_empty_queue_returns_none(store):
    assert store.claim("w1") is None


def test_jobs_of_one_repository_run_one_at_a_time(store):
    """Two jobs of A and one of B: two workers get A1 and B; A2 only after A1 finishes."""
    a1 = enqueue(store, "d-a1", repository="octo/a").job_id
    a2 = enqueue(store, "d-a2", repository="octo/a").job_id
    b = enqueue(store, "d-b", repository="octo/b").job_id

    assert store.claim("w1").id == a1
    assert store.claim("w2").id == b
    assert store.claim("w3") is None  # A2 waits for A1

    store.finish(b, JobState.SUCCEEDED)
    assert store.claim("w3") is None  # B finishing does not release A

    store.finish(a1, JobState.FAILED, "the Dockerfile is missing")
    assert store.claim("w3").id == a2
    assert store.get_job(a1).error == "the Dockerfile is missing"


def test_claim_from_threads_never_hands_out_a_job_twice(store_location):
    """8 threads draining 200 jobs of 200 repositories each get distinct jobs."""
    store = JobStore(store_location)
    ids = {enqueue(store, f"d-{i}", repository=f"octo/r{i}").job_id for i in range(200)}
    claimed: list[int] = []
    lock = threading.Lock()

    def work(name):
        while (job := store.claim(name)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.close()

    assert sorted(claimed) == sorted(ids)


def _claim_in_another_process(path, worker_id, start, queue):
    store = JobStore(path)
    # Both processes open the store before either claims: under load one spawned
    # process could otherwise drain the queue before the other has imported anything.
    start.wait(60)
    runs = []
    while (job := store.claim(worker_id)) is not None:
        began = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process
        time.sleep(0.002)  # a build takes time: let the other process overlap
        runs.append((job.id, job.repository, began, time.monotonic()))
        store.finish(job.id, JobState.SUCCEEDED, worker_id=worker_id)
    store.close()
    queue.put(runs)


def test_two_processes_never_claim_the_same_job(store_location):
    """A second worker process on the same store never gets a job the first one got, and
    never runs a job of a repository the first one is building."""
    with JobStore(store_location) as store:
        ids = {enqueue(store, f"d-{i}", repository=f"octo/r{i % 7}").job_id for i in range(150)}
    path = store_location

    context = multiprocessing.get_context("spawn")
    start, queue = context.Barrier(2), context.Queue()
    processes = [
        context.Process(target=_claim_in_another_process, args=(path, f"proc-{n}", start, queue))
        for n in range(2)
    ]
    for process in processes:
        process.start()
    results = [queue.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0

    first, second = ({run[0] for run in runs} for runs in results)
    assert first and second, "both processes should have claimed jobs"
    assert not first & second
    assert first | second == ids
    runs_by_repository: dict[str, list[tuple[float, float]]] = {}
    for _, repository, began, ended in results[0] + results[1]:
        runs_by_repository.setdefault(repository, []).append((began, ended))
    for runs in runs_by_repository.values():
        runs.sort()
        assert all(ended <= began for (_, ended), (began, _) in pairwise(runs))
    with JobStore(path) as store:
        assert store.job_counts()[JobState.SUCCEEDED] == 150


# -- finish, heartbeat, requeue -----------------------------------------------


def test_finish_records_the_outcome(store, clock):
    job_id = enqueue(store, "d-1").job_id
    store.claim("w1")
    clock.now += 42

    assert store.finish(job_id, JobState.SUCCEEDED)

    job = store.get_job(job_id)
    assert job.state is JobState.SUCCEEDED
    assert job.finished_at == clock.now
    assert job.lease_until is None
    with pytest.raises(ValueError):
        store.finish(job_id, JobState.RUNNING)


def test_a_worker_that_lost_its_job_cannot_finish_it(store, clock):
    """After its lease ran out and another worker took the job, the first worker's finish is
    refused, and so is its heartbeat."""
    job_id = enqueue(store, "d-1").job_id
    store.claim("w1")
    clock.now += 61
    assert store.requeue_interrupted() == [job_id]
    store.claim("w2")

    assert not store.heartbeat(job_id, worker_id="w1")
    assert not store.finish(job_id, JobState.FAILED, "late", worker_id="w1")
    assert store.heartbeat(job_id, worker_id="w2")
    assert store.finish(job_id, JobState.SUCCEEDED, worker_id="w2")
    assert store.get_job(job_id).state is JobState.SUCCEEDED


def test_an_interrupted_job_is_requeued_and_claimed_again(store, clock):
    """A job whose lease lapsed goes back to the queue and runs again, attempts counted."""
    job_id = enqueue(store, "d-1").job_id
    assert store.claim("old-process").attempts == 1

    assert store.requeue_interrupted() == [], "its lease is live: its worker may be building"
    clock.now += 61
    assert store.requeue_interrupted() == [job_id]
    requeued = store.get_job(job_id)
    assert requeued.state is JobState.QUEUED
    assert (requeued.worker_id, requeued.lease_until, requeued.attempts) == (None, None, 1)

    again = store.claim("new-process")
    assert (again.id, again.attempts, again.worker_id) == (job_id, 2, "new-process")


def test_requeue_takes_only_expired_leases(store, clock):
    """A live worker's job (its lease renewed by heartbeats) is left alone."""
    job_id = enqueue(store, "d-1").job_id
    store.claim("w1")

    clock.now += 50
    assert store.requeue_interrupted() == []
    assert store.heartbeat(job_id)
    clock.now += 50  # 100 s after the claim, 50 s after the heartbeat
    assert store.requeue_interrupted() == []
    assert store.requeue_interrupted(now=clock.now + 11) == [job_id]


def test_a_job_interrupted_too_often_fails_and_errors_its_builds(store, clock):
    """After max_attempts interruptions the job fails saying so, and its unfinished builds end
    ERRORED and unreported, so their check runs still get completed."""
    job_id = enqueue(store, "d-1").job_id
    limit = store.max_attempts
    for attempt in range(1, limit + 1):
        assert store.claim("w").attempts == attempt
        if attempt == 1:
            done = new_build(
                store,
                job_id,
                service="api",
                state=BuildState.SUCCEEDED,
                reported=True,
                finished_at=1.0,
            )
            running = new_build(
                store, job_id, service="web", state=BuildState.RUNNING, check_run_id=55
            )
        expected = [job_id] if attempt < limit else []
        clock.now += 61
        assert store.requeue_interrupted() == expected

    job = store.get_job(job_id)
    assert job.state is JobState.FAILED
    assert f"interrupted {limit} times" in job.error
    assert store.claim("w") is None

    assert store.get_build(done.id).state is BuildState.SUCCEEDED
    errored = store.get_build(running.id)
    assert errored.state is BuildState.ERRORED
    assert errored.failure_cause == "infrastructure"
    assert "interrupted" in errored.error
    assert errored.finished_at is not None
    assert [b.id for b in store.unreported_builds()] == [running.id]


def test_job_counts_cover_every_state(store):
    enqueue(store, "d-1", repository="octo/a")
    enqueue(store, "d-2", repository="octo/b")
    store.claim("w")
    assert store.job_counts() == {
        JobState.QUEUED: 1,
        JobState.RUNNING: 1,
        JobState.SUCCEEDED: 0,
        JobState.FAILED: 0,
    }


# -- builds --------------------------------------------------------------------


def test_builds_are_created_updated_and_read_back(store, clock):
    """A build starts QUEUED with its identity; update_build sets and returns fields."""
    job_id = enqueue(store, "d-1").job_id
    build = new_build(store, job_id)
    assert build.state is BuildState.QUEUED
    assert (build.job_id, build.repository, build.service) == (job_id, "octo/app", "app")
    assert (build.pr_number, build.check_run_name, build.created_at) == (
        7,
        "docker build",
        clock.now,
    )
    assert build.reported is False and build.check_run_id is None

    updated = store.update_build(
        build.id,
        state=BuildState.SUCCEEDED,
        check_run_id=123,
        version="1.4.0",
        version_source="label",
        reference="localhost:5000/app:1.4.0@sha256:" + "a" * 64,
        digest="sha256:" + "a" * 64,
        image_id="sha256:" + "b" * 64,
        size=12345,
        duration=3.5,
        failure_kind="push",
        started_at=clock.now,
        finished_at=clock.now + 3.5,
        reported=True,
    )
    assert updated == store.get_build(build.id)
    assert updated.state is BuildState.SUCCEEDED and updated.finished
    assert (updated.check_run_id, updated.version, updated.size) == (123, "1.4.0", 12345)
    assert updated.reported is True
    assert store.update_build(build.id, failure_kind=None).failure_kind is None
    assert store.builds_for_job(job_id) == [store.get_build(build.id)]
    assert store.get_build(9999) is None


def test_update_build_refuses_bad_fields(store):
    build = new_build(store, enqueue(store, "d-1").job_id)
    with pytest.raises(TypeError, match="job_id"):
        store.update_build(build.id, job_id=3)
    with pytest.raises(ValueError):
        store.update_build(build.id, state="exploded")
    with pytest.raises(ValueError):
        store.update_build(build.id, failure_cause="cosmic rays")
    with pytest.raises(UnknownBuild):
        store.update_build(9999, error="x")


def test_builds_are_found_by_check_run_and_head_sha(store):
    """Re-run finds the build of its check run; Re-run all finds the builds of a head commit."""
    job_a = enqueue(store, "d-1", repository="octo/a").job_id
    job_b = enqueue(store, "d-2", repository="octo/b").job_id
    api = new_build(store, job_a, service="api", head_sha="1" * 40, check_run_id=11)
    web = new_build(store, job_a, service="web", head_sha="1" * 40, check_run_id=12)
    new_build(store, job_b, service="b", head_sha="1" * 40, check_run_id=11)

    assert store.find_build_by_check_run("octo/a", 12) == web
    assert store.find_build_by_check_run("octo/a", 99) is None
    assert store.find_build_by_check_run("octo/b", 11).service == "b"
    assert store.find_builds_by_head_sha("octo/a", "1" * 40) == [api, web]
    assert store.find_builds_by_head_sha("octo/a", "2" * 40) == []


def test_recent_builds_newest_first_with_filters(store):
    job_a = enqueue(store, "d-1", repository="octo/a").job_id
    job_b = enqueue(store, "d-2", repository="octo/b").job_id
    a1 = new_build(store, job_a, state=BuildState.SUCCEEDED)
    b1 = new_build(store, job_b, state=BuildState.FAILED)
    a2 = new_build(store, job_a, state=BuildState.FAILED)
    a3 = new_build(store, job_a)

    assert [b.id for b in store.recent_builds()] == [a3.id, a2.id, b1.id, a1.id]
    assert [b.id for b in store.recent_builds(limit=2)] == [a3.id, a2.id]
    assert [b.id for b in store.recent_builds(repository="octo/a")] == [a3.id, a2.id, a1.id]
    assert [b.id for b in store.recent_builds(state="failed")] == [a2.id, b1.id]
    assert [b.id for b in store.recent_builds(repository="octo/b", state=BuildState.FAILED)] == [
        b1.id
    ]
    assert store.recent_builds(repository="octo/none") == []


def test_latest_finished_build_is_what_the_badge_shows(store):
    """The badge reads the build that finished last, ignoring ones still running."""
    job_id = enqueue(store, "d-1", repository="octo/a").job_id
    assert store.latest_finished_build("octo/a") is None

    api = new_build(
        store, job_id, service="api", state="succeeded", version="1.0.0", finished_at=100.0
    )
    web = new_build(store, job_id, service="web", state="failed", finished_at=200.0)
    new_build(store, job_id, service="api", state="running")

    assert store.latest_finished_build("octo/a") == web
    assert store.latest_finished_build("octo/a", service="api") == api
    assert store.latest_finished_build("octo/a", service="nope") is None
    assert store.latest_finished_build("octo/b") is None


def test_unreported_builds_are_the_finished_ones_github_did_not_accept(store):
    job_id = enqueue(store, "d-1").job_id
    reported = new_build(store, job_id, state="succeeded", reported=True)
    lost = new_build(store, job_id, state="errored", failure_cause="infrastructure")
    new_build(store, job_id, state="running")

    assert [b.id for b in store.unreported_builds()] == [lost.id]
    store.update_build(lost.id, reported=True)
    assert store.unreported_builds() == []
    assert reported.reported


# -- health --------------------------------------------------------------------


def test_healthcheck_passes_on_a_working_store(store):
    store.healthcheck()


def test_healthcheck_says_why_the_store_cannot_be_used(data_dir):
    """A store whose file was damaged fails the health check with the path and the reason."""
    store = JobStore.from_data_dir(data_dir)
    store.close()
    store.path.write_bytes(b"not a database " * 512)
    for suffix in ("-wal", "-shm"):
        store.path.with_name(store.path.name + suffix).unlink(missing_ok=True)

    with pytest.raises(StoreUnavailable, match="not a database") as error:
        store.healthcheck()
    assert str(store.path) in str(error.value)


def test_opening_a_damaged_store_fails_clearly(data_dir):
    path = data_dir / "slipway.sqlite3"
    path.write_bytes(b"garbage" * 1000)
    with pytest.raises(StoreUnavailable, match=str(path)):
        JobStore(path)


def test_builds_before_the_merge_never_show_on_the_badge(store):
    """A pull request's failed pre-merge build (no merge commit) leaves the badge on develop's."""
    job_id = enqueue(store, "d-1", repository="octo/a").job_id
    merged = new_build(store, job_id, state="succeeded", version="1.0.0", finished_at=100.0)
    pre = store.create_build(job_id, repository="octo/a", service="app", pr_number=9,
                             head_sha="p" * 40, merge_sha="", check_run_name="docker build")
    store.update_build(pre, state="failed", finished_at=200.0)
    assert store.latest_finished_build("octo/a") == merged
    assert store.get_build(pre).pre_merge and not merged.pre_merge


def test_a_newer_push_to_the_pull_request_is_found_and_a_label_is_not(store):
    """newer_head names the head of a later job of the same pull request when it differs."""
    first = enqueue(store, "d-1", kind="pre_merge", pr_number=9, head_sha="a" * 40).job_id
    enqueue(store, "d-2", kind="pre_merge", pr_number=9, head_sha="a" * 40)  # a label
    enqueue(store, "d-3", kind="pre_merge", pr_number=8, head_sha="c" * 40)  # another PR
    assert store.newer_head("octo/app", 9, first, "a" * 40) is None
    enqueue(store, "d-4", kind="pre_merge", pr_number=9, head_sha="b" * 40)  # a push
    assert store.newer_head("octo/app", 9, first, "a" * 40) == "b" * 40


def test_cancelled_and_skipped_builds_are_finished_and_reported(store):
    """The states before the merge are finished states, retried until GitHub takes them."""
    job_id = enqueue(store, "d-1").job_id
    cancelled = new_build(store, job_id, state="cancelled", note="b" * 40)
    skipped = new_build(store, job_id, service="web", state="skipped", note="stranger")
    assert cancelled.finished and skipped.finished
    assert [b.id for b in store.unreported_builds()] == [cancelled.id, skipped.id]


def test_a_handed_back_job_is_queued_at_once_and_not_counted_as_an_interruption(store, clock):
    """A stopping worker's job goes back to the queue without waiting for its lease; only
    crashes count towards max_attempts, and the attempt number (the fence) goes on."""
    job_id = enqueue(store, "d-1").job_id
    store.claim("stopping")
    assert not store.hand_back(job_id, worker_id="someone-else")
    assert store.hand_back(job_id, worker_id="stopping")
    job = store.get_job(job_id)
    assert (job.state, job.lease_until, job.worker_id) == (JobState.QUEUED, None, None)
    assert (job.attempts, job.handed_back) == (1, 1)

    limit = store.max_attempts
    for attempt in range(2, limit + 2):  # max_attempts crashes after the hand-back
        assert store.claim("w").attempts == attempt
        clock.now += 61
        store.requeue_interrupted()
    job = store.get_job(job_id)
    assert job.state is JobState.FAILED
    assert f"interrupted {limit} times" in job.error


def test_worker_heartbeats_are_shared_through_the_store(store, clock):
    """Any process reads when some worker last showed it was alive."""
    assert store.last_heartbeat() is None
    store.beat("host-a-1")
    clock.now += 5
    store.beat("host-b-2")
    assert store.last_heartbeat() == clock.now
