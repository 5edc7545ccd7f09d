"""The worker: threads that claim jobs from the store and run them (`jobrun`).

Each claimed job holds a lease that a heartbeat thread keeps alive while it
builds. A job interrupted by a crash goes back to the queue when its lease
runs out, and the report retry (`reports`) completes what GitHub missed.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable

import builder
from github_app import logs, reporting
from github_app.jobrun import JobRun
from github_app.jobs import BuildState, Job, JobKind, JobState, JobStore
from github_app.premerge import PreMergeRun, rerun_request
from github_app.reports import Reporter, request_from_job
from github_app.staging import remove_stage

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 30.0
MAINTENANCE_SECONDS = 60.0


class Worker:
    """Claims jobs from the store and runs them on `threads` threads."""

    def __init__(
        self,
        config,
        store: JobStore,
        github,
        *,
        metrics=None,
        wakeup: threading.Event | None = None,
        threads: int | None = None,
        docker_client=None,
        build: Callable[..., builder.BuildResult] = builder.build_artifact,
    ):
        self.config = config
        self.store = store
        self.github = github
        self.metrics = metrics
        self.wakeup = wakeup or threading.Event()
        self.threads = threads or config.worker_threads
        self.docker_client = docker_client
        self.build_artifact = build
        self.reporter = Reporter(config, store, github)
        self._stop = threading.Event()
        self._name = f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"

    # -- running -------------------------------------------------------------

    def run(self, *, burst: bool = False) -> None:
        """Work until `stop()`; with `burst`, until no job is left, then return."""
        self.report_pending()
        workers = [
            threading.Thread(target=self._loop, args=(i, burst), name=f"worker-{i}", daemon=True)
            for i in range(self.threads)
        ]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()

    def stop(self) -> None:
        self._stop.set()
        self.wakeup.set()

    def report_pending(self) -> None:
        self.reporter.report_pending()

    def _loop(self, index: int, burst: bool) -> None:
        worker_id = f"{self._name}-{index}"
        last_report_retry = time.monotonic()
        while not self._stop.is_set():
            job = self.store.claim(worker_id)
            if job is not None:
                self.process(job, worker_id)
                continue
            if burst:
                if self.store.queue_depth() == 0:
                    return
                time.sleep(0.05)  # a job waits for its repository's running job
                continue
            self.wakeup.wait(timeout=1.0)
            self.wakeup.clear()
            if index == 0 and time.monotonic() - last_report_retry > MAINTENANCE_SECONDS:
                last_report_retry = time.monotonic()
                # A worker process that died holds its job until the lease runs
                # out; then it goes back to the queue instead of blocking its
                # repository for good.
                self.store.requeue_interrupted()
                self.report_pending()

    def process(self, job: Job, worker_id: str) -> None:
        """Run one claimed job; every service's check run ends `completed`."""
        with logs.bound(delivery_id=job.delivery_id, job_id=job.id):
            self._process(job, worker_id)

    def _process(self, job: Job, worker_id: str) -> None:
        heartbeat = _Heartbeat(self.store, job.id, worker_id)
        heartbeat.start()
        try:
            failed = self._run_job(job)
            self.store.finish(
                job.id, JobState.FAILED if failed else JobState.SUCCEEDED, worker_id=worker_id
            )
        except Exception as exc:  # a bug must not kill the worker thread
            log.exception("job %s crashed", job.id, extra={"job_id": job.id})
            self.store.finish(job.id, JobState.FAILED, error=str(exc), worker_id=worker_id)
            self._fail_unfinished(job, exc)
        finally:
            heartbeat.stop()

    def _run_job(self, job: Job) -> bool:
        """The job's steps by its kind; True when any of its builds failed."""
        if job.kind == JobKind.PRE_MERGE:
            return PreMergeRun(self, job).execute()
        pre_merge = rerun_request(self.store, request_from_job(job))
        if pre_merge is not None:  # Re-run of a check before the merge: build the head again
            return PreMergeRun(self, job, request=pre_merge, rebuild=True).execute()
        if job.kind == JobKind.CLOSED:
            remove_stage(self, request_from_job(job))
            return False
        return JobRun(self, job).execute()

    def _fail_unfinished(self, job: Job, exc: Exception) -> None:
        """End the builds a crashed job left running, so no check run stays in progress."""
        failure = reporting.Failure.from_error(exc)
        for build in self.store.builds_for_job(job.id):
            if build.finished:
                continue
            build = self.store.update_build(
                build.id, state=BuildState.ERRORED, finished_at=time.time(),
                error=failure.message, failure_cause=failure.cause, failure_kind=failure.kind,
            )
            try:
                self.reporter.report_final(request_from_job(job), build, None)
            except Exception:  # reporting is best effort here; report_pending retries
                log.exception("could not report build %s", build.id)


class _Heartbeat:
    """Keeps the job's lease alive while it builds, so no one takes it over."""

    def __init__(self, store: JobStore, job_id: int, worker_id: str):
        self.store, self.job_id, self.worker_id = store, job_id, worker_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            self.store.heartbeat(self.job_id, worker_id=self.worker_id)

    def stop(self) -> None:
        self._stop.set()
