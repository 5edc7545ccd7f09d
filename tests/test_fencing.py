"""Fencing and logs in the store, on both backends: a claim whose lease lapsed can no
longer heartbeat, log, record or finish, and the next claim's writes go through."""

from __future__ import annotations

import threading

import pytest

from github_app.jobs import BuildState, Fence, JobState, JobStore, LeaseLost

LEASE = 60


def claimed_build(store, worker="w1"):
    """Queue a job, claim it and create its build: (job, fence, build id)."""
    store.enqueue("d-1", repository="octo/app", kind="merge", request={"pr": 1})
    job = store.claim(worker)
    build_id = store.create_build(job.id, repository="octo/app", service="app", pr_number=1,
                                  head_sha="h" * 40, merge_sha="m" * 40,
                                  check_run_name="docker build")
    return job, Fence(job.id, job.attempts), build_id


def lapse_and_reclaim(store, clock, job_id):
    """The first worker goes quiet past its lease; another node requeues and claims the job."""
    clock.now += LEASE + 1
    assert store.requeue_interrupted() == [job_id]
    job = store.claim("w2")
    assert job.id == job_id
    return Fence(job.id, job.attempts)


def test_every_claim_carries_the_next_attempt_number(store, clock):
    job, fence, _ = claimed_build(store)
    assert fence.attempt == job.attempts == 1
    assert lapse_and_reclaim(store, clock, job.id).attempt == 2


def test_a_heartbeat_renews_the_lease_only_while_it_has_not_lapsed(store, clock):
    """A worker that beats in time keeps the job; one that comes back after its lease is told
    it lost it, even before another node claimed the job."""
    job, fence, _ = claimed_build(store)
    clock.now += LEASE - 1
    assert store.heartbeat(job.id, worker_id="w1", attempt=fence.attempt)
    assert store.get_job(job.id).lease_until == clock.now + LEASE
    clock.now += LEASE + 1
    assert not store.heartbeat(job.id, worker_id="w1", attempt=fence.attempt)
    assert not store.holds(fence)


def test_the_old_claim_is_refused_everything_once_another_node_holds_the_job(store, clock):
    """Heartbeat, build record, log chunk and completion of attempt 1 are refused after
    attempt 2 claimed the job; attempt 2's writes go through."""
    job, old, build_id = claimed_build(store)
    new = lapse_and_reclaim(store, clock, job.id)

    assert not store.heartbeat(job.id, worker_id="w1", attempt=old.attempt)
    with pytest.raises(LeaseLost, match="lapsed"):
        store.update_build(build_id, fence=old, state=BuildState.SUCCEEDED, digest="sha256:old")
    assert not store.append_log_chunk(build_id, 0, b"old worker\n", fence=old)
    assert not store.finish(job.id, JobState.SUCCEEDED, worker_id="w1", attempt=old.attempt)

    assert store.heartbeat(job.id, worker_id="w2", attempt=new.attempt)
    assert store.append_log_chunk(build_id, 0, b"new worker\n", fence=new)
    store.update_build(build_id, fence=new, state=BuildState.SUCCEEDED, digest="sha256:new")
    assert store.finish(job.id, JobState.SUCCEEDED, worker_id="w2", attempt=new.attempt)

    build = store.get_build(build_id)
    assert (build.state, build.digest) == (BuildState.SUCCEEDED, "sha256:new")
    assert store.build_log(build_id).read() == ("new worker\n", 11)
    assert store.get_job(job.id).state is JobState.SUCCEEDED


def test_a_requeue_never_takes_back_a_claim_made_after_it_looked(store, clock):
    """The requeue only moves the attempt it saw lapse: a job claimed again meanwhile stays."""
    job, fence, _ = claimed_build(store)
    clock.now += LEASE + 1
    assert store.requeue_interrupted() == [job.id]
    again = store.claim("w2")
    assert store.requeue_interrupted() == []
    assert store.get_job(job.id).state is JobState.RUNNING
    assert store.get_job(job.id).attempts == again.attempts == fence.attempt + 1


def test_a_stored_log_is_read_live_by_offset_and_its_tail(store, clock):
    """Lines written in chunks read back in order, by byte offset, from another store object."""
    job, fence, build_id = claimed_build(store)
    log = store.build_log(build_id, fence=fence)
    log.append("Step 1/2 : FROM python:3.11-slim")
    log.append("Step 2/2 : RUN echo héllo")
    log.flush()
    reader = store.build_log(build_id)
    text, offset = reader.read()
    assert text == "Step 1/2 : FROM python:3.11-slim\nStep 2/2 : RUN echo héllo\n"
    assert offset == len(text.encode())
    assert reader.read(offset) == ("", offset)
    log.append("done")
    log.close()
    assert reader.read(offset) == ("done\n", offset + 5)
    assert reader.tail(12) == "done\n"
    assert reader.size() == offset + 5


def test_a_stored_log_redacts_secrets_and_stops_at_its_cap(store):
    job, fence, build_id = claimed_build(store)
    with store.build_log(build_id, secrets=["hunter2-token"], max_bytes=200) as log:
        assert log.append("token=hunter2-token")
        for _ in range(20):
            log.append("x" * 20)
    text, _ = store.build_log(build_id).read()
    assert "hunter2-token" not in text and "[REDACTED]" in text
    assert text.endswith("further lines were dropped]\n")
    assert len(text.encode()) <= 200
    assert store.build_log(build_id).truncated


def test_a_log_whose_claim_lapsed_raises_lease_lost_and_keeps_the_winner_s_lines(store, clock):
    """The old worker's next append raises LeaseLost (its build stops); nothing of it lands."""
    job, old, build_id = claimed_build(store)
    old_log = store.build_log(build_id, fence=old)
    old_log.append("old line 1")
    old_log.flush()
    new = lapse_and_reclaim(store, clock, job.id)
    with store.build_log(build_id, fence=new) as new_log:
        new_log.append("new line")

    with pytest.raises(LeaseLost):
        old_log.append("old line 2")
        old_log.flush()
    old_log.close()
    assert store.build_log(build_id).read()[0] == "old line 1\nnew line\n"


def test_two_nodes_claiming_at_once_never_start_one_repository_twice(store_location):
    """Threads with a store each (as nodes would be) race over jobs of three repositories:
    at no moment are two jobs of one repository running."""
    stores = [JobStore(store_location) for _ in range(6)]
    for i in range(30):
        stores[0].enqueue(f"d-{i}", repository=f"octo/r{i % 3}", kind="merge", request={})
    running: dict[str, str] = {}
    overlaps, done = [], []
    lock = threading.Lock()

    def node(store, name):
        while (job := store.claim(name)) is not None:
            with lock:
                if job.repository in running:
                    overlaps.append((job.repository, running[job.repository], name))
                running[job.repository] = name
            with lock:
                del running[job.repository]
                done.append(job.id)
            store.finish(job.id, JobState.SUCCEEDED, worker_id=name, attempt=job.attempts)

    threads = [threading.Thread(target=node, args=(s, f"n{i}")) for i, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in stores:
        store.close()
    assert overlaps == []
    assert sorted(done) == sorted(set(done)) and len(done) == 30
