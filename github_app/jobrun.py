"""One job from start to finish, in the order of DESIGN.md's flow.

    installation token -> services (.github/slipway.yml) -> one build per
    service: check run `in_progress` + status `pending` -> source tarball of
    merge_commit_sha -> version -> build_artifact -> check run `completed`
    + status -> the build record (badge, pages).

A job interrupted by a crash is claimed again and finishes the check runs it
had opened; builds it finished before the crash are only reported.

Every record of a run is written under its claim's `Fence`, so a run whose
claim lapsed gets `LeaseLost` from the store and stops: it records, pushes
and reports nothing more. Before a success is reported, the registry's tag
is checked against this run's digest.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import builder
from builder import registry as registry_api
from builder.patience import patience as registry_patience
from github_app import reporting
from github_app.errors import (
    REPOSITORY,
    GitHubError,
    LowDiskSpace,
    ServiceConfigError,
    SlipwayError,
    VersionTaken,
)
from github_app.image_names import check_owner, with_image_names
from github_app.jobs import Build, BuildState, Fence, Job, LeaseLost
from github_app.pages import github_web_url
from github_app.reports import LOG_TAIL_BYTES, request_from_job
from github_app.services import Service, parse_services
from github_app.source import unpack_tarball
from github_app.staging import (
    move_floating_tags,
    publish_staged,
    queue_refreshes,
    remove_stage,
    staged_build,
)
from github_app.versions import Version, kept_version, rerun_version, resolve_version
from github_app.webhooks import BuildKind, BuildRequest

log = logging.getLogger(__name__)

SERVICES_FILE = ".github/slipway.yml"
REVISION_LABEL = "org.opencontainers.image.revision"
MAX_TARBALL_BYTES = 512 * 1024**2


@dataclass(frozen=True)
class Outcome:
    """How one service's build ended, in the terms the reports need."""

    state: BuildState
    failure: reporting.Failure | None = None
    version: Version | None = None
    result: builder.BuildResult | None = None
    log_tail: str = ""
    published_from: str | None = None  # the staged reference published without a build
    floating: tuple[str, ...] = ()  # floating tags moved to the release


