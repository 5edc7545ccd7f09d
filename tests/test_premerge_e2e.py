"""Pull requests before the merge, end to end: signed webhooks over real HTTP, the worker,
the real Docker engine and registry, and what the fake GitHub received.

A pull request is built and staged as `<image>:pr-<number>` with a check run that says what
merging publishes; a label changes the preview without a build; a newer push cancels the
older build; the merge publishes the staged image without building when the trees match;
a fork waits for `slipway:build`; floating tags follow the highest release.
"""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

from builder.registry import Registry
from github_app.jobs import BuildState
from tests.slipway_harness import TINY_DOCKERFILE, Harness

pytestmark = pytest.mark.docker

APP = b"print('hello from the service')\n"
REVISION = "org.opencontainers.image.revision"
SLOW_DOCKERFILE = TINY_DOCKERFILE.replace(
    'RUN python3 -c "print(\'compiled\', 1 + 1)"', "RUN sleep 60")


@pytest.fixture
def harness(fake_github, registry, data_dir, docker_client):
    h = Harness(fake_github, registry.address, data_dir)
    h.images = []
    yield h
    h.close()
    api = Registry(registry.address)
    for name in h.images:  # what this test pushed, and nothing else
        for tag in registry.tags(name):
            with contextlib.suppress(Exception):
                api.delete_tag(name, tag)
        for image in docker_client.images.list(name=f"{registry.address}/{name}"):
            with contextlib.suppress(Exception):
                docker_client.images.remove(image.id, force=True)
    assert fake_github.rejections == [], "the fake GitHub refused a request Slipway sent"


def tiny_repo(harness, dockerfile: str = TINY_DOCKERFILE, **options):
    repo = harness.repository({"Dockerfile": dockerfile, "app.py": APP}, **options)
    harness.images.append(repo.name)
    return repo


def only(items):
    assert len(items) == 1, items
    return items[0]


def deliver(harness, payload, event="pull_request"):
    answer = harness.deliver(event, payload)
    assert answer.status_code == 202 and "job" in answer.json(), answer.text
    return answer


def builds_of(harness, repo):
    return list(reversed(harness.store.recent_builds(repository=repo.full_name)))


def build_log(harness, build) -> str:
    """A build's log as the build page serves it (read from the store: the repository is
    private, so its page answers 404 to anyone not signed in)."""
    return harness.store.build_log(build.id).tail(1_000_000)


def labels_of(registry, name, tag):
    return Registry(registry.address).read_image(name, tag).labels


def test_an_opened_pull_request_is_staged_and_previewed(harness, registry):
    """opened with `semver:minor` over 1.3.2: the head is built and staged as pr-12, and the
    check run on the head says "Merging publishes `svc:1.4.0` (`semver:minor` over 1.3.2)"."""
    repo = tiny_repo(harness)
    # The registry already holds 1.3.2 of this service, from an earlier merge.
    harness.deliver("pull_request", repo.merged(labels=["version:1.3.2"],
                                                merge_sha=repo.merge_sha, number=11))
    harness.run_worker()

    deliver(harness, repo.pull_request("opened", labels=["semver:minor"]))
    harness.run_worker()

    run = only([r for r in harness.final_check_runs(repo) if r["id"] != only(
        [b for b in builds_of(harness, repo) if not b.pre_merge]).check_run_id])
    assert run["name"] == "docker build"
    assert run["conclusion"] == "success", run["output"]
    assert run["output"]["summary"].startswith(
        f"Merging publishes `{repo.name}:1.4.0` (`semver:minor` over 1.3.2).")
    assert "pr-12" in registry.tags(repo.name)
    assert labels_of(registry, repo.name, "pr-12")[REVISION] == repo.head_sha
    # No release tag appeared; the only statuses are the seeding merge's (pending, success).
    assert sorted(registry.tags(repo.name)) == sorted(["1.3.2", "1", "1.3", "latest", "pr-12"])
    assert [s.body["state"] for s in harness.fake.statuses] == ["pending", "success"]
    staged = only([b for b in builds_of(harness, repo) if b.pre_merge])
    assert staged.state is BuildState.SUCCEEDED and staged.staged_reference.endswith(
        registry.manifest_digest(repo.name, "pr-12"))


