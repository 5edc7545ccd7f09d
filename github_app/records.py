"""Build records: one per service of a job, with its check run, version and image.

A job (see `jobqueue`) produces one *build* per service. The record is written
before anything is reported, so the pages, the badge and the report retry read
the truth from here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .fencing import FENCE_HOLDS, Fence, LeaseLost
from .store import StoreError


class BuildState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the repository's fault: version, Dockerfile, build step
    ERRORED = "errored"  # the infrastructure's fault: engine, registry, GitHub
    CANCELLED = "cancelled"  # before the merge: a newer push superseded the head
    SKIPPED = "skipped"  # before the merge: a fork's head, not built until a maintainer asks


FINISHED_BUILD_STATES = (BuildState.SUCCEEDED, BuildState.FAILED, BuildState.ERRORED,
                         BuildState.CANCELLED, BuildState.SKIPPED)


class UnknownBuild(StoreError, LookupError):
    """No build has this id."""


@dataclass(frozen=True)
class Build:
    id: int
    job_id: int
    repository: str
    service: str
    pr_number: int | None
    head_sha: str
    merge_sha: str
    check_run_name: str
    state: BuildState
    created_at: float
    check_run_id: int | None = None
    version: str | None = None
    version_source: str | None = None
    reference: str | None = None
    digest: str | None = None
    image_id: str | None = None
    size: int | None = None
    duration: float | None = None
    failure_kind: str | None = None  # what failed: a reporting.FailureKind value
    error: str | None = None
    failure_cause: str | None = None  # whose move: "repository" | "infrastructure"
    started_at: float | None = None
    finished_at: float | None = None
    reported: bool = False  # GitHub accepted the final check run and status
    staged_reference: str | None = None  # before the merge: REGISTRY/image:pr-N@sha256:...
    published_from: str | None = None  # at the merge: the staged reference published, unbuilt
    floating_tags: str | None = None  # comma-separated: moved (merge) or would move (before)
    version_reason: str | None = None  # "`semver:minor` over 1.3.2"
    note: str | None = None  # cancelled: the superseding commit; skipped: the fork's owner
    artifact: str | None = None  # JSON: what a `type: ami` build registered (machine_image)
    private: bool | None = None  # the repository's; None (unknown) is treated as private
    report_abandoned_at: float | None = None  # the report retry gave up (reports.py)

    @property
    def public(self) -> bool:
        """Anyone may see it: its repository was public when it was built."""
        return self.private is False

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_BUILD_STATES

    @property
    def pre_merge(self) -> bool:
        """A build of a pull request's head before the merge (there is no merge commit yet)."""
        return not self.merge_sha

    @property
    def machine_image(self) -> dict[str, Any] | None:
        """The AMI of a `type: ami` build: image_id, region, name, snapshot_id, phases
        (seconds each), disk_bytes, uploaded_bytes, existing. None for an image build."""
        if not self.artifact:
            return None
        data = json.loads(self.artifact)
        return data if data.get("type") == "ami" else None


# Fields update_build may set, with the conversion from Python to a column value.
_BUILD_UPDATABLE: dict[str, Callable[[Any], Any]] = {
    "state": lambda v: BuildState(v).value,
    "check_run_id": int,
    "version": str,
    "version_source": str,
    "reference": str,
    "digest": str,
    "image_id": str,
    "size": int,
    "duration": float,
    "failure_kind": str,
    "error": str,
    "failure_cause": str,
    "started_at": float,
    "finished_at": float,
    "reported": lambda v: int(bool(v)),
    "staged_reference": str,
    "published_from": str,
    "floating_tags": str,
    "version_reason": str,
    "note": str,
    "artifact": str,
    "report_abandoned_at": float,
}
FAILURE_CAUSES = ("repository", "infrastructure")


