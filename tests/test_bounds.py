"""Operating bounds seen from GitHub: a build that does not start for want of disk, and a
report GitHub never takes, given up after a bounded time."""

from __future__ import annotations

import logging
import time

import pytest

from github_app.jobs import BuildState
from github_app.reports import REPORT_GIVE_UP_SECONDS
from tests.slipway_harness import TINY_DOCKERFILE, Harness
from tests.test_e2e import APP, only

pytestmark = pytest.mark.docker


def test_below_min_free_disk_a_build_does_not_start_and_says_how_much(
        fake_github, registry, data_dir):
    """MIN_FREE_DISK above what is free: the check run fails, status `error`, saying how much
    is free and how much is needed; nothing is built or pushed."""
    harness = Harness(fake_github, registry.address, data_dir, min_free_disk=1024**5)
    try:
        repo = harness.repository({"Dockerfile": TINY_DOCKERFILE, "app.py": APP})
        harness.deliver("pull_request", repo.merged(labels=["version:1.0.0"]))
        harness.run_worker()
        run = only(harness.final_check_runs(repo))
        assert (run["status"], run["conclusion"]) == ("completed", "failure")
        summary = run["output"]["summary"]
        assert "Not enough free disk to build: " in summary
        assert f"free in {data_dir} (DATA_DIR)" in summary
        assert "free in /var/lib/docker (the Docker engine's data root)" in summary
        assert "a build needs 1024.0 TiB (MIN_FREE_DISK)" in summary
        assert harness.statuses(repo)[-1]["state"] == "error"
        assert only(harness.store.recent_builds()).state is BuildState.ERRORED
        assert registry.tags(repo.name) == []
    finally:
        harness.close()


def test_a_report_github_never_takes_is_given_up_with_a_log_line_and_a_metric(
        fake_github, registry, data_dir, caplog):
    """A finished build unreported for a day is no longer retried: one error line, one count."""
    caplog.set_level(logging.INFO)
    harness = Harness(fake_github, registry.address, data_dir)
    try:
        repo = harness.repository({"Dockerfile": TINY_DOCKERFILE, "app.py": APP})
        harness.deliver("pull_request", repo.merged(labels=["version:1.0.0"]))
        fake_github.fail_next("POST", r"/repos/.*/statuses/.*", 502, times=1000)
        harness.run_worker()
        build = only(harness.store.recent_builds())
        assert not build.reported
        harness.store.update_build(
            build.id, finished_at=time.time() - REPORT_GIVE_UP_SECONDS - 60)
        calls = len(fake_github.requests)

        worker = harness.worker()
        worker.report_pending()
        worker.report_pending()

        assert len(fake_github.requests) == calls, "a given-up report is not sent again"
        assert harness.store.unreported_builds() == []
        given_up = [r for r in caplog.records if "gave up reporting build" in r.getMessage()]
        assert len(given_up) == 1 and given_up[0].levelno == logging.ERROR
        assert "slipway_reports_abandoned_total 1.0" in \
            harness.runtime.metrics.exposition().decode()
    finally:
        harness.close()


def test_below_min_free_disk_a_build_before_the_merge_does_not_start_either(
        fake_github, registry, data_dir):
    """A pull request's build (before the merge) is held to MIN_FREE_DISK too: its check run
    fails saying how much is free, and nothing is staged."""
    harness = Harness(fake_github, registry.address, data_dir, min_free_disk=1024**5)
    try:
        repo = harness.repository({"Dockerfile": TINY_DOCKERFILE, "app.py": APP})
        answer = harness.deliver("pull_request", repo.pull_request("opened",
                                                                   labels=["version:1.0.0"]))
        assert answer.status_code == 202, answer.text
        harness.run_worker()
        run = only(harness.final_check_runs(repo))
        assert (run["status"], run["conclusion"]) == ("completed", "failure")
        assert "Not enough free disk to build: " in run["output"]["summary"]
        assert registry.tags(repo.name) == []
    finally:
        harness.close()