def test_a_label_that_changes_only_the_version_updates_the_check_without_building(
        harness, registry):
    """labeled `version:2.0.0` after a build of the same head: the same check run now says
    2.0.0, and nothing was built (no new build log, the staged digest unchanged)."""
    repo = tiny_repo(harness)
    deliver(harness, repo.pull_request("opened", labels=[]))
    harness.run_worker()
    first = only(harness.final_check_runs(repo))
    assert first["conclusion"] == "failure"
    assert "version:1.4.0" in first["output"]["summary"]  # how to give one
    digest = registry.manifest_digest(repo.name, "pr-12")  # the head built anyway

    deliver(harness, repo.pull_request("labeled", labels=["version:2.0.0"],
                                       label="version:2.0.0"))
    started = time.monotonic()
    harness.run_worker()
    elapsed = time.monotonic() - started

    run = only(harness.final_check_runs(repo))  # the same check run, updated
    assert run["id"] == first["id"] and run["conclusion"] == "success"
    assert run["output"]["summary"].startswith(
        f"Merging publishes `{repo.name}:2.0.0` (`version:2.0.0`).")
    assert "only the version changed" in run["output"]["summary"]
    assert registry.manifest_digest(repo.name, "pr-12") == digest
    latest = builds_of(harness, repo)[-1]
    assert latest.note.startswith("reused:")
    assert elapsed < 3.0  # no docker build ran


def test_a_newer_push_cancels_the_older_build(harness, registry):
    """synchronize while the first head builds: that build stops and its check run ends
    `cancelled` naming the newer commit; the newer head is built and staged."""
    repo = tiny_repo(harness, dockerfile=SLOW_DOCKERFILE)
    deliver(harness, repo.pull_request("opened", labels=["version:1.0.0"]))
    worker = harness.worker()
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not any(r["status"] == "in_progress" for r in harness.final_check_runs(repo)):
            assert time.monotonic() < deadline, "the first build did not start"
            time.sleep(0.1)
        newer = harness.fake.add_commit(repo.owner, repo.name, branch="feature",
                                        files={"Dockerfile": TINY_DOCKERFILE})
        started = time.monotonic()
        deliver(harness, repo.pull_request("synchronize", labels=["version:1.0.0"],
                                           head_sha=newer, before=repo.head_sha))
        deadline = time.monotonic() + 60
        while not any(r["status"] == "completed" for r in harness.final_check_runs(repo, newer)):
            assert time.monotonic() < deadline, "the newer head was not built"
            time.sleep(0.1)
    finally:
        worker.stop()
        thread.join(timeout=30)
    old = only(harness.final_check_runs(repo))
    assert old["conclusion"] == "cancelled"
    assert old["output"]["title"] == f"Superseded by {newer[:7]}"
    assert newer in old["output"]["summary"]
    assert time.monotonic() - started < 40  # the 60 s step did not run to its end
    new = only(harness.final_check_runs(repo, newer))
    assert new["conclusion"] == "success", new["output"]
    assert labels_of(registry, repo.name, "pr-12")[REVISION] == newer


def test_merge_with_the_tree_unchanged_publishes_the_staged_image_without_building(
        harness, registry):
    """The merge commit's tree is the staged head's: the release is the staged layers with
    the merge commit's labels, no build runs, and pr-12 is gone."""
    repo = tiny_repo(harness)
    deliver(harness, repo.pull_request("opened", labels=["version:1.4.0"]))
    harness.run_worker()
    staged = Registry(registry.address).read_image(repo.name, "pr-12")

    deliver(harness, repo.merged(labels=["version:1.4.0"], number=12))
    harness.run_worker()

    merge_build = only([b for b in builds_of(harness, repo) if not b.pre_merge])
    assert merge_build.state is BuildState.SUCCEEDED
    assert merge_build.published_from == only(
        [b for b in builds_of(harness, repo) if b.pre_merge]).staged_reference
    release = Registry(registry.address).read_image(repo.name, "1.4.0")
    assert release.manifest["layers"] == staged.manifest["layers"]
    assert release.labels[REVISION] == repo.merge_sha
    assert release.labels["org.opencontainers.image.version"] == "1.4.0"
    assert release.labels["org.opencontainers.image.source"].endswith(repo.full_name)
    assert merge_build.digest == release.digest == registry.manifest_digest(repo.name, "1.4.0")
    assert "pr-12" not in registry.tags(repo.name)
    run = harness.fake.check_runs[merge_build.check_run_id]
    assert run["conclusion"] == "success"
    assert "Published from the pre-merge build" in run["output"]["summary"]
    assert merge_build.digest in run["output"]["summary"]
    assert "Floating tags moved:** `1`, `1.4`, `latest`" in run["output"]["summary"]
    status = harness.statuses(repo)[-1]
    assert status["state"] == "success"


