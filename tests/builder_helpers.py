"""Helpers of the builder tests: tiny build contexts, a closed port, and cleanup of
what a test pushed (local images and registry manifests)."""

from __future__ import annotations

import contextlib
import socket
import urllib.error
import urllib.request
from pathlib import Path

BASE = "FROM python:3.11-slim\n"


def make_context(root: Path, dockerfile: str | None, files: dict[str, str] | None = None) -> Path:
    """A build context under ``root``: ``Dockerfile`` (unless None) and ``files``."""
    root.mkdir(parents=True, exist_ok=True)
    if dockerfile is not None:
        (root / "Dockerfile").write_text(dockerfile)
    for name, text in (files or {}).items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def closed_port() -> int:
    """A loopback port that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Published:
    """Remembers the images a test pushed and removes them, locally and from the registry."""

    def __init__(self, docker_client, registry):
        self.docker = docker_client
        self.registry = registry
        self.refs: list[tuple[str, str, str]] = []  # (registry address, name, tag)

    def add(self, name: str, tag: str, address: str | None = None) -> str:
        address = address or self.registry.address
        self.refs.append((address, name, tag))
        return f"{address}/{name}:{tag}"

    def cleanup(self) -> None:
        for address, name, tag in self.refs:
            with contextlib.suppress(Exception):  # never built, or already gone
                self.docker.images.remove(f"{address}/{name}:{tag}", force=True)
            if address == self.registry.address:
                delete_manifest(self.registry, name, tag)


def delete_manifest(registry, name: str, tag: str) -> None:
    """Delete ``name:tag`` from the registry (its config has delete enabled)."""
    try:
        digest = registry.manifest_digest(name, tag)
    except urllib.error.HTTPError:
        return
    request = urllib.request.Request(
        f"{registry.url}/v2/{name}/manifests/{digest}", method="DELETE"
    )
    with contextlib.suppress(urllib.error.HTTPError):
        urllib.request.urlopen(request, timeout=10).close()
