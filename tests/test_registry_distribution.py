"""What Slipway pushes can be pulled back and run, here and from another machine.

Real engine, real registries (distribution 2.8, the code of registry:2), and a
network namespace joined by a veth pair standing in for a second machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import docker.errors
import netns
import pytest

pytestmark = pytest.mark.docker

MICROSERVICE = Path(__file__).resolve().parent.parent / "microservice"


# --- helpers ------------------------------------------------------------------


def build_microservice(client, reference: str, *, version: str):
    """Build microservice/ as `reference`; a unique revision makes a unique image id."""
    image, _ = client.images.build(
        path=str(MICROSERVICE),
        tag=reference,
        network_mode="host",  # Docker's default bridge is off-limits here
        pull=False,  # python:3.11-slim exists only locally
        rm=True,
        buildargs={"SERVICE_VERSION": version, "SERVICE_REVISION": uuid.uuid4().hex},
    )
    return image


def push(client, repository: str, tag: str) -> str:
    """Push and return the manifest digest; a failed push arrives inside a 200 stream."""
    digest = None
    for chunk in client.images.push(repository, tag=tag, stream=True, decode=True):
        if "error" in chunk:
            raise AssertionError(f"push of {repository}:{tag} failed: {chunk['error']}")
        digest = chunk.get("aux", {}).get("Digest", digest)
    assert digest, f"the engine reported no digest for {repository}:{tag}"
    return digest


def remove_image(client, reference: str) -> None:
    with contextlib.suppress(docker.errors.ImageNotFound):
        client.images.remove(reference, force=True)


def free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def get_json(url: str, *, timeout: float = 30) -> dict:
    """GET a JSON document, retrying while the server is still starting."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, ConnectionError) as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} did not answer within {timeout} s: {exc}") from exc
            time.sleep(0.3)


def delete_manifest(registry_url: str, name: str, digest: str) -> None:
    """Free the test's repository (the registry runs with storage.delete.enabled)."""
    request = urllib.request.Request(f"{registry_url}/v2/{name}/manifests/{digest}",
                                     method="DELETE")
    with contextlib.suppress(urllib.error.URLError):
        urllib.request.urlopen(request, timeout=10).close()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


class RegistryProcess:
    """A `docker-registry serve` of our own, stopped by its pid."""

    def __init__(self, address: str, storage: Path, workdir: Path):
        self.address = address
        self.url = f"http://{address}"
        name = address.replace(":", "_")
        self.config = workdir / f"registry-{name}.yml"
        self.log = workdir / f"registry-{name}.log"
        self.config.write_text(
            "version: 0.1\n"
            "log:\n  level: info\n"
            f"storage:\n  filesystem:\n    rootdirectory: {storage}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: {address}\n"
        )
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                ["docker-registry", "serve", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT,
            )
        try:
            get_json(self.url + "/v2/", timeout=15)
        except AssertionError:
            self.stop()
            raise AssertionError(
                f"registry on {address} did not start:\n{self.log_tail()}"
            ) from None

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def interface_tx_bytes(interface: str) -> int:
    return int(Path(f"/sys/class/net/{interface}/statistics/tx_bytes").read_text())


# --- fixtures -----------------------------------------------------------------


@pytest.fixture
def cleanup(docker_client):
    """Collects containers and image references to remove after the test, pass or fail."""
    containers, images = [], []
    yield containers, images
    for container in containers:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
    for reference in images:
        remove_image(docker_client, reference)


@pytest.fixture
def other_machine():
    """A network namespace behind a veth pair; skipped where namespaces are refused."""
    with contextlib.ExitStack() as stack:
        try:
            host = stack.enter_context(netns.other_machine())
        except netns.NamespacesUnavailable as exc:
            pytest.skip(f"cannot make a second machine: {exc}")
        yield host


@pytest.fixture
def shared_registries(tmp_path, other_machine):
    """Two registry processes on one storage directory: one on loopback for
    Docker's pushes (the engine trusts only 127.0.0.0/8 without TLS), one on
    the veth address, the way the other machine sees this host."""
    storage = tmp_path / "registry-storage"
    storage.mkdir()
    started = []
    try:
        started.append(RegistryProcess(f"127.0.0.1:{free_port('127.0.0.1')}", storage, tmp_path))
        address = other_machine.host_address
        started.append(RegistryProcess(f"{address}:{free_port(address)}", storage, tmp_path))
        yield started[0], started[1]
    finally:
        for process in started:
            process.stop()


# --- tests --------------------------------------------------------------------


def test_pushed_image_pulls_back_by_digest_and_serves_health(
    docker_client, registry, unique_name, cleanup
):
    """A pushed image, removed locally, pulls back by digest, runs and answers /health."""
    containers, images = cleanup
    repository = f"{registry.address}/{unique_name}"
    built = build_microservice(docker_client, f"{repository}:1.0.0", version="1.0.0")
    images.append(built.id)
    digest = push(docker_client, repository, "1.0.0")
    try:
        assert registry.tags(unique_name) == ["1.0.0"]
        assert registry.manifest_digest(unique_name, "1.0.0") == digest

        remove_image(docker_client, f"{repository}:1.0.0")
        with pytest.raises(docker.errors.ImageNotFound):
            docker_client.images.get(built.id)

        pulled = docker_client.images.pull(f"{repository}@{digest}")
        images.append(pulled.id)
        assert pulled.id == built.id, "the registry returned a different image than was pushed"
        assert f"{repository}@{digest}" in pulled.attrs["RepoDigests"]

        port = free_port("127.0.0.1")
        container = docker_client.containers.run(
            f"{repository}@{digest}", detach=True, network_mode="host",
            environment={"PORT": str(port)},
        )
        containers.append(container)
        base = f"http://127.0.0.1:{port}"
        try:
            assert get_json(base + "/health") == {"status": "ok"}
        except AssertionError:
            container.reload()
            raise AssertionError(f"container {container.status}:\n"
                                 f"{container.logs(tail=30).decode(errors='replace')}") from None
        assert get_json(base + "/version")["version"] == "1.0.0"
    finally:
        delete_manifest(registry.url, unique_name, digest)


