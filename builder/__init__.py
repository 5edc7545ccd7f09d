"""Build one artifact and publish it: a Docker image pushed to the team's registry, or
(``"ami"``) a machine image registered in AWS (see builder.ami).

``build_artifact(...)`` is the public entry; it knows Docker and the registry,
nothing of GitHub. Errors are ``BuilderError`` subclasses (see builder.errors).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from builder import patience
from builder.ami import AmiResult
from builder.cancel import CANCELLED, TIMED_OUT, Stop, stoppable
from builder.errors import (
    AmiVersionTaken,
    AwsAccessDenied,
    AwsCredentialsMissing,
    AwsError,
    BuildCancelled,
    BuilderError,
    BuildFailed,
    BuildOutOfMemory,
    BuildTimedOut,
    ContextNotFound,
    DockerfileNotFound,
    EngineUnreachable,
    InvalidReference,
    PushFailed,
    RegistryUnreachable,
    SnapshotUploadFailed,
    UnsupportedArtifactType,
    UnsupportedBaseImage,
)
from builder.references import image_name_for, image_tag, validate_service_name, validate_version
from builder.settings import EngineSettings

__all__ = [
    "build_artifact",
    "push_again",
    "image_name_for",
    "oci_labels",
    "AmiResult",
    "BuildResult",
    "AmiVersionTaken",
    "AwsAccessDenied",
    "AwsCredentialsMissing",
    "AwsError",
    "EngineSettings",
    "SUPPORTED_TYPES",
    "SERVICE_LABEL",
    "BuilderError",
    "BuildFailed",
    "BuildCancelled",
    "BuildOutOfMemory",
    "BuildTimedOut",
    "ContextNotFound",
    "DockerfileNotFound",
    "EngineUnreachable",
    "InvalidReference",
    "PushFailed",
    "RegistryUnreachable",
    "SnapshotUploadFailed",
    "UnsupportedArtifactType",
    "UnsupportedBaseImage",
]

SUPPORTED_TYPES = ("docker", "ami")
OCI = "org.opencontainers.image"
# Every image build_artifact makes carries its service name here: pruning finds
# Slipway's images by this label and never touches others on a shared engine.
SERVICE_LABEL = "dev.slipway.service"


@dataclass(frozen=True)
class BuildResult:
    """What was pushed: ``reference`` is ``REGISTRY/name:version@sha256:...``."""

    service: str
    version: str
    tag: str
    reference: str
    digest: str
    image_id: str
    size: int
    duration: float
    log_tail: str


def build_artifact(
    service_name: str,
    version: str,
    artifact_type: str = "docker",
    context: str = ".",
    dockerfile: str = "Dockerfile",
    registry: str = "localhost:5000",
    network: str | None = None,
    build_args: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    on_log: Callable[[str], None] | None = None,
    *,
    revision: str | None = None,
    source: str | None = None,
    username: str | None = None,
    password: str | None = None,
    docker_client=None,
    engine_settings: EngineSettings | None = None,
    nocache: bool = False,
    memory: int | None = None,
    timeout: float | None = None,
    cancel: threading.Event | None = None,
    push: bool | None = None,
    work_dir: str | None = None,
    disk_path: str | None = None,
    aws_session=None,
) -> BuildResult | AmiResult:
    """Build ``context`` into ``REGISTRY/service_name:version``, push it, return what was pushed.

    ``dockerfile`` is relative to ``context`` (or absolute). The log goes to
    ``on_log`` line by line as the build runs; only its tail is kept.
    ``memory`` (bytes) limits every build step's container. After ``timeout``
    seconds, or once ``cancel`` is set, the build or push is stopped in the engine
    and BuildTimedOut or BuildCancelled is raised; nothing is pushed after that.

    ``"ami"`` builds the same image, keeps it local unless ``push``, and returns
    an ``AmiResult`` (the AMI id and region); ``work_dir`` holds its scratch
    files, ``disk_path`` keeps the raw disk, ``aws_session`` is a boto3 session
    (default: the SDK's usual environment).
    """
    started = time.monotonic()
    check_artifact_type(artifact_type)
    registry = registry.rstrip("/")
    validate_service_name(service_name, registry)
    validate_version(version)
    context_dir, dockerfile_path = locate_sources(context, dockerfile)
    image_labels = oci_labels(version, datetime.now(UTC), revision=revision, source=source)
    image_labels[SERVICE_LABEL] = service_name
    image_labels.update(labels or {})

    # Imported here so that bad input is refused even where the docker SDK is absent.
    from builder import engine

    repository = f"{registry}/{service_name}"
    tag = image_tag(registry, service_name, version)
    if artifact_type == "ami":
        from builder.ami import build_ami

        def push_image(client, log) -> None:
            auth = {"username": username, "password": password or ""} if username else None
            engine.push_image(client, repository=repository, version=version,
                              registry=registry, auth=auth, log=log)

        return build_ami(
            service_name, version, context_dir=context_dir, dockerfile_path=dockerfile_path,
            tag=tag, image_labels=image_labels, network=network, build_args=build_args,
            on_log=on_log, revision=revision, source=source, docker_client=docker_client,
            engine_settings=engine_settings, nocache=nocache, memory=memory,
            timeout=timeout, cancel=cancel, push=push_image if push else None,
            work_dir=work_dir, disk_path=disk_path, aws_session=aws_session,
        )
    log = engine.BuildOutput(on_log)
    with (engine.opened(docker_client, settings=engine_settings) as client,
          stoppable(client, cancel=cancel, timeout=timeout) as stop):
        try:
            image = engine.build_image(
                client,
                context=context_dir,
                dockerfile=dockerfile_path,
                tag=tag,
                build_args=dict(build_args or {}),
                labels=image_labels,
                network=network,
                nocache=nocache,
                log=log,
                memory=memory,
            )
            _raise_if_stopped(stop, timeout, log)
            auth = {"username": username, "password": password or ""} if username else None
            waits = patience.delays()
            while True:
                try:
                    digest = engine.push_image(
                        client, repository=repository, version=version, registry=registry,
                        auth=auth, log=log,
                    )
                    break
                except PushFailed as exc:
                    wait = next(waits, None) if _registry_away(exc) else None
                    if wait is None:
                        raise
                    # A push of the same image under the same tag is idempotent.
                    log.write(f"The registry {registry} does not answer; pushing again in "
                              f"{wait:.1f} s\n")
                    if stop.wait_for(wait):
                        _raise_if_stopped(stop, timeout, log)
        except Exception as exc:
            # Closing the stream is how the build was stopped; what broke (a BuilderError,
            # urllib3's ProtocolError) is its effect, not the cause.
            _raise_if_stopped(stop, timeout, log, cause=exc)
            raise
        _raise_if_stopped(stop, timeout, log)
    return BuildResult(
        service=service_name,
        version=version,
        tag=tag,
        reference=f"{tag}@{digest}",
        digest=digest,
        image_id=image.id,
        size=image.size,
        duration=time.monotonic() - started,
        log_tail=log.tail.text(),
    )


def push_again(service_name: str, version: str, registry: str, *,
               username: str | None = None, password: str | None = None,
               docker_client=None, engine_settings: EngineSettings | None = None) -> str:
    """Push the engine's ``REGISTRY/service_name:version`` once more; return its digest."""
    from builder import engine

    registry = registry.rstrip("/")
    auth = {"username": username, "password": password or ""} if username else None
    with engine.opened(docker_client, settings=engine_settings) as client:
        return engine.push_image(client, repository=f"{registry}/{service_name}",
                                 version=version, registry=registry, auth=auth,
                                 log=engine.BuildOutput(None))


def _registry_away(error: PushFailed) -> bool:
    """A push that failed because the registry did not answer, which may pass; not one
    refused for TLS or credentials, which waiting does not fix."""
    return error.reason == "unreachable" and "https client" not in error.detail.lower()


def _raise_if_stopped(stop: Stop, timeout: float | None, log, *, cause=None) -> None:
    if stop.reason == TIMED_OUT:
        step = f" at {log.step}" if log.step else ""
        raise BuildTimedOut(
            f"The build ran past its time limit of {timeout:g} s{step} and was stopped in the "
            "Docker engine; nothing was pushed.",
            seconds=timeout, step=log.step, log_tail=log.tail.text(),
        ) from cause
    if stop.reason == CANCELLED:
        raise BuildCancelled("The build was stopped before it finished; nothing was pushed.") \
            from cause


def check_artifact_type(artifact_type: str) -> None:
    """Refuse the artifact types this builder cannot make."""
    if artifact_type in SUPPORTED_TYPES:
        return
    raise UnsupportedArtifactType(
        f"Unknown artifact type {artifact_type!r}; supported types: "
        f"{', '.join(SUPPORTED_TYPES)}.",
        artifact_type=str(artifact_type),
    )


def locate_sources(context: str, dockerfile: str) -> tuple[str, str]:
    """The absolute context directory and Dockerfile path; raise when either is missing."""
    context_dir = os.path.abspath(context)
    if not os.path.isdir(context_dir):
        what = "is not a directory" if os.path.exists(context_dir) else "does not exist"
        raise ContextNotFound(
            f"The build context {context!r} {what}; give the directory that holds the "
            f"service's sources.",
            context=context,
        )
    dockerfile_path = os.path.normpath(os.path.join(context_dir, dockerfile))
    if not os.path.isfile(dockerfile_path):
        raise DockerfileNotFound(
            f"No Dockerfile at {dockerfile_path!r}; the Dockerfile path is relative to the "
            f"context {context!r}: add the file or say where it is.",
            dockerfile=dockerfile,
        )
    return context_dir, dockerfile_path


def oci_labels(
    version: str, created: datetime, *, revision: str | None = None, source: str | None = None
) -> dict[str, str]:
    """The OCI annotations every image carries (https://specs.opencontainers.org/image-spec/annotations/)."""
    labels = {
        f"{OCI}.version": version,
        f"{OCI}.created": created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if revision:
        labels[f"{OCI}.revision"] = revision
    if source:
        labels[f"{OCI}.source"] = source
    return labels
