"""End to end, "Re-run" reads the pull request as it is now: the webhook, the worker,
the real engine and registry, and the fake GitHub's pull request and installations."""

from __future__ import annotations

import pytest

from github_app.jobs import BuildState
from tests.payloads import load_event
from tests.slipway_harness import TINY_DOCKERFILE, Harness

pytestmark = pytest.mark.docker

APP = b"print('hello')\n"


@pytest.fixture
def harness(fake_github, registry, data_dir):
    h = Harness(fake_github, registry.address, data_dir)
    yield h
    h.close()
    assert fake_github.rejections == [], "the fake GitHub refused a request Slipway sent"


def releases(registry, repo) -> list[str]:
    """The repository's release tags (X.Y.Z), without the floating ones (X.Y, X, latest)."""
    return sorted(tag for tag in registry.tags(repo.name) if tag.count(".") == 2)


def only(items):
    assert len(items) == 1, items
    return items[0]


def latest_run(harness, repo) -> dict:
    return max(harness.final_check_runs(repo), key=lambda run: run["id"])


def rerun(harness, repo, run: dict, *, installation_id: int | None = None) -> None:
    """Click "Re-run" on `run`: GitHub's real check_run rerequested delivery."""
    event = load_event("check_run", "rerequested")
    event["check_run"].update(id=run["id"], head_sha=repo.head_sha,
                              external_id=run["external_id"], name=run["name"])
    event["check_run"]["app"]["id"] = harness.fake.app_id
    event["installation"] = {"id": installation_id or repo.installation_id, "node_id": "x"}
    event["repository"]["name"], event["repository"]["full_name"] = repo.name, repo.full_name
    event["repository"]["owner"]["login"] = repo.owner
    answer = harness.deliver("check_run", event)
    assert answer.status_code == 202, answer.text
    harness.run_worker()


def test_missing_version_then_a_label_then_rerun_publishes_it(harness, registry):
    """The failure says "add a label, then Re-run"; doing exactly that publishes the version."""
    repo = harness.repository({"Dockerfile": TINY_DOCKERFILE, "app.py": APP})
    payload = repo.merged(title="Fix typo")
    harness.deliver("pull_request", payload)
    harness.run_worker()
    failed = only(harness.final_check_runs(repo))
    assert failed["conclusion"] == "failure"
    advice = failed["output"]["summary"]
    assert "version:1.4.0" in advice and "Re-run" in advice

    harness.fake.edit_pull_request(repo.owner, repo.name, payload["pull_request"]["number"],
                                   labels=["version:2.1.0"])
    rerun(harness, repo, failed)

    run = latest_run(harness, repo)
    assert run["id"] != failed["id"] and run["conclusion"] == "success"
    assert "version:2.1.0" in run["output"]["summary"]
    assert releases(registry, repo) == ["2.1.0"]
    assert harness.statuses(repo)[-1]["state"] == "success"


def test_a_version_put_in_the_title_after_the_failure_counts(harness, registry):
    repo = harness.repository({"Dockerfile": TINY_DOCKERFILE, "app.py": APP})
    payload = repo.merged(title="Fix typo")
    harness.deliver("pull_request", payload)
    harness.run_worker()
    failed = only(harness.final_check_runs(repo))
    harness.fake.edit_pull_request(repo.owner, repo.name, payload["pull_request"]["number"],
                                   title="Release 3.0.1")
    rerun(harness, repo, failed)
    assert latest_run(harness, repo)["conclusion"] == "success"
    assert releases(registry, repo) == ["3.0.1"]


def test_a_semver_rerun_keeps_the_version_this_merge_published(harness, registry):
    """semver:patch published 0.0.1; a re-run (where a bump would now give 0.0.2) reports
    0.0.1 again, the very image, and publishes nothing new."""
    repo = harness.repository({"Dockerfile": TINY_DOCKERFILE, "app.py": APP})
    harness.deliver("pull_request", repo.merged(labels=["semver:patch"]))
    harness.run_worker()
    first = only(harness.final_check_runs(repo))
    digest = registry.manifest_digest(repo.name, "0.0.1")

    rerun(harness, repo, first)
    run = latest_run(harness, repo)
    assert run["conclusion"] == "success"
    assert f"{repo.name}:0.0.1@{digest}" in run["output"]["summary"]
    assert "already published for this merge" in run["output"]["summary"]
    assert releases(registry, repo) == ["0.0.1"]
    assert registry.manifest_digest(repo.name, "0.0.1") == digest  # not pushed again


def test_a_rerun_after_a_reinstall_uses_the_rerun_events_installation(harness, registry):
    """The App was uninstalled and installed again after the merge: the old installation's
    tokens are gone, and the re-run builds and reports through the new one."""
    repo = harness.repository({"Dockerfile": TINY_DOCKERFILE, "app.py": APP})
    payload = repo.merged(title="Fix typo")
    harness.deliver("pull_request", payload)
    harness.run_worker()
    failed = only(harness.final_check_runs(repo))

    new_installation = harness.fake.reinstall(repo.owner, repo.name)
    harness.fake.edit_pull_request(repo.owner, repo.name, payload["pull_request"]["number"],
                                   labels=["version:1.0.0"])
    rerun(harness, repo, failed, installation_id=new_installation)

    run = latest_run(harness, repo)
    assert run["conclusion"] == "success", run["output"]
    assert releases(registry, repo) == ["1.0.0"]
    build = harness.store.recent_builds(repository=repo.full_name)[0]
    assert build.state is BuildState.SUCCEEDED and build.reported


def test_rerun_all_checks_reads_the_pull_request_again_too(harness, registry):
    """"Re-run all checks" (check_suite rerequested) after a label is added publishes it."""
    repo = harness.repository({"Dockerfile": TINY_DOCKERFILE, "app.py": APP})
    payload = repo.merged(title="Fix typo")
    harness.deliver("pull_request", payload)
    harness.run_worker()
    failed = only(harness.final_check_runs(repo))
    harness.fake.edit_pull_request(repo.owner, repo.name, payload["pull_request"]["number"],
                                   labels=["semver:minor"])
    event = load_event("check_suite", "rerequested")
    event["check_suite"].update(id=failed["check_suite"]["id"], head_sha=repo.head_sha)
    event["check_suite"]["app"]["id"] = harness.fake.app_id
    event["installation"] = {"id": repo.installation_id, "node_id": "x"}
    event["repository"]["name"], event["repository"]["full_name"] = repo.name, repo.full_name
    event["repository"]["owner"]["login"] = repo.owner
    assert harness.deliver("check_suite", event).status_code == 202
    harness.run_worker()
    assert latest_run(harness, repo)["conclusion"] == "success"
    assert releases(registry, repo) == ["0.1.0"]
