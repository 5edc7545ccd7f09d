"""Scale-out: 12 merges of 12 repositories on 1 build host, then on 3; and webhook intake
on PostgreSQL against SQLite.

    python bench/scale.py                  # about 4 minutes (the first run on a machine: 5)
    python bench/scale.py --merges 6       # a quicker look

Builds: the fleet of tests/fleet.py (each build host a network namespace with its own
Docker engine running `python -m github_app worker` with WORKER_THREADS=1, a web node
`serve` with WORKER_THREADS=0, PostgreSQL, a registry and the fake GitHub, all on this
machine). Each merge's Dockerfile is `FROM python:3.11-slim` + `RUN echo <repo> && sleep
5`, its own, so no build reuses another's cache and the time is the build's, not the two
cores' (sleep uses no CPU). The 12 merges are delivered at once; the time runs from the
first delivery to the last completed check run. First on 1 host (the other workers
stopped), then on 3 (12 new repositories). A warm-up build per host comes first, not timed
(the first push of the base image to a registry is slow).

Intake: the same signed merged `pull_request` delivery, with unique delivery ids, sent by
16 client threads for a few seconds to `serve` (WORKER_THREADS=0, one web process) on
SQLite in DATA_DIR and on the fleet's PostgreSQL, side by side: deliveries a second and
p50/p99 latency of the 202.

The last line is `scale: 12 builds, 1 host A s, 3 hosts B s, speed-up S` (target >= 2.5).
Needs root (network namespaces), Debian's postgresql, docker.io and docker-registry
(`bash scripts/test-env`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from tests.buildhosts import _free_port, _stop  # noqa: E402
from tests.fleet import SECRET, Fleet  # noqa: E402
from tests.payloads import to_body, webhook_headers  # noqa: E402

SLEEP = 5
TARGET = 2.5


def finished_count(fleet: Fleet, deliveries: list[str]) -> int:
    return fleet.query(
        "SELECT count(*) FROM jobs WHERE delivery_id = ANY(%s) AND state IN"
        " ('succeeded', 'failed')", (deliveries,))[0][0]


def run_merges(fleet: Fleet, count: int, *, label: str) -> float:
    """Deliver `count` merges of `count` new repositories at once; seconds until all done."""
    repos = [fleet.repository() for _ in range(count)]
    merges = [fleet.merge(repo, 1, sleep=SLEEP) for repo in repos]
    deliveries = []
    started = time.monotonic()
    for payload, _, _ in merges:
        delivery = str(uuid.uuid4())
        answer = fleet.deliver(0, payload, delivery_id=delivery)
        assert answer.status_code == 202, answer.text
        deliveries.append(delivery)
    fleet.wait_for(lambda: finished_count(fleet, deliveries) == count, timeout=60 * count,
                   what=f"{label}: {count} builds")
    took = time.monotonic() - started
    failed = fleet.query("SELECT count(*) FROM jobs WHERE delivery_id = ANY(%s) AND state <> "
                         "'succeeded'", (deliveries,))[0][0]
    hosts = fleet.query("SELECT count(DISTINCT split_part(worker_id, '-', 2)) FROM jobs"
                        " WHERE delivery_id = ANY(%s)", (deliveries,))[0][0]
    print(f"  {label}: {count} builds in {took:.1f} s on {hosts} worker(s)"
          + (f", {failed} FAILED" if failed else ""), flush=True)
    if failed:
        sys.exit(f"{failed} build(s) failed:\n{fleet.log_tails()}")
    return took


def wait_idle(fleet: Fleet) -> None:
    fleet.wait_for(lambda: fleet.query("SELECT count(*) FROM jobs WHERE state IN"
                                       " ('queued', 'running')")[0][0] == 0,
                   timeout=300, what="the warm-up builds")


# -- intake --------------------------------------------------------------------------------------


def start_serve(fleet: Fleet, folder: Path, *, database_url: str | None) -> tuple[subprocess.Popen,
                                                                                   str]:
    port = _free_port("127.0.0.1")
    env = fleet.env(WORKER_THREADS="0", PORT=str(port), DATA_DIR=str(folder),
                    LOG_LEVEL="WARNING", REDELIVER_INTERVAL="0")
    if database_url is None:
        env.pop("DATABASE_URL", None)
    else:
        env["DATABASE_URL"] = database_url
    folder.mkdir(parents=True, exist_ok=True)
    log = open(folder / "serve.log", "ab")  # noqa: SIM115 - the child's
    process = subprocess.Popen([sys.executable, "-m", "github_app", "serve", "--host",
                                "127.0.0.1"], env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True, cwd=str(folder))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(url + "/builds", timeout=2).status_code < 500:
                return process, url
        except requests.RequestException:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            sys.exit(f"serve did not start; see {folder / 'serve.log'}")
        time.sleep(0.2)


def intake(url: str, body: bytes, *, seconds: float, threads: int = 16) -> dict:
    """Deliveries a second and latency percentiles, `threads` clients for `seconds`."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client() -> None:
        session = requests.Session()
        mine, bad = [], 0
        while time.monotonic() < stop_at:
            headers = webhook_headers("pull_request", body, SECRET, delivery_id=str(uuid.uuid4()))
            began = time.perf_counter()
            answer = session.post(url + "/webhook", data=body, headers=headers, timeout=15)
            mine.append(time.perf_counter() - began)
            bad += answer.status_code != 202
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    began = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(threads):
            pool.submit(client)
    took = time.monotonic() - began
    latencies.sort()
    return {"rate": len(latencies) / took, "count": len(latencies), "errors": errors[0],
            "p50": statistics.median(latencies) * 1000,
            "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000}


def measure_intake(fleet: Fleet, folder: Path, *, seconds: float) -> None:
    repo = fleet.repository()
    payload, _, _ = fleet.merge(repo, 1, sleep=SLEEP)
    body = to_body(payload)
    fleet.cluster.psql("CREATE DATABASE slipway_intake OWNER slipway")
    intake_url = fleet.cluster.url("127.0.0.1").rsplit("/", 1)[0] + "/slipway_intake"
    rows = []
    for name, database_url in (("SQLite (DATA_DIR)", None), ("PostgreSQL", intake_url)):
        process, url = start_serve(fleet, folder / name.split()[0].lower(),
                                   database_url=database_url)
        try:
            intake(url, body, seconds=1.0)  # warm-up
            rows.append((name, intake(url, body, seconds=seconds)))
        finally:
            _stop(process, timeout=10)
    print(f"\nwebhook intake (serve, WORKER_THREADS=0, 1 web process, 16 clients, {seconds:g} s)")
    print(f"  {'store':<18} {'deliveries/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'non-202':>8}")
    for name, row in rows:
        print(f"  {name:<18} {row['rate']:>12.0f} {row['p50']:>8.1f} {row['p99']:>8.1f}"
              f" {row['errors']:>8}")
    sqlite_rate, pg_rate = rows[0][1]["rate"], rows[1][1]["rate"]
    print(f"intake: SQLite {sqlite_rate:.0f}/s, PostgreSQL {pg_rate:.0f}/s "
          f"(PostgreSQL/SQLite {pg_rate / sqlite_rate:.2f})", flush=True)


# -- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--merges", type=int, default=12)
    parser.add_argument("--intake-seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    os.environ.setdefault("DOCKER_API_VERSION", "1.41")
    folder = Path(tempfile.mkdtemp(prefix="slipway-scale-", dir="/var/tmp"))
    print(f"scale-out bench in {folder}", flush=True)
    # No floating tags: three manifest writes per build that measure the registry, not
    # the hosts.
    with Fleet(folder / "fleet", hosts=3, web_nodes=1, lease_seconds=30,
               worker_env={"FLOATING_TAGS": ""}) as fleet:
        measure_intake(fleet, folder / "intake", seconds=args.intake_seconds)

        print(f"\nbuilds ({args.merges} merges of {args.merges} repositories, "
              f"RUN sleep {SLEEP}; one build at a time per host)")
        warm = [fleet.merge(fleet.repository(), 1, sleep=1) for _ in range(3)]
        for payload, _, _ in warm:
            fleet.deliver(0, payload, delivery_id=str(uuid.uuid4()))
        wait_idle(fleet)

        for index in (1, 2):
            fleet.kill_worker(index)
        one = run_merges(fleet, args.merges, label="1 host ")
        for index in (1, 2):
            fleet.start_worker(index)
        time.sleep(3)  # the two workers start and claim
        three = run_merges(fleet, args.merges, label="3 hosts")
    speedup = one / three
    verdict = "meets" if speedup >= TARGET else "MISSES"
    print(f"speed-up {speedup:.2f} {verdict} the target of {TARGET}")
    print(f"scale: {args.merges} builds, 1 host {one:.1f} s, 3 hosts {three:.1f} s, "
          f"speed-up {speedup:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
