"""The Docker engine: build an image, push it, stream the log.

The only module that imports the docker SDK. It drives the low-level API so
that every chunk of the build and push streams is read as it arrives: the
engine reports a failed build or push inside an HTTP 200 stream.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import docker
import requests

from builder.errors import BuildFailed, BuildOutOfMemory, EngineUnreachable
from builder.logtail import LineSplitter, LogTail
from builder.references import (
    BuildChunk,
    PushChunk,
    build_failure_message,
    dockerfile_with_labels,
    killed,
    out_of_memory_message,
    parse_build_chunk,
    parse_push_chunk,
    push_failed,
    step_of,
)
from builder.settings import EngineSettings


class BuildOutput:
    """Where the log goes: whole lines to ``on_log``, a bounded tail in memory."""

    def __init__(self, on_log: Callable[[str], None] | None = None):
        self.on_log = on_log
        self.tail = LogTail()
        self.step: str | None = None
        self._lines = LineSplitter()

    def write(self, text: str) -> None:
        for line in self._lines.feed(text):
            self._emit(line)

    def close(self) -> None:
        for line in self._lines.flush():
            self._emit(line)

    def _emit(self, line: str) -> None:
        self.step = step_of(line) or self.step
        self.tail.append(line)
        if self.on_log is not None:
            self.on_log(line)


@dataclass(frozen=True)
class Image:
    id: str
    size: int


def connect(docker_client=None, *, settings: EngineSettings | None = None):
    """The caller's client, or one made from `settings` (the local socket by default)."""
    settings = settings or EngineSettings()
    with engine_errors(settings):
        client = docker_client
        if client is None:
            # The SDK's default API version (1.44 in docker 7) is newer than some
            # engines still in use (20.10 speaks 1.41): ask the engine instead.
            client = docker.from_env(version=settings.api_version or "auto",
                                     environment=settings.environment())
        try:
            client.api.ping()
        except BaseException:
            if client is not docker_client:  # ours: nobody else would close it
                client.close()
            raise
    return client


@contextmanager
def opened(docker_client=None, *, settings: EngineSettings | None = None) -> Iterator:
    """`connect`, closing the client at the end when it was opened here, not given."""
    client = connect(docker_client, settings=settings)
    try:
        yield client
    finally:
        if client is not docker_client:
            client.close()


@contextmanager
def engine_errors(settings: EngineSettings | None = None) -> Iterator[None]:
    """Turn "cannot talk to the engine" into EngineUnreachable, with how to fix it."""
    try:
        yield
    except (requests.exceptions.ConnectionError, docker.errors.DockerException) as exc:
        if isinstance(exc, docker.errors.APIError):
            raise
        detail = str(exc)
        if "Permission denied" in detail or isinstance(exc.__context__, PermissionError):
            advice = ("this user may not open the Docker socket; add it to the 'docker' group "
                      "or point DOCKER_HOST at an engine it may use")
        else:
            advice = ("start the engine, or point DOCKER_HOST at it "
                      "(unix:///var/run/docker.sock, tcp://HOST:2375)")
        where = (settings or EngineSettings()).where
        raise EngineUnreachable(
            f"No Docker engine answers at {where}: {advice}.", detail=detail
        ) from exc
    except requests.exceptions.ReadTimeout as exc:
        raise EngineUnreachable(
            "The Docker engine stopped answering; check that it is healthy (docker info).",
            detail=str(exc),
        ) from exc


