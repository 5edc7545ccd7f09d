"""A pull request before its merge: build the head, stage it, say what merging publishes.

    services at the head -> the fork rule -> per service: version (labels,
    title, registry) -> the head built once (a label or title change reuses
    it) -> staged as `<image>:pr-<number>` -> check run `docker build` on the
    head: what merging publishes, or what to do.

No commit status: there is no merge commit yet, and the check run is what a
branch protection rule requires. A newer push to the pull request supersedes
the build: it is stopped in the engine and its check run ends `cancelled`.
Closing the pull request (merged or not) removes its staging tags (`staging.remove_stage`).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import builder
from builder import registry as registry_api
from github_app import previews, reporting
from github_app.errors import (
    GitHubError,
    ImageNameTaken,
    LowDiskSpace,
    ServiceConfigError,
    SlipwayError,
    VersionTaken,
)
from github_app.fencing import Fence
from github_app.floating_tags import staging_tag, tags_to_move
from github_app.forks import approves_head, trusted_head
from github_app.image_names import check_owner, with_image_names
from github_app.jobrun import MAX_TARBALL_BYTES, REVISION_LABEL, SERVICES_FILE, failure_outcome
from github_app.jobs import Build, BuildState, Job
from github_app.pages import github_web_url
from github_app.reports import LOG_TAIL_BYTES, request_from_job
from github_app.services import Service, parse_services
from github_app.source import unpack_tarball
from github_app.versions import Version, resolve_version
from github_app.webhooks import REFRESH, BuildKind, BuildRequest

log = logging.getLogger(__name__)

SUPERSEDED_POLL_SECONDS = 1.0
# A failure of the head's build that a new version cannot change: reused, not rebuilt.
_BUILD_FAILURES = (reporting.FailureKind.DOCKERFILE, reporting.FailureKind.BUILD_STEP,
                   reporting.FailureKind.REFERENCE)


class PreMergeRun:
    """One pre-merge job: every service of the head, each with its check run."""

    def __init__(self, worker, job: Job, *, request: BuildRequest | None = None,
                 rebuild: bool = False, fence: Fence | None = None,
                 cancel: threading.Event | None = None):
        self.worker = worker
        self.fence = fence  # every write holds only while this claim is the job's
        self.lost = cancel  # set by the worker when the claim is lost
        self.config = worker.config
        self.store = worker.store
        self.reporter = worker.reporter
        self.job = job
        self.request = request or request_from_job(job)
        self.client = worker.github.installation(self.request.installation_id)
        self.rebuild = rebuild  # a Re-run: build the head again even if it was built
        self._floating: dict[str, list[str]] = {}  # per service: tags the merge would move

    def execute(self) -> bool:
        """True when any service's check run ends other than `success` or `neutral`."""
        request = self.request
        existing = {b.service: b for b in self.store.builds_for_job(self.job.id)}
        try:
            services = self._services()
        except (ServiceConfigError, GitHubError) as exc:
            build = existing.get("") or self._create_build("", "docker build")
            return self._finish(build, failure_outcome(exc)) is not BuildState.SUCCEEDED
        superseded = self.store.newer_head(request.repository, request.pr_number, self.job.id,
                                           request.head_sha)
        # A fork's code runs only for the head a maintainer labelled `slipway:build` (that
        # event), or on a Re-run; the label stays on the pull request through later pushes,
        # so its mere presence approves nothing new.
        trusted = (trusted_head(request.head_owner, request.owner, self.config.allowed_owners)
                   or self.rebuild or approves_head(request))
        refresh = request.action == REFRESH
        total = len(services)
        to_build: list[tuple[Service, Build, Version | None, Exception | None]] = []
        states = []
        for service in services:
            build = existing.get(service.name)
            if build is not None and build.finished:
                if not build.reported:
                    self.reporter.report_final(request, build, None, fence=self.fence)
                continue
            if refresh and build is None:
                # A re-preview builds nothing and records only what changed: a push
                # queued since will say it itself.
                version, problem = self._version(service)
                reused = self._built_head(service, None)
                if superseded or reused is None or _same_preview(reused, version, problem):
                    continue
            build = build or self._create_build(service.name, service.check_run_name(total))
            if superseded:
                states.append(self._finish_state(build, BuildState.CANCELLED, note=superseded))
                continue
            version, problem = self._version(service)
            if isinstance(problem, ImageNameTaken):  # not even a staging tag goes there
                states.append(self._finish(build, failure_outcome(problem)))
                continue
            reused = None if self.rebuild else self._built_head(service, build)
            if reused is not None:  # built before: only the version is news
                states.append(self._reuse(build, reused, version, problem))
                continue
            if not trusted and problem is None:
                states.append(self._finish_state(build, BuildState.SKIPPED, version=version,
                                                 note=request.head_owner or ""))
                continue
            if not trusted:
                states.append(self._finish(build, failure_outcome(problem)))
                continue
            to_build.append((service, self._start(build, service), version, problem))
        if to_build:
            states += self._build_all(to_build)
        return any(state not in (BuildState.SUCCEEDED, BuildState.SKIPPED) for state in states)

    # -- steps ---------------------------------------------------------------

    def _services(self) -> list[Service]:
        text = self.client.get_file(self.request.owner, self.request.repo, SERVICES_FILE,
                                    self.request.head_sha)
        services = parse_services(text.decode("utf-8", "replace") if text is not None else None,
                                  repository_name=self.request.repo)
        return with_image_names(services, self.config.image_name, owner=self.request.owner,
                                repo=self.request.repo)

    def _html_url(self) -> str:
        return self.request.html_url or (
            f"{github_web_url(self.config.api_url)}/{self.request.repository}")

    def _create_build(self, service: str, check_run_name: str) -> Build:
        build_id = self.store.create_build(
            self.job.id, repository=self.request.repository, service=service,
            pr_number=self.request.pr_number, head_sha=self.request.head_sha, merge_sha="",
            check_run_name=check_run_name,
            private=self.request.private,
        )
        return self.store.get_build(build_id)

    def _version(self, service: Service) -> tuple[Version | None, Exception | None]:
        """The version merging would publish, or why there is none; never raises for it."""
        try:
            # Not even a staging tag goes under a name another repository published first.
            check_owner(self.config, service.image_name, html_url=self._html_url(),
                        repository=self.request.repository)
            tags = registry_api.list_tags(
                self.config.registry, service.image_name, username=self.config.registry_username,
                password=self.config.registry_password)
            version = resolve_version(self.request.labels, self.request.pr_title or "", tags)
            labels = registry_api.image_labels(
                self.config.registry, service.image_name, version.tag,
                username=self.config.registry_username, password=self.config.registry_password)
        except (SlipwayError, builder.BuilderError) as exc:
            return None, exc
        if labels is not None:  # nothing is merged yet, so any holder is another commit
            return version, VersionTaken(service=service.image_name, tag=version.tag,
                                         commit=labels.get(REVISION_LABEL))
        self._floating[service.name] = tags_to_move(version.text, tags,
                                                    self.config.floating_tags)
        return version, None

    def _built_head(self, service: Service, build: Build | None) -> Build | None:
        """An earlier build of this very head whose result a new version cannot change."""
        for earlier in reversed(self.store.find_builds_by_head_sha(self.request.repository,
                                                                   self.request.head_sha)):
            if ((build is not None and earlier.id == build.id) or not earlier.pre_merge
                    or earlier.service != service.name or not earlier.finished):
                continue
            if earlier.staged_reference:
                return earlier
            if earlier.failure_kind in _BUILD_FAILURES:
                return earlier
        return None

    def _reuse(self, build: Build, earlier: Build, version: Version | None,
               problem: Exception | None) -> BuildState:
        """Only the version changed: the same check run says what merging now publishes."""
        with self.store.build_log(build.id, fence=self.fence) as buildlog:
            buildlog.append(f"Slipway: head {build.head_sha} was built by build {earlier.id}; "
                            "only the version is resolved again, nothing is built")
        self._update(build.id, check_run_id=earlier.check_run_id,
                                staged_reference=earlier.staged_reference,
                                reference=earlier.staged_reference, digest=earlier.digest,
                                note=f"reused:{earlier.id}", started_at=time.time())
        if earlier.staged_reference is None:  # the head does not build: that stays the news
            failure = reporting.Failure(
                kind=reporting.FailureKind(earlier.failure_kind), message=earlier.error or "",
                cause=reporting.Cause(earlier.failure_cause or "repository"))
            return self._record(build, BuildState.FAILED, version=version, failure=failure,
                                duration=earlier.duration)
        return self._settle(build, version, problem, duration=earlier.duration)

    def _start(self, build: Build, service: Service) -> Build:
        # Started before: a crash may have come between GitHub's answer and the record.
        resumed = build.state is BuildState.RUNNING and build.check_run_id is None
        build = self._update(build.id, state=BuildState.RUNNING,
                                        started_at=time.time())
        details = self.reporter.details_url(build.id)
        body = reporting.check_run_started(
            name=build.check_run_name, head_sha=build.head_sha, details_url=details,
            external_id=str(build.id), started_at=_moment(build.started_at),
            summary=previews.started_summary(image=service.image_name,
                                             pr_number=self.request.pr_number,
                                             head_sha=build.head_sha, details_url=details),
        )
        try:
            if resumed:
                build = self.reporter.adopt_check_run(self.client, self.request, build)
            if build.check_run_id is None:
                created = self.client.create_check_run(self.request.owner, self.request.repo,
                                                       body)
                build = self._update(build.id, check_run_id=created["id"])
            else:  # claimed again after a crash: the same check run goes on
                self.client.update_check_run(self.request.owner, self.request.repo,
                                             build.check_run_id,
                                             {k: v for k, v in body.items() if k != "head_sha"})
        except GitHubError as exc:
            log.warning("could not open the check run of build %s: %s", build.id, exc,
                        extra={"build_id": build.id})
        return build

    def _build_all(self, to_build) -> list[BuildState]:
        try:
            self.worker.disk.check()
        except LowDiskSpace as exc:  # below MIN_FREE_DISK a build does not start
            return [self._finish(build, failure_outcome(exc, version=version))
                    for _, build, version, _ in to_build]
        workdir = Path(tempfile.mkdtemp(prefix=f"job-{self.job.id}-", dir=self._work_root()))
        cancel = threading.Event()
        watcher = _SupersededWatcher(self.store, self.job.id, self.request, cancel, self.lost)
        watcher.start()
        try:
            try:
                archive = self.client.download_tarball(
                    self.request.owner, self.request.repo, self.request.head_sha,
                    workdir / "source.tar.gz", max_bytes=MAX_TARBALL_BYTES)
                root = unpack_tarball(archive, workdir / "src")
            except SlipwayError as exc:
                return [self._finish(build, failure_outcome(exc, version=version))
                        for _, build, version, _ in to_build]
            return [self._build_one(service, build, version, problem, root, cancel, watcher)
                    for service, build, version, problem in to_build]
        finally:
            watcher.stop()
            shutil.rmtree(workdir, ignore_errors=True)

    def _build_one(self, service, build, version, problem, root, cancel, watcher) -> BuildState:
        if cancel.is_set():
            return self._finish_state(build, BuildState.CANCELLED, note=watcher.newer or "")
        config = self.config
        tag = staging_tag(self.request.pr_number)
        limit = service.time_limit(config.build_timeout, config.build_timeout_max)
        with self.store.build_log(build.id, fence=self.fence,
                                  secrets=(config.registry_password,
                                           config.webhook_secret)) as buildlog:
            buildlog.append(f"Slipway: building head {build.head_sha} of pull request "
                            f"#{self.request.pr_number}, staged as {service.image_name}:{tag}, "
                            f"time limit {limit.seconds} s")
            started = time.monotonic()
            try:
                # Before the merge an AMI service's Dockerfile is built and staged like an
                # image's (a machine image per pushed commit would be slow and costly);
                # its AMI is made from the merge.
                result = self.worker.build_artifact(
                    service.image_name, tag, "docker", context=str(root / service.context),
                    dockerfile=service.dockerfile, registry=config.registry,
                    network=config.build_network, on_log=buildlog.append,
                    revision=build.head_sha, source=self._html_url(),
                    username=config.registry_username, password=config.registry_password,
                    docker_client=self.worker.docker_client, engine_settings=config.engine,
                    memory=config.build_memory, timeout=limit.seconds, cancel=cancel,
                )
            except builder.BuildCancelled:
                if watcher.newer is None:
                    raise  # the claim was lost: the worker stops here, nothing is reported
                buildlog.append(f"Slipway: stopped: {watcher.newer} superseded this head")
                return self._finish_state(build, BuildState.CANCELLED, note=watcher.newer)
            except (builder.BuilderError, SlipwayError) as exc:
                buildlog.append(f"Slipway: {exc}")
                return self._finish(build, failure_outcome(
                    exc, version=version, log_tail=buildlog.tail(LOG_TAIL_BYTES)))
            buildlog.append(f"Slipway: staged {result.reference}")
        self._update(build.id, staged_reference=result.reference,
                                reference=result.reference, digest=result.digest,
                                image_id=result.image_id, size=result.size)
        return self._settle(build, version, problem, duration=time.monotonic() - started,
                            log_tail=result.log_tail)

    def _settle(self, build: Build, version: Version | None, problem: Exception | None, *,
                duration: float | None, log_tail: str = "") -> BuildState:
        """The head is staged: success with the preview, or what stops the merge."""
        if problem is not None:
            outcome = failure_outcome(problem, version=version)
            return self._record(build, outcome.state, version=version, failure=outcome.failure,
                                duration=duration)
        return self._record(build, BuildState.SUCCEEDED, version=version, duration=duration,
                            floating=self._floating.get(build.service, []))

    def _finish(self, build: Build, outcome) -> BuildState:
        return self._record(build, outcome.state, version=outcome.version,
                            failure=outcome.failure, log_tail=outcome.log_tail)

    def _finish_state(self, build: Build, state: BuildState, *, version: Version | None = None,
                      note: str = "") -> BuildState:
        return self._record(build, state, version=version, note=note)

    def _record(self, build: Build, state: BuildState, *, version: Version | None = None,
                failure: reporting.Failure | None = None, duration: float | None = None,
                floating: list[str] | None = None, note: str | None = None,
                log_tail: str | None = None) -> BuildState:
        """Record the outcome, then report it; the record comes first."""
        now = time.time()
        fields = {"state": state, "finished_at": now,
                  "duration": duration if duration is not None
                  else now - (build.started_at or build.created_at)}
        if version is not None:
            fields.update(version=version.tag, version_source=version.explanation,
                          version_reason=version.reason)
        if failure is not None:
            fields.update(error=failure.message, failure_cause=failure.cause,
                          failure_kind=failure.kind)
        if floating is not None:
            fields["floating_tags"] = ",".join(floating)
        if note is not None:
            fields["note"] = note
        build = self._update(build.id, **fields)
        log.info("pre-merge build %s %s", build.id, state,
                 extra={"job_id": self.job.id, "build_id": build.id})
        self.reporter.report_final(self.request, build,
                                   failure.log_tail if failure and log_tail is None else log_tail,
                                   fence=self.fence)
        return state

    def _update(self, build_id: int, **fields) -> Build:
        return self.store.update_build(build_id, fence=self.fence, **fields)

    def _work_root(self) -> Path:
        root = Path(self.config.data_dir) / "work"
        root.mkdir(parents=True, exist_ok=True)
        return root


