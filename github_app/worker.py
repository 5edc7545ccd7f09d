"""The worker: threads that claim jobs from the store and run them (`jobrun`).

Each claimed job holds a lease that a heartbeat thread keeps alive while it
builds. A job interrupted by a crash goes back to the queue when its lease
runs out (any node's maintenance puts it back), and the report retry
(`reports`) completes what GitHub missed.

`run()` supervises: it shows the worker's heartbeat in the store (for
/healthz), replaces a thread that died, and on `stop()` (SIGTERM) takes no
new job, lets running builds finish for STOP_GRACE seconds and hands the rest
back to the queue, not counted as a crash. Beside it run the maintenance
thread (leases that lapsed, the report retry) and the pruning schedule.

Fencing: the claim's `Fence` goes with every write of the job. When the
store refuses the heartbeat, or no heartbeat reached it for a whole lease
(the worker was paused or cut off), the job is no longer this worker's: its
build is stopped in the engine (`cancel`), nothing more is pushed, recorded
or reported, and the worker takes the next job.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

import builder
from github_app import logs, reporting
from github_app.disk import DiskGuard
from github_app.jobrun import JobRun
from github_app.jobs import (
    BuildState,
    Fence,
    Job,
    JobKind,
    JobState,
    JobStore,
    LeaseLost,
    StoreUnavailable,
)
from github_app.premerge import PreMergeRun, rerun_request
from github_app.pruning import Pruner, PruneSchedule
from github_app.reports import Reporter, request_from_job
from github_app.staging import remove_stage

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 30.0
MAINTENANCE_SECONDS = 60.0
# How long a worker waits when the store does not answer before it tries again.
STORE_RETRY_SECONDS = 2.0
# How often the worker shows it is alive; /healthz presumes it gone after 60 s.
WORKER_BEAT_SECONDS = 10.0
SUPERVISE_SECONDS = 1.0


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
        self.reporter = Reporter(config, store, github, metrics=metrics)
        self.disk = DiskGuard(config, docker_client)
        self.pruner = Pruner(config, store, metrics=metrics, docker_client=docker_client)
        self._stop = threading.Event()
        # Host and process id: an operator finds the worker that holds a job.
        self._name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        lease = float(getattr(store, "lease_seconds", 60.0))
        # Renew well inside the lease, and look for lapsed ones often enough
        # that a job of a dead worker waits about one lease, not minutes.
        self.heartbeat_seconds = min(HEARTBEAT_SECONDS, lease / 3)
        self.maintenance_seconds = min(MAINTENANCE_SECONDS, lease / 2)
        self._held: dict[str, int] = {}  # worker thread id -> the job it runs
        self._died: set[int] = set()
        self._guard = threading.Lock()

    # -- running -------------------------------------------------------------

    def run(self, *, burst: bool = False, stop_when: Callable[[], bool] | None = None) -> None:
        """Work until `stop()` (or `stop_when()` turns true); with `burst`, until no job is
        left, then return. Either way no job this worker holds stays claimed."""
        self._beat()
        try:
            self.report_pending()
        except Exception:  # the store or GitHub is down now: the maintenance retries
            log.exception("could not retry pending reports at start")
        background = []
        if not burst:
            try:
                removed = self.pruner.remove_work_folders()
            except Exception:
                log.exception("could not remove the work folders a crash left")
                removed = 0
            if removed:
                log.info("removed %d work folder(s) left by a crash", removed)
            background = [PruneSchedule(self.pruner),
                          _Every(self._maintain, self.maintenance_seconds)]
            for task in background:
                task.start()
        threads = {i: self._start_thread(i, burst) for i in range(self.threads)}
        last_beat = time.monotonic()
        try:
            while not self._stop.is_set():
                if stop_when is not None and stop_when():
                    self.stop()
                    break
                self._replace_dead(threads, burst)
                if burst and not any(t.is_alive() for t in threads.values()):
                    return
                if time.monotonic() - last_beat >= WORKER_BEAT_SECONDS:
                    last_beat = time.monotonic()
                    self._beat()
                self._stop.wait(0.05 if burst else SUPERVISE_SECONDS)
            self._wind_down(threads)
        finally:
            for task in background:
                task.stop()

    def stop(self) -> None:
        """Claim no more jobs; `run` then winds down (STOP_GRACE, then hand back)."""
        self._stop.set()
        self.wakeup.set()

    def report_pending(self) -> None:
        self.reporter.report_pending()

    def _maintain(self) -> None:
        """Requeue jobs whose worker died (lease lapsed); retry reports GitHub missed."""
        # A worker that died holds its job until the lease runs out; then it
        # goes back to the queue instead of blocking its repository for good.
        try:
            requeued = self.store.requeue_interrupted()
            if requeued:
                log.info("requeued job(s) whose lease lapsed: %s", requeued)
            self.report_pending()
        except StoreUnavailable as exc:
            log.warning("maintenance skipped: %s", exc)

    def _beat(self) -> None:
        try:
            self.store.beat(self._name)
        except Exception:  # the store is down: /healthz says so through its own check
            log.warning("could not record the worker's heartbeat", exc_info=True)

    def _start_thread(self, index: int, burst: bool) -> threading.Thread:
        thread = threading.Thread(target=self._thread_main, args=(index, burst),
                                  name=f"worker-{index}", daemon=True)
        thread.start()
        return thread

    def _thread_main(self, index: int, burst: bool) -> None:
        try:
            self._loop(index, burst)
        except BaseException:
            log.exception("worker thread %d died; starting another", index)
            with self._guard:
                self._died.add(index)

    def _replace_dead(self, threads: dict[int, threading.Thread], burst: bool) -> None:
        for index, thread in list(threads.items()):
            with self._guard:
                died = index in self._died and not thread.is_alive()
                if died:
                    self._died.discard(index)
            if died:
                threads[index] = self._start_thread(index, burst)
                log.warning("worker thread %d started again", index)
                if self.metrics is not None:
                    self.metrics.worker_threads_replaced.inc()

    def _wind_down(self, threads: dict[int, threading.Thread]) -> None:
        """Let running builds finish for STOP_GRACE seconds; hand back the rest at once."""
        grace = self.config.stop_grace
        with self._guard:
            running = dict(self._held)
        if running:
            log.info("stopping: %d build job(s) running; waiting up to %d s (STOP_GRACE)",
                     len(running), grace)
        deadline = time.monotonic() + grace
        for thread in threads.values():
            thread.join(max(deadline - time.monotonic(), 0))
        with self._guard:
            left = dict(self._held)
        for worker_id, job_id in left.items():
            try:
                if self.store.hand_back(job_id, worker_id=worker_id):
                    log.warning("job %s still building after STOP_GRACE (%d s): handed back "
                                "to the queue", job_id, grace, extra={"job_id": job_id})
            except StoreUnavailable as exc:  # its lease lapses instead
                log.warning("could not hand job %s back: %s", job_id, exc)
        self._beat()

    def _loop(self, index: int, burst: bool) -> None:
        worker_id = f"{self._name}-{index}"
        while not self._stop.is_set():
            try:
                job = self.store.claim(worker_id)
            except StoreUnavailable as exc:
                log.warning("cannot claim a job: %s", exc)
                self._stop.wait(STORE_RETRY_SECONDS)
                continue
            if job is not None:
                with self._guard:
                    self._held[worker_id] = job.id
                try:
                    self.process(job, worker_id)
                finally:
                    with self._guard:
                        self._held.pop(worker_id, None)
                continue
            if burst:
                if self.store.queue_depth() == 0:
                    return
                time.sleep(0.05)  # a job waits for its repository's running job
                continue
            self.wakeup.wait(timeout=1.0)
            self.wakeup.clear()

    def process(self, job: Job, worker_id: str) -> None:
        """Run one claimed job; every service's check run ends `completed`."""
        with logs.bound(delivery_id=job.delivery_id, job_id=job.id):
            self._process(job, worker_id)

    def _process(self, job: Job, worker_id: str) -> None:
        fence = Fence(job.id, job.attempts)
        cancel = threading.Event()
        heartbeat = _Heartbeat(self.store, fence, worker_id, cancel,
                               interval=self.heartbeat_seconds)
        heartbeat.start()
        try:
            failed = self._run_job(job, fence, cancel)
            if not self.store.finish(job.id, JobState.FAILED if failed else JobState.SUCCEEDED,
                                     worker_id=worker_id, attempt=fence.attempt):
                raise LeaseLost(f"the store refused to finish job {job.id}")
        except Exception as exc:
            if isinstance(exc, LeaseLost | builder.BuildCancelled) or cancel.is_set():
                # The claim was lost first; what broke after (the store, the stream) is
                # its effect. Nothing is recorded: the job is another worker's now.
                cancel.set()
                log.warning("job %s attempt %s is no longer this worker's (%s): its build is "
                            "stopped and nothing more of it is pushed or reported", job.id,
                            fence.attempt, heartbeat.reason or exc, extra={"job_id": job.id})
                return
            # A bug must not kill the worker thread.
            log.exception("job %s crashed", job.id, extra={"job_id": job.id})
            try:
                if self.store.finish(job.id, JobState.FAILED, error=str(exc),
                                     worker_id=worker_id, attempt=fence.attempt):
                    self._fail_unfinished(job, exc, fence)
            except (StoreUnavailable, LeaseLost) as store_exc:
                log.warning("job %s: could not record the crash: %s", job.id, store_exc)
        finally:
            heartbeat.stop()

    def _run_job(self, job: Job, fence: Fence, cancel: threading.Event) -> bool:
        """The job's steps by its kind; True when any of its builds failed."""
        if job.kind == JobKind.PRE_MERGE:
            return PreMergeRun(self, job, fence=fence, cancel=cancel).execute()
        pre_merge = rerun_request(self.store, request_from_job(job))
        if pre_merge is not None:  # Re-run of a check before the merge: build the head again
            return PreMergeRun(self, job, request=pre_merge, rebuild=True, fence=fence,
                               cancel=cancel).execute()
        if job.kind == JobKind.CLOSED:
            remove_stage(self, request_from_job(job))
            return False
        return JobRun(self, job, fence=fence, cancel=cancel).execute()

    def _fail_unfinished(self, job: Job, exc: Exception, fence: Fence | None = None) -> None:
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
    """Keeps the claim's lease alive while it builds; sets `cancel` when the claim is lost.

    Lost: the store refused a renewal (another node holds the job), or no
    renewal reached the store for a whole lease (this worker was paused or
    cut off, so another node may hold it by now). A watchdog thread measures
    the second case, since a renewal may hang while the network is down.
    """

    def __init__(self, store: JobStore, fence: Fence, worker_id: str, cancel: threading.Event,
                 *, interval: float = HEARTBEAT_SECONDS):
        self.store, self.fence, self.worker_id = store, fence, worker_id
        self.cancel = cancel
        self.interval = interval
        self.lease = float(getattr(store, "lease_seconds", 60.0))
        self.reason: str | None = None
        self._renewed = time.monotonic()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True, name="heartbeat"),
                         threading.Thread(target=self._watch, daemon=True, name="lease-watch")]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            attempted = time.monotonic()
            try:
                renewed = self.store.heartbeat(self.fence.job_id, worker_id=self.worker_id,
                                               attempt=self.fence.attempt)
            except Exception as exc:  # the store is down: the watchdog counts the time
                log.warning("heartbeat of job %s did not reach the store: %s",
                            self.fence.job_id, exc)
                continue
            if not renewed:
                self._lose("the store refused its heartbeat: the lease had lapsed and the "
                           "job may be another worker's")
                return
            self._renewed = attempted

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            if time.monotonic() - self._renewed > self.lease:
                self._lose(f"no heartbeat reached the store for {self.lease:g} s (its lease)")
                return

    def _lose(self, reason: str) -> None:
        if self.reason is None and not self._stop.is_set():
            self.reason = reason
            log.warning("job %s attempt %s: %s; stopping its build", self.fence.job_id,
                        self.fence.attempt, reason, extra={"job_id": self.fence.job_id})
            self.cancel.set()

    def stop(self) -> None:
        self._stop.set()


class _Every:
    """Runs `task` every `seconds` on a thread of its own until stopped; a failure is logged."""

    def __init__(self, task: Callable[[], None], seconds: float):
        self.task, self.seconds = task, seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slipway-maintenance",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.seconds):
            try:
                self.task()
            except Exception:
                log.exception("worker maintenance failed; trying again in %.0f s", self.seconds)
