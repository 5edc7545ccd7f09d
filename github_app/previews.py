"""Check runs before the merge: what merging the pull request would publish.

The check run is `docker build` on the pull request's head, the name it keeps
after the merge, so one required check covers both. Its summary opens with the
line a reviewer needs: "Merging publishes `orders:1.4.0` (`semver:minor` over 1.3.2)".

Pure: no network, disk, clock or Flask globals; the time is an argument. Each
function returns a PATCH check-runs/{id} body (add `name` and `head_sha` to POST it).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from github_app.floating_tags import STAGING_PREFIX
from github_app.records import Build, BuildState
from github_app.reporting import (
    OUTPUT_LIMIT,
    Cause,
    Failure,
    FailureKind,
    format_duration,
    iso8601,
    log_block,
    trim_bytes,
)
from github_app.versions import Version, VersionSource
from github_app.webhooks import BUILD_LABEL

# What to do before the merge: the pull request itself is what changes, and a new
# push or label is picked up by itself (no Re-run needed).
_PUSH_A_FIX = "push a fix to this pull request; its new head is built and this check follows"
_PRE_MERGE_TODO = {
    FailureKind.VERSION: "Give the pull request a version: a label like `version:1.4.0`, "
                         "`1.4.0` in the title, or a label `semver:patch`. This check "
                         "updates by itself, without building again.",
    FailureKind.VERSION_TAKEN: "A published version never changes: give the pull request a "
                               "new version (a `version:` label, the title or `semver:patch`). "
                               "This check updates by itself, without building again.",
}


def merge_line(image: str, version: Version) -> str:
    """"Merging publishes `orders:1.4.0` (`semver:minor` over 1.3.2)"."""
    reason = f" ({version.reason})" if version.reason else ""
    return f"Merging publishes `{image}:{version.tag}`{reason}"


def staged(*, image: str, version: Version, staged_reference: str, head_sha: str,
           build_time: timedelta, floating: Sequence[str], completed_at: datetime,
           details_url: str, rebuilt: bool = True) -> dict[str, Any]:
    """`success`: the head built and is staged; the summary says what the merge publishes."""
    headline = merge_line(image, version)
    built = (f"built from head `{head_sha}` in {format_duration(build_time)}" if rebuilt
             else f"built from head `{head_sha}` earlier; only the version changed since")
    lines = [
        f"{headline}.",
        "",
        f"- **Version:** `{version.text}`, {version.explanation}",
        f"- **Staged:** `{staged_reference}` ({built})",
    ]
    if floating:
        lines.append(f"- **Floating tags it would move:** "
                     f"{', '.join(f'`{tag}`' for tag in floating)}")
    lines += [
        f"- **Log:** {details_url}",
        "",
        "At the merge, when the merge commit's tree is this head's, the staged image is "
        "published under the version without building again.",
    ]
    return _completed("success", f"Merging publishes {image}:{version.tag}", lines,
                      completed_at, details_url)


def failed(*, failure: Failure, completed_at: datetime, details_url: str,
           version: Version | None = None, image: str | None = None,
           staged_reference: str | None = None, head_sha: str | None = None) -> dict[str, Any]:
    """`failure` before the merge: what failed, what to do, and what is staged anyway."""
    todo = _PRE_MERGE_TODO.get(failure.kind)
    if todo is None:
        todo = (f"Change what the message above says: {_PUSH_A_FIX}."
                if failure.cause is Cause.REPOSITORY else failure.todo)
    where = ("in the pull request" if failure.cause is Cause.REPOSITORY
             else "in the infrastructure (Docker engine, registry, GitHub or Slipway)")
    lines = [
        "Merging now would publish nothing: a team that requires this check cannot merge "
        "until it passes.",
        "",
        f"**What failed:** {failure.what} ({where})",
        "",
        failure.message,
        "",
        f"**What to do:** {todo}",
        "",
    ]
    if version is not None and image:
        lines.append(f"- **Version:** `{version.text}`, {version.explanation}")
    if staged_reference:
        lines.append(f"- **Staged anyway:** `{staged_reference}` (the head builds)")
    if head_sha:
        lines.append(f"- **Head:** `{head_sha}`")
    lines.append(f"- **Full log:** {details_url}")
    body = _completed(failure.conclusion, f"Not ready to merge: {failure.what.replace('`', '')}",
                      lines, completed_at, details_url)
    if failure.log_tail.strip():
        body["output"]["text"] = log_block(failure.log_tail, OUTPUT_LIMIT)
    return body


def cancelled(*, superseded_by: str, pr_number: int | None, completed_at: datetime,
              details_url: str) -> dict[str, Any]:
    """`cancelled`: a newer push replaced this head; its check is on the newer commit."""
    pull = f"#{pr_number}" if pr_number else "the pull request"
    lines = [
        f"A newer push to {pull} replaced this commit: `{superseded_by}` is built instead, "
        "and its check says what merging publishes.",
        "",
        f"- **Superseded by:** `{superseded_by}`",
        f"- **Log:** {details_url}",
    ]
    return _completed("cancelled", f"Superseded by {superseded_by[:7]}", lines, completed_at,
                      details_url)


def fork_not_built(*, image: str, version: Version, head_owner: str | None,
                   completed_at: datetime, details_url: str) -> dict[str, Any]:
    """`neutral`: a fork's head is not built before the merge (its code is unreviewed)."""
    whose = f"`{head_owner}`'s fork" if head_owner else "a fork that no longer exists"
    lines = [
        f"{merge_line(image, version)}.",
        "",
        f"Not built before the merge: the head comes from {whose}, and Slipway does not run "
        "unreviewed code from outside `ALLOWED_OWNERS`. After the merge it is built like any "
        "other pull request.",
        "",
        f"**To build it now:** a maintainer who has reviewed the code adds the label "
        f"`{BUILD_LABEL}`. The label approves the head it is added to: after a new push, "
        "remove it and add it again.",
        "",
        f"- **Version:** `{version.text}`, {version.explanation}",
    ]
    return _completed("neutral", "Not built before the merge: fork pull request", lines,
                      completed_at, details_url)