def test_merge_with_a_changed_tree_is_built(harness, registry):
    """The merge commit brings a change the head did not have (a README from develop):
    Slipway builds the merge, and every step comes from the pre-merge build's cache."""
    repo = tiny_repo(harness, merge_files={"README.md": "merged with develop\n"})
    deliver(harness, repo.pull_request("opened", labels=["version:1.5.0"]))
    harness.run_worker()

    deliver(harness, repo.merged(labels=["version:1.5.0"], number=12))
    harness.run_worker()

    merge_build = only([b for b in builds_of(harness, repo) if not b.pre_merge])
    assert merge_build.state is BuildState.SUCCEEDED and merge_build.published_from is None
    assert labels_of(registry, repo.name, "1.5.0")[REVISION] == repo.merge_sha
    run = harness.fake.check_runs[merge_build.check_run_id]
    assert "Pushed" in run["output"]["title"]
    assert "Published from the pre-merge build" not in run["output"]["summary"]
    log = build_log(harness, merge_build)
    assert "is not the staged head's" in log
    assert log.count("Using cache") >= 2  # COPY app.py and the RUN step, from the stage
    assert "pr-12" not in registry.tags(repo.name)


def test_a_fork_is_built_only_after_a_maintainer_adds_slipway_build(harness, registry):
    """A fork's pull request is not built before the merge (the check says so) until a
    maintainer labels it `slipway:build`; then that head is built and staged, and a later
    push is not built on the strength of the old label."""
    repo = tiny_repo(harness)
    deliver(harness, repo.pull_request("opened", labels=["version:3.0.0"],
                                       head_owner="stranger"))
    harness.run_worker()
    run = only(harness.final_check_runs(repo))
    assert run["conclusion"] == "neutral"
    assert "`slipway:build`" in run["output"]["summary"]
    assert registry.tags(repo.name) == []

    deliver(harness, repo.pull_request("labeled", labels=["version:3.0.0", "slipway:build"],
                                       label="slipway:build", head_owner="stranger"))
    harness.run_worker()
    latest = max(harness.final_check_runs(repo), key=lambda r: r["id"])
    assert latest["conclusion"] == "success", latest["output"]
    assert "pr-12" in registry.tags(repo.name)

    # A push after the approval is unreviewed again, though the label stays on the PR.
    newer = harness.fake.add_commit(repo.owner, repo.name, branch="feature",
                                    files={"app.py": "print('unreviewed')\n"})
    deliver(harness, repo.pull_request("synchronize", labels=["version:3.0.0", "slipway:build"],
                                       head_sha=newer, head_owner="stranger"))
    harness.run_worker()
    run = only(harness.final_check_runs(repo, newer))
    assert run["conclusion"] == "neutral"
    assert labels_of(registry, repo.name, "pr-12")[REVISION] == repo.head_sha

    # Merged, the fork's code is the target branch's: built like any other merge.
    deliver(harness, repo.merged(labels=["version:3.0.0"], number=12, head_sha=newer,
                                 head_owner="stranger"))
    harness.run_worker()
    assert labels_of(registry, repo.name, "3.0.0")[REVISION] == repo.merge_sha
    assert "pr-12" not in registry.tags(repo.name)


def test_closing_without_a_merge_removes_the_staging_tag(harness, registry):
    """A pull request closed unmerged leaves no staging tag behind."""
    repo = tiny_repo(harness)
    deliver(harness, repo.pull_request("opened", labels=["version:1.0.0"]))
    harness.run_worker()
    assert "pr-12" in registry.tags(repo.name)

    deliver(harness, repo.merged(labels=["version:1.0.0"], number=12, merged=False))
    harness.run_worker()
    assert "pr-12" not in registry.tags(repo.name)


def test_floating_tags_follow_the_highest_release(harness, registry):
    """1.4.0 moves 1.4, 1 and latest; 1.3.9 moves only 1.3; 2.0.0-rc.1 moves nothing;
    2.0.0 moves 2.0, 2 and latest, and 1 stays on 1.4.0."""
    repo = tiny_repo(harness)
    digests = {}
    for number, version in enumerate(["1.4.0", "1.3.9", "2.0.0-rc.1", "2.0.0"], start=20):
        merge = harness.fake.add_commit(repo.owner, repo.name,
                                        files={"app.py": f"print('{version}')\n"})
        deliver(harness, repo.merged(labels=[f"version:{version}"], number=number,
                                     merge_sha=merge, head_sha=merge))
        harness.run_worker()
        digests[version] = registry.manifest_digest(repo.name, version)
    tag = {name: registry.manifest_digest(repo.name, name)
           for name in ("1.4", "1.3", "1", "2.0", "2", "latest")}
    assert tag["1.4"] == tag["1"] == digests["1.4.0"]
    assert tag["1.3"] == digests["1.3.9"]
    assert tag["2.0"] == tag["2"] == tag["latest"] == digests["2.0.0"]
    assert digests["2.0.0-rc.1"] not in tag.values()
    rc = only([b for b in builds_of(harness, repo) if b.version == "2.0.0-rc.1"])
    assert not rc.floating_tags


