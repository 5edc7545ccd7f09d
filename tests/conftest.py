"""Fixtures shared by every test: the real Docker engine and registry that
scripts/test-env brings up, fresh data directories and a clean environment."""

from __future__ import annotations

import json
import os
import urllib.request
import uuid

import pytest

REGISTRY = os.environ.get("TEST_REGISTRY_ADDR", "127.0.0.1:5000")
# The PostgreSQL cluster scripts/test-env starts (the store's second backend).
DATABASE_URL = os.environ.get("TEST_DATABASE_URL",
                              "postgresql://slipway:slipway@127.0.0.1:5433/slipway")
_ENV_PREFIXES = ("GITHUB_", "REGISTRY", "TARGET_BRANCH", "PUBLIC_URL", "DATA_DIR", "BUILD_NETWORK",
                 "DATABASE_URL", "LEASE_SECONDS")


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch):
    """Keep the caller's Slipway settings out of the tests: each one says what it needs."""
    for name in list(os.environ):
        if name.startswith(_ENV_PREFIXES):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def docker_client():
    """The real Docker engine (scripts/test-env starts it)."""
    import docker

    client = docker.from_env(version=os.environ.get("DOCKER_API_VERSION", "1.41"))
    try:
        client.ping()
    except Exception as exc:  # pragma: no cover - environment problem, not a test result
        pytest.fail(f"no Docker engine answers ({exc}); run scripts/test-env first")
    yield client
    client.close()


class Registry:
    """The test registry, read through its HTTP API v2."""

    def __init__(self, address: str):
        self.address = address
        self.url = f"http://{address}"

    def get_json(self, path: str, accept: str | None = None) -> dict:
        request = urllib.request.Request(self.url + path)
        if accept:
            request.add_header("Accept", accept)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def tags(self, name: str) -> list[str]:
        try:
            return self.get_json(f"/v2/{name}/tags/list").get("tags") or []
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise

    def manifest_digest(self, name: str, tag: str) -> str:
        request = urllib.request.Request(
            f"{self.url}/v2/{name}/manifests/{tag}",
            method="HEAD",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.headers["Docker-Content-Digest"]


@pytest.fixture(scope="session")
def registry() -> Registry:
    """The real registry on loopback (scripts/test-env starts it)."""
    reg = Registry(REGISTRY)
    try:
        urllib.request.urlopen(reg.url + "/v2/", timeout=5).close()
    except OSError as exc:  # pragma: no cover
        pytest.fail(f"no registry answers at {REGISTRY} ({exc}); run scripts/test-env first")
    return reg


@pytest.fixture
def unique_name() -> str:
    """An image name no other test (or earlier run) uses."""
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def published(docker_client, registry):
    """Records the images a test pushes (``published.add(name, tag)``); removes them after it."""
    from builder_helpers import Published

    tracker = Published(docker_client, registry)
    yield tracker
    tracker.cleanup()


@pytest.fixture(scope="session")
def moto():
    """moto's server on a loopback port: EBS direct APIs and EC2 (tests/fake_aws.py)."""
    from fake_aws import MotoServer

    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture
def postgres_url():
    """A URL of the test cluster whose tables land in a schema of this test's own."""
    import psycopg

    schema = f"test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(DATABASE_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:  # pragma: no cover - environment problem
        pytest.fail(f"no PostgreSQL answers at TEST_DATABASE_URL ({exc}); "
                    "run scripts/test-env first")
    with admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        # libpq's `options` puts every connection of the store in that schema.
        yield f"{DATABASE_URL}?options=-csearch_path%3D{schema}"
        admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request, tmp_path):
    """Where a store under test lives: a SQLite file, then a PostgreSQL schema."""
    if request.param == "sqlite":
        return tmp_path / "store" / "slipway.sqlite3"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def data_dir(tmp_path):
    path = tmp_path / "data"
    path.mkdir()
    return path


def _serve_fake_github(**options):
    """Start a fake GitHub (tests/fake_github.py), hand it to the fixture, stop it afterwards."""
    from tests.fake_github import start_fake_github

    server = start_fake_github(**options)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_github_server():
    """One fake GitHub API (tests/fake_github.py) on a loopback port for the whole run."""
    yield from _serve_fake_github()


@pytest.fixture
def fake_github(fake_github_server):
    """The fake GitHub with nothing installed or recorded; the App and its key are kept."""
    fake_github_server.reset()
    return fake_github_server


@pytest.fixture(scope="session")
def enterprise_fake_github_server():
    """A second fake GitHub (another App), mounted under /api/v3 like GitHub Enterprise Server."""
    yield from _serve_fake_github(app_id=54321, enterprise=True)


@pytest.fixture
def enterprise_fake_github(enterprise_fake_github_server):
    """The Enterprise fake with nothing installed or recorded; the App and its key are kept."""
    enterprise_fake_github_server.reset()
    return enterprise_fake_github_server


class FakeClock:
    """A clock the test moves by hand (`clock.now += 61`)."""

    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def store(store_location, clock):
    """The job store on each backend (SQLite in a file, PostgreSQL in a schema of its own),
    on the test's clock, with 60 s leases."""
    from github_app.jobs import JobStore

    with JobStore(store_location, clock=clock, lease_seconds=60) as store:
        yield store
