"""What Slipway pushes can be pulled back and run, here and from another machine.

Real engine, real registries (distribution 2.8, the code of registry:2), and a
network namespace joined by a veth pair standing in for a second machine.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
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
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import builder.registry
from builder import PushFailed, build_artifact

pytestmark = pytest.mark.docker

MICROSERVICE = Path(__file__).resolve().parent.parent / "microservice"
USERNAME, PASSWORD = "slipway", "slipway-test-password"
# `htpasswd -Bbn slipway slipway-test-password`: distribution accepts bcrypt only.
HTPASSWD = "slipway:$2b$05$tazVbuqczoOTzQSoBQQVkeFRiXBklcR3BQcn1td7H/RaOueBNE0ry\n"


# --- helpers ------------------------------------------------------------------


def publish_microservice(client, registry: str, name: str, version: str, **credentials):
    """Build microservice/ and push it as REGISTRY/name:version, as Slipway's worker does."""
    return build_artifact(
        name, version, context=str(MICROSERVICE), registry=registry,
        network="host",  # Docker's default bridge is off-limits here
        build_args={"SERVICE_VERSION": version},
        revision=uuid.uuid4().hex, docker_client=client, **credentials,
    )


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

    def __init__(self, address: str, storage: Path, workdir: Path, *,
                 tls: tuple[Path, Path] | None = None, htpasswd: Path | None = None):
        self.address = address
        self.url = f"{'https' if tls else 'http'}://{address}"
        name = address.replace(":", "_")
        self.config = workdir / f"registry-{name}.yml"
        self.log = workdir / f"registry-{name}.log"
        config = {
            "version": 0.1,
            "log": {"level": "info"},
            "storage": {"filesystem": {"rootdirectory": str(storage)},
                        "delete": {"enabled": True}},
            "http": {"addr": address},
        }
        if tls:
            config["http"]["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
        if htpasswd:
            config["auth"] = {"htpasswd": {"realm": "slipway-test", "path": str(htpasswd)}}
        self.config.write_text(json.dumps(config))  # JSON is YAML
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                ["docker-registry", "serve", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT,
            )
        host, port = address.rsplit(":", 1)
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection((host, int(port)), 1):
                break
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise AssertionError(f"registry on {address} did not start:\n{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def make_certificates(ip: str, directory: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for `ip` signed by it: (ca.crt, server.crt, key)."""
    now = datetime.datetime.now(datetime.UTC)
    validity = {"not_valid_before": now - datetime.timedelta(minutes=5),
                "not_valid_after": now + datetime.timedelta(days=1)}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Slipway test CA")])
    ca = (x509.CertificateBuilder(**validity)
          .subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    server = (x509.CertificateBuilder(**validity)
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)]))
              .issuer_name(ca_name)
              .public_key(key.public_key()).serial_number(x509.random_serial_number())
              .add_extension(x509.SubjectAlternativeName(
                  [x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
              .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.crt", directory / "registry.crt", directory / "registry.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


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
    built = publish_microservice(docker_client, registry.address, unique_name, "1.0.0")
    images.append(built.image_id)
    digest = built.digest
    try:
        assert registry.tags(unique_name) == ["1.0.0"]
        assert registry.manifest_digest(unique_name, "1.0.0") == digest

        remove_image(docker_client, f"{repository}:1.0.0")
        with pytest.raises(docker.errors.ImageNotFound):
            docker_client.images.get(built.image_id)

        pulled = docker_client.images.pull(f"{repository}@{digest}")
        images.append(pulled.id)
        assert pulled.id == built.image_id, "the registry returned another image than was pushed"
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
    built = publish_microservice(docker_client, loopback.address, unique_name, "2.0.0")
    images.append(built.image_id)
    digest = built.digest

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
    assert manifest["config"]["digest"] == built.image_id  # the image Docker built, not another

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
        built = publish_microservice(docker_client, registry.address, unique_name, "3.0.0")
        images.append(built.image_id)
        blobs = list((storage / "docker/registry/v2/blobs").rglob("data"))
        assert len(blobs) >= 3  # config, base layer, the service's layers

        head = urllib.request.Request(
            f"{registry.url}/v2/{unique_name}/manifests/3.0.0", method="HEAD",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        )
        with urllib.request.urlopen(head, timeout=10) as response:
            digest = response.headers["Docker-Content-Digest"]
        assert digest == built.digest

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


def test_other_machine_pulls_over_tls_with_basic_auth(
    docker_client, other_machine, unique_name, tmp_path, cleanup, monkeypatch
):
    """With `http.tls` and `auth.htpasswd` (docs/registry.md), Slipway's engine pushes
    with REGISTRY_USERNAME/REGISTRY_PASSWORD, Slipway reads the tags with them, and
    another machine pulls with the CA certificate and the same credentials; without
    either it is refused."""
    _, images = cleanup
    storage, certs, client_certs = (tmp_path / name for name in ("storage", "certs", "client"))
    for directory in (storage, certs, client_certs):
        directory.mkdir()
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(HTPASSWD)
    address = other_machine.host_address
    ca, certificate, key = make_certificates(address, certs)
    (client_certs / "ca.crt").write_bytes(ca.read_bytes())  # /etc/docker/certs.d/HOST:PORT/

    started = []
    try:
        # Docker trusts loopback without TLS, so the engine pushes there (with auth);
        # the other machine sees the same storage over TLS on the veth address.
        loopback = RegistryProcess(f"127.0.0.1:{free_port('127.0.0.1')}", storage, tmp_path,
                                   htpasswd=htpasswd)
        started.append(loopback)
        secure = RegistryProcess(f"{address}:{free_port(address)}", storage, tmp_path,
                                 tls=(certificate, key), htpasswd=htpasswd)
        started.append(secure)

        with pytest.raises(PushFailed) as refused:
            publish_microservice(docker_client, loopback.address, unique_name, "4.0.0")
        assert refused.value.reason == "auth", refused.value.detail
        images.append(f"{loopback.address}/{unique_name}:4.0.0")
        # What REGISTRY_USERNAME / REGISTRY_PASSWORD become.
        built = publish_microservice(docker_client, loopback.address, unique_name, "4.0.0",
                                     username=USERNAME, password=PASSWORD)
        images.append(built.image_id)
        digest = built.digest

        # Slipway's own reads (next version, immutability) trust the CA through requests.
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca))
        credentials = {"username": USERNAME, "password": PASSWORD}
        assert builder.registry.list_tags(secure.address, unique_name, **credentials) == ["4.0.0"]
        labels = builder.registry.image_labels(secure.address, unique_name, "4.0.0", **credentials)
        assert labels["org.opencontainers.image.version"] == "4.0.0"

        source = f"docker://{secure.address}/{unique_name}:4.0.0"

        def inspect(*options: str) -> subprocess.CompletedProcess[str]:
            return other_machine.run(["skopeo", "--insecure-policy", "inspect", "--raw",
                                      *options, source], check=False)

        no_ca = inspect("--creds", f"{USERNAME}:{PASSWORD}")
        assert no_ca.returncode != 0 and "unknown authority" in no_ca.stderr, no_ca.stderr
        no_creds = inspect("--cert-dir", str(client_certs))
        assert no_creds.returncode != 0 and "unauthorized" in no_creds.stderr.lower(), (
            no_creds.stderr
        )

        fetched = tmp_path / "fetched"
        copy = other_machine.run(
            ["skopeo", "--insecure-policy", "copy", "--src-cert-dir", str(client_certs),
             "--src-creds", f"{USERNAME}:{PASSWORD}", source, f"dir:{fetched}"],
            timeout=120, check=False,
        )
        assert copy.returncode == 0, f"{copy.stderr}\nregistry log:\n{secure.log_tail()}"
        manifest_bytes = (fetched / "manifest.json").read_bytes()
        assert "sha256:" + hashlib.sha256(manifest_bytes).hexdigest() == digest
        for blob in [json.loads(manifest_bytes)["config"], *json.loads(manifest_bytes)["layers"]]:
            path = fetched / blob["digest"].removeprefix("sha256:")
            assert sha256_file(path) == blob["digest"], f"{blob['digest']}: content does not match"
    finally:
        for process in started:
            process.stop()
