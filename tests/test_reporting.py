"""Check-run and commit-status bodies: GitHub's OpenAPI shape, byte limits, what the user reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from openapi_validation import find_operation, request_body_errors

from builder import errors as builder_errors
from github_app import errors
from github_app.reporting import (
    OUTPUT_LIMIT,
    Cause,
    Failure,
    FailureKind,
    check_run_failed,
    check_run_started,
    check_run_succeeded,
    classify_failure,
    iso8601,
    log_block,
    status_body,
    status_context,
    trim_bytes,
)
from github_app.versions import resolve_version

NOW = datetime(2024, 5, 4, 1, 14, 52, 123456, tzinfo=UTC)
SHA = "ec26c3e57ca3a959ca5aad62de7213c562f8c821"
MERGE_SHA = "c4295bd74fb0f4fda03689c3df3f2803b658fd85"
DIGEST = "sha256:" + "a" * 64
REFERENCE = f"localhost:5000/orders:1.4.0@{DIGEST}"
DETAILS = "http://localhost:8080/builds/17"
CREATE = ("POST", "/repos/Codertocat/Hello-World/check-runs")
UPDATE = ("PATCH", "/repos/Codertocat/Hello-World/check-runs/4")
STATUS = ("POST", f"/repos/Codertocat/Hello-World/statuses/{MERGE_SHA}")


def assert_valid(method: str, path: str, body: dict) -> None:
    """`body` fits GitHub's requestBody schema and uses only properties it declares."""
    problems = request_body_errors(method, path, body)
    assert not problems, [f"{list(p.absolute_path)}: {p.message}" for p in problems]
    schema = find_operation(method, path).body_schema
    assert set(body) <= set(schema["properties"]), set(body) - set(schema["properties"])
    if "output" in body:
        assert set(body["output"]) <= set(schema["properties"]["output"]["properties"])
        for key in ("summary", "text"):
            assert len(body["output"].get(key, "").encode()) <= OUTPUT_LIMIT


def version():
    return resolve_version(["version:1.4.0"], "Add orders endpoint", [])


def build_failed(log: str = "Step 3/5 : RUN pip install -r requirements.txt\nERROR: boom"):
    return builder_errors.BuildFailed(
        "The build step `RUN pip install -r requirements.txt` failed (exit code 1).",
        step="RUN pip install -r requirements.txt",
        log_tail=log,
    )


# --- check runs --------------------------------------------------------------------------------


def test_started_check_run_is_a_valid_create_body():
    """An in_progress run on the head commit, with details_url and external_id."""
    body = check_run_started("docker build", SHA, DETAILS, "17", NOW)
    assert_valid(*CREATE, body)
    assert body["status"] == "in_progress"
    assert body["started_at"] == "2024-05-04T01:14:52Z"
    assert (body["name"], body["head_sha"], body["external_id"]) == ("docker build", SHA, "17")


def test_succeeded_check_run_names_the_image_and_how_to_pull_it():
    """Success: the full reference with digest, the version and its origin, the build time."""
    body = check_run_succeeded(
        reference=REFERENCE, version=version(), commit_sha=MERGE_SHA,
        build_time=timedelta(seconds=83), completed_at=NOW, details_url=DETAILS,
    )
    assert_valid(*UPDATE, body)
    assert (body["status"], body["conclusion"]) == ("completed", "success")
    assert body["completed_at"] == "2024-05-04T01:14:52Z"
    summary = body["output"]["summary"]
    assert REFERENCE in summary
    assert f"docker pull {REFERENCE}" in summary
    assert "from label version:1.4.0" in summary
    assert "1 min 23 s" in summary
    assert MERGE_SHA in summary
    assert body["output"]["title"] == "Pushed orders:1.4.0"


def test_a_finished_run_can_be_created_in_one_request():
    """With name and head_sha the completed body is a valid create body too."""
    body = check_run_succeeded(
        reference=REFERENCE, version=version(), commit_sha=MERGE_SHA,
        build_time=timedelta(seconds=5), completed_at=NOW, details_url=DETAILS,
        name="docker build", head_sha=SHA,
    )
    assert_valid(*CREATE, body)
    failed = check_run_failed(
        failure=Failure.from_error(errors.VersionNotFound()), completed_at=NOW,
        details_url=DETAILS, name="docker build", head_sha=SHA,
    )
    assert_valid(*CREATE, failed)


def test_build_metadata_rewrite_is_explained_on_success():
    """A version with +build metadata says on the check run that it was published with '-'."""
    v = resolve_version(["version:1.2.3+build.5"], "", [])
    body = check_run_succeeded(
        reference=f"localhost:5000/orders:{v.tag}@{DIGEST}", version=v, commit_sha=MERGE_SHA,
        build_time=timedelta(seconds=1), completed_at=NOW, details_url=DETAILS,
    )
    assert "Docker tags cannot hold `+`" in body["output"]["summary"]


