"""Request bodies that tell GitHub how a build went: check runs and commit statuses.

Pure: no network, disk, clock or Flask globals; the time is an argument. Every
function returns a dict in the exact shape of GitHub's request body, so tests
check it against GitHub's OpenAPI description:

- `check_run_started`              POST  /repos/{owner}/{repo}/check-runs
- `check_run_succeeded` / `_failed` PATCH /repos/{owner}/{repo}/check-runs/{check_run_id}
                                   (pass `name` and `head_sha` to POST a finished run at once)
- `status_body`                    POST  /repos/{owner}/{repo}/statuses/{sha}

A failed build is a check run `failure` either way; the commit status says whose
move it is: `failure` when the cause is in the repository, `error` when it is in
the infrastructure (DESIGN.md, "What the user sees").
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from github_app import errors
from github_app.versions import Version

# https://docs.github.com/en/rest/checks/runs#create-a-check-run: summary and text hold
# at most 65535 characters, which GitHub counts in bytes.
OUTPUT_LIMIT = 65535
STATUS_DESCRIPTION_LIMIT = 140
STATUS_CONTEXT = "slipway/docker"
STATUS_STATES = ("error", "failure", "pending", "success")


# --- failures ----------------------------------------------------------------------------------


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
    PUSH = "push"
    REGISTRY = "registry"
    ENGINE = "engine"
    SOURCE = "source"
    GITHUB = "github"
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
        f"or a label `semver:patch`; {_RERUN}.",
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
    FailureKind.PUSH: _KindInfo(
        "the push to the registry", Cause.INFRASTRUCTURE,
        "Nothing to change in the repository: check that the registry is up and accepts "
        f"Slipway's credentials (`REGISTRY`, `REGISTRY_USERNAME`), {_RERUN}.",
    ),
    FailureKind.REGISTRY: _KindInfo(
        "the registry", Cause.INFRASTRUCTURE,
        f"Nothing to change in the repository: check that the registry answers, {_RERUN}.",
    ),
    FailureKind.ENGINE: _KindInfo(
        "the Docker engine", Cause.INFRASTRUCTURE,
        "Nothing to change in the repository: check that the Docker engine runs and that "
        f"Slipway reaches it (`DOCKER_HOST`), {_RERUN}.",
    ),
    FailureKind.SOURCE: _KindInfo(
        "downloading the source", Cause.INFRASTRUCTURE,
        f"Slipway could not fetch or unpack the commit from GitHub; {_RERUN}.",
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
    "PushFailed": FailureKind.PUSH,
    "EngineUnreachable": FailureKind.ENGINE,
    "RegistryUnreachable": FailureKind.REGISTRY,
}
_SLIPWAY_KINDS = {
    errors.VersionNotFound: FailureKind.VERSION,
    errors.InvalidVersion: FailureKind.VERSION,
    errors.VersionTaken: FailureKind.VERSION_TAKEN,
    errors.ServiceConfigError: FailureKind.SERVICE_CONFIG,
    errors.SourceError: FailureKind.SOURCE,
    errors.GitHubError: FailureKind.GITHUB,
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
            return f"the build step `{_one_line(self.step)}`"
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
    def status_state(self) -> str:
        """The commit status: `failure` for a repository cause, `error` for infrastructure."""
        return "failure" if self.cause is Cause.REPOSITORY else "error"

    @property
    def status_description(self) -> str:
        """A commit status description (at most 140 characters)."""
        return _shorten(f"Failed: {self.what.replace('`', '')}. {self.message}")


# --- check runs -------------------------------------------------------------------------------


def check_run_started(
    name: str,
    head_sha: str,
    details_url: str,
    external_id: str,
    started_at: datetime,
    *,
    summary: str | None = None,
) -> dict[str, Any]:
    """POST check-runs: an `in_progress` run on the pull request's head commit."""
    return {
        "name": name,
        "head_sha": head_sha,
        "details_url": details_url,
        "external_id": external_id,
        "status": "in_progress",
        "started_at": iso8601(started_at),
        "output": {
            "title": "Building",
            "summary": trim_bytes(
                summary or f"Slipway is building this merge. Follow the log: {details_url}",
                OUTPUT_LIMIT,
            ),
        },
    }


def check_run_succeeded(
    *,
    reference: str,
    version: Version,
    commit_sha: str,
    build_time: timedelta,
    completed_at: datetime,
    details_url: str,
    name: str | None = None,
    head_sha: str | None = None,
) -> dict[str, Any]:
    """PATCH check-runs/{id}: `success`, with the pushed reference and a `docker pull` line.

    `reference` is what the builder pushed: `REGISTRY/service:tag@sha256:...`.
    """
    image = reference.split("@", 1)[0]
    short_image = image.rsplit("/", 1)[-1]
    summary = "\n".join(
        [
            f"Pushed **`{reference}`**",
            "",
            f"- **Version:** `{version.text}`, {version.explanation}",
            f"- **Tag:** `{version.tag}`",
            f"- **Built from:** merge commit `{commit_sha}` in {format_duration(build_time)}",
            f"- **Log:** {details_url}",
            "",
            "```sh",
            f"docker pull {reference}",
            "```",
        ]
    )
    return _completed(
        conclusion="success",
        completed_at=completed_at,
        details_url=details_url,
        output={"title": f"Pushed {short_image}", "summary": trim_bytes(summary, OUTPUT_LIMIT)},
        name=name,
        head_sha=head_sha,
    )


