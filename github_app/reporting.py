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

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from github_app.failures import (  # noqa: F401 - re-exported
    KINDS,
    STATUS_DESCRIPTION_LIMIT,
    Cause,
    Failure,
    FailureKind,
    classify_failure,
    shorten,
)
from github_app.records import Build, BuildState
from github_app.versions import Version, VersionSource

# https://docs.github.com/en/rest/checks/runs#create-a-check-run: summary and text hold
# at most 65535 characters, which GitHub counts in bytes.
OUTPUT_LIMIT = 65535
STATUS_CONTEXT = "slipway/docker"
STATUS_STATES = ("error", "failure", "pending", "success")


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
    published_from: str | None = None,
    floating_tags: Sequence[str] = (),
) -> dict[str, Any]:
    """PATCH check-runs/{id}: `success`, with the pushed reference and a `docker pull` line.

    `reference` is what the builder pushed: `REGISTRY/service:tag@sha256:...`;
    `published_from` the staged image it was published from without a build, if so.
    """
    image = reference.split("@", 1)[0]
    short_image = image.rsplit("/", 1)[-1]
    if published_from:
        made = (f"- **Published from the pre-merge build:** `{published_from}` (the merge "
                f"commit `{commit_sha}` has the staged head's tree), with the merge commit's "
                f"labels, in {format_duration(build_time)}, without building again")
    else:
        made = f"- **Built from:** merge commit `{commit_sha}` in {format_duration(build_time)}"
    lines = [
        f"Pushed **`{reference}`**",
        "",
        f"- **Version:** `{version.text}`, {version.explanation}",
        f"- **Tag:** `{version.tag}`",
        made,
    ]
    if floating_tags:
        lines.append(f"- **Floating tags moved:** {', '.join(f'`{t}`' for t in floating_tags)}")
    lines += [
        f"- **Log:** {details_url}",
        "",
        "```sh",
        f"docker pull {reference}",
        "```",
    ]
    summary = "\n".join(lines)
    return _completed(
        conclusion="success",
        completed_at=completed_at,
        details_url=details_url,
        output={"title": f"Pushed {short_image}", "summary": trim_bytes(summary, OUTPUT_LIMIT)},
        name=name,
        head_sha=head_sha,
    )


def check_run_ami_registered(
    *,
    ami: dict[str, Any],
    version: Version,
    commit_sha: str,
    build_time: timedelta,
    completed_at: datetime,
    details_url: str,
) -> dict[str, Any]:
    """PATCH check-runs/{id}: `success` of a `type: ami` build: the AMI id and region, its
    snapshot, the time of each phase and how to launch it. `ami` is Build.machine_image."""
    image_id, region = ami["image_id"], ami["region"]
    lines = [
        f"Registered **`{image_id}`** in **`{region}`**"
        + (" (already registered from this commit: nothing was rebuilt)"
           if ami.get("existing") else ""),
        "",
        f"- **AMI name:** `{ami.get('name', '')}`",
        f"- **Snapshot:** `{ami.get('snapshot_id') or 'unknown'}`",
        f"- **Version:** `{version.text}`, {version.explanation}",
        f"- **Built from:** merge commit `{commit_sha}` in {format_duration(build_time)}",
    ]
    if ami.get("disk_bytes"):
        lines.append(f"- **Disk:** {ami['disk_bytes'] / 2**30:.0f} GiB, "
                     f"{ami.get('uploaded_bytes', 0) / 2**20:.0f} MiB uploaded "
                     "(blocks that are not all zeros)")
    lines.append(f"- **Log:** {details_url}")
    phases = ami.get("phases") or {}
    if phases:
        lines += ["", "| phase | time |", "|---|---:|"]
        lines += [f"| {phase} | {phase_time(seconds)} |" for phase, seconds in phases.items()]
    lines += [
        "",
        "```sh",
        f"aws ec2 run-instances --region {region} --image-id {image_id} "
        "--instance-type t3.micro",
        "```",
    ]
    return _completed(
        conclusion="success",
        completed_at=completed_at,
        details_url=details_url,
        output={"title": f"Registered {image_id} ({region})",
                "summary": trim_bytes("\n".join(lines), OUTPUT_LIMIT)},
        name=None,
        head_sha=None,
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
        conclusion=failure.conclusion,
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
        "description": shorten(description),
        "context": context,
    }


def status_context(service_name: str, total: int) -> str:
    """`slipway/docker`, or `slipway/docker: <service>` when a repository has several."""
    return STATUS_CONTEXT if total == 1 else f"{STATUS_CONTEXT}: {service_name}"


# --- a build's final report -------------------------------------------------------------------


def build_status_context(build: Build) -> str:
    """`slipway/docker`, or `slipway/docker: <service>` when the check run names a service."""
    # The check run's name already says whether the repository has several services.
    several = ":" in build.check_run_name
    return status_context(build.service, 2 if several else 1)


def final_report(build: Build, *, details_url: str, log_tail: str) -> tuple[dict, dict]:
    """The finished check run and commit status of a build, from its record alone."""
    # An unfinished record (a crash) has no finished_at; its creation is the last known time.
    completed_at = datetime.fromtimestamp(build.finished_at or build.created_at, UTC)
    context = build_status_context(build)
    # The record keeps the tag and where it came from; that is what the report shows.
    version = None
    if build.version:
        version = Version(text=build.version, tag=build.version, source=VersionSource.LABEL,
                          explanation=build.version_source or "")
    ami = build.machine_image
    if build.state is BuildState.SUCCEEDED and ami is not None:
        check_run = check_run_ami_registered(
            ami=ami, version=version, commit_sha=build.merge_sha,
            build_time=timedelta(seconds=build.duration or 0), completed_at=completed_at,
            details_url=details_url,
        )
        status = status_body("success", f"Registered {ami['image_id']} ({ami['region']})",
                             details_url, context=context)
        return check_run, status
    if build.state is BuildState.SUCCEEDED:
        check_run = check_run_succeeded(
            reference=build.reference, version=version, commit_sha=build.merge_sha,
            build_time=timedelta(seconds=build.duration or 0), completed_at=completed_at,
            details_url=details_url, published_from=build.published_from,
            floating_tags=[tag for tag in (build.floating_tags or "").split(",") if tag],
        )
        status = status_body(
            "success", f"Pushed {build.reference.split('@')[0].rsplit('/', 1)[-1]}",
            details_url, context=context,
        )
        return check_run, status
    failure = Failure(
        kind=FailureKind(build.failure_kind or FailureKind.INTERNAL),
        message=build.error or "The build did not finish.",
        cause=Cause(build.failure_cause or Cause.INFRASTRUCTURE),
        log_tail=log_tail,
    )
    check_run = check_run_failed(
        failure=failure, completed_at=completed_at, details_url=details_url, version=version,
        commit_sha=build.merge_sha,
    )
    status = status_body(failure.status_state, failure.status_description, details_url,
                         context=context)
    return check_run, status


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


def phase_time(seconds: float) -> str:
    """`4.2 s` under a minute (phases are short), else as format_duration."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    return format_duration(timedelta(seconds=seconds))


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