def test_failed_build_step_blames_the_repository_and_shows_the_log():
    """A failing Dockerfile step: failure, cause in the repository, the log tail in a code block."""
    failure = Failure.from_error(build_failed())
    body = check_run_failed(
        failure=failure, completed_at=NOW, details_url=DETAILS, version=version(),
        commit_sha=MERGE_SHA,
    )
    assert_valid(*UPDATE, body)
    assert body["conclusion"] == "failure"
    summary = body["output"]["summary"]
    assert "the build step `RUN pip install -r requirements.txt`" in summary
    assert "in the repository" in summary
    assert "What to do:" in summary
    assert "1.4.0" in summary
    assert body["output"]["text"].startswith("```\n")
    assert "ERROR: boom" in body["output"]["text"]
    assert failure.status_state == "failure"


def test_no_version_fails_with_instructions():
    """A merged PR without a version fails its check run with instructions."""
    failure = Failure.from_error(errors.VersionNotFound())
    body = check_run_failed(failure=failure, completed_at=NOW, details_url=DETAILS)
    assert_valid(*UPDATE, body)
    assert "Add a label like `version:1.4.0`" in body["output"]["summary"]
    assert "text" not in body["output"]
    assert failure.kind is FailureKind.VERSION
    assert failure.status_state == "failure"


@pytest.mark.parametrize(
    ("error", "kind", "state"),
    [
        (errors.VersionNotFound(), FailureKind.VERSION, "failure"),
        (errors.InvalidVersion("bad", value="version:x"), FailureKind.VERSION, "failure"),
        (errors.VersionTaken(service="o", tag="1.0.0", commit="abc"), FailureKind.VERSION_TAKEN,
         "failure"),
        (errors.ServiceConfigError("bad yml"), FailureKind.SERVICE_CONFIG, "failure"),
        (errors.GitHubError("GitHub answered 502", status=502), FailureKind.GITHUB, "error"),
        (builder_errors.DockerfileNotFound("no Dockerfile", dockerfile="Dockerfile"),
         FailureKind.DOCKERFILE, "failure"),
        (builder_errors.PushFailed("push refused", reason="refused", image="x", detail="d"),
         FailureKind.PUSH, "error"),
        (builder_errors.EngineUnreachable("no engine"), FailureKind.ENGINE, "error"),
        (builder_errors.RegistryUnreachable("no registry", registry="r"), FailureKind.REGISTRY,
         "error"),
        (RuntimeError("oops"), FailureKind.INTERNAL, "error"),
    ],
)
def test_failures_are_classified_by_whose_move_it_is(error, kind, state):
    """Repository causes make the status `failure`, infrastructure causes `error`."""
    assert classify_failure(error) is kind
    failure = Failure.from_error(error)
    assert failure.status_state == state
    body = check_run_failed(failure=failure, completed_at=NOW, details_url=DETAILS)
    assert_valid(*UPDATE, body)
    assert body["conclusion"] == "failure"
    where = "in the repository" if state == "failure" else "in the infrastructure"
    assert where in body["output"]["summary"]
    assert len(failure.status_description) <= 140


def test_an_infrastructure_failure_says_nothing_in_the_repository_must_change():
    """A push refused by the registry tells the user the repository is fine."""
    failure = Failure.from_error(
        builder_errors.PushFailed("The registry refused the push.", reason="refused",
                                  image="localhost:5000/orders:1.4.0", detail="denied")
    )
    assert failure.cause is Cause.INFRASTRUCTURE
    summary = check_run_failed(failure=failure, completed_at=NOW, details_url=DETAILS)[
        "output"]["summary"]
    assert "nothing in the repository needs to change" in summary


def test_a_huge_log_keeps_its_end_within_the_byte_limit():
    """A log far over 65535 bytes of multibyte text keeps its last line and fits in bytes."""
    log = "".join(f"ligne {i}: café ☕ 🚢\n" for i in range(20000)) + "ERROR: the last line"
    body = check_run_failed(
        failure=Failure.from_error(build_failed(log)), completed_at=NOW, details_url=DETAILS
    )
    assert_valid(*UPDATE, body)
    text = body["output"]["text"]
    assert len(text.encode()) <= OUTPUT_LIMIT
    assert text.rstrip("`").rstrip().endswith("ERROR: the last line")
    assert "earlier bytes not shown" in text


def test_a_log_with_backticks_cannot_close_the_code_block():
    """The fence is longer than any run of backticks in the log."""
    block = log_block("echo ```oops```\nmore")
    assert block.startswith("````\n") and block.endswith("\n````")


# --- trim_bytes --------------------------------------------------------------------------------


def test_text_within_the_limit_is_unchanged():
    assert trim_bytes("héllo", 6) == "héllo"