class JobRun:
    """One job: the steps of the flow, each a method, in order."""

    def __init__(self, worker, job: Job, *, fence: Fence | None = None,
                 cancel: threading.Event | None = None):
        self.worker = worker
        self.fence = fence
        self.cancel = cancel
        self.config = worker.config
        self.store = worker.store
        self.reporter = worker.reporter
        self.job = job
        self.request = request_from_job(job)
        self.client = worker.github.installation(self.request.installation_id)
        self.rerun = False
        self.only_services: set[str] | None = None

    def execute(self) -> bool:
        """Build every service of the job; True when any of them failed."""
        # A registry restarting for a few seconds must not fail every build claimed meanwhile.
        with registry_patience(self.config.registry_patience):
            return self._execute()

    def _execute(self) -> bool:
        if self.request.kind != BuildKind.MERGE and not self._resolve_rerun():
            return False
        existing = {b.service: b for b in self.store.builds_for_job(self.job.id)}
        try:
            if self.rerun:
                self._read_pull_request_again()
            services = self._services()
        except (ServiceConfigError, GitHubError) as exc:
            # A job resumed after a crash already has its builds and check runs: end
            # those, rather than leave them running beside a new one.
            builds = [b for b in existing.values() if not b.finished] if existing else [
                self._create_build("", "docker build")]
            if not builds:
                return any(b.state is not BuildState.SUCCEEDED for b in existing.values())
            outcome = failure_outcome(exc)
            return any([self._finish(self._start(b), outcome) is not BuildState.SUCCEEDED
                        for b in builds])
        total = len(services)
        builds = []
        for service in services:
            build = existing.get(service.name) or self._create_build(
                service.name, service.check_run_name(total)
            )
            if build.finished:
                # Done before a crash; at most its report is missing.
                if not build.reported:
                    self.reporter.report_final(self.request, build, None, fence=self.fence)
                continue
            builds.append((service, self._start(build)))
        if not builds:
            return False
        try:
            self.worker.disk.check()
        except LowDiskSpace as exc:  # status `error`: the host, not the repository
            outcome = failure_outcome(exc)
            return any([self._finish(b, outcome) is not BuildState.SUCCEEDED
                        for _, b in builds])
        workdir = Path(tempfile.mkdtemp(prefix=f"job-{self.job.id}-", dir=self._work_root()))
        source = _Source(lambda: self._download(workdir))
        try:
            try:
                # A merge whose every service was staged before it may need no source at
                # all (published without a build): then it is fetched only if a build needs it.
                if not self._all_staged([service for service, _ in builds]):
                    source.path()
            except SlipwayError as exc:
                outcome = failure_outcome(exc)
                return any([self._finish(b, outcome) is not BuildState.SUCCEEDED
                            for _, b in builds])
            states = [self._finish(b, self._build_service(service, b, source))
                      for service, b in builds]
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        if self.request.kind == BuildKind.MERGE:
            remove_stage(self.worker, self.request)  # the pull request is closed: merged
            if any(state is BuildState.SUCCEEDED for state in states):
                queue_refreshes(self.worker, self.request)
        return any(state is not BuildState.SUCCEEDED for state in states)

    # -- steps ---------------------------------------------------------------

    def _resolve_rerun(self) -> bool:
        """Point a re-run at the merge it rebuilds; False when it is not one of ours."""
        request = self.request
        if request.kind == BuildKind.RERUN_CHECK_RUN:
            build = None
            if request.external_id and request.external_id.isdigit():
                build = self.store.get_build(int(request.external_id))
            if build is None and request.check_run_id:
                build = self.store.find_build_by_check_run(request.repository,
                                                           request.check_run_id)
            originals = [build] if build else []
            if build is not None:
                self.only_services = {build.service}
        else:
            originals = self.store.find_builds_by_head_sha(request.repository, request.head_sha)
        merge = self._merge_of(originals[-1].head_sha) if originals else None
        if merge is None:
            log.info("re-run of a check Slipway has no record of; nothing to build",
                     extra={"job_id": self.job.id})
            return False
        # A re-run builds the same merge again, as the installation that sent the
        # re-run (the App may have been reinstalled since the merge).
        self.rerun = True
        self.request = replace(merge, delivery_id=request.delivery_id,
                               installation_id=request.installation_id,
                               # The re-run's delivery tells whether the repository is private now.
                               private=request.private)
        return True

    def _read_pull_request_again(self) -> None:
        """The pull request as it is now: a label or title added after a failure counts."""
        if self.request.pr_number is None:
            return
        pull = self.client.get_pull_request(self.request.owner, self.request.repo,
                                            self.request.pr_number)
        labels = tuple(label["name"] for label in pull.get("labels") or () if label.get("name"))
        self.request = replace(self.request, labels=labels, pr_title=pull.get("title") or "")
        log.info("re-run reads pull request #%s again: labels %s", self.request.pr_number,
                 ", ".join(labels) or "none", extra={"job_id": self.job.id})

    def _merge_of(self, head_sha: str) -> BuildRequest | None:
        """The merge that built `head_sha` (re-runs, and re-runs of re-runs, point at it)."""
        for build in self.store.find_builds_by_head_sha(self.request.repository, head_sha):
            job = self.store.get_job(build.job_id)
            if job is not None and job.kind == BuildKind.MERGE:
                return request_from_job(job)
        return None

    def _services(self) -> list[Service]:
        text = self.client.get_file(self.request.owner, self.request.repo, SERVICES_FILE,
                                    self.request.merge_commit_sha)
        services = parse_services(
            text.decode("utf-8", "replace") if text is not None else None,
            repository_name=self.request.repo,
        )
        if self.only_services is not None:
            services = [s for s in services if s.name in self.only_services] or services
        return with_image_names(services, self.config.image_name, owner=self.request.owner,
                                repo=self.request.repo)

    def _create_build(self, service: str, check_run_name: str) -> Build:
        build_id = self.store.create_build(
            self.job.id,
            repository=self.request.repository,
            service=service,
            pr_number=self.request.pr_number,
            head_sha=self.request.head_sha,
            merge_sha=self.request.merge_commit_sha,
            check_run_name=check_run_name,
            private=self.request.private,
        )
        return self.store.get_build(build_id)

    def _start(self, build: Build) -> Build:
        """Mark the build running; open its check run and pending status on GitHub."""
        # Started before: a crash may have come between GitHub's answer and the record.
        resumed = build.state is BuildState.RUNNING and build.check_run_id is None
        build = self._record(build.id, state=BuildState.RUNNING,
                                        started_at=time.time())
        details = self.reporter.details_url(build.id)
        started = reporting.check_run_started(
            name=build.check_run_name, head_sha=build.head_sha, details_url=details,
            external_id=str(build.id), started_at=_moment(build.started_at),
        )
        try:
            if resumed:
                build = self.reporter.adopt_check_run(self.client, self.request, build)
            if build.check_run_id is None:
                created = self.client.create_check_run(self.request.owner, self.request.repo,
                                                       started)
                build = self._record(build.id, check_run_id=created["id"])
            else:
                # Claimed again after a crash or re-run: the same check run goes on.
                self.client.update_check_run(
                    self.request.owner, self.request.repo, build.check_run_id,
                    {k: v for k, v in started.items() if k != "head_sha"},
                )
            self.client.create_status(
                self.request.owner, self.request.repo, build.merge_sha,
                reporting.status_body(
                    "pending", f"Building {build.service or 'image'}...", details,
                    context=reporting.build_status_context(build),
                ),
            )
        except GitHubError as exc:
            # The build goes on; the final report retries until GitHub takes it.
            log.warning("could not open the check run of build %s: %s", build.id, exc,
                        extra={"build_id": build.id})
        return build

    def _download(self, workdir: Path) -> Path:
        archive = self.client.download_tarball(
            self.request.owner, self.request.repo, self.request.merge_commit_sha,
            workdir / "source.tar.gz", max_bytes=MAX_TARBALL_BYTES,
        )
        return unpack_tarball(archive, workdir / "src")

    def _record(self, build_id: int, **fields) -> Build:
        """Write to the build's record under this run's claim (`LeaseLost` once it lapsed)."""
        return self.store.update_build(build_id, fence=self.fence, **fields)

    def _all_staged(self, services: list[Service]) -> bool:
        """True for a merge whose head a pre-merge build staged, for every service."""
        request = self.request
        return request.kind == BuildKind.MERGE and all(
            staged_build(self.store, request.repository, request.pr_number, request.head_sha,
                         service.name) for service in services)

    def _build_service(self, service: Service, build: Build, source: _Source) -> Outcome:
        config = self.config
        limit = service.time_limit(config.build_timeout, config.build_timeout_max)
        buildlog = self.store.build_log(
            build.id, fence=self.fence,
            secrets=(config.registry_password, config.webhook_secret))

        def on_log(line: str) -> None:
            try:
                buildlog.append(line)
            except LeaseLost:
                if self.cancel is not None:
                    self.cancel.set()  # closes the engine's stream: the build stops there
                raise

        with buildlog:
            version = None
            try:
                # A name another repository published first is not this one's to push to.
                check_owner(config, service.image_name, html_url=self._html_url(),
                            repository=self.request.repository)
                version = self._version(service, build)
                # Stored the moment it is resolved: a job resumed after a crash reuses it.
                self._record(build.id, version=version.tag,
                                        version_source=version.explanation)
                reported = self._published_image(service, version)
                push_image = reported is None
                if reported is not None and service.type == "ami":
                    # The image is in the registry (pushed by an AMI build that stopped
                    # later): the AMI build finds or makes its AMI, without a second push.
                    reported = None
                if reported is not None:
                    buildlog.append(f"Slipway: {reported.reference} is already in the "
                                    f"registry, built from {build.merge_sha}; reporting it, "
                                    "not pushing again")
                    floating = move_floating_tags(self.config, service.image_name, version,
                                                  reported.digest, buildlog.append)
                    return Outcome(BuildState.SUCCEEDED, version=version, result=reported,
                                   log_tail=buildlog.tail(LOG_TAIL_BYTES), floating=floating)
                published = None
                # An AMI is made from the merge itself: a staged image is never its stand-in.
                if self.request.kind == BuildKind.MERGE and service.type != "ami":
                    published = publish_staged(self.config, self.client, self.store,
                                               self.request, service.name, version,
                                               buildlog.append, image=service.image_name)
                if published is not None:
                    result, stage = published
                    floating = move_floating_tags(self.config, service.image_name, version,
                                                  result.digest, buildlog.append)
                    return Outcome(BuildState.SUCCEEDED, version=version, result=result,
                                   log_tail=buildlog.tail(LOG_TAIL_BYTES), floating=floating,
                                   published_from=stage)
                buildlog.append(f"Slipway: building {service.image_name}:{version.tag} "
                                f"({version.explanation}) from {build.merge_sha}, "
                                f"time limit {limit.seconds} s")
                result = self.worker.build_artifact(
                    service.image_name,
                    version.tag,
                    service.type,
                    context=str(source.path() / service.context),
                    dockerfile=service.dockerfile,
                    registry=config.registry,
                    network=config.build_network,
                    on_log=on_log,
                    revision=build.merge_sha,
                    source=self._html_url(),
                    username=config.registry_username,
                    password=config.registry_password,
                    docker_client=self.worker.docker_client,
                    engine_settings=config.engine,
                    memory=config.build_memory,
                    timeout=limit.seconds,
                    cancel=self.cancel,
                    **self._artifact_options(service, push=push_image),
                )
                if not isinstance(result, builder.AmiResult):
                    self._confirm_tag(service, version, result)
            except (LeaseLost, builder.BuildCancelled):
                raise  # this worker's claim lapsed: nothing more is recorded or reported
            except (builder.BuilderError, SlipwayError) as exc:
                buildlog.append(f"Slipway: {exc}")
                outcome = failure_outcome(exc, version=version,
                                          log_tail=buildlog.tail(LOG_TAIL_BYTES))
                if isinstance(exc, builder.BuildTimedOut):
                    outcome = _with_message(outcome, f"{exc} The limit is {limit.source}.")
                return outcome
            if isinstance(result, builder.AmiResult):
                # Floating tags are the registry's; an AMI's name carries its version alone.
                buildlog.append(f"Slipway: registered {result.reference}")
                floating = []
            else:
                buildlog.append(f"Slipway: pushed {result.reference}")
                floating = move_floating_tags(self.config, service.image_name, version,
                                              result.digest, buildlog.append)
        return Outcome(BuildState.SUCCEEDED, version=version, result=result,
                       log_tail=result.log_tail, floating=floating)

    def _html_url(self) -> str:
        """The repository's web address: the source label its images carry."""
        return self.request.html_url or (
            f"{github_web_url(self.config.api_url)}/{self.request.repository}")

    def _artifact_options(self, service: Service, *, push: bool) -> dict:
        """`type: ami`: the image the AMI is made from is pushed too (unless the registry
        holds it already), so that versions, bumps and immutability read the registry as
        for images; scratch files in DATA_DIR."""
        if service.type != "ami":
            return {}
        return {"push": push, "work_dir": str(self._work_root())}

    def _version(self, service: Service, build: Build) -> Version:
        if build.version:
            # Resolved before a crash: a second `semver:*` bump would publish twice.
            return kept_version(build.version, build.version_source or "resolved earlier")
        published = self._published_for_this_merge(service, build) if self.rerun else None
        tags = registry_api.list_tags(
            self.config.registry, service.image_name,
            username=self.config.registry_username, password=self.config.registry_password,
        )
        current = resolve_version(self.request.labels, self.request.pr_title or "", tags)
        return rerun_version(current, published)

    def _published_for_this_merge(self, service: Service, build: Build) -> str | None:
        """The newest version an earlier build of this merge published, if any."""
        earlier = [b for b in self.store.find_builds_by_head_sha(self.request.repository,
                                                                 build.head_sha)
                   if b.id != build.id and b.service == service.name and b.version
                   and b.merge_sha == build.merge_sha]
        checked = set()
        for candidate in reversed(earlier):
            if candidate.state is BuildState.SUCCEEDED:
                return candidate.version
            # Pushed, then lost before it was recorded (a crash): the registry knows.
            if candidate.version not in checked:
                checked.add(candidate.version)
                labels = registry_api.image_labels(
                    self.config.registry, service.image_name, candidate.version,
                    username=self.config.registry_username,
                    password=self.config.registry_password,
                )
                if labels and labels.get(REVISION_LABEL) == build.merge_sha:
                    return candidate.version
        return None

    def _published_image(self, service: Service, version: Version) -> builder.BuildResult | None:
        """The image the registry holds for this version when this merge built it, else None.

        Versions are immutable: a tag the registry holds from another commit is refused.
        """
        labels = registry_api.image_labels(
            self.config.registry, service.image_name, version.tag,
            username=self.config.registry_username, password=self.config.registry_password,
        )
        if labels is None:
            return None
        commit = labels.get(REVISION_LABEL)
        if commit != self.request.merge_commit_sha:
            raise VersionTaken(service=service.image_name, tag=version.tag, commit=commit)
        image = registry_api.Registry(
            self.config.registry, username=self.config.registry_username,
            password=self.config.registry_password,
        ).read_image(service.image_name, version.tag)
        if image is None:  # deleted in between: build it again
            return None
        tag = f"{self.config.registry}/{service.image_name}:{version.tag}"
        return builder.BuildResult(
            service=service.image_name, version=version.tag, tag=tag,
            reference=f"{tag}@{image.digest}", digest=image.digest,
            image_id=image.manifest["config"]["digest"], size=image.size, duration=0.0,
            log_tail="",
        )

    def _confirm_tag(self, service: Service, version: Version, result) -> None:
        """The tag must name this run's image before it is reported as published.

        Only a worker that lost its claim while pushing could have moved it;
        then this run, the one holding the job, pushes its image again."""
        for _ in range(2):
            stored = registry_api.Registry(
                self.config.registry, username=self.config.registry_username,
                password=self.config.registry_password,
            ).read_image(service.image_name, version.tag)
            if stored is not None and stored.digest == result.digest:
                return
            log.warning("the registry's %s:%s is %s, not this build's %s: pushing again",
                        service.image_name, version.tag, stored.digest if stored else "missing",
                        result.digest, extra={"job_id": self.job.id})
            if self.fence is not None and not self.store.holds(self.fence):
                raise LeaseLost(f"job {self.job.id} is no longer this worker's")
            builder.push_again(service.image_name, version.tag, self.config.registry,
                               username=self.config.registry_username,
                               password=self.config.registry_password,
                               docker_client=self.worker.docker_client,
                               engine_settings=self.config.engine)
        raise builder.PushFailed(
            f"The registry's {service.image_name}:{version.tag} does not hold the image this "
            f"build pushed ({result.digest}); another build is pushing the same tag"
        )

    def _finish(self, build: Build, outcome: Outcome) -> BuildState:
        """Record the outcome, then report it; the record comes first."""
        result = outcome.result
        fields = {
            "state": outcome.state,
            "finished_at": time.time(),
            "duration": time.time() - (build.started_at or build.created_at),
        }
        if outcome.version is not None:
            fields.update(version=outcome.version.tag,
                          version_source=outcome.version.explanation)
        if result is not None:
            fields.update(reference=result.reference, digest=result.digest,
                          image_id=result.image_id, size=result.size,
                          duration=result.duration or fields["duration"],
                          published_from=outcome.published_from,
                          floating_tags=",".join(outcome.floating))
            if isinstance(result, builder.AmiResult):
                fields.update(artifact=machine_image_record(result))
        if outcome.failure is not None:
            fields.update(error=outcome.failure.message, failure_cause=outcome.failure.cause,
                          failure_kind=outcome.failure.kind)
        build = self._record(build.id, **fields)
        if self.worker.metrics is not None:
            self.worker.metrics.build_finished(str(outcome.state), build.duration or 0.0)
        log.info("build %s %s", build.id, outcome.state,
                 extra={"job_id": self.job.id, "build_id": build.id})
        self.reporter.report_final(self.request, build, outcome.log_tail, fence=self.fence)
        return outcome.state

    def _work_root(self) -> Path:
        root = Path(self.config.data_dir) / "work"
        root.mkdir(parents=True, exist_ok=True)
        return root