def started_summary(*, image: str, pr_number: int | None, head_sha: str,
                    details_url: str) -> str:
    """The `in_progress` summary of a pre-merge build."""
    return (f"Slipway is building head `{head_sha}` to stage it as "
            f"`{image}:{STAGING_PREFIX}{pr_number}` and to tell what merging publishes. "
            f"Follow the log: {details_url}")


def _completed(conclusion: str, title: str, lines: list[str], completed_at: datetime,
               details_url: str) -> dict[str, Any]:
    return {
        "status": "completed",
        "conclusion": conclusion,
        "completed_at": iso8601(completed_at),
        "details_url": details_url,
        "output": {"title": trim_bytes(title, 255),
                   "summary": trim_bytes("\n".join(lines), OUTPUT_LIMIT)},
    }


def final_report(build: Build, *, details_url: str, log_tail: str) -> dict[str, Any]:
    """The finished check run of a build before the merge, from its record alone."""
    completed_at = datetime.fromtimestamp(build.finished_at or build.created_at, UTC)
    image = _image_of(build)
    version = None
    if build.version:
        version = Version(text=build.version, tag=build.version, source=VersionSource.LABEL,
                          explanation=build.version_source or "",
                          reason=build.version_reason or "")
    if build.state is BuildState.CANCELLED:
        return cancelled(superseded_by=build.note or "a newer commit", pr_number=build.pr_number,
                         completed_at=completed_at, details_url=details_url)
    if build.state is BuildState.SKIPPED and version is not None:
        return fork_not_built(image=image, version=version, head_owner=build.note or None,
                              completed_at=completed_at, details_url=details_url)
    if build.state is BuildState.SUCCEEDED and version is not None and build.staged_reference:
        floating = [tag for tag in (build.floating_tags or "").split(",") if tag]
        return staged(image=image, version=version, staged_reference=build.staged_reference,
                      head_sha=build.head_sha, build_time=timedelta(seconds=build.duration or 0),
                      floating=floating, completed_at=completed_at, details_url=details_url,
                      rebuilt=not (build.note or "").startswith("reused:"))
    failure = Failure(
        kind=FailureKind(build.failure_kind or FailureKind.INTERNAL),
        message=build.error or "The build did not finish.",
        cause=Cause(build.failure_cause or Cause.INFRASTRUCTURE),
        log_tail=log_tail,
    )
    return failed(failure=failure, completed_at=completed_at, details_url=details_url,
                  version=version, image=image, staged_reference=build.staged_reference,
                  head_sha=build.head_sha)


def _image_of(build: Build) -> str:
    """The image name: from the staged reference (`REGISTRY/name:pr-12@...`), else the service."""
    if build.staged_reference:
        name = build.staged_reference.split("@", 1)[0].rsplit(":", 1)[0]
        return name.split("/", 1)[1] if "/" in name else name
    return build.service
