"""Registry writes through the HTTP API v2 alone: floating tags, deleting one tag, and
publishing a staged image under a release tag without building or moving a layer.

Real engine (to push one small image), real registry (distribution 2.8, delete enabled).
"""

from __future__ import annotations

import time

import pytest
from builder_helpers import make_context

from builder import build_artifact
from builder.registry import Registry

pytestmark = pytest.mark.docker

DOCKERFILE = 'FROM python:3.11-slim\nCOPY app.py /app.py\nCMD ["python3", "/app.py"]\n'


@pytest.fixture
def staged(tmp_path, docker_client, registry, unique_name, published):
    """A small image pushed as `<unique>:pr-7`, as a pre-merge build stages it."""
    context = make_context(tmp_path / "ctx", DOCKERFILE, {"app.py": "print('hi')\n"})
    result = build_artifact(unique_name, "pr-7", context=str(context),
                            registry=registry.address, network="host",
                            revision="a" * 40, docker_client=docker_client)
    published.add(unique_name, "pr-7")
    return result


def test_publish_keeps_the_layers_and_writes_the_merge_commits_labels(staged, registry,
                                                                      unique_name, published):
    """Publishing a staged image gives the release tag the same layers and the new labels."""
    api = Registry(registry.address)
    image = api.read_image(unique_name, "pr-7")
    started = time.monotonic()
    release = api.publish(image, "1.4.0", {"org.opencontainers.image.revision": "b" * 40,
                                           "org.opencontainers.image.version": "1.4.0"},
                          created="2026-12-03T13:00:00Z")
    elapsed = time.monotonic() - started
    published.add(unique_name, "1.4.0")

    stored = api.read_image(unique_name, "1.4.0")
    assert stored.digest == release.digest == registry.manifest_digest(unique_name, "1.4.0")
    assert stored.manifest["layers"] == image.manifest["layers"]
    assert stored.labels["org.opencontainers.image.revision"] == "b" * 40
    assert stored.labels["org.opencontainers.image.version"] == "1.4.0"
    assert stored.config["created"] == "2026-12-03T13:00:00Z"
    assert stored.config["rootfs"] == image.config["rootfs"]
    # The staged image is untouched.
    assert api.read_image(unique_name, "pr-7").labels["org.opencontainers.image.revision"] \
        == "a" * 40
    assert elapsed < 1.0


def test_floating_tags_name_the_very_same_manifest(staged, registry, unique_name, published):
    """Moving floating tags puts the same manifest under them: one digest for all."""
    api = Registry(registry.address)
    digest = api.put_tags(unique_name, "pr-7", ["1.4", "1", "latest"])
    for tag in ("1.4", "1", "latest"):
        published.add(unique_name, tag)
        assert registry.manifest_digest(unique_name, tag) == digest == staged.digest


def test_deleting_a_tag_spares_a_tag_that_shares_its_digest(staged, registry, unique_name,
                                                            published):
    """Deleting `pr-7` leaves `1.4.0`, which names the same manifest, in place."""
    api = Registry(registry.address)
    api.put_tags(unique_name, "pr-7", ["1.4.0"])
    published.add(unique_name, "1.4.0")

    assert api.delete_tag(unique_name, "pr-7") is True

    assert "pr-7" not in registry.tags(unique_name)
    assert registry.manifest_digest(unique_name, "1.4.0") == staged.digest
    assert api.read_image(unique_name, "1.4.0") is not None
    assert api.delete_tag(unique_name, "pr-7") is False
