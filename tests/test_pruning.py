"""Pruning against a real store, DATA_DIR and the real Docker engine: what goes, what stays,
and the /metrics counters of what was removed."""

from __future__ import annotations

import contextlib
import os
import time
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from builder import SERVICE_LABEL
from github_app.config import Config
from github_app.jobs import BuildState, JobState, JobStore
from github_app.metrics import Metrics
from github_app.pruning import Pruner

DAY = 86400
NOW = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = NOW):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(data_dir, clock):
    with JobStore.from_data_dir(data_dir, clock=clock) as job_store:
        yield job_store


@pytest.fixture
def any_store(store_location, clock):
    """SQLite, then PostgreSQL: the pruning queries run on both."""
    with JobStore(store_location, clock=clock) as job_store:
        yield job_store


def finished_build(store, clock, *, repository="octo/shop", service="orders", days_ago=0.0,
                   state=BuildState.SUCCEEDED, **fields):
    """A job with one finished build, `days_ago` days old, and its log on disk."""
    job = store.enqueue(f"d-{uuid.uuid4()}", repository=repository, kind="merge",
                        request={}).job_id
    store.claim("w")
    finished = clock.now - days_ago * DAY
    store.finish(job, JobState.SUCCEEDED if state is BuildState.SUCCEEDED else JobState.FAILED)
    store._connection().execute("UPDATE jobs SET finished_at = ? WHERE id = ?", (finished, job))
    build = store.create_build(job, repository=repository, service=service, pr_number=1,
                               head_sha="h" * 40, merge_sha="m" * 40,
                               check_run_name="docker build")
    store.update_build(build, state=state, finished_at=finished, **fields)
    assert store.append_log_chunk(build, 0, f"log of build {build}\n".encode())
    return build


def has_log(store, build_id: int) -> bool:
    return store._connection().execute(
        "SELECT count(*) FROM build_log_chunks WHERE build_id = ?", (build_id,)).fetchone()[0] > 0


def local_tags(docker_client) -> set[str]:
    # One call: images.list() inspects each image, racing other tests that remove theirs.
    return {tag for image in docker_client.api.images() for tag in image.get("RepoTags") or ()}


def counters(metrics: Metrics) -> dict[tuple[str, str], float]:
    values = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            if sample.name in ("slipway_pruned_total", "slipway_pruned_bytes_total"):
                values[(sample.name, sample.labels["what"])] = sample.value
    return values


def test_builds_and_logs_past_retention_go_except_each_services_latest(any_store, clock,
                                                                       data_dir):
    """Builds older than RETENTION_DAYS go with their logs and jobs; every service keeps its
    latest build, however old; /metrics counts what went."""
    store = any_store
    old_success = finished_build(store, clock, days_ago=40)
    old_failure = finished_build(store, clock, days_ago=35, state=BuildState.FAILED)
    recent = finished_build(store, clock, days_ago=1)
    only_billing = finished_build(store, clock, service="billing", days_ago=90)
    orphan = data_dir / "logs" / "999.log"  # a log file of an older Slipway, its build gone
    orphan.parent.mkdir()
    orphan.write_text("a log whose record a crash removed\n")
    os.utime(orphan, (NOW - 60 * DAY, NOW - 60 * DAY))
    metrics = Metrics()

    Pruner(Config(data_dir=data_dir, retention_days=30), store, metrics=metrics,
           images=False).run_once()

    assert {b.id for b in store.recent_builds()} == {recent, only_billing}
    for gone in (old_success, old_failure):
        assert not has_log(store, gone)
        assert store.get_build(gone) is None
    assert has_log(store, recent) and has_log(store, only_billing)
    assert not orphan.exists()
    assert store.job_counts()[JobState.SUCCEEDED] + store.job_counts()[JobState.FAILED] == 2
    found = counters(metrics)
    assert found[("slipway_pruned_total", "builds")] == 2
    assert found[("slipway_pruned_total", "jobs")] == 2
    assert found[("slipway_pruned_total", "logs")] == 3
    assert found[("slipway_pruned_bytes_total", "logs")] > 0


def test_nothing_within_retention_is_pruned(any_store, clock, data_dir):
    """A store whose builds are all younger than RETENTION_DAYS loses nothing."""
    store = any_store
    builds = {finished_build(store, clock, days_ago=d) for d in (1, 10, 29)}
    report = Pruner(Config(data_dir=data_dir, retention_days=30), store, images=False).run_once()
    assert report.removed == {}
    assert {b.id for b in store.recent_builds()} == builds


