"""Slipway on several machines, made on this one for a test or a benchmark.

    with Fleet(tmp_path, hosts=3, web_nodes=2, lease_seconds=5) as fleet:
        repo = fleet.repository(dockerfile="FROM python:3.11-slim\\nRUN sleep 3\\n")
        fleet.deliver(0, "pull_request", repo.merged(labels=["version:1.0.0"]))
        fleet.wait_for(lambda: fleet.jobs_in("succeeded") == 1, timeout=60)

- one PostgreSQL cluster, one registry and one fake GitHub, on the service
  address (tests/buildhosts.py) that every build host routes to;
- build hosts: a network namespace each, with its own dockerd, running
  `python -m github_app worker` (one build at a time);
- web nodes: `python -m github_app serve` with WORKER_THREADS=0 on loopback
  ports of this host, behind no balancer (the test picks the node).

Every process is started and stopped here, by its pid, its output kept in
``tmp_path`` for the failure message.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
import requests

from tests.buildhosts import STATE, BuildHost, _free_port, _stop, build_host, registry_server
from tests.buildhosts import service_address as make_service_address
from tests.fake_github import start_fake_github
from tests.payloads import merged_pull_request, to_body, webhook_headers
from tests.pgcluster import postgres_cluster

SECRET = "fleet webhook secret"
# The same registry port on every run: the engines (whose data roots are kept) then know
# that the registry holds the base image's layers and do not push 80 MB again.
REGISTRY_PORT = 5099
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Repo:
    owner: str
    name: str
    installation_id: int
    head_sha: str
    merge_sha: str

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    def merged(self, labels=(), title="Add orders endpoint", *, number: int | None = None,
               head_sha: str | None = None, merge_sha: str | None = None) -> dict:
        """The real `pull_request` `closed` example, pointed at this repository."""
        payload = merged_pull_request(labels=list(labels), title=title,
                                      merge_commit_sha=merge_sha or self.merge_sha)
        if number is not None:
            payload["number"] = payload["pull_request"]["number"] = number
        payload["installation"] = {"id": self.installation_id, "node_id": "MDIzOkluc3Q="}
        repository = payload["repository"]
        repository["name"], repository["full_name"] = self.name, self.full_name
        repository["owner"]["login"] = self.owner
        repository["html_url"] = f"https://github.com/{self.full_name}"
        for side in ("base", "head"):
            payload["pull_request"][side]["repo"] = dict(repository)
        payload["pull_request"]["head"]["sha"] = head_sha or self.head_sha
        return payload


def _port_or_free(address: str, port: int) -> int:
    import socket

    with socket.socket() as probe:
        try:
            probe.bind((address, port))
        except OSError:
            return _free_port(address)
    return port


class Fleet:
    def __init__(self, folder: Path, *, hosts: int = 3, web_nodes: int = 2,
                 lease_seconds: int = 5, worker_env: dict[str, str] | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.host_count = hosts
        self.web_count = web_nodes
        self.lease_seconds = lease_seconds
        self.worker_env = worker_env or {}
        self._stack = contextlib.ExitStack()
        self.hosts: list[BuildHost] = []
        self.workers: dict[int, subprocess.Popen] = {}
        self.web: dict[int, subprocess.Popen] = {}
        self.web_urls: dict[int, str] = {}
        self._logs: list[Path] = []

    # -- lifecycle -----------------------------------------------------------

    def __enter__(self) -> Fleet:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        for process in [*self.workers.values(), *self.web.values()]:
            _stop(process, timeout=10)
        self._stack.close()

    def _start(self) -> None:
        stack = self._stack
        self.address = stack.enter_context(make_service_address())
        registry_folder = self.folder / "registry"
        registry_folder.mkdir()
        self.registry = stack.enter_context(registry_server(
            self.address, registry_folder, port=_port_or_free(self.address, REGISTRY_PORT),
            storage=STATE / "fleet-registry"))
        self.fake = start_fake_github(host=self.address)
        stack.callback(self.fake.stop)
        self.cluster = stack.enter_context(postgres_cluster(listen=["127.0.0.1", self.address]))
        self.key_path = self.folder / "app.pem"
        self.key_path.write_bytes(self.fake.private_key_pem)
        registry_port = int(self.registry.rsplit(":", 1)[1])
        # Each host reaches the registry at its own 127.0.0.1 (a forwarder in its
        # namespace): Docker and Slipway speak plain HTTP to a loopback registry only.
        self.worker_registry = f"127.0.0.1:{registry_port}"
        for _ in range(self.host_count):
            host = stack.enter_context(build_host(self.address, registry=self.registry))
            forwarder = host.popen([sys.executable, "-m", "tests.forward", str(registry_port),
                                    self.address, str(registry_port)],
                                   env={**os.environ, "PYTHONPATH": str(ROOT)})
            stack.callback(_stop, forwarder, 5)
            self.hosts.append(host)
        for index in range(self.web_count):
            self.start_web(index)
        for index in range(self.host_count):
            self.start_worker(index)
        for index in range(self.web_count):
            self._wait_for_web(index)

    def env(self, **settings: str) -> dict[str, str]:
        """The environment every Slipway process of the fleet shares."""
        env = {name: value for name, value in os.environ.items()
               if not name.startswith(("GITHUB_", "REGISTRY", "DATABASE_URL", "DOCKER_HOST"))}
        env.update(
            PYTHONPATH=str(ROOT),
            GITHUB_APP_ID=str(self.fake.app_id),
            GITHUB_PRIVATE_KEY_PATH=str(self.key_path),
            GITHUB_WEBHOOK_SECRET=SECRET,
            GITHUB_API_URL=self.fake.url,
            ALLOWED_OWNERS="*",
            REGISTRY=self.registry,
            DATABASE_URL=self.cluster.url(self.address),
            LEASE_SECONDS=str(self.lease_seconds),
            PUBLIC_URL="http://slipway.example",
            BUILD_NETWORK="none",
            LOG_LEVEL="INFO",
            DOCKER_API_VERSION="1.41",
        )
        env.update(settings)
        return env

    def _log(self, name: str):
        path = self.folder / f"{name}.log"
        self._logs.append(path)
        return open(path, "ab")  # noqa: SIM115 - handed to the child process

    def start_worker(self, index: int) -> subprocess.Popen:
        """`python -m github_app worker` on build host `index`, with its own engine."""
        host = self.hosts[index]
        data_dir = self.folder / f"worker-{index}"
        data_dir.mkdir(exist_ok=True)
        env = self.env(DOCKER_HOST=host.docker_host, WORKER_THREADS="1", DATA_DIR=str(data_dir),
                       MIN_FREE_DISK="1m", REGISTRY=self.worker_registry, **self.worker_env)
        with self._log(f"worker-{index}") as log:
            process = host.popen([sys.executable, "-m", "github_app", "worker"], env=env,
                                 stdout=log, stderr=subprocess.STDOUT, cwd=str(self.folder))
        self.workers[index] = process
        return process

    def kill_worker(self, index: int) -> None:
        """SIGKILL the worker of host `index` (its engine keeps running)."""
        process = self.workers[index]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def start_web(self, index: int) -> subprocess.Popen:
        """`python -m github_app serve` with WORKER_THREADS=0 on a loopback port."""
        port = _free_port("127.0.0.1")
        data_dir = self.folder / f"web-{index}"
        data_dir.mkdir(exist_ok=True)
        env = self.env(WORKER_THREADS="0", PORT=str(port), DATA_DIR=str(data_dir),
                       DATABASE_URL=self.cluster.url("127.0.0.1"))
        with self._log(f"web-{index}") as log:
            process = subprocess.Popen([sys.executable, "-m", "github_app", "serve",
                                        "--host", "127.0.0.1"], env=env, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True,
                                       cwd=str(self.folder))
        self.web[index] = process
        self.web_urls[index] = f"http://127.0.0.1:{port}"
        return process

    def kill_web(self, index: int) -> None:
        process = self.web[index]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def _wait_for_web(self, index: int, timeout: float = 60) -> None:
        def answers() -> bool:
            try:
                return requests.get(self.web_urls[index] + "/builds", timeout=2).status_code < 500
            except requests.RequestException:
                return False
        self.wait_for(answers, timeout=timeout, what=f"web node {index} to answer")

    # -- driving -------------------------------------------------------------

    def repository(self, *, dockerfile: str = "FROM python:3.11-slim\n",
                   owner: str = "octo-org") -> Repo:
        """A repository on the fake GitHub with the App installed; head and merge commits."""
        name = f"svc-{uuid.uuid4().hex[:8]}"
        installation = self.fake.add_installation(account=owner)
        created = self.fake.add_repository(owner, name, files={"Dockerfile": dockerfile},
                                           installation_id=installation)
        merge_sha = self.fake.add_commit(owner, name, files={})
        return Repo(owner, name, installation, created.default_sha, merge_sha)

    def merge(self, repo: Repo, number: int, *, sleep: float) -> tuple[dict, str, str]:
        """A pull request #number merged into `repo`: a Dockerfile of its own (no cache is
        shared with another merge) whose build sleeps `sleep` seconds. Returns the payload,
        its head and merge shas."""
        dockerfile = ("FROM python:3.11-slim\n"
                      f"RUN echo {repo.name} pull request {number} && sleep {sleep:g}\n")
        head = self.fake.add_commit(repo.owner, repo.name, {"Dockerfile": dockerfile},
                                    branch=f"pr-{number}")
        merge = self.fake.add_commit(repo.owner, repo.name, {"Dockerfile": dockerfile})
        payload = repo.merged(labels=[f"version:1.0.{number}"], number=number,
                              head_sha=head, merge_sha=merge)
        return payload, head, merge

    def deliver(self, node: int, payload: dict, *, delivery_id: str | None = None,
                event: str = "pull_request") -> requests.Response:
        """POST a signed delivery to web node `node` over real HTTP, as GitHub does."""
        body = to_body(payload)
        return requests.post(f"{self.web_urls[node]}/webhook", data=body, timeout=15,
                             headers=webhook_headers(event, body, SECRET,
                                                     delivery_id=delivery_id))

    # -- reading -------------------------------------------------------------

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Rows of the shared store, read over loopback."""
        with psycopg.connect(self.cluster.url("127.0.0.1"), connect_timeout=5) as connection:
            return connection.execute(sql, params).fetchall()

    def wait_for(self, predicate: Callable[[], bool], *, timeout: float,
                 what: str = "the condition") -> float:
        """Poll until `predicate()` holds; return the seconds it took. Fails with the logs."""
        started = time.monotonic()
        while True:
            try:
                if predicate():
                    return time.monotonic() - started
            except (psycopg.OperationalError, requests.RequestException):
                pass  # a store or node being restarted by the test
            if time.monotonic() - started > timeout:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n"
                                     + self.log_tails())
            time.sleep(0.25)

    def log_tails(self, lines: int = 25) -> str:
        parts = []
        for path in self._logs:
            with contextlib.suppress(OSError):
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path.name} ---\n" + "\n".join(tail))
        return "\n".join(parts)

    def log_of_worker(self, index: int) -> str:
        return (self.folder / f"worker-{index}.log").read_text(errors="replace")

    def host_of(self, worker_id: str) -> int:
        """Which build host a store's worker id names (the id carries the process id)."""
        for index, process in self.workers.items():
            if f"-{process.pid}-" in worker_id:
                return index
        raise LookupError(f"no worker of this fleet is {worker_id}")