@pytest.mark.parametrize("keep", ["start", "end"])
@pytest.mark.parametrize("char", ["é", "☕", "🚢"])
def test_trimming_never_splits_a_character(keep, char):
    """At every limit, the result is valid UTF-8 of at most `limit` bytes."""
    text = "a" + char * 200 + "z"
    for limit in range(60, 200):
        trimmed = trim_bytes(text, limit, keep=keep)
        assert len(trimmed.encode("utf-8")) <= limit
        assert "not shown" in trimmed
        kept = trimmed.split("\n\n")[0] if keep == "start" else trimmed.split("\n", 1)[1]
        assert (text.startswith(kept) if keep == "start" else text.endswith(kept))
        assert len(kept.encode()) >= limit - 60 - 4  # only the marker and one char are lost


def test_the_marker_counts_the_removed_bytes():
    """The marker says how many bytes were cut."""
    text = "é" * 100  # 200 bytes
    trimmed = trim_bytes(text, 100, keep="end")
    kept = trimmed.split("\n", 1)[1]
    assert f"… {200 - len(kept.encode())} earlier bytes" in trimmed


def test_summary_keeps_its_start_exactly_at_the_limit():
    """A summary just over 65535 bytes keeps its start and ends at most at the limit."""
    text = "🚢" * (OUTPUT_LIMIT // 4 + 1)
    trimmed = trim_bytes(text, OUTPUT_LIMIT)
    assert OUTPUT_LIMIT - 60 < len(trimmed.encode()) <= OUTPUT_LIMIT
    assert trimmed.startswith("🚢🚢")


def test_a_limit_below_the_marker_cuts_bare():
    assert trim_bytes("abcdefgh", 3) == "abc"
    assert trim_bytes("abcdefgh", 3, keep="end") == "fgh"


# --- commit statuses ---------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["pending", "success", "failure", "error"])
def test_status_bodies_are_valid(state):
    """Each state makes a valid create-commit-status body with context slipway/docker."""
    body = status_body(state, "Building orders", DETAILS)
    assert_valid(*STATUS, body)
    assert body == {"state": state, "target_url": DETAILS, "description": "Building orders",
                    "context": "slipway/docker"}


def test_status_description_is_at_most_140_characters():
    """A long description is shortened to 140 characters with an ellipsis, on one line."""
    body = status_body("failure", "é" * 100 + "\n" + "x" * 100, DETAILS)
    assert len(body["description"]) == 140
    assert body["description"].endswith("…")
    assert "\n" not in body["description"]


def test_status_state_is_checked():
    with pytest.raises(ValueError):
        status_body("failed", "x", None)


def test_status_context_per_service():
    """One service: slipway/docker; several: one context per service."""
    assert status_context("orders", 1) == "slipway/docker"
    assert status_context("orders", 2) == "slipway/docker: orders"


def test_timestamps_are_utc_with_z():
    """GitHub's time format, converted to UTC."""
    paris = timezone(timedelta(hours=2))
    assert iso8601(datetime(2024, 5, 4, 3, 0, 0, tzinfo=paris)) == "2024-05-04T01:00:00Z"
    assert iso8601(datetime(2024, 5, 4, 3, 0, 0)) == "2024-05-04T03:00:00Z"


def test_an_errors_blame_overrides_its_kind():
    """A GitHub refusal blamed on the repository (archive too large) is a `failure`."""
    error = errors.SourceError("The source archive is larger than 2048 MiB.")
    error.blame = "repository"
    failure = Failure.from_error(error)
    assert (failure.kind, failure.cause, failure.status_state) == (
        FailureKind.SOURCE, Cause.REPOSITORY, "failure")
    summary = check_run_failed(failure=failure, completed_at=NOW, details_url=DETAILS)[
        "output"]["summary"]
    assert "in the repository" in summary and "new pull request" in summary


def test_a_timed_out_build_concludes_timed_out_with_status_failure():
    """Past its time limit: conclusion `timed_out` (valid for GitHub), status `failure`."""
    error = builder_errors.BuildTimedOut(
        "The build ran past its time limit of 30 s and was stopped.", seconds=30,
        step="Step 2/3 : RUN sleep 600", log_tail="Step 2/3 : RUN sleep 600\n")
    failure = Failure.from_error(error)
    body = check_run_failed(failure=failure, completed_at=NOW, details_url=DETAILS)
    assert_valid(*UPDATE, body)
    assert body["conclusion"] == "timed_out"
    assert "time limit" in body["output"]["title"]
    assert failure.status_state == "failure"


def test_a_step_killed_under_the_memory_limit_names_build_memory():
    error = builder_errors.BuildOutOfMemory(
        "The build step Step 2/3 : RUN make was killed (exit code 137): it ran out of memory.",
        memory=64 * 1024**2, step="Step 2/3 : RUN make", log_tail="Killed\n")
    failure = Failure.from_error(error)
    body = check_run_failed(failure=failure, completed_at=NOW, details_url=DETAILS)
    assert_valid(*UPDATE, body)
    assert body["conclusion"] == "failure"
    assert "ran out of memory" in body["output"]["title"]
    assert "`BUILD_MEMORY`" in body["output"]["summary"]
    assert failure.status_state == "failure"
