"""Why a build failed: what failed (`FailureKind`), whose move it is (`Cause`), what to do.

Pure: turns an exception into a `Failure` whose sentences the check run and the
commit status show (see `reporting`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from github_app import errors

STATUS_DESCRIPTION_LIMIT = 140


class Cause(enum.StrEnum):
    REPOSITORY = "repository"
    INFRASTRUCTURE = "infrastructure"


class FailureKind(enum.StrEnum):
    VERSION = "version"
    VERSION_TAKEN = "version_taken"
    SERVICE_CONFIG = "service_config"
    REFERENCE = "reference"
    DOCKERFILE = "dockerfile"
    BUILD_STEP = "build_step"
    TIMEOUT = "timeout"
    OUT_OF_MEMORY = "out_of_memory"
    PUSH = "push"
    REGISTRY = "registry"
    BASE_IMAGE = "base_image"
    DISK = "disk"
    AWS = "aws"
    ENGINE = "engine"
    SOURCE = "source"
    SOURCE_REFUSED = "source_refused"
    IMAGE_NAME_TAKEN = "image_name_taken"
    GITHUB = "github"
    FREE_DISK = "free_disk"
    INTERNAL = "internal"


@dataclass(frozen=True)
class _KindInfo:
    what: str  # what failed, as a noun phrase
    cause: Cause
    todo: str


_NEW_PR = "fix it in a new pull request into the target branch; its merge is built"
_CHOOSE_RERUN = "choose **Re-run** on this check"
_RERUN = f"then {_CHOOSE_RERUN}"
KINDS: dict[FailureKind, _KindInfo] = {
    FailureKind.VERSION: _KindInfo(
        "the version", Cause.REPOSITORY,
        "Give the pull request a version: a label like `version:1.4.0`, `1.4.0` in the title, "
        f"or a label `semver:patch`; {_RERUN} (it reads the pull request again).",
    ),
    FailureKind.VERSION_TAKEN: _KindInfo(
        "the version (already published)", Cause.REPOSITORY,
        "A published version never changes: give the pull request a new version (a "
        f"`version:` label or `semver:patch`); {_RERUN}.",
    ),
    FailureKind.SERVICE_CONFIG: _KindInfo(
        "the service configuration (`.github/slipway.yml`)", Cause.REPOSITORY,
        f"Correct `.github/slipway.yml` as the message says: {_NEW_PR}.",
    ),
    FailureKind.REFERENCE: _KindInfo(
        "the image name or version", Cause.REPOSITORY,
        "Use a service name and version that Docker accepts in an image reference "
        f"(`.github/slipway.yml`, the version label or title); {_RERUN}.",
    ),
    FailureKind.DOCKERFILE: _KindInfo(
        "the Dockerfile", Cause.REPOSITORY,
        "Check the `context` and `dockerfile` of the service (`.github/slipway.yml`, default "
        f"`Dockerfile` at the repository root): {_NEW_PR}.",
    ),
    FailureKind.BUILD_STEP: _KindInfo(
        "a build step", Cause.REPOSITORY,
        f"The end of the build log is below. Reproduce with `docker build` and {_NEW_PR}.",
    ),
    FailureKind.TIMEOUT: _KindInfo(
        "the time limit (the build ran too long)", Cause.REPOSITORY,
        "The end of the build log below shows the step that was running. Make it finish "
        "sooner (a step that waits for input or the network hangs) in a new pull request, or "
        f"raise the limit where the message above says; {_RERUN}.",
    ),
    FailureKind.OUT_OF_MEMORY: _KindInfo(
        "the memory limit (a build step ran out of memory)", Cause.REPOSITORY,
        "Make the step use less memory in a new pull request, or ask the Slipway operator to "
        f"raise `BUILD_MEMORY` (the memory limit of every build step); {_RERUN}.",
    ),
    FailureKind.PUSH: _KindInfo(
        "the push to the registry", Cause.INFRASTRUCTURE,
        "Nothing to change in the repository: check that the registry is up and accepts "
        f"Slipway's credentials (`REGISTRY`, `REGISTRY_USERNAME`), {_RERUN}.",
    ),
    FailureKind.REGISTRY: _KindInfo(
        "the registry", Cause.INFRASTRUCTURE,
        f"Nothing to change in the repository: check that the registry answers, {_RERUN}.",
    ),
    FailureKind.BASE_IMAGE: _KindInfo(
        "the base image (a machine image needs Debian or Ubuntu)", Cause.REPOSITORY,
        "Base the Dockerfile's last stage on a Debian or Ubuntu image and give it a `CMD` "
        f"(docs/ami.md): {_NEW_PR}.",
    ),
    FailureKind.DISK: _KindInfo(
        "assembling the machine image's disk", Cause.INFRASTRUCTURE,
        "Nothing to change in the repository: install the disk tools the message names on "
        f"the build host, {_RERUN}.",
    ),
    FailureKind.AWS: _KindInfo(
        "AWS (uploading or registering the machine image)", Cause.INFRASTRUCTURE,
        "Nothing to change in the repository: give Slipway's AWS credentials what the "
        "message names (the IAM policy is in docs/ami.md) or wait for AWS to answer, "
        f"{_RERUN}.",
    ),
    FailureKind.ENGINE: _KindInfo(
        "the Docker engine", Cause.INFRASTRUCTURE,
        "Nothing to change in the repository: check that the Docker engine runs and that "
        f"Slipway reaches it (`DOCKER_HOST`), {_RERUN}.",
    ),
    FailureKind.FREE_DISK: _KindInfo(
        "the free disk of the build host", Cause.INFRASTRUCTURE,
        "Nothing to change in the repository: free disk space on the build host (or lower "
        f"`MIN_FREE_DISK`), {_RERUN}.",
    ),
    FailureKind.SOURCE: _KindInfo(
        "downloading the source", Cause.INFRASTRUCTURE,
        f"Slipway could not fetch or unpack the commit from GitHub; {_RERUN}.",
    ),
    FailureKind.SOURCE_REFUSED: _KindInfo(
        "the repository's files", Cause.REPOSITORY,
        "Slipway refuses to unpack the path named above: links must stay inside the "
        "repository, and devices, absolute or `..` paths, too many files or too many bytes "
        f"are refused. Remove or change it: {_NEW_PR}.",
    ),
    FailureKind.IMAGE_NAME_TAKEN: _KindInfo(
        "the image name (another repository's)", Cause.REPOSITORY,
        "Choose another name with `name:` in `.github/slipway.yml` (a new pull request), or "
        f"ask the operator to set `IMAGE_NAME={{owner}}/{{service}}`; {_RERUN}.",
    ),
    FailureKind.GITHUB: _KindInfo(
        "a request to GitHub", Cause.INFRASTRUCTURE,
        f"GitHub could not be reached or refused a request; when it answers, {_CHOOSE_RERUN}.",
    ),
    FailureKind.INTERNAL: _KindInfo(
        "Slipway itself", Cause.INFRASTRUCTURE,
        f"This is a bug in Slipway, not in the repository: {_CHOOSE_RERUN}, and report it if it "
        "happens again.",
    ),
}

# builder.errors classes by name: github_app reads them without importing the builder's
# internals, and builder never imports github_app.
_BUILDER_KINDS = {
    "InvalidReference": FailureKind.REFERENCE,
    "UnsupportedArtifactType": FailureKind.SERVICE_CONFIG,
    "ContextNotFound": FailureKind.DOCKERFILE,
    "DockerfileNotFound": FailureKind.DOCKERFILE,
    "BuildFailed": FailureKind.BUILD_STEP,
    "BuildOutOfMemory": FailureKind.OUT_OF_MEMORY,
    "BuildTimedOut": FailureKind.TIMEOUT,
    "PushFailed": FailureKind.PUSH,
    "EngineUnreachable": FailureKind.ENGINE,
    "RegistryUnreachable": FailureKind.REGISTRY,
    "UnsupportedBaseImage": FailureKind.BASE_IMAGE,
    "AmiVersionTaken": FailureKind.VERSION_TAKEN,
    "DiskAssemblyFailed": FailureKind.DISK,
    "AwsError": FailureKind.AWS,
}
_SLIPWAY_KINDS = {
    errors.VersionNotFound: FailureKind.VERSION,
    errors.InvalidVersion: FailureKind.VERSION,
    errors.VersionTaken: FailureKind.VERSION_TAKEN,
    errors.ServiceConfigError: FailureKind.SERVICE_CONFIG,
    errors.SourceRefused: FailureKind.SOURCE_REFUSED,
    errors.SourceError: FailureKind.SOURCE,
    errors.ImageNameTaken: FailureKind.IMAGE_NAME_TAKEN,
    errors.GitHubError: FailureKind.GITHUB,
    errors.LowDiskSpace: FailureKind.FREE_DISK,
}


def classify_failure(error: BaseException) -> FailureKind:
    """What failed, from the type of `error`; anything unexpected is Slipway's own bug."""
    for cls in type(error).__mro__:
        if cls in _SLIPWAY_KINDS:
            return _SLIPWAY_KINDS[cls]
        if cls.__module__.startswith("builder") and cls.__name__ in _BUILDER_KINDS:
            return _BUILDER_KINDS[cls.__name__]
    return FailureKind.INTERNAL


