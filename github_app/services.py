"""What a repository builds: the text of `.github/slipway.yml` becomes a list of `Service`.

No file: one service named after the repository, built from `Dockerfile` at the
root. With the file:

    services:
      - name: orders          # image name
        context: services/orders
        dockerfile: Dockerfile  # relative to context
        type: docker          # docker | ami
        timeout: 900          # seconds the build may take (BUILD_TIMEOUT when absent)

Pure: no network, disk, clock or Flask globals. Errors are `ServiceConfigError`
naming the entry and field and saying how to fix them.
"""

from __future__ import annotations

import enum
import posixpath
import re
from dataclasses import dataclass
from typing import Any

import yaml

from builder import InvalidReference
from builder import image_name_for as builder_image_name_for
from github_app.errors import ServiceConfigError

CONFIG_PATH = ".github/slipway.yml"
FIELDS = ("name", "context", "dockerfile", "type", "timeout")

# A path component of a Docker image name:
# https://github.com/distribution/reference/blob/main/reference.go
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
MAX_NAME_LENGTH = 128


class ServiceType(enum.StrEnum):
    DOCKER = "docker"
    AMI = "ami"


@dataclass(frozen=True)
class Service:
    """One artifact a repository builds: its image name, context, Dockerfile and type."""

    name: str
    context: str = "."
    dockerfile: str = "Dockerfile"
    type: ServiceType = ServiceType.DOCKER
    timeout: int | None = None  # seconds, from `timeout:`; None: the operator's BUILD_TIMEOUT
    # Its name in the registry: IMAGE_NAME applied (image_names.py); None: `name` itself.
    image: str | None = None

    @property
    def image_name(self) -> str:
        """The name its images get in the registry."""
        return self.image or self.name

    def time_limit(self, default: int, maximum: int) -> TimeLimit:
        """How long this service's build may run, and where that number comes from."""
        if self.timeout is None:
            return TimeLimit(default, (
                f"`BUILD_TIMEOUT` ({default} s), Slipway's setting: give the service a "
                f"`timeout:` in `{CONFIG_PATH}` (up to {maximum} s) or ask the operator to "
                "raise `BUILD_TIMEOUT`"))
        if self.timeout > maximum:
            return TimeLimit(maximum, (
                f"`BUILD_TIMEOUT_MAX` ({maximum} s): the `timeout: {self.timeout}` of "
                f"service `{self.name}` in `{CONFIG_PATH}` asks for more than Slipway allows; "
                "ask the operator to raise `BUILD_TIMEOUT_MAX`"))
        return TimeLimit(self.timeout, (
            f"the `timeout: {self.timeout}` of service `{self.name}` in `{CONFIG_PATH}`: "
            f"raise it there (up to `BUILD_TIMEOUT_MAX`, {maximum} s)"))

    def check_run_name(self, total: int) -> str:
        """The check run's name; it never changes, since branch protection requires it by name."""
        return "docker build" if total == 1 else f"docker build: {self.name}"

    @property
    def dockerfile_path(self) -> str:
        """The Dockerfile relative to the repository root."""
        return posixpath.normpath(posixpath.join(self.context, self.dockerfile))


@dataclass(frozen=True)
class TimeLimit:
    seconds: int
    source: str  # what set it, and how to change it


def image_name_for(repository_name: str) -> str:
    """The repository name made a valid image name: `My_Repo.Web` -> `my_repo.web`."""
    try:
        name = builder_image_name_for(repository_name.replace("/", "-"))
    except InvalidReference:
        name = ""
    if not name:
        raise ServiceConfigError(
            f"The repository name {repository_name!r} gives no valid image name: add "
            f"{CONFIG_PATH} with a service `name` (lowercase letters, digits, `.`, `_`, `-`).",
            field="name",
        )
    return name[:MAX_NAME_LENGTH].rstrip("._-")


