"""Slipway on several machines: 3 build hosts (each a network namespace with its own
Docker engine, running `python -m github_app worker`), 2 web nodes (`serve` with
WORKER_THREADS=0), one PostgreSQL, one registry and the fake GitHub, all made here.

Each test drives merges through the web nodes over real HTTP and checks what a team
would see: every merge built and reported once, never two builds of one repository at
a time, and the work of a host that dies or is cut off finished by another.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import pytest

from tests.fleet import Fleet

pytestmark = pytest.mark.docker

LEASE = 5  # seconds: short, so a lost host's job moves on within the test
_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    from tests.netns import NamespacesUnavailable

    try:
        with Fleet(tmp_path_factory.mktemp("fleet"), hosts=3, web_nodes=2,
                   lease_seconds=LEASE) as fleet:
            yield fleet
    except NamespacesUnavailable as exc:  # pragma: no cover - needs root
        pytest.skip(str(exc))


def job_of(fleet, delivery_id: str) -> dict | None:
    rows = fleet.query(
        "SELECT id, state, attempts, worker_id, started_at, finished_at, repository"
        " FROM jobs WHERE delivery_id = %s", (delivery_id,))
    if not rows:
        return None
    keys = ("id", "state", "attempts", "worker_id", "started_at", "finished_at", "repository")
    return dict(zip(keys, rows[0], strict=True))


def builds_of(fleet, job_id: int) -> list[dict]:
    keys = ("id", "state", "digest", "reference", "reported", "version", "error")
    return [dict(zip(keys, row, strict=True)) for row in fleet.query(
        "SELECT id, state, digest, reference, reported, version, error FROM builds"
        " WHERE job_id = %s ORDER BY id", (job_id,))]


def finished(fleet, delivery_id: str) -> bool:
    job = job_of(fleet, delivery_id)
    return job is not None and job["state"] in ("succeeded", "failed")


def deliver_merge(fleet, repo, *, sleep: float, node: int = 0):
    """Merge a pull request of `repo` and deliver it; (delivery id, head sha, merge sha)."""
    number = next(_numbers)
    payload, head, merge = fleet.merge(repo, number, sleep=sleep)
    delivery = str(uuid.uuid4())
    answer = fleet.deliver(node, payload, delivery_id=delivery)
    assert answer.status_code == 202, answer.text
    return delivery, head, merge


def check_runs_on(fleet, head_sha: str) -> list[dict]:
    return [run for run in fleet.fake.check_runs.values() if run.get("head_sha") == head_sha]


def running_on(fleet, delivery_id: str) -> int | None:
    """The build host whose worker holds the job, once it has started building."""
    job = job_of(fleet, delivery_id)
    if job is None or job["state"] != "running":
        return None
    builds = builds_of(fleet, job["id"])
    if not builds:
        return None
    chunks = fleet.query("SELECT count(*) FROM build_log_chunks WHERE build_id = %s",
                         (builds[0]["id"],))[0][0]
    return fleet.host_of(job["worker_id"]) if chunks else None


def assert_published_once(fleet, repo, delivery: str, head: str) -> dict:
    """One job, one succeeded build, one completed check run naming the registry's digest."""
    job = job_of(fleet, delivery)
    builds = builds_of(fleet, job["id"])
    assert job["state"] == "succeeded", (builds, fleet.log_tails())
    (build,) = builds
    assert build["state"] == "succeeded" and build["reported"] == 1
    (run,) = check_runs_on(fleet, head)
    assert (run["status"], run["conclusion"]) == ("completed", "success")
    digest = registry_digest(fleet, repo.name, build["version"])
    assert build["digest"] == digest
    assert digest in run["output"]["summary"]
    return {**job, "build": build}