class _Source:
    """The merge's source tree, downloaded once, when a step first needs it."""

    def __init__(self, fetch: Callable[[], Path]):
        self._fetch = fetch
        self._root: Path | None = None

    def path(self) -> Path:
        if self._root is None:
            self._root = self._fetch()
        return self._root


def failure_outcome(exc: Exception, *, version: Version | None = None,
                    log_tail: str = "") -> Outcome:
    failure = reporting.Failure.from_error(exc, log_tail=log_tail)
    state = BuildState.FAILED if failure.cause == REPOSITORY else BuildState.ERRORED
    return Outcome(state, failure=failure, version=version, log_tail=failure.log_tail)


def _with_message(outcome: Outcome, message: str) -> Outcome:
    return replace(outcome, failure=replace(outcome.failure, message=message))


def _moment(timestamp: float | None) -> datetime:
    return datetime.fromtimestamp(timestamp or time.time(), UTC)


def machine_image_record(result: builder.AmiResult) -> str:
    """The `artifact` column of a `type: ami` build: what its check run and page show."""
    return json.dumps({
        "type": "ami", "image_id": result.image_id, "region": result.region,
        "name": result.name, "snapshot_id": result.snapshot_id, "phases": result.phases,
        "disk_bytes": result.disk_bytes, "uploaded_bytes": result.uploaded_bytes,
        "existing": result.existing,
    })