def parse_services(yaml_text: str | None, *, repository_name: str) -> list[Service]:
    """The services of a repository from the text of `.github/slipway.yml` (None: no file)."""
    if yaml_text is None or not yaml_text.strip():
        return [Service(name=image_name_for(repository_name))]
    try:
        document = yaml.safe_load(yaml_text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ServiceConfigError(
            f"{CONFIG_PATH} is not valid YAML{where} ({problem}): fix the syntax, "
            "e.g. with `python -c 'import yaml,sys; yaml.safe_load(sys.stdin)' < FILE`."
        ) from None
    if document is None:
        return [Service(name=image_name_for(repository_name))]
    if not isinstance(document, dict):
        raise ServiceConfigError(
            f"{CONFIG_PATH} must be a mapping with a `services:` list, not a "
            f"{_kind(document)}."
        )
    unknown = sorted(str(key) for key in document if key != "services")
    if unknown:
        raise ServiceConfigError(
            f"{CONFIG_PATH} has unknown key(s) {', '.join(unknown)}: only `services` is "
            "allowed at the top."
        )
    entries = document.get("services")
    if not isinstance(entries, list) or not entries:
        raise ServiceConfigError(
            f"{CONFIG_PATH}: `services` must be a non-empty list of services, each with a "
            "`name` (see DESIGN.md).",
            field="services",
        )
    services = [
        _service(entry, number, repository_name, single=len(entries) == 1)
        for number, entry in enumerate(entries, start=1)
    ]
    seen: dict[str, int] = {}
    for number, service in enumerate(services, start=1):
        if service.name in seen:
            raise ServiceConfigError(
                f"{CONFIG_PATH}: service #{number} has the name {service.name!r} of service "
                f"#{seen[service.name]}: give each service its own `name`.",
                entry=number,
                field="name",
            )
        seen[service.name] = number
    return services


def _service(entry: Any, number: int, repository_name: str, *, single: bool) -> Service:
    where = f"{CONFIG_PATH}: service #{number}"
    if not isinstance(entry, dict):
        raise ServiceConfigError(
            f"{where} is a {_kind(entry)}; write it as a mapping such as "
            "`- name: orders`.",
            entry=number,
        )
    unknown = sorted(str(key) for key in entry if key not in FIELDS)
    if unknown:
        raise ServiceConfigError(
            f"{where} has unknown field(s) {', '.join(unknown)}: the fields are "
            f"{', '.join(FIELDS)}.",
            entry=number,
            field=unknown[0],
        )
    entry = dict(entry)
    timeout = entry.pop("timeout", None)  # the one field that is a number
    for key, value in entry.items():
        if not isinstance(value, str) or not value.strip():
            raise ServiceConfigError(
                f"{where}: `{key}` must be non-empty text, not {value!r}.",
                entry=number,
                field=key,
            )
    if "name" in entry:
        name = entry["name"].strip()
        where = f"{where} ({name})"
        if len(name) > MAX_NAME_LENGTH or not IMAGE_NAME.fullmatch(name):
            raise ServiceConfigError(
                f"{where}: `name` {name!r} is not a valid image name: use lowercase letters, "
                "digits and single `.`, `_` or `-` between them, e.g. `orders-api`.",
                entry=number,
                field="name",
            )
    elif single:
        name = image_name_for(repository_name)
    else:
        raise ServiceConfigError(
            f"{where} has no `name`: with several services each needs one (its image name).",
            entry=number,
            field="name",
        )
    if timeout is not None:
        timeout = _timeout(timeout, where, number)
    context = _inside_repository(entry.get("context", "."), where, number, "context")
    dockerfile = entry.get("dockerfile", "Dockerfile").strip()
    _inside_repository(posixpath.join(context, dockerfile), where, number, "dockerfile")
    kind = entry.get("type", ServiceType.DOCKER.value).strip()
    if kind not in tuple(ServiceType):
        raise ServiceConfigError(
            f"{where}: `type` {kind!r} is unknown: use `docker` or `ami`.",
            entry=number,
            field="type",
        )
    return Service(
        name=name,
        context=context,
        dockerfile=posixpath.normpath(dockerfile),
        type=ServiceType(kind),
        timeout=timeout,
    )


def _timeout(value: Any, where: str, number: int) -> int:
    """`timeout:` in whole seconds, at least 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ServiceConfigError(
            f"{where}: `timeout` must be a whole number of seconds such as 900, not {value!r}.",
            entry=number,
            field="timeout",
        )
    return value


def _inside_repository(path: str, where: str, number: int, field: str) -> str:
    """`path` normalised, or an error when it is absolute or leaves the repository."""
    path = path.strip()
    if path.startswith(("/", "\\", "~")) or re.match(r"[A-Za-z]:", path) or "\\" in path:
        raise ServiceConfigError(
            f"{where}: `{field}` {path!r} must be a relative path with `/`, inside the "
            "repository, e.g. `services/orders`.",
            entry=number,
            field=field,
        )
    normal = posixpath.normpath(path)
    if normal == ".." or normal.startswith("../"):
        raise ServiceConfigError(
            f"{where}: `{field}` {path!r} leaves the repository: only its own files are "
            "built; use a path inside it.",
            entry=number,
            field=field,
        )
    return normal


def _kind(value: Any) -> str:
    return {list: "list", str: "text", int: "number", float: "number", bool: "boolean"}.get(
        type(value), type(value).__name__
    )