def check_run_failed(
    *,
    failure: Failure,
    completed_at: datetime,
    details_url: str,
    version: Version | None = None,
    commit_sha: str | None = None,
    name: str | None = None,
    head_sha: str | None = None,
) -> dict[str, Any]:
    """PATCH check-runs/{id}: `failure`, saying what failed, whose move it is and what to do.

    The text holds the tail of the build log in a code block, trimmed to GitHub's limit.
    """
    if failure.cause is Cause.REPOSITORY:
        where = "**in the repository**: this commit or pull request needs a change."
    else:
        where = (
            "**in the infrastructure** (Docker engine, registry, GitHub or Slipway): "
            "nothing in the repository needs to change."
        )
    lines = [
        f"**What failed:** {failure.what}",
        f"**Cause:** {where}",
        "",
        failure.message,
        "",
        f"**What to do:** {failure.todo}",
        "",
    ]
    if version is not None:
        lines.append(f"- **Version:** `{version.text}`, {version.explanation}")
    if commit_sha:
        lines.append(f"- **Commit:** `{commit_sha}`")
    lines.append(f"- **Full log:** {details_url}")
    output = {
        "title": f"Build failed: {failure.what.replace('`', '')}",
        "summary": trim_bytes("\n".join(lines), OUTPUT_LIMIT),
    }
    if failure.log_tail.strip():
        output["text"] = log_block(failure.log_tail, OUTPUT_LIMIT)
    return _completed(
        conclusion="failure",
        completed_at=completed_at,
        details_url=details_url,
        output=output,
        name=name,
        head_sha=head_sha,
    )


def _completed(
    *,
    conclusion: str,
    completed_at: datetime,
    details_url: str,
    output: dict[str, str],
    name: str | None,
    head_sha: str | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if name is not None:
        body["name"] = name
    if head_sha is not None:
        body["head_sha"] = head_sha
    body.update(
        status="completed",
        conclusion=conclusion,
        completed_at=iso8601(completed_at),
        details_url=details_url,
        output=output,
    )
    return body


def log_block(log: str, limit: int = OUTPUT_LIMIT) -> str:
    """The end of a build log in a Markdown code block, at most `limit` bytes in all."""
    # A fence longer than any run of backticks in the log cannot be closed by the log.
    longest = max((len(run) for run in re.findall(r"`+", log)), default=0)
    fence = "`" * max(3, longest + 1)
    room = limit - len(fence.encode()) * 2 - 2
    return f"{fence}\n{trim_bytes(log.rstrip(), room, keep='end')}\n{fence}"


# --- commit statuses ---------------------------------------------------------------------------


def status_body(
    state: str, description: str, target_url: str | None, context: str = STATUS_CONTEXT
) -> dict[str, Any]:
    """POST statuses/{sha}: the state, a description of at most 140 characters, the link."""
    if state not in STATUS_STATES:
        raise ValueError(f"commit status state must be one of {STATUS_STATES}, not {state!r}")
    return {
        "state": state,
        "target_url": target_url,
        "description": _shorten(description),
        "context": context,
    }


def status_context(service_name: str, total: int) -> str:
    """`slipway/docker`, or `slipway/docker: <service>` when a repository has several."""
    return STATUS_CONTEXT if total == 1 else f"{STATUS_CONTEXT}: {service_name}"


# --- text helpers ------------------------------------------------------------------------------


def trim_bytes(text: str, limit: int, *, keep: Literal["start", "end"] = "start") -> str:
    """`text` cut to at most `limit` UTF-8 bytes, never inside a character, marking the cut.

    keep="start" keeps the beginning (summaries); keep="end" keeps the tail (build logs).
    """
    data = text.encode()
    if len(data) <= limit:
        return text
    widest = _marker(len(data), keep)
    room = limit - len(widest.encode())
    if room < 0:  # no room even for the marker: cut bare
        room, widest = limit, ""
    # Decoding with "ignore" drops only the character split by the cut.
    if keep == "start":
        kept = data[:room].decode("utf-8", "ignore")
    else:
        kept = data[len(data) - room:].decode("utf-8", "ignore") if room else ""
    if not widest:
        return kept
    removed = len(data) - len(kept.encode())
    marker = _marker(removed, keep)
    return kept + marker if keep == "start" else marker + kept


def _marker(removed: int, keep: str) -> str:
    if keep == "start":
        return f"\n\n… {removed} more bytes not shown (GitHub's limit)"
    return f"… {removed} earlier bytes not shown (GitHub's limit)\n"


def iso8601(moment: datetime) -> str:
    """`moment` as GitHub writes times, `YYYY-MM-DDTHH:MM:SSZ`; a naive time is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_duration(duration: timedelta) -> str:
    """`42 s`, `3 min 05 s`, `1 h 02 min`."""
    seconds = max(0, round(duration.total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _shorten(text: str, limit: int = STATUS_DESCRIPTION_LIMIT) -> str:
    text = _one_line(text)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _one_line(text: str) -> str:
    return " ".join(text.split())
