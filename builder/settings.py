"""Which Docker engine to use and how to talk to it.

The library never reads the environment: its entry points do (`Config` for the
App, `python -m builder` for the CLI) and pass an `EngineSettings` down.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_SOCKET = "unix:///var/run/docker.sock"


@dataclass(frozen=True)
class EngineSettings:
    host: str | None = None  # DOCKER_HOST; None: the local socket
    api_version: str | None = None  # DOCKER_API_VERSION; None: ask the engine
    tls_verify: bool = False  # DOCKER_TLS_VERIFY
    cert_path: str | None = None  # DOCKER_CERT_PATH (ca.pem, cert.pem, key.pem)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> EngineSettings:
        """The variables the docker CLI reads, as it reads them (blank counts as unset)."""
        def get(name: str) -> str | None:
            return (environ.get(name) or "").strip() or None

        return cls(
            host=get("DOCKER_HOST"),
            api_version=get("DOCKER_API_VERSION"),
            tls_verify=get("DOCKER_TLS_VERIFY") is not None,
            cert_path=get("DOCKER_CERT_PATH"),
        )

    @property
    def where(self) -> str:
        return self.host or DEFAULT_SOCKET

    def environment(self) -> dict[str, str]:
        """These settings as the Docker SDK's `environment` argument, never empty.

        Never empty: given an empty mapping, the SDK reads the process's environment.
        """
        environment = {"DOCKER_TLS_VERIFY": "1" if self.tls_verify else ""}
        if self.host:
            environment["DOCKER_HOST"] = self.host
        if self.cert_path:
            environment["DOCKER_CERT_PATH"] = self.cert_path
        return environment