def registry_digest(fleet, name: str, tag: str) -> str:
    import requests

    answer = requests.head(
        f"http://{fleet.registry}/v2/{name}/manifests/{tag}", timeout=10,
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    answer.raise_for_status()
    return answer.headers["Docker-Content-Digest"]


def test_many_merges_over_several_repositories_complete_once_and_never_overlap(fleet):
    """12 merges over 4 repositories, sent to both web nodes: each is built and reported
    exactly once, by more than one host, and no repository ever has two builds at once."""
    repos = [fleet.repository() for _ in range(4)]
    merges = []
    for round_ in range(3):
        for index, repo in enumerate(repos):
            merges.append((repo, *deliver_merge(fleet, repo, sleep=2, node=(round_ + index) % 2)))

    fleet.wait_for(lambda: all(finished(fleet, d) for _, d, _, _ in merges), timeout=150,
                   what="all 12 merges to finish")

    jobs = [assert_published_once(fleet, repo, d, head) for repo, d, head, _ in merges]
    assert fleet.query("SELECT count(*) FROM jobs")[0][0] >= 12
    assert {job["attempts"] for job in jobs} == {1}
    assert len({fleet.host_of(job["worker_id"]) for job in jobs}) >= 2
    for repo in repos:
        spans = sorted((j["started_at"], j["finished_at"]) for j in jobs
                       if j["repository"] == repo.full_name)
        assert len(spans) == 3
        assert all(end <= start for (_, end), (start, _) in pairwise(spans)), spans


def test_a_worker_killed_mid_build_is_replaced_by_another_host_after_its_lease(fleet):
    """SIGKILL the worker that is building: another host takes the job once the lease
    lapses, builds it and reports it; the kill costs about one lease, not a restart."""
    repo = fleet.repository()
    delivery, head, _ = deliver_merge(fleet, repo, sleep=8)
    fleet.wait_for(lambda: running_on(fleet, delivery) is not None, timeout=60,
                   what="the build to start")
    victim = running_on(fleet, delivery)
    fleet.kill_worker(victim)
    killed_at = time.monotonic()
    try:
        fleet.wait_for(lambda: finished(fleet, delivery), timeout=90,
                       what="another host to finish the killed worker's job")
        took = time.monotonic() - killed_at
        job = assert_published_once(fleet, repo, delivery, head)
        assert job["attempts"] == 2
        assert fleet.host_of(job["worker_id"]) != victim
        # One lease to notice, the build again (8 s) and its push, with room for the CI box.
        assert took < LEASE + 8 + 30, took
    finally:
        fleet.start_worker(victim)


def test_a_worker_cut_off_mid_build_loses_the_job_and_its_late_work_is_refused(fleet):
    """`ip link set ... down` on the building host: another host finishes the job. When the
    link comes back the cut-off worker has stopped its build (nothing left in its engine),
    reports nothing, and the published digest is the winner's."""
    repo = fleet.repository()
    delivery, head, _ = deliver_merge(fleet, repo, sleep=10)
    fleet.wait_for(lambda: running_on(fleet, delivery) is not None, timeout=60,
                   what="the build to start")
    cut = running_on(fleet, delivery)
    host = fleet.hosts[cut]
    version = None
    host.cut()
    try:
        fleet.wait_for(lambda: finished(fleet, delivery), timeout=90,
                       what="another host to finish the cut-off worker's job")
        job = assert_published_once(fleet, repo, delivery, head)
        version = job["build"]["version"]
        assert job["attempts"] == 2 and fleet.host_of(job["worker_id"]) != cut
    finally:
        host.reconnect()
    fleet.wait_for(lambda: "is no longer this worker's" in fleet.log_of_worker(cut),
                   timeout=30, what="the cut-off worker to give the job up")
    time.sleep(LEASE)  # what it would still write or push after the link is back
    assert host.docker("ps", "-q").stdout.strip() == "", "its build still runs"
    image = f"{fleet.registry}/{repo.name}:{version}"
    assert host.docker("image", "inspect", image).returncode != 0, "it finished its image"
    (run,) = check_runs_on(fleet, head)
    assert job["build"]["digest"] in run["output"]["summary"]
    assert registry_digest(fleet, repo.name, version) == job["build"]["digest"]
    assert fleet.workers[cut].poll() is None, "the cut-off worker should live on"


def test_postgresql_restarted_mid_run_loses_nothing_and_duplicates_nothing(fleet):
    """PostgreSQL stops and starts while builds run and deliveries arrive (GitHub's retry
    is the same delivery sent again): every merge ends built once, reported once."""
    repos = [fleet.repository() for _ in range(2)]
    merges = [(repo, *deliver_merge(fleet, repo, sleep=3)) for repo in repos for _ in range(2)]
    fleet.wait_for(lambda: any(running_on(fleet, d) is not None for _, d, _, _ in merges),
                   timeout=60, what="a build to start")
    fleet.cluster.stop()
    late = []
    for repo in repos:  # delivered while the store is down
        number = next(_numbers)
        payload, head, _ = fleet.merge(repo, number, sleep=3)
        late.append((repo, str(uuid.uuid4()), head, payload))
    with ThreadPoolExecutor(len(late)) as pool:
        sent = [pool.submit(fleet.deliver, i % 2, payload, delivery_id=delivery)
                for i, (_, delivery, _, payload) in enumerate(late)]
        time.sleep(1.5)
        fleet.cluster.start()
        # A web node holds a delivery a few seconds for the store to come back, else 503.
        answers = [future.result() for future in sent]
    assert {a.status_code for a in answers} <= {202, 503}, [a.text for a in answers]
    for repo, delivery, head, payload in late:  # GitHub's "Redeliver": same id, both nodes
        for node in (0, 1):
            fleet.wait_for(lambda d=delivery, p=payload, n=node:
                           fleet.deliver(n, p, delivery_id=d).status_code in (200, 202),
                           timeout=30, what="the web node to take the redelivery")
        merges.append((repo, delivery, head, None))

    fleet.wait_for(lambda: all(finished(fleet, d) for _, d, _, _ in merges), timeout=150,
                   what="every merge to finish after the restart")
    for repo, delivery, head, _ in merges:
        assert_published_once(fleet, repo, delivery, head)
    deliveries = [d for _, d, _, _ in merges]
    counted = fleet.query("SELECT count(*) FROM jobs WHERE delivery_id = ANY(%s)", (deliveries,))
    assert counted[0][0] == len(merges)


def test_a_web_node_killed_the_other_takes_webhooks_and_one_delivery_makes_one_job(fleet):
    """The same delivery sent to both web nodes at once gives one job; with one node
    SIGKILLed the other keeps taking webhooks and its merges are built."""
    repo = fleet.repository()
    number = next(_numbers)
    payload, head, _ = fleet.merge(repo, number, sleep=1)
    delivery = str(uuid.uuid4())
    barrier = threading.Barrier(2)

    def send(node):
        barrier.wait()
        return fleet.deliver(node, payload, delivery_id=delivery)

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(send, (0, 1)))
    assert sorted(a.status_code for a in answers) == [200, 202], [a.text for a in answers]
    job_ids = {a.json().get("job") or a.json().get("duplicate") for a in answers}
    assert len(job_ids) == 1

    fleet.kill_web(0)
    after = [(repo, *deliver_merge(fleet, repo, sleep=1, node=1)) for _ in range(2)]
    fleet.wait_for(lambda: all(finished(fleet, d) for d in [delivery] + [a[1] for a in after]),
                   timeout=90, what="the merges taken by the surviving web node")
    assert_published_once(fleet, repo, delivery, head)
    for repo_, d, h, _ in after:
        assert_published_once(fleet, repo_, d, h)
