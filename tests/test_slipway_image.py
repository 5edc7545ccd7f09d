"""Slipway's own image, built by Slipway's builder and run against the test registry:
/healthz answers from outside the container and Docker reports the container healthy."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from payloads import load_event, to_body, webhook_headers

import builder

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[1]
SOCKET = "/var/run/docker.sock"
IMAGE_UID = 10001  # the `slipway` user of the Dockerfile
SECOND = 1_000_000_000  # Docker's health-check durations are in nanoseconds


@pytest.fixture(scope="module")
def slipway_image(docker_client, registry):
    """Slipway's image, built from the repository's top with builder.build_artifact."""
    version = f"0.0.0-test.{uuid.uuid4().hex[:10]}"
    result = builder.build_artifact(
        "slipway", version, context=str(ROOT), registry=registry.address, network="host",
        docker_client=docker_client,
    )
    yield result
    with contextlib.suppress(Exception):  # already gone: nothing to clean
        docker_client.images.remove(result.tag, force=True)
    delete = urllib.request.Request(
        f"{registry.url}/v2/slipway/manifests/{result.digest}", method="DELETE")
    # A registry without deletes keeps the test tag; it is unique anyway.
    with contextlib.suppress(OSError):
        urllib.request.urlopen(delete, timeout=10).close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_slipway(docker_client, image, data_dir: Path, environment: dict):
    """Run the image as docker-compose.yml does: host network, the socket, DATA_DIR mounted."""
    os.chown(data_dir, IMAGE_UID, IMAGE_UID)
    port = free_port()
    test = docker_client.images.get(image.tag).attrs["Config"]["Healthcheck"]["Test"]
    container = docker_client.containers.run(
        image.tag,
        detach=True,
        network_mode="host",
        environment={"PORT": str(port), "DATA_DIR": "/data", "REGISTRY": "127.0.0.1:5000",
                     "PUBLIC_URL": f"http://127.0.0.1:{port}", **environment},
        volumes={str(data_dir): {"bind": "/data", "mode": "rw"},
                 SOCKET: {"bind": SOCKET, "mode": "rw"}},
        group_add=[str(os.stat(SOCKET).st_gid)],
        # The image's own check, run every second instead of every 30 s.
        healthcheck={"test": test, "interval": SECOND, "timeout": 5 * SECOND,
                     "retries": 3, "start_period": 30 * SECOND},
    )
    return container, f"http://127.0.0.1:{port}"


def get(url: str, timeout: float = 5.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for_http(container, url: str, deadline: float = 60.0):
    started = time.monotonic()
    while time.monotonic() - started < deadline:
        container.reload()
        if container.status == "exited":
            pytest.fail(f"Slipway's container exited:\n{container.logs().decode()[-3000:]}")
        try:
            return get(url)
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{url} never answered:\n{container.logs().decode()[-3000:]}")


def wait_for_health(container, deadline: float = 60.0) -> dict:
    started = time.monotonic()
    while time.monotonic() - started < deadline:
        container.reload()
        health = container.attrs["State"].get("Health") or {}
        if health.get("Status") in ("healthy", "unhealthy"):
            return health
        time.sleep(0.5)
    return container.attrs["State"].get("Health") or {}


@pytest.fixture
def containers(docker_client):
    started = []
    yield started
    for container in started:
        with contextlib.suppress(Exception):  # already removed
            container.remove(force=True)


def test_image_is_small_and_runs_as_non_root(slipway_image, docker_client):
    """The image runs as an unprivileged user, exposes 8080, keeps /data a volume, runs serve."""
    config = docker_client.images.get(slipway_image.tag).attrs["Config"]
    assert config["User"] == "slipway"
    assert "8080/tcp" in config["ExposedPorts"]
    assert "/data" in config["Volumes"]
    assert config["Cmd"] == ["python", "-m", "github_app", "serve"]
    assert "/healthz" in " ".join(config["Healthcheck"]["Test"])
    assert slipway_image.reference.startswith("127.0.0.1:5000/slipway:0.0.0-test.")


def test_the_image_has_the_disk_tools_of_type_ami(slipway_image, docker_client):
    """`type: ami` assembles its disk in the image, as its unprivileged user."""
    output = docker_client.containers.run(
        slipway_image.tag, ["python", "-c", "from builder.ami import disk; disk.check_tools(); "
                            "import boto3; print('ready')"],
        network_mode="none", remove=True)
    assert output.decode().strip() == "ready"


def test_unconfigured_image_is_healthy_and_serves_setup(
        slipway_image, docker_client, containers, tmp_path):
    """Without App credentials the container is healthy, /healthz sees Docker, /setup is served."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    container, url = run_slipway(docker_client, slipway_image, data_dir, {})
    containers.append(container)

    status, body = wait_for_http(container, f"{url}/healthz")
    assert status == 200, body
    assert json.loads(body)["checks"] == {"store": "ok", "docker": "ok", "worker": "ok",
                                          "disk": "ok"}
    assert get(f"{url}/setup")[0] == 401  # the setup token is needed
    token = (data_dir / "setup-token").read_text().strip()
    assert f"/setup?token={token}" in container.logs().decode()
    status, page = get(f"{url}/setup?token={token}")
    assert status == 200
    assert b"Create Slipway&#39;s GitHub App" in page or b"Create Slipway's GitHub App" in page
    assert wait_for_health(container)["Status"] == "healthy"
    # The job store lives in the mounted DATA_DIR, written by the non-root user.
    assert any(p.stat().st_uid == IMAGE_UID for p in data_dir.iterdir())


def test_configured_image_accepts_a_signed_webhook(
        slipway_image, docker_client, containers, tmp_path):
    """With an App id, key and secret, the container verifies deliveries and is healthy."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM,
                            serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption()).decode()
    secret = uuid.uuid4().hex
    container, url = run_slipway(docker_client, slipway_image, data_dir, {
        "GITHUB_APP_ID": "12345",
        "GITHUB_PRIVATE_KEY": pem.replace("\n", "\\n"),
        "GITHUB_WEBHOOK_SECRET": secret,
        "GITHUB_API_URL": "http://127.0.0.1:9",  # nothing is called for a ping
    })
    containers.append(container)

    status, body = wait_for_http(container, f"{url}/healthz")
    assert status == 200, body
    assert json.loads(body)["checks"]["docker"] == "ok"

    delivery = to_body(load_event("ping"))
    for signed_with, expected in ((secret, 200), ("wrong-secret", 401)):
        request = urllib.request.Request(
            f"{url}/webhook", data=delivery, method="POST",
            headers=webhook_headers("ping", delivery, signed_with))
        assert get_request(request) == expected
    assert wait_for_health(container)["Status"] == "healthy"
    logs = container.logs().decode()
    assert secret not in logs and "PRIVATE KEY" not in logs


def get_request(request) -> int:
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
