"""The registry of docker-compose.yml requires its htpasswd account, and Slipway uses it.

End to end: Debian's docker-registry (distribution 2.8, the code of `registry:2`) with the
compose file's auth settings on a loopback port of our own; a merge is built and pushed by
Slipway with REGISTRY_USERNAME/REGISTRY_PASSWORD; without them nobody pushes or deletes."""

from __future__ import annotations

import contextlib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from test_registry_distribution import HTPASSWD, PASSWORD, USERNAME, RegistryProcess, free_port

from builder import PushFailed, build_artifact
from tests.slipway_harness import TINY_DOCKERFILE, Harness

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parent.parent


def test_compose_registry_requires_the_account_slipway_is_given():
    """docker-compose.yml: htpasswd auth on the registry, written from slipway.env's account,
    which the slipway service reads too."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    registry = compose["services"]["registry"]
    assert registry["environment"]["REGISTRY_AUTH"] == "htpasswd"
    assert registry["environment"]["REGISTRY_AUTH_HTPASSWD_PATH"] == "/auth/htpasswd"
    assert "registry-auth:/auth:ro" in registry["volumes"]
    writer = compose["services"]["registry-auth"]
    assert writer["env_file"] == "slipway.env"
    assert "htpasswd -Bbn" in " ".join(writer["command"])
    assert registry["depends_on"]["registry-auth"]["condition"] == (
        "service_completed_successfully")
    assert compose["services"]["slipway"]["env_file"] == "slipway.env"
    example = (ROOT / "slipway.env.example").read_text()
    assert "\nREGISTRY_USERNAME=slipway\n" in example and "\nREGISTRY_PASSWORD=" in example


@pytest.fixture
def auth_registry(tmp_path):
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(HTPASSWD)
    address = f"127.0.0.1:{free_port('127.0.0.1')}"
    process = RegistryProcess(address, tmp_path / "storage", tmp_path, htpasswd=htpasswd)
    yield process
    process.stop()


def status_of(request: urllib.request.Request) -> int:
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_slipway_pushes_with_the_account_and_nobody_pushes_or_deletes_without_it(
        fake_github, auth_registry, data_dir, docker_client, tmp_path):
    """A merge is published with the account; an anonymous push, read or delete is refused."""
    harness = Harness(fake_github, auth_registry.address, data_dir,
                      registry_username=USERNAME, registry_password=PASSWORD)
    try:
        repo = harness.repository({"Dockerfile": TINY_DOCKERFILE, "app.py": b"print(1)\n"})
        harness.deliver("pull_request", repo.merged(labels=["version:1.0.0"]))
        harness.run_worker()
        run = [r for r in fake_github.check_runs.values() if r["head_sha"] == repo.head_sha][0]
        assert run["conclusion"] == "success", run["output"]
        assert f"{auth_registry.address}/{repo.name}:1.0.0@sha256:" in run["output"]["summary"]
        assert PASSWORD not in run["output"]["summary"] + (run["output"].get("text") or "")

        base = f"http://{auth_registry.address}/v2/{repo.name}"
        assert status_of(urllib.request.Request(f"{base}/tags/list")) == 401
        manifest = urllib.request.Request(f"{base}/manifests/1.0.0", method="DELETE")
        assert status_of(manifest) == 401

        context = tmp_path / "context"
        context.mkdir()
        (context / "Dockerfile").write_text("FROM python:3.11-slim\n")
        with pytest.raises(PushFailed):
            build_artifact(f"{repo.name}-anonymous", "1.0.0", context=str(context),
                           registry=auth_registry.address, network="host",
                           docker_client=docker_client)
    finally:
        harness.close()
        for image in docker_client.images.list(name=f"{auth_registry.address}/{repo.name}*"):
            with contextlib.suppress(Exception):
                docker_client.images.remove(image.id, force=True)