def test_other_machine_downloads_every_blob_intact_over_the_network(
    docker_client, other_machine, shared_registries, unique_name, cleanup, tmp_path
):
    """A machine that reaches this host only over the network downloads the pushed
    image, and every blob's sha256 equals its digest."""
    _, images = cleanup
    loopback, on_network = shared_registries
    repository = f"{loopback.address}/{unique_name}"
    built = build_microservice(docker_client, f"{repository}:2.0.0", version="2.0.0")
    images.append(built.id)
    digest = push(docker_client, repository, "2.0.0")

    # The other machine has no way to this host's loopback: 127.0.0.1 is its own.
    for port in (5000, int(loopback.address.rsplit(":", 1)[1])):
        probe = other_machine.run(
            ["python3", "-c", f"import socket; socket.create_connection(('127.0.0.1', {port}), 2)"],
            check=False,
        )
        assert probe.returncode != 0 and "ConnectionRefusedError" in probe.stderr, (
            f"the namespace reached 127.0.0.1:{port}; its traffic may not cross the veth pair"
        )

    fetched = tmp_path / "fetched"
    sent_before = interface_tx_bytes(other_machine.host_interface)
    copy = other_machine.run(
        ["skopeo", "--insecure-policy", "copy", "--src-tls-verify=false",
         f"docker://{on_network.address}/{unique_name}:2.0.0", f"dir:{fetched}"],
        timeout=120, check=False,
    )
    sent = interface_tx_bytes(other_machine.host_interface) - sent_before
    assert copy.returncode == 0, (
        f"skopeo in the namespace failed:\n{copy.stderr}\nregistry log:\n{on_network.log_tail()}"
    )

    manifest_bytes = (fetched / "manifest.json").read_bytes()
    assert "sha256:" + hashlib.sha256(manifest_bytes).hexdigest() == digest
    manifest = json.loads(manifest_bytes)
    blobs = [manifest["config"], *manifest["layers"]]
    assert len(manifest["layers"]) >= 2  # the base image and the service's own layers
    for blob in blobs:
        path = fetched / blob["digest"].removeprefix("sha256:")
        assert path.stat().st_size == blob["size"], f"{blob['digest']}: wrong size"
        assert sha256_file(path) == blob["digest"], f"{blob['digest']}: content does not match"
    assert manifest["config"]["digest"] == built.id  # the image Docker built, not another

    total = sum(blob["size"] for blob in blobs)
    assert sent >= total, (
        f"only {sent} bytes left through {other_machine.host_interface} for {total} bytes of blobs"
    )


def test_deleted_image_is_gone_and_garbage_collection_frees_its_blobs(
    docker_client, unique_name, tmp_path, cleanup
):
    """Deleting a manifest by digest (as docs/registry.md shows) unpublishes the
    image, and `garbage-collect` then frees the disk its blobs used."""
    _, images = cleanup
    storage = tmp_path / "registry-storage"
    storage.mkdir()
    registry = RegistryProcess(f"127.0.0.1:{free_port('127.0.0.1')}", storage, tmp_path)
    try:
        repository = f"{registry.address}/{unique_name}"
        built = build_microservice(docker_client, f"{repository}:3.0.0", version="3.0.0")
        images.append(built.id)
        pushed = push(docker_client, repository, "3.0.0")
        blobs = list((storage / "docker/registry/v2/blobs").rglob("data"))
        assert len(blobs) >= 3  # config, base layer, the service's layers

        head = urllib.request.Request(
            f"{registry.url}/v2/{unique_name}/manifests/3.0.0", method="HEAD",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        )
        with urllib.request.urlopen(head, timeout=10) as response:
            digest = response.headers["Docker-Content-Digest"]
        assert digest == pushed

        delete = urllib.request.Request(
            f"{registry.url}/v2/{unique_name}/manifests/{digest}", method="DELETE"
        )
        with urllib.request.urlopen(delete, timeout=10) as response:
            assert response.status == 202
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{registry.url}/v2/{unique_name}/manifests/3.0.0", timeout=10)
        assert missing.value.code == 404
        assert not get_json(f"{registry.url}/v2/{unique_name}/tags/list").get("tags")
    finally:
        # The registry must not accept uploads while garbage-collect runs.
        registry.stop()

    collected = subprocess.run(
        ["docker-registry", "garbage-collect", str(registry.config)],
        capture_output=True, text=True, timeout=120,
    )
    assert collected.returncode == 0, collected.stderr
    assert not any(blob.exists() for blob in blobs), "garbage-collect left blobs behind"
