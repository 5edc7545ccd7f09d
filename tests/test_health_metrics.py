"""/healthz and /metrics against a real job store and the real Docker engine."""

from __future__ import annotations

import shutil

import docker
import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from github_app import health, metrics
from github_app.config import Config
from github_app.jobs import JobStore
from github_app.metrics import Metrics
from github_app.runtime import Runtime

pytestmark = pytest.mark.docker


def make_app(store, *, engine_ping, metrics_=None, config=None, docker_root=None) -> Flask:
    """A Flask app with the health and metrics blueprints over this runtime."""
    app = Flask(__name__)
    app.extensions["slipway"] = Runtime(
        config=config or Config(data_dir=store.path.parent), store=store,
        metrics=metrics_ or Metrics(), engine_ping=engine_ping,
        extras={"docker_root": (lambda: docker_root) if docker_root else None},
    )
    app.register_blueprint(health.bp)
    app.register_blueprint(metrics.bp)
    return app


@pytest.fixture
def store(data_dir):
    with JobStore.from_data_dir(data_dir) as job_store:
        yield job_store


@pytest.fixture
def unreachable_engine():
    """A real Docker client aimed at a socket where no engine listens."""
    client = docker.DockerClient(
        base_url="unix:///nonexistent/docker.sock", version="1.41", timeout=2
    )
    yield client
    client.close()


def test_healthz_is_200_when_store_and_engine_answer(store, docker_client):
    """With a working store and the real engine, /healthz answers 200 and says ok for each."""
    response = make_app(store, engine_ping=docker_client.ping).test_client().get("/healthz")
    assert response.status_code == 200
    assert response.json["status"] == "ok"
    assert response.json["checks"] == {"store": "ok", "docker": "ok", "worker": "ok", "disk": "ok"}
    assert response.headers["Cache-Control"] == "no-store"


def test_healthz_is_503_naming_docker_when_the_engine_does_not_answer(store, unreachable_engine):
    """An engine that does not answer makes /healthz 503 with the reason under docker."""
    client = make_app(store, engine_ping=unreachable_engine.ping).test_client()
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json["status"] == "unhealthy"
    assert response.json["checks"]["store"] == "ok"
    assert response.json["checks"]["docker"].startswith("error: ")
    assert "ConnectionError" in response.json["checks"]["docker"]


def test_healthz_is_503_naming_the_store_when_its_directory_is_gone(data_dir, docker_client):
    """A job store that cannot be opened makes /healthz 503 with the reason under store."""
    store = JobStore.from_data_dir(data_dir / "gone")
    store.close()
    shutil.rmtree(data_dir / "gone")
    response = make_app(store, engine_ping=docker_client.ping).test_client().get("/healthz")
    assert response.status_code == 503
    assert response.json["checks"]["docker"] == "ok"
    assert response.json["checks"]["store"].startswith("error: ")
    assert "gone" in response.json["checks"]["store"]


def test_healthz_is_503_when_no_engine_is_configured(store):
    """A runtime without a way to reach Docker is not healthy: builds could not run."""
    response = make_app(store, engine_ping=None).test_client().get("/healthz")
    assert response.status_code == 503
    assert response.json["checks"]["docker"] == "error: no Docker engine configured"