def test_work_folders_left_by_a_crash_go_at_start_but_not_a_live_jobs(store, data_dir):
    """At start a worker removes DATA_DIR/work folders, except those of jobs held under a live
    lease (another worker building from the same DATA_DIR)."""
    live = store.enqueue("d-live", repository="octo/a", kind="merge", request={}).job_id
    store.claim("other-worker")
    work = data_dir / "work"
    (work / f"job-{live}-abc").mkdir(parents=True)
    (work / "job-4242-xyz" / "src").mkdir(parents=True)
    (work / "job-4242-xyz" / "src" / "big.bin").write_bytes(b"x" * 1000)
    metrics = Metrics()

    removed = Pruner(Config(data_dir=data_dir), store, metrics=metrics).remove_work_folders()

    assert removed == 1
    assert sorted(p.name for p in work.iterdir()) == [f"job-{live}-abc"]
    assert counters(metrics)[("slipway_pruned_total", "work_folders")] == 1


@pytest.mark.docker
def test_images_past_keep_images_and_of_failed_builds_go_keeping_reused_layers(
        store, clock, data_dir, docker_client, registry):
    """KEEP_IMAGES=2: the two newest successful images of a service stay, older ones and a
    failed build's image go; images of other services or without Slipway's label stay; the
    layers the kept images share stay, so the next build still hits the cache."""
    name = f"test-prune-{uuid.uuid4().hex[:8]}"
    stranger = f"test-prune-other-{uuid.uuid4().hex[:8]}"
    token = uuid.uuid4().hex
    created = []

    def build(image_name: str, version: str, labelled: bool = True) -> tuple[str, list[str]]:
        tag = f"{registry.address}/{image_name}:{version}"
        label = f'LABEL {SERVICE_LABEL}="{image_name}" version="{version}"\n' if labelled else ""
        dockerfile = (f"FROM python:3.11-slim\nRUN echo {token} > /token\n{label}")
        (data_dir / "ctx").mkdir(exist_ok=True)
        (data_dir / "ctx" / "Dockerfile").write_text(dockerfile)
        image, output = docker_client.images.build(path=str(data_dir / "ctx"), tag=tag,
                                                    network_mode="none", rm=True)
        created.append(tag)
        lines = [chunk.get("stream", "") for chunk in output]
        return image.id, lines

    try:
        ids = {}
        for version in ("1.0.1", "1.0.2", "1.0.3", "1.0.4"):
            ids[version], _ = build(name, version)
            finished_build(store, clock, service=name, image_id=ids[version],
                           reference=f"{registry.address}/{name}:{version}@sha256:{'0' * 64}")
        ids["1.0.5"], _ = build(name, "1.0.5")  # built, then its push failed
        finished_build(store, clock, service=name, state=BuildState.ERRORED, version="1.0.5")
        build(stranger, "9.9.9")  # labelled, but not a service of this store
        build(name, "0.0.0-manual", labelled=False)
        metrics = Metrics()

        Pruner(Config(data_dir=data_dir, registry=registry.address, keep_images=2), store,
               metrics=metrics).run_once()

        local = local_tags(docker_client)
        assert f"{registry.address}/{name}:1.0.4" in local
        assert f"{registry.address}/{name}:1.0.3" in local
        for gone in ("1.0.1", "1.0.2", "1.0.5"):
            assert f"{registry.address}/{name}:{gone}" not in local, gone
        assert f"{registry.address}/{stranger}:9.9.9" in local
        assert f"{registry.address}/{name}:0.0.0-manual" in local
        assert "python:3.11-slim" in local
        assert counters(metrics)[("slipway_pruned_total", "images")] == 3

        _, lines = build(name, "1.0.6")
        assert any("Using cache" in line for line in lines), "the RUN layer kept images share"
    finally:
        for tag in created:
            with contextlib.suppress(Exception):  # already pruned
                docker_client.images.remove(tag)


@pytest.mark.docker
def test_images_of_a_service_still_building_are_left_alone(store, clock, data_dir,
                                                          docker_client, registry):
    """While a build of the service runs (its image may be mid-push), pruning skips it."""
    name = f"test-prune-busy-{uuid.uuid4().hex[:8]}"
    tag = f"{registry.address}/{name}:1.0.0"
    (data_dir / "ctx").mkdir()
    (data_dir / "ctx" / "Dockerfile").write_text(
        f'FROM python:3.11-slim\nLABEL {SERVICE_LABEL}="{name}"\n')
    docker_client.images.build(path=str(data_dir / "ctx"), tag=tag, network_mode="none")
    try:
        job = store.enqueue("d-busy", repository="octo/busy", kind="merge", request={}).job_id
        store.claim("w")
        running = store.create_build(job, repository="octo/busy", service=name, pr_number=1,
                                     head_sha="h" * 40, merge_sha="m" * 40,
                                     check_run_name="docker build")
        store.update_build(running, state=BuildState.RUNNING, started_at=time.time())
        Pruner(Config(data_dir=data_dir, keep_images=0), store).run_once()
        assert tag in local_tags(docker_client)
    finally:
        docker_client.images.remove(tag)
