"""Check runs before the merge: what merging publishes, in GitHub's request shape."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from openapi_validation import request_body_errors

from github_app import previews
from github_app.errors import VersionNotFound
from github_app.reporting import Failure
from github_app.versions import resolve_version

NOW = datetime(2026, 12, 3, 13, 0, tzinfo=UTC)
HEAD = "ec26c3e57ca3a959ca5aad62de7213c562f8c821"
DETAILS = "http://localhost:8080/builds/17"
STAGED = "localhost:5000/orders:pr-12@sha256:" + "a" * 64
UPDATE = ("PATCH", "/repos/Codertocat/Hello-World/check-runs/4")


def valid(body: dict) -> dict:
    assert request_body_errors(*UPDATE, body) == []
    return body


def test_the_summary_opens_with_what_merging_publishes_and_why():
    """`semver:minor` over 1.3.2: "Merging publishes `orders:1.4.0` (`semver:minor` over 1.3.2)"."""
    version = resolve_version(["semver:minor"], "Add orders", ["1.3.2", "pr-12", "1.3"])
    body = valid(previews.staged(image="orders", version=version, staged_reference=STAGED,
                                 head_sha=HEAD, build_time=timedelta(seconds=12),
                                 floating=["1", "1.4", "latest"], completed_at=NOW,
                                 details_url=DETAILS))
    assert body["conclusion"] == "success"
    assert body["output"]["summary"].startswith(
        "Merging publishes `orders:1.4.0` (`semver:minor` over 1.3.2).")
    assert STAGED in body["output"]["summary"]
    assert "`1.4`" in body["output"]["summary"]


def test_a_label_or_title_gives_its_own_reason():
    """A `version:` label and a title name themselves in the headline."""
    label = resolve_version(["version:v2.0.0"], "x", [])
    title = resolve_version([], "Release 2.1.0", [])
    assert previews.merge_line("orders", label) == \
        "Merging publishes `orders:2.0.0` (`version:v2.0.0`)"
    assert previews.merge_line("orders", title) == \
        "Merging publishes `orders:2.1.0` (from the title)"


def test_no_version_fails_and_says_the_check_follows_a_new_label():
    """No version: `failure`, how to give one, and that no rebuild or Re-run is needed."""
    failure = Failure.from_error(VersionNotFound())
    body = valid(previews.failed(failure=failure, completed_at=NOW, details_url=DETAILS,
                                 staged_reference=STAGED, head_sha=HEAD))
    summary = body["output"]["summary"]
    assert body["conclusion"] == "failure"
    assert "version:1.4.0" in summary and "without building again" in summary
    assert "Re-run" not in summary
    assert STAGED in summary


def test_a_superseded_build_is_cancelled_naming_the_newer_commit():
    """A newer push: `cancelled`, titled and summarised with the superseding commit."""
    newer = "f" * 40
    body = valid(previews.cancelled(superseded_by=newer, pr_number=12, completed_at=NOW,
                                    details_url=DETAILS))
    assert body["conclusion"] == "cancelled"
    assert body["output"]["title"] == "Superseded by fffffff"
    assert newer in body["output"]["summary"] and "#12" in body["output"]["summary"]


def test_a_fork_is_not_built_and_told_how_a_maintainer_builds_it():
    """A fork: `neutral`, what merging publishes, and the `slipway:build` label."""
    version = resolve_version(["version:1.0.0"], "", [])
    body = valid(previews.fork_not_built(image="orders", version=version, head_owner="stranger",
                                         completed_at=NOW, details_url=DETAILS))
    assert body["conclusion"] == "neutral"
    assert "`slipway:build`" in body["output"]["summary"]
    assert "`stranger`'s fork" in body["output"]["summary"]


def test_a_head_that_builds_past_its_time_limit_is_timed_out():
    """Before the merge as after it: a build stopped at its limit concludes `timed_out`."""
    from builder.errors import BuildTimedOut

    failure = Failure.from_error(BuildTimedOut("The build ran past 900 s.", seconds=900))
    body = valid(previews.failed(failure=failure, completed_at=NOW, details_url=DETAILS,
                                 head_sha=HEAD))
    assert body["conclusion"] == "timed_out"