def build_image(
    client,
    *,
    context: str,
    dockerfile: str,
    tag: str,
    build_args: dict[str, str] | None,
    labels: dict[str, str] | None,
    network: str | None,
    nocache: bool,
    log: BuildOutput,
    memory: int | None = None,
) -> Image:
    """Build ``context`` and tag the result ``tag``; raise BuildFailed with the failing step.

    ``memory`` (bytes) limits every step's container, swap included.
    """
    error = None
    # memswap equal to memory: no swap on top, so a step over the limit is killed
    # instead of crawling through swap until the timeout.
    limits = {"memory": memory, "memswap": memory} if memory else None
    with engine_errors(), labelled_context(context, dockerfile, labels) as archive:
        try:
            stream = client.api.build(
                fileobj=archive,
                custom_context=True,
                dockerfile=LABELLED_DOCKERFILE,
                tag=tag,
                buildargs=build_args or None,
                network_mode=network or None,
                pull=False,  # a local base image is used as it is, never pulled
                rm=True,
                forcerm=True,
                nocache=nocache,
                container_limits=limits,
                decode=True,
            )
            error = _read_build_stream(stream, log)
        except docker.errors.APIError as exc:  # refused before the stream started
            error = exc.explanation or str(exc)
        log.close()
        if error is not None and memory and killed(error):
            raise BuildOutOfMemory(
                out_of_memory_message(log.step, memory),
                memory=memory,
                step=log.step,
                log_tail=log.tail.text(),
                detail=error,
            )
        if error is not None:
            raise BuildFailed(
                build_failure_message(log.step, error),
                step=log.step,
                log_tail=log.tail.text(),
                detail=error,
            )
        return inspect_image(client, tag)


# A fixed name, so the .dockerignore that the SDK writes to hide this file
# is the same on every build and a `COPY . .` step stays cached.
LABELLED_DOCKERFILE = ".slipway.Dockerfile"


@contextmanager
def labelled_context(context: str, dockerfile: str, labels: dict[str, str] | None):
    """The context as a tar whose Dockerfile ends with one LABEL instruction for ``labels``.

    Not the engine's ``labels`` parameter: the classic builder makes one step,
    one container commit, per label. The context and its .dockerignore are sent
    as the SDK would send them.
    """
    with open(dockerfile, encoding="utf-8") as original:
        text = dockerfile_with_labels(original.read(), labels or {})
    exclude = None
    dockerignore = os.path.join(context, ".dockerignore")
    if os.path.exists(dockerignore):  # parsed as docker.api.build does
        with open(dockerignore, encoding="utf-8") as f:
            exclude = [line.strip() for line in f.read().splitlines()]
            exclude = [line for line in exclude if line and not line.startswith("#")]
    archive = docker.utils.build.tar(
        context, exclude=exclude, dockerfile=(LABELLED_DOCKERFILE, text)
    )
    try:
        yield archive
    finally:
        archive.close()


def _read_build_stream(stream: Iterable[dict], log: BuildOutput) -> str | None:
    """Read the whole stream into ``log``; return the engine's error, if any."""
    image_id, error = _log_stream(map(parse_build_chunk, stream), log, lambda e: e.image_id)
    if error is None and image_id is None:
        error = "the engine ended the build without an image"
    return error


def _log_stream(
    events: Iterable[BuildChunk | PushChunk],
    log: BuildOutput,
    result: Callable[[BuildChunk | PushChunk], str | None],
) -> tuple[str | None, str | None]:
    """Write every event's text to ``log``; return the last ``result`` and the first error.

    The first error is written to ``log`` too; the events after it are still read and logged.
    """
    found = error = None
    for event in events:
        if event.text:
            log.write(event.text)
        if result(event):
            found = result(event)
        if event.error and error is None:
            error = event.error
            log.write(f"{event.error}\n")
    return found, error


def inspect_image(client, tag: str) -> Image:
    with engine_errors():
        attributes = client.api.inspect_image(tag)
    return Image(id=attributes["Id"], size=int(attributes.get("Size") or 0))


def push_image(
    client,
    *,
    repository: str,
    version: str,
    registry: str,
    auth: dict[str, str] | None,
    log: BuildOutput,
) -> str:
    """Push ``repository:version``; return the digest the registry gave it."""
    image = f"{repository}:{version}"
    digest = None
    error = None
    with engine_errors():
        try:
            stream = client.api.push(
                repository, tag=version, stream=True, decode=True, auth_config=auth
            )
            digest, error = _log_stream(map(parse_push_chunk, stream), log, lambda e: e.digest)
        except docker.errors.APIError as exc:
            error = exc.explanation or str(exc)
    log.close()
    if error is not None:
        raise push_failed(image, registry, error, log.tail.text())
    if digest is None:
        raise push_failed(image, registry, "the engine did not report the pushed digest",
                          log.tail.text())
    return digest


