"""build_artifact against the real engine and registry: what gets pushed, and how."""

from __future__ import annotations

import re

import pytest
from builder_helpers import BASE, make_context

from builder import BuildResult, build_artifact
from builder.registry import image_labels, list_tags

pytestmark = pytest.mark.docker


def build(registry, name, version, context, **kwargs) -> BuildResult:
    return build_artifact(name, version, context=str(context), registry=registry.address,
                          network="host", **kwargs)


def test_build_pushes_the_tag_and_returns_its_digest(registry, published, unique_name, tmp_path):
    """A build pushes NAME:VERSION; the result names the digest the registry serves."""
    context = make_context(tmp_path / "ctx", BASE + "RUN echo built-by-test\n")
    published.add(unique_name, "1.0.0")
    lines: list[str] = []

    result = build(registry, unique_name, "1.0.0", context, on_log=lines.append)

    assert registry.tags(unique_name) == ["1.0.0"]
    assert result.digest == registry.manifest_digest(unique_name, "1.0.0")
    assert result.tag == f"{registry.address}/{unique_name}:1.0.0"
    assert result.reference == f"{result.tag}@{result.digest}"
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", result.digest)
    assert result.image_id.startswith("sha256:") and result.size > 0 and result.duration > 0
    assert (result.service, result.version) == (unique_name, "1.0.0")
    assert "built-by-test" in lines, "on_log gets the build's output line by line"
    assert any(line.startswith("Step 2/") for line in lines)
    assert "built-by-test" in result.log_tail
    assert list_tags(registry.address, unique_name) == ["1.0.0"]


def test_pushed_image_carries_oci_and_caller_labels(registry, published, unique_name, tmp_path):
    """The pushed image carries version, created, revision, source and the caller's labels."""
    context = make_context(tmp_path / "ctx", BASE)
    published.add(unique_name, "2.1.0")
    build(registry, unique_name, "2.1.0", context, revision="0123abcd" * 5,
          source="https://github.com/acme/orders", labels={"team": "payments $HOME \"x\""})

    labels = image_labels(registry.address, unique_name, "2.1.0")

    assert labels["org.opencontainers.image.version"] == "2.1.0"
    assert labels["org.opencontainers.image.revision"] == "0123abcd" * 5
    assert labels["org.opencontainers.image.source"] == "https://github.com/acme/orders"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ",
                        labels["org.opencontainers.image.created"])
    assert labels["team"] == 'payments $HOME "x"', "label values arrive verbatim"
    assert labels["dev.slipway.service"] == unique_name, "pruning finds Slipway's images by it"
    assert image_labels(registry.address, unique_name, "9.9.9") is None


def test_dockerignore_keeps_files_out_of_the_image(registry, published, unique_name, tmp_path):
    """A file listed in .dockerignore is not in the build context, so not in the image."""
    context = make_context(
        tmp_path / "ctx",
        BASE + "COPY . /app\nRUN test -e /app/kept.txt && test ! -e /app/secret.txt\n",
        {"kept.txt": "k", "secret.txt": "s", ".dockerignore": "secret.txt\n"},
    )
    published.add(unique_name, "1")
    result = build(registry, unique_name, "1", context)
    assert result.digest == registry.manifest_digest(unique_name, "1")


def test_second_build_reuses_the_cache(registry, published, unique_name, tmp_path):
    """Building the same context twice reuses every cached step, COPY . included."""
    context = make_context(
        tmp_path / "ctx", BASE + "COPY . /app\nRUN echo slow-step\n",
        {"app.py": "print(1)\n", ".dockerignore": "*.log\n"},
    )
    published.add(unique_name, "1")
    published.add(unique_name, "2")
    build(registry, unique_name, "1", context)
    lines: list[str] = []
    build(registry, unique_name, "2", context, on_log=lines.append)
    assert "slow-step" not in lines
    assert lines.count(" ---> Using cache") == 2


def test_dockerfile_elsewhere_and_build_args(registry, published, unique_name, tmp_path):
    """A Dockerfile at another path (inside or outside the context) builds, with build args."""
    dockerfile = BASE + "ARG GREETING\nRUN test \"$GREETING\" = hello && echo \"got $GREETING\"\n"
    context = make_context(tmp_path / "ctx", None, {"docker/build.Dockerfile": dockerfile})
    make_context(tmp_path / "elsewhere", dockerfile)
    published.add(unique_name, "inside")
    published.add(unique_name, "outside")
    lines: list[str] = []

    build(registry, unique_name, "inside", context, dockerfile="docker/build.Dockerfile",
          build_args={"GREETING": "hello"}, on_log=lines.append)
    build(registry, unique_name, "outside", context, dockerfile="../elsewhere/Dockerfile",
          build_args={"GREETING": "hello"})

    assert "got hello" in lines
    assert sorted(registry.tags(unique_name)) == ["inside", "outside"]


def test_network_none_is_passed_to_build_steps(registry, published, unique_name, tmp_path):
    """With network "none" a RUN step sees only loopback."""
    context = make_context(tmp_path / "ctx", BASE + "RUN ls /sys/class/net\n")
    published.add(unique_name, "1")
    lines: list[str] = []
    build_artifact(unique_name, "1", context=str(context), registry=registry.address,
                   network="none", on_log=lines.append)
    assert "lo" in lines and "eth0" not in lines


def test_list_tags_of_unknown_repository_is_empty(registry, unique_name):
    """Asking for the tags of a repository the registry never saw gives []."""
    assert list_tags(registry.address, unique_name) == []