class BuildRecords:
    """Create, update and query builds; mixed into `JobStore`, which gives the connection."""

    def create_build(
        self,
        job_id: int,
        *,
        repository: str,
        service: str,
        pr_number: int | None,
        head_sha: str,
        merge_sha: str,
        check_run_name: str,
        private: bool | None = None,
    ) -> int:
        """Record a QUEUED build of one service for a job; return its id."""
        rows = self._connection().execute(
            "INSERT INTO builds (job_id, repository, service, pr_number, head_sha, merge_sha,"
            " check_run_name, state, created_at, private) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " RETURNING id",
            (
                job_id,
                repository,
                service,
                pr_number,
                head_sha,
                merge_sha,
                check_run_name,
                BuildState.QUEUED.value,
                self.clock(),
                None if private is None else int(bool(private)),
            ),
        ).fetchall()
        return rows[0]["id"]

    def update_build(self, build_id: int, *, fence: Fence | None = None, **fields: Any) -> Build:
        """Set some of a build's fields; return the build as stored.

        Fields: state, check_run_id, version, version_source, reference,
        digest, image_id, size, duration, failure_kind, error, failure_cause,
        started_at, finished_at, reported. ``None`` clears a field.
        With ``fence``, only while that claim holds the build's job: otherwise
        nothing changes and `LeaseLost` is raised.
        """
        unknown = sorted(set(fields) - set(_BUILD_UPDATABLE))
        if unknown:
            raise TypeError(f"update_build() got fields it cannot set: {', '.join(unknown)}")
        if fields.get("failure_cause") not in (None, *FAILURE_CAUSES):
            raise ValueError(f"failure_cause must be one of {FAILURE_CAUSES}")
        if "state" in fields and fields["state"] is None:
            raise ValueError("a build always has a state")
        if "reported" in fields and fields["reported"] is None:
            raise ValueError("reported is True or False")
        with self._write() as connection:
            if fields:
                assignments = ", ".join(f"{name} = ?" for name in fields)
                values = [
                    None if value is None else _BUILD_UPDATABLE[name](value)
                    for name, value in fields.items()
                ]
                query = f"UPDATE builds SET {assignments} WHERE id = ?"
                params = [*values, build_id]
                if fence is not None:
                    query += " AND " + FENCE_HOLDS
                    params += [fence.job_id, fence.attempt, self.clock()]
                changed = connection.execute(query, params).rowcount
            row = connection.execute("SELECT * FROM builds WHERE id = ?", (build_id,)).fetchone()
            if row is None:
                raise UnknownBuild(f"There is no build {build_id}")
            if fields and fence is not None and changed == 0:
                raise LeaseLost(
                    f"The store refused to record build {build_id}: this worker's claim of "
                    f"job {fence.job_id} (attempt {fence.attempt}) has lapsed"
                )
        return _build(row)

    def get_build(self, build_id: int) -> Build | None:
        return self._one_build("SELECT * FROM builds WHERE id = ?", (build_id,))

    def builds_for_job(self, job_id: int) -> list[Build]:
        return self._builds("SELECT * FROM builds WHERE job_id = ? ORDER BY id", (job_id,))

    def find_build_by_check_run(self, repository: str, check_run_id: int) -> Build | None:
        """The build that reported to this check run (the latest, if several did)."""
        return self._one_build(
            "SELECT * FROM builds WHERE repository = ? AND check_run_id = ?"
            " ORDER BY id DESC LIMIT 1",
            (repository, check_run_id),
        )

    def find_builds_by_head_sha(self, repository: str, head_sha: str) -> list[Build]:
        """Builds of a pull request's head commit (for "Re-run all checks"), oldest first."""
        return self._builds(
            "SELECT * FROM builds WHERE repository = ? AND head_sha = ? ORDER BY id",
            (repository, head_sha),
        )

    def recent_builds(
        self,
        limit: int = 50,
        repository: str | None = None,
        state: BuildState | str | None = None,
        readable: Iterable[str] | None = None,
    ) -> list[Build]:
        """The newest builds first, optionally of one repository and/or in one state.

        With `readable`, only public builds and those of the repositories it names."""
        conditions, params = [], []
        if readable is not None:
            readable = sorted(set(readable))
            conditions.append(f"(private = 0 OR repository IN ({_marks(readable)}))"
                              if readable else "private = 0")
            params.extend(readable)
        if repository is not None:
            conditions.append("repository = ?")
            params.append(repository)
        if state is not None:
            conditions.append("state = ?")
            params.append(BuildState(state).value)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        return self._builds(
            f"SELECT * FROM builds{where} ORDER BY id DESC LIMIT ?", (*params, int(limit))
        )

    def latest_finished_build(self, repository: str, service: str | None = None) -> Build | None:
        """The merge build that finished last (for the badge), of one service if given.

        Builds before the merge do not count: the badge is the target branch's."""
        query = (f"SELECT * FROM builds WHERE repository = ? AND merge_sha != ''"
                 f" AND state IN ({_marks(FINISHED_BUILD_STATES)})")
        params: list[Any] = [repository, *(s.value for s in FINISHED_BUILD_STATES)]
        if service is not None:
            query += " AND service = ?"
            params.append(service)
        return self._one_build(query + " ORDER BY finished_at DESC, id DESC LIMIT 1", params)

    def private_repositories(self, limit: int = 500) -> list[str]:
        """Repositories with builds that are not known to be public, most recent first."""
        rows = self._connection().execute(
            "SELECT repository, MAX(id) AS latest FROM builds"
            " WHERE private IS NULL OR private != 0"
            " GROUP BY repository ORDER BY latest DESC LIMIT ?",
            (int(limit),),
        )
        return [row[0] for row in rows]

    def unreported_builds(self) -> list[Build]:
        """Finished builds whose final report did not reach GitHub, oldest first."""
        return self._builds(
            f"SELECT * FROM builds WHERE reported = 0 AND report_abandoned_at IS NULL"
            f" AND state IN ({_marks(FINISHED_BUILD_STATES)}) ORDER BY id",
            tuple(s.value for s in FINISHED_BUILD_STATES),
        )

    def pre_merge_builds(self, repository: str, pr_number: int) -> list[Build]:
        """The builds of a pull request before its merge, oldest first."""
        return self._builds(
            "SELECT * FROM builds WHERE repository = ? AND pr_number = ? AND merge_sha = ''"
            " ORDER BY id",
            (repository, pr_number),
        )

    def _one_build(self, query: str, params: Any) -> Build | None:
        row = self._connection().execute(query, params).fetchone()
        return _build(row) if row else None

    def _builds(self, query: str, params: Any) -> list[Build]:
        return [_build(row) for row in self._connection().execute(query, params)]


def _marks(values) -> str:
    return ", ".join("?" for _ in values)


def _build(row) -> Build:
    values = dict(row)
    values["state"] = BuildState(values["state"])
    values["reported"] = bool(values["reported"])
    if values.get("private") is not None:
        values["private"] = bool(values["private"])
    return Build(**values)