def test_rerun_of_a_check_before_the_merge_builds_the_head_again(harness, registry):
    """"Re-run" on a pre-merge check run builds the head again (nothing reused) and stages it."""
    from tests.payloads import load_event

    repo = tiny_repo(harness)
    deliver(harness, repo.pull_request("opened", labels=["version:1.0.0"]))
    harness.run_worker()
    first = only(harness.final_check_runs(repo))

    event = load_event("check_run", "rerequested")
    event["check_run"].update(id=first["id"], head_sha=repo.head_sha,
                              external_id=first["external_id"], name=first["name"])
    event["check_run"]["app"]["id"] = harness.fake.app_id
    event["installation"] = {"id": repo.installation_id, "node_id": "x"}
    event["repository"].update(name=repo.name, full_name=repo.full_name)
    event["repository"]["owner"]["login"] = repo.owner
    deliver(harness, event, event="check_run")
    harness.run_worker()

    again = max(harness.final_check_runs(repo), key=lambda r: r["id"])
    assert again["id"] != first["id"] and again["conclusion"] == "success", again["output"]
    assert "built from head" in again["output"]["summary"]
    latest = builds_of(harness, repo)[-1]
    assert latest.pre_merge and latest.note is None  # built, not reused
    assert "Step 1/" in build_log(harness, latest)  # the engine built it again
    assert labels_of(registry, repo.name, "pr-12")[REVISION] == repo.head_sha
    assert registry.manifest_digest(repo.name, "pr-12") == latest.digest
    assert harness.statuses(repo) == []  # still no status before the merge


def test_a_release_updates_the_preview_of_the_other_open_pull_requests(harness, registry):
    """Two pull requests preview `semver:minor` over 1.3.2 as 1.4.0; once #12 publishes 1.4.0,
    the check of #13 says 1.5.0 over 1.4.0, without building #13 again."""
    repo = tiny_repo(harness)
    harness.deliver("pull_request", repo.merged(labels=["version:1.3.2"], number=11))
    harness.run_worker()
    other = harness.fake.add_commit(repo.owner, repo.name, branch="feature-b",
                                    files={"app.py": "print('b')\n"})
    deliver(harness, repo.pull_request("opened", labels=["semver:minor"], number=12))
    deliver(harness, repo.pull_request("opened", labels=["semver:minor"], number=13,
                                       head_sha=other))
    harness.run_worker()
    before = only(harness.final_check_runs(repo, other))
    assert before["output"]["summary"].startswith(f"Merging publishes `{repo.name}:1.4.0`")
    digest = registry.manifest_digest(repo.name, "pr-13")

    deliver(harness, repo.merged(labels=["semver:minor"], number=12))
    harness.run_worker()

    after = only(harness.final_check_runs(repo, other))
    assert after["id"] == before["id"] and after["conclusion"] == "success"
    assert after["output"]["summary"].startswith(
        f"Merging publishes `{repo.name}:1.5.0` (`semver:minor` over 1.4.0).")
    assert registry.manifest_digest(repo.name, "pr-13") == digest
    assert labels_of(registry, repo.name, "1.4.0")[REVISION] == repo.merge_sha


def test_a_pull_request_cannot_stage_under_another_repositorys_image_name(harness, registry):
    """Before the merge too: a name another repository published first gets no pr-N tag."""
    import uuid

    shared = f"shared-{uuid.uuid4().hex[:8]}"
    harness.images.append(shared)
    config = f"services:\n  - name: {shared}\n"
    owner = harness.repository({"Dockerfile": TINY_DOCKERFILE, "app.py": APP,
                                ".github/slipway.yml": config})
    harness.deliver("pull_request", owner.merged(labels=["version:1.0.0"]))
    harness.run_worker()
    before = set(registry.tags(shared))
    assert "1.0.0" in before

    other = harness.repository({"Dockerfile": TINY_DOCKERFILE, "app.py": APP,
                                ".github/slipway.yml": config})
    deliver(harness, other.pull_request("opened", labels=["version:2.0.0"]))
    harness.run_worker()
    run = only(harness.final_check_runs(other))
    assert run["conclusion"] == "failure"
    assert owner.full_name in run["output"]["summary"]
    assert set(registry.tags(shared)) == before
