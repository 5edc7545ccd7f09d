"""Reporting a finished build to GitHub: the I/O side of `reporting`.

The build's record is written before it is reported, so a GitHub that cannot
be reached loses nothing: `report_pending` reports again what GitHub did not
take. The bodies come from `reporting.final_report`, from the record alone.
"""

from __future__ import annotations

import logging
import time

from github_app import previews, reporting
from github_app.errors import GitHubError
from github_app.jobs import Build, Fence, Job, JobState, JobStore, LeaseLost
from github_app.webhooks import BuildKind, BuildRequest

log = logging.getLogger(__name__)

LOG_TAIL_BYTES = 60_000
# A build whose report GitHub has not taken for this long is given up: its page
# and badge show the result, and retrying forever would only grow the queue.
REPORT_GIVE_UP_SECONDS = 24 * 3600.0
# One retry pass stops after this long, so that a GitHub outage with many
# pending reports never holds up a worker's start or its other maintenance.
REPORT_PASS_SECONDS = 60.0


class Reporter:
    """Completes check runs and sets commit statuses from build records."""

    def __init__(self, config, store: JobStore, github, *, metrics=None):
        self.config = config
        self.store = store
        self.github = github
        self.metrics = metrics

    def details_url(self, build_id: int) -> str:
        return f"{self.config.public_url}/builds/{build_id}"

    def report_pending(self, *, budget: float = REPORT_PASS_SECONDS) -> int:
        """Report finished builds whose check run or status GitHub did not accept yet.

        Stops after `budget` seconds (the next pass goes on); a build unreported
        for REPORT_GIVE_UP_SECONDS is given up, with a log line and a metric.
        Returns how many builds are still pending."""
        deadline = time.monotonic() + budget
        now = self.store.clock()
        pending = self.store.unreported_builds()
        for index, build in enumerate(pending):
            if now - (build.finished_at or build.created_at) > REPORT_GIVE_UP_SECONDS:
                self._give_up(build, now)
                continue
            if time.monotonic() > deadline:
                log.warning("report retry paused after %.0f s with %d build(s) left; the next "
                            "pass goes on", budget, len(pending) - index)
                return len(pending) - index
            job = self.store.get_job(build.job_id)
            # A running job reports its own builds (under its claim); this is
            # for the ones whose worker could not.
            if job is None or job.state is JobState.RUNNING:
                continue
            self.report_final(request_from_job(job), build, None)
        return 0

    def _give_up(self, build: Build, now: float) -> None:
        self.store.update_build(build.id, report_abandoned_at=now)
        hours = REPORT_GIVE_UP_SECONDS / 3600
        log.error("gave up reporting build %s to GitHub: its check run and status were not "
                  "accepted in %.0f h; the build page and badge show its result", build.id,
                  hours, extra={"build_id": build.id})
        if self.metrics is not None:
            self.metrics.reports_abandoned.inc()

    def report_final(self, request: BuildRequest, build: Build, log_tail: str | None, *,
                     fence: Fence | None = None) -> bool:
        """Complete the check run and set the status from the build's record.

        Records whether GitHub took both, so `report_pending` can try again.
        With ``fence``, only while that claim holds the job (else `LeaseLost`):
        a worker whose lease lapsed reports nothing."""
        if fence is not None and not self.store.holds(fence):
            raise LeaseLost(f"job {fence.job_id} attempt {fence.attempt} no longer holds "
                            f"build {build.id}: its report is not sent")
        client = self.github.installation(request.installation_id)
        details = self.details_url(build.id)
        if log_tail is None:
            log_tail = self.store.build_log(build.id).tail(LOG_TAIL_BYTES)
        if build.pre_merge:
            # Before the merge there is no merge commit to put a status on.
            check_run, status = previews.final_report(build, details_url=details,
                                                      log_tail=log_tail), None
        else:
            check_run, status = reporting.final_report(build, details_url=details,
                                                       log_tail=log_tail)
        try:
            if build.check_run_id is None:
                build = self.adopt_check_run(client, request, build)
            if build.check_run_id is None:
                # Opening it failed earlier (GitHub down): create it finished.
                check_run.update(name=build.check_run_name, head_sha=build.head_sha,
                                 external_id=str(build.id))
                created = client.create_check_run(request.owner, request.repo, check_run)
                build = self.store.update_build(build.id, fence=fence,
                                                check_run_id=created["id"])
            else:
                client.update_check_run(request.owner, request.repo, build.check_run_id,
                                        check_run)
            if status is not None:
                client.create_status(request.owner, request.repo, build.merge_sha, status)
        except GitHubError as exc:
            log.warning("could not report build %s: %s", build.id, exc,
                        extra={"build_id": build.id})
            return False
        self.store.update_build(build.id, fence=fence, reported=True)
        return True


    def adopt_check_run(self, client, request: BuildRequest, build: Build) -> Build:
        """Record the check run an earlier attempt opened for `build`, if GitHub has one.

        A create whose answer never came (GitHub timed out, or the process was
        killed before the record was written) may still have made the check
        run. Creating another would leave that one `in_progress` on the pull
        request for good, so look for ours first: same name, our App, and the
        build's id as `external_id`."""
        runs = client.list_check_runs_for_ref(request.owner, request.repo, build.head_sha,
                                              check_name=build.check_run_name)
        ours = [run for run in runs
                if run.get("external_id") == str(build.id)
                and str((run.get("app") or {}).get("id")) == str(self.config.app_id)]
        if not ours:
            return build
        oldest = min(ours, key=lambda run: run["id"])
        log.info("build %s: reusing check run %s that an interrupted attempt opened",
                 build.id, oldest["id"], extra={"build_id": build.id})
        return self.store.update_build(build.id, check_run_id=oldest["id"])


def request_from_job(job: Job) -> BuildRequest:
    """The build request a job was queued with."""
    data = dict(job.request)
    data["kind"] = BuildKind(data["kind"])
    data["labels"] = tuple(data.get("labels") or ())
    return BuildRequest(**data)