@dataclass(frozen=True)
class Failure:
    """Why a build failed: the kind, the error's sentence, and the evidence."""

    kind: FailureKind
    message: str
    cause: Cause
    log_tail: str = ""
    step: str | None = None

    @classmethod
    def from_error(cls, error: BaseException, *, log_tail: str = "") -> Failure:
        """A Failure from an exception; its `blame` (builder, Slipway errors) decides the cause."""
        kind = classify_failure(error)
        blame = getattr(error, "blame", None)
        cause = Cause(blame) if blame in tuple(Cause) else KINDS[kind].cause
        if kind is FailureKind.INTERNAL:
            cause = Cause.INFRASTRUCTURE
        message = str(error) or type(error).__name__
        if kind is FailureKind.INTERNAL:
            message = f"Unexpected {type(error).__name__}: {message}"
        return cls(
            kind=kind,
            message=message,
            cause=cause,
            log_tail=getattr(error, "log_tail", "") or log_tail,
            step=getattr(error, "step", None),
        )

    @property
    def what(self) -> str:
        """What failed, as a noun phrase: "a build step", "the push to the registry"."""
        if self.kind is FailureKind.BUILD_STEP and self.step:
            return f"the build step `{one_line(self.step)}`"
        return KINDS[self.kind].what

    @property
    def todo(self) -> str:
        """What the user should do; generic when the error's blame overrides its kind's."""
        info = KINDS[self.kind]
        if self.cause is info.cause:
            return info.todo
        if self.cause is Cause.REPOSITORY:
            return f"Change what the message above says: {_NEW_PR}."
        return f"Nothing to change in the repository: {_CHOOSE_RERUN} once it is fixed."

    @property
    def conclusion(self) -> str:
        """The check run's conclusion: `timed_out` past the time limit, else `failure`."""
        return "timed_out" if self.kind is FailureKind.TIMEOUT else "failure"

    @property
    def status_state(self) -> str:
        """The commit status: `failure` for a repository cause, `error` for infrastructure."""
        return "failure" if self.cause is Cause.REPOSITORY else "error"

    @property
    def status_description(self) -> str:
        """A commit status description (at most 140 characters)."""
        return shorten(f"Failed: {self.what.replace('`', '')}. {self.message}")


def shorten(text: str, limit: int = STATUS_DESCRIPTION_LIMIT) -> str:
    text = one_line(text)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def one_line(text: str) -> str:
    return " ".join(text.split())