def scrape(client) -> dict[str, dict[tuple, float]]:
    """GET /metrics and parse it: {sample name: {sorted labels: value}}."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_metrics_export_webhooks_builds_durations_and_github_calls(store, docker_client):
    """What the app counted is in /metrics, in the Prometheus text format, with labels."""
    recorded = Metrics()
    recorded.webhook_received("pull_request", "accepted")
    recorded.webhook_received("pull_request", "accepted")
    recorded.webhook_received("pull_request", "ignored")
    recorded.webhook_received("ping", "ok")
    recorded.build_finished("success", 42.0)
    recorded.build_finished("failure", 3.5)
    recorded.github_api_call(201)
    recorded.github_api_call(201)
    recorded.github_api_call(None)
    client = make_app(store, engine_ping=docker_client.ping, metrics_=recorded).test_client()

    samples = scrape(client)
    webhooks = samples["slipway_webhooks_received_total"]
    assert webhooks[(("event", "pull_request"), ("outcome", "accepted"))] == 2
    assert webhooks[(("event", "pull_request"), ("outcome", "ignored"))] == 1
    assert webhooks[(("event", "ping"), ("outcome", "ok"))] == 1
    assert samples["slipway_builds_total"] == {
        (("conclusion", "success"),): 1,
        (("conclusion", "failure"),): 1,
    }
    assert samples["slipway_build_duration_seconds_count"][()] == 2
    assert samples["slipway_build_duration_seconds_sum"][()] == 45.5
    assert samples["slipway_build_duration_seconds_bucket"][(("le", "5.0"),)] == 1
    assert samples["slipway_build_duration_seconds_bucket"][(("le", "60.0"),)] == 2
    assert samples["slipway_github_api_calls_total"] == {
        (("status", "201"),): 2,
        (("status", "error"),): 1,
    }


def test_queue_depth_is_read_from_the_store_at_each_scrape(store, docker_client):
    """The queue depth gauge follows the store: enqueue, claim, and it changes."""
    client = make_app(store, engine_ping=docker_client.ping).test_client()
    assert scrape(client)["slipway_queue_depth"][()] == 0

    for delivery in ("d-1", "d-2", "d-3"):
        store.enqueue(delivery, repository="octo/orders", kind="merge", request={})
    assert scrape(client)["slipway_queue_depth"][()] == 3

    store.claim("worker-1")
    assert scrape(client)["slipway_queue_depth"][()] == 2


def test_two_apps_keep_separate_metrics(store, docker_client):
    """Each app has its own registry: counting in one does not show in the other."""
    first = make_app(store, engine_ping=docker_client.ping).test_client()
    second_metrics = Metrics()
    second = make_app(store, engine_ping=docker_client.ping, metrics_=second_metrics).test_client()
    second_metrics.webhook_received("pull_request", "accepted")

    assert "slipway_webhooks_received_total" not in scrape(first)
    assert scrape(second)["slipway_webhooks_received_total"] == {
        (("event", "pull_request"), ("outcome", "accepted")): 1
    }


def test_metrics_still_answer_when_the_store_does_not(data_dir, docker_client):
    """A store that cannot be read drops the queue gauge but not the scrape."""
    store = JobStore.from_data_dir(data_dir / "gone")
    store.close()
    shutil.rmtree(data_dir / "gone")
    recorded = Metrics()
    recorded.build_finished("success", 1.0)
    client = make_app(store, engine_ping=docker_client.ping, metrics_=recorded).test_client()

    samples = scrape(client)
    assert "slipway_queue_depth" not in samples
    assert samples["slipway_builds_total"] == {(("conclusion", "success"),): 1}


def test_the_real_app_reports_health_and_metrics(data_dir, monkeypatch):
    """create_app wires /healthz to the store and the engine of DOCKER_HOST, and /metrics."""
    from github_app import create_app
    from github_app.config import Config

    monkeypatch.setenv("DOCKER_API_VERSION", "1.41")
    app = create_app(Config(data_dir=data_dir))
    client = app.test_client()
    response = client.get("/healthz")
    assert response.status_code == 200, response.json
    assert response.json["status"] == "ok"
    assert response.json["checks"] == {"store": "ok", "docker": "ok", "worker": "ok", "disk": "ok"}

    app.extensions["slipway"].store.enqueue("d-1", repository="o/r", kind="merge", request={})
    assert scrape(client)["slipway_queue_depth"][()] == 1

    broken = create_app(
        Config(data_dir=data_dir / "other", docker_host="unix:///nonexistent/docker.sock")
    )
    response = broken.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.json["checks"]["store"] == "ok"
    assert response.json["checks"]["docker"].startswith("error: ")


def test_healthz_is_503_naming_the_worker_when_jobs_wait_and_no_worker_beats(data_dir,
                                                                             docker_client):
    """Jobs waiting with no worker heartbeat in 60 s: 503, and the body says which part and why."""
    clock = [1_000_000.0]
    with JobStore.from_data_dir(data_dir, clock=lambda: clock[0]) as store:
        client = make_app(store, engine_ping=docker_client.ping).test_client()
        store.enqueue("d-1", repository="octo/orders", kind="merge", request={})
        response = client.get("/healthz")
        assert response.status_code == 503
        assert response.json["checks"]["worker"] == (
            "error: 1 job(s) wait and no worker has shown a heartbeat ever: start "
            "`python -m github_app worker`, or give serve WORKER_THREADS above 0")
        assert response.json["checks"]["store"] == "ok"
        assert response.json["worker_heartbeat_age"] is None


def test_healthz_reports_the_heartbeat_age_and_503s_once_it_passes_60_s(store, docker_client):
    """A separate worker's heartbeat in the store keeps /healthz green; 60 s of silence does not."""
    import time

    client = make_app(store, engine_ping=docker_client.ping).test_client()
    store.enqueue("d-1", repository="octo/orders", kind="merge", request={})
    store.beat("build-host-1")
    response = client.get("/healthz")
    assert response.status_code == 200, response.json
    assert 0 <= response.json["worker_heartbeat_age"] < 5

    store._connection().execute("UPDATE workers SET heartbeat_at = ?", (time.time() - 75,))
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json["checks"]["worker"].startswith(
        "error: 1 job(s) wait and no worker has shown a heartbeat for 75 s")


def test_healthz_without_waiting_jobs_needs_no_worker(store, docker_client):
    """No job waits: a missing worker is not a failure (serve may run web-only)."""
    response = make_app(store, engine_ping=docker_client.ping).test_client().get("/healthz")
    assert response.status_code == 200 and response.json["checks"]["worker"] == "ok"


def test_healthz_is_503_naming_the_disk_below_min_free_disk(store, docker_client):
    """Less free disk than MIN_FREE_DISK in DATA_DIR or the engine's data root: 503 naming it."""
    config = Config(data_dir=store.path.parent, min_free_disk=1024**5)  # 1 PiB
    client = make_app(store, engine_ping=docker_client.ping, config=config,
                      docker_root="/var/lib/docker").test_client()
    response = client.get("/healthz")
    assert response.status_code == 503
    disk = response.json["checks"]["disk"]
    assert disk.startswith("error: ") and "below MIN_FREE_DISK (1024.0 TiB)" in disk
    assert f"free in {store.path.parent} (DATA_DIR)" in disk
    assert "free in /var/lib/docker (the Docker engine's data root)" in disk
    assert set(response.json["free_disk"]) == {str(store.path.parent), "/var/lib/docker"}