def rerun_request(store, request: BuildRequest) -> BuildRequest | None:
    """The pull request a Re-run asks to build again before its merge, if it is one.

    A Re-run of a check that only a pre-merge build reported (its head was not
    merged) builds that head again; once a merge built the head, the Re-run is the
    merge's (`jobrun`)."""
    if request.kind == BuildKind.RERUN_CHECK_RUN:
        build = None
        if request.external_id and request.external_id.isdigit():
            build = store.get_build(int(request.external_id))
        if build is None and request.check_run_id:
            build = store.find_build_by_check_run(request.repository, request.check_run_id)
        builds = [build] if build is not None else []
    elif request.kind == BuildKind.RERUN_CHECK_SUITE:
        builds = store.find_builds_by_head_sha(request.repository, request.head_sha)
    else:
        return None
    if not builds or any(not b.pre_merge for b in
                         store.find_builds_by_head_sha(request.repository, builds[-1].head_sha)):
        return None
    job = store.get_job(builds[-1].job_id)
    if job is None or job.kind != BuildKind.PRE_MERGE:
        return None
    return replace(request_from_job(job), delivery_id=request.delivery_id)


class _SupersededWatcher:
    """Sets `cancel` when a newer push to the same pull request is queued."""

    def __init__(self, store, job_id: int, request, cancel: threading.Event,
                 lost: threading.Event | None = None):
        self.store, self.job_id, self.request, self.cancel = store, job_id, request, cancel
        self.lost = lost  # the worker's: the claim is lost, stop too
        self.newer: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="superseded")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._done.wait(SUPERSEDED_POLL_SECONDS):
            if self.lost is not None and self.lost.is_set():
                self.cancel.set()
                return
            try:
                newer = self.store.newer_head(self.request.repository, self.request.pr_number,
                                              self.job_id, self.request.head_sha)
            except Exception:  # the store hiccuped: look again next time
                log.exception("could not look for a newer push")
                continue
            if newer:
                self.newer = newer
                self.cancel.set()
                return


def _same_preview(earlier: Build, version: Version | None,
                  problem: Exception | None) -> bool:
    """True when re-resolving the version would tell the reviewer nothing new."""
    if problem is not None or version is None:
        return False  # a problem now (say, the version was just taken) is news
    return earlier.state is BuildState.SUCCEEDED and earlier.version == version.tag

def _moment(timestamp: float | None) -> datetime:
    return datetime.fromtimestamp(timestamp or time.time(), UTC)