# -- what the build host holds (for pruning, /healthz and doctor) -------------------------


@dataclass(frozen=True)
class LocalImage:
    id: str
    tags: tuple[str, ...]
    labels: dict[str, str]
    created: int  # unix seconds
    size: int


def data_root(client) -> str:
    """Where the engine keeps images and containers (`docker info`'s DockerRootDir)."""
    with engine_errors():
        return client.api.info().get("DockerRootDir") or "/var/lib/docker"


def engine_version(client) -> str:
    with engine_errors():
        return client.api.version().get("Version") or "unknown"


def images_labelled(client, label: str) -> list[LocalImage]:
    """The images carrying ``label`` (``key`` or ``key=value``), newest first."""
    with engine_errors():
        found = client.api.images(filters={"label": label})
    images = [
        LocalImage(
            id=entry["Id"],
            tags=tuple(t for t in entry.get("RepoTags") or () if t != "<none>:<none>"),
            labels=dict(entry.get("Labels") or {}),
            created=int(entry.get("Created") or 0),
            size=int(entry.get("Size") or 0),
        )
        for entry in found
    ]
    return sorted(images, key=lambda image: image.created, reverse=True)


def has_image(client, name: str) -> bool:
    """Whether the engine holds ``name`` (a tag or an id) without pulling it."""
    with engine_errors():
        try:
            client.api.inspect_image(name)
        except docker.errors.ImageNotFound:
            return False
    return True


def remove_image(client, image: LocalImage) -> bool:
    """Remove one image by its tags (then its id); False when a container still uses it.

    Untagged parent layers go with it only when no other image needs them: the
    layers a later build reuses stay (the engine keeps what is referenced)."""
    with engine_errors():
        try:
            for tag in image.tags:
                client.api.remove_image(tag, noprune=False)
            if not image.tags:
                client.api.remove_image(image.id, noprune=False)
        except docker.errors.ImageNotFound:
            return True
        except docker.errors.APIError as exc:
            if exc.response is not None and exc.response.status_code == 409:
                return False  # in use by a container, or tagged again meanwhile
            raise
    return True


def read_image_file(client, image: str, path: str) -> str | None:
    """The text of ``path`` in ``image`` (symlinks followed), or None when it is not there.

    Read from a container that is created, never started: nothing of the image runs.
    """
    import io
    import posixpath
    import tarfile

    with engine_errors():
        container = client.api.create_container(image, command=["/nonexistent"],
                                                network_disabled=True)
    try:
        for _ in range(10):  # /etc/os-release is a symlink to ../usr/lib/os-release
            try:
                chunks, _stat = client.api.get_archive(container["Id"], path)
            except docker.errors.NotFound:
                return None
            with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as archive:
                member = archive.next()
                if member is None:
                    return None
                if member.issym():
                    path = posixpath.normpath(posixpath.join(posixpath.dirname(path),
                                                             member.linkname))
                    continue
                extracted = archive.extractfile(member)
                return extracted.read().decode("utf-8", "replace") if extracted else None
        return None
    finally:
        with engine_errors():
            client.api.remove_container(container["Id"], force=True)


@contextmanager
def exported_files(client, image: str) -> Iterator[Iterable[bytes]]:
    """``docker export`` of a container created (never started) from ``image``: its files
    as one tar stream."""
    with engine_errors():
        container = client.api.create_container(image, command=["/nonexistent"],
                                                network_disabled=True)
    try:
        with engine_errors():
            yield client.api.export(container["Id"])
    finally:
        with engine_errors():
            client.api.remove_container(container["Id"], force=True)


def image_config(client, image: str) -> dict:
    """The engine's ``GET /images/{name}/json`` answer."""
    with engine_errors():
        return client.api.inspect_image(image)
