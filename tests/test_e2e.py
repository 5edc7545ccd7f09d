"""End to end: a signed webhook over real HTTP, the worker, the real Docker
engine and registry, and the check runs and statuses the fake GitHub accepted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from builder import registry as registry_api
from github_app.jobs import BuildState, JobState
from tests.slipway_harness import SECRET, TINY_DOCKERFILE, Harness

pytestmark = pytest.mark.docker

APP = b"print('hello from the service')\n"


@pytest.fixture
def harness(fake_github, registry, data_dir):
    h = Harness(fake_github, registry.address, data_dir)
    yield h
    h.close()
    assert fake_github.rejections == [], "the fake GitHub refused a request Slipway sent"


def tiny_repo(harness, **files):
    return harness.repository({"Dockerfile": TINY_DOCKERFILE, "app.py": APP, **files})


def releases(registry, name: str) -> list[str]:
    """The release tags of an image, sorted: its floating tags (`1.4`, `latest`) left out."""
    return sorted(tag for tag in registry.tags(name) if tag.count(".") == 2)


def only(items):
    assert len(items) == 1, items
    return items[0]


def address_to(event: dict, repo) -> None:
    """Point a sample webhook payload at ``repo`` and the installation that holds it."""
    event["installation"] = {"id": repo.installation_id, "node_id": "x"}
    event["repository"]["name"], event["repository"]["full_name"] = repo.name, repo.full_name
    event["repository"]["owner"]["login"] = repo.owner


def slipway_env(fake_github, registry, data_dir, key_path, **settings) -> dict:
    """The environment of a `python -m github_app` process wired to the fake and the registry.

    Writes the App's private key to ``key_path``; ``settings`` add or override variables.
    """
    key_path.write_bytes(fake_github.private_key_pem)
    return {
        **os.environ,
        "GITHUB_APP_ID": str(fake_github.app_id),
        "GITHUB_PRIVATE_KEY_PATH": str(key_path),
        "GITHUB_WEBHOOK_SECRET": SECRET,
        "GITHUB_API_URL": fake_github.url,
        "REGISTRY": registry.address,
        "DATA_DIR": str(data_dir),
        "BUILD_NETWORK": "host",
        "PUBLIC_URL": "http://slipway.example",
        "ALLOWED_OWNERS": "octo-org",
        **settings,
    }


def test_merged_pull_request_with_version_label_is_pushed_and_reported(harness, registry):
    """A merge labelled version:1.2.3 lands in the registry and its check run carries the digest."""
    repo = tiny_repo(harness)
    answer = harness.deliver("pull_request", repo.merged(labels=["version:1.2.3"]))
    assert answer.status_code == 202, answer.text
    harness.run_worker()

    assert releases(registry, repo.name) == ["1.2.3"]
    digest = registry.manifest_digest(repo.name, "1.2.3")
    run = only(harness.final_check_runs(repo))
    assert run["name"] == "docker build"
    assert run["status"] == "completed" and run["conclusion"] == "success"
    assert f"{registry.address}/{repo.name}:1.2.3@{digest}" in run["output"]["summary"]
    assert run["details_url"].startswith("http://slipway.example/builds/")
    history = harness.fake.check_run_history(run["id"])
    assert history[0]["status"] == "in_progress"
    states = [s["state"] for s in harness.statuses(repo)]
    assert states == ["pending", "success"]
    labels = registry_api.image_labels(registry.address, repo.name, "1.2.3")
    assert labels["org.opencontainers.image.revision"] == repo.merge_sha
    build = only(harness.store.recent_builds(repository=repo.full_name))
    assert build.state is BuildState.SUCCEEDED and build.digest == digest and build.reported


def test_version_from_the_title(harness, registry):
    """Without a label, `[v1.4.0] add orders endpoint` publishes 1.4.0."""
    repo = tiny_repo(harness)
    harness.deliver("pull_request", repo.merged(title="[v1.4.0] add orders endpoint"))
    harness.run_worker()
    assert releases(registry, repo.name) == ["1.4.0"]
    assert only(harness.final_check_runs(repo))["conclusion"] == "success"


def test_semver_minor_bumps_the_highest_published_version(harness, registry):
    """semver:minor on a service whose registry holds 1.3.2 publishes 1.4.0."""
    repo = tiny_repo(harness)
    harness.deliver("pull_request", repo.merged(labels=["version:1.3.2"]))
    harness.run_worker()
    second = harness.fake.add_commit(repo.owner, repo.name, {"app.py": b"print(2)\n"})
    repo.merge_sha = second
    harness.deliver("pull_request", repo.merged(labels=["semver:minor"], title="More"))
    harness.run_worker()
    assert releases(registry, repo.name) == ["1.3.2", "1.4.0"]
    summary = harness.fake.check_runs[max(harness.fake.check_runs)]["output"]["summary"]
    assert "1.4.0" in summary and "semver:minor" in summary


def test_no_version_fails_with_instructions(harness, registry):
    """A merge without a version fails its check run with instructions and pushes nothing."""
    repo = tiny_repo(harness)
    harness.deliver("pull_request", repo.merged(title="Fix typo"))
    harness.run_worker()
    run = only(harness.final_check_runs(repo))
    assert run["conclusion"] == "failure"
    assert "version:1.4.0" in run["output"]["summary"]
    assert "semver:patch" in run["output"]["summary"]
    assert releases(registry, repo.name) == []
    assert harness.statuses(repo)[-1]["state"] == "failure"


def test_broken_dockerfile_fails_with_the_build_log(harness, registry):
    """A failing RUN step fails the check run; the step and its output are in the report."""
    broken = TINY_DOCKERFILE.replace(
        "RUN python3 -c \"print('compiled', 1 + 1)\"",
        "RUN echo 'about to fail: no such module' && python3 -c 'import no_such_module'",
    )
    repo = harness.repository({"Dockerfile": broken, "app.py": APP})
    harness.deliver("pull_request", repo.merged(labels=["version:0.1.0"]))
    harness.run_worker()
    run = only(harness.final_check_runs(repo))
    assert run["conclusion"] == "failure"
    assert "build step" in run["output"]["title"] or "build step" in run["output"]["summary"]
    assert "no_such_module" in run["output"]["text"]
    assert harness.statuses(repo)[-1]["state"] == "failure"
    assert releases(registry, repo.name) == []


@pytest.mark.parametrize(
    ("payload_change", "event"),
    [
        ({"merged": False}, "pull_request"),
        ({"base_ref": "main"}, "pull_request"),
    ],
)
def test_unmerged_or_other_branch_builds_nothing(harness, registry, payload_change, event):
    """A PR closed without merge, or merged into another branch, builds nothing: no check."""
    repo = tiny_repo(harness)
    answer = harness.deliver(event, repo.merged(labels=["version:1.0.0"], **payload_change))
    assert answer.status_code == 202
    harness.run_worker()
    assert harness.final_check_runs(repo) == []
    assert releases(registry, repo.name) == []


def test_bad_signature_is_refused_and_nothing_is_recorded(harness):
    """A delivery with a wrong signature answers 401 and leaves no job behind."""
    repo = tiny_repo(harness)
    answer = harness.deliver("pull_request", repo.merged(labels=["version:1.0.0"]),
                             secret="not the secret")
    assert answer.status_code == 401
    assert harness.store.queue_depth() == 0
    assert harness.store.recent_builds() == []


def test_same_delivery_twice_builds_once(harness, registry):
    """A redelivered webhook (same X-GitHub-Delivery) is answered duplicate and built once."""
    repo = tiny_repo(harness)
    payload = repo.merged(labels=["version:2.0.0"])
    first = harness.deliver("pull_request", payload, delivery_id="e2e-dup")
    second = harness.deliver("pull_request", payload, delivery_id="e2e-dup")
    assert (first.status_code, second.status_code) == (202, 200)
    harness.run_worker()
    assert len(harness.final_check_runs(repo)) == 1
    assert len(harness.store.recent_builds(repository=repo.full_name)) == 1


def test_two_services_get_a_check_run_and_an_image_each(harness, registry):
    """`.github/slipway.yml` with two services builds two images and opens two named checks."""
    config = (
        "services:\n"
        "  - name: {a}\n    context: services/orders\n"
        "  - name: {b}\n    context: services/billing\n    dockerfile: build/Dockerfile\n"
    )
    a, b = f"orders-{os.getpid()}-{time.time_ns() % 10**6}", f"billing-{time.time_ns() % 10**6}"
    files = {
        ".github/slipway.yml": config.format(a=a, b=b),
        "services/orders/Dockerfile": TINY_DOCKERFILE,
        "services/orders/app.py": APP,
        "services/billing/build/Dockerfile": TINY_DOCKERFILE.replace("COPY app.py",
                                                                     "COPY src/app.py"),
        "services/billing/src/app.py": APP,
    }
    repo = harness.repository(files)
    harness.deliver("pull_request", repo.merged(labels=["version:3.1.0"]))
    harness.run_worker()
    runs = {run["name"]: run for run in harness.final_check_runs(repo)}
    assert set(runs) == {f"docker build: {a}", f"docker build: {b}"}
    assert all(run["conclusion"] == "success" for run in runs.values())
    assert releases(registry, a) == ["3.1.0"] and releases(registry, b) == ["3.1.0"]
    contexts = {s["context"] for s in harness.statuses(repo)}
    assert contexts == {f"slipway/docker: {a}", f"slipway/docker: {b}"}


def test_github_502_then_200_is_retried(harness, registry):
    """GitHub answering 502 to the check-run call is retried and the build is still reported."""
    repo = tiny_repo(harness)
    harness.fake.fail_next("POST", r"/check-runs$", 502, times=1)
    harness.fake.fail_next("PATCH", r"/check-runs/\d+$", 502, times=2)
    harness.deliver("pull_request", repo.merged(labels=["version:1.0.1"]))
    harness.run_worker()
    run = only(harness.final_check_runs(repo))
    assert run["conclusion"] == "success"
    injected = [r for r in harness.fake.requests if r.injected]
    assert len(injected) == 3
    scrape = requests.get(f"{harness.url}/metrics", timeout=10).text
    assert 'slipway_github_api_calls_total{status="502"} 3.0' in scrape


def test_a_version_published_from_another_commit_is_refused(harness, registry):
    """Versions are immutable: 1.0.0 from another commit fails and names the commit that owns it."""
    repo = tiny_repo(harness)
    harness.deliver("pull_request", repo.merged(labels=["version:1.0.0"]))
    harness.run_worker()
    first_merge = repo.merge_sha
    digest = registry.manifest_digest(repo.name, "1.0.0")
    repo.merge_sha = harness.fake.add_commit(repo.owner, repo.name, {"app.py": b"print(3)\n"})
    harness.deliver("pull_request", repo.merged(labels=["version:1.0.0"], title="Again"))
    harness.run_worker()
    last = harness.fake.check_runs[max(harness.fake.check_runs)]
    assert last["conclusion"] == "failure"
    assert first_merge[:12] in last["output"]["summary"]
    assert registry.manifest_digest(repo.name, "1.0.0") == digest


def test_rerun_of_the_check_run_builds_again(harness, registry):
    """"Re-run" on the check run (check_run rerequested) rebuilds the same merge and version."""
    from tests.payloads import load_event

    repo = tiny_repo(harness)
    harness.deliver("pull_request", repo.merged(labels=["semver:patch"]))
    harness.run_worker()
    run = only(harness.final_check_runs(repo))
    assert releases(registry, repo.name) == ["0.0.1"]

    def rerun(run):
        event = load_event("check_run", "rerequested")
        event["check_run"].update(id=run["id"], head_sha=repo.head_sha,
                                  external_id=run["external_id"], name=run["name"])
        event["check_run"]["app"]["id"] = harness.fake.app_id
        address_to(event, repo)
        answer = harness.deliver("check_run", event)
        assert answer.status_code == 202, answer.text
        harness.run_worker()

    rerun(run)
    assert releases(registry, repo.name) == ["0.0.1"]  # the same version, not a second bump
    # Re-run the re-run's own check run: it still finds the merge it builds.
    rerun(harness.fake.check_runs[max(harness.fake.check_runs)])
    assert releases(registry, repo.name) == ["0.0.1"]
    builds = harness.store.recent_builds(repository=repo.full_name)
    assert len(builds) == 3 and all(b.state is BuildState.SUCCEEDED for b in builds)
    runs = harness.final_check_runs(repo)
    assert len(runs) == 3 and all(r["conclusion"] == "success" for r in runs)


def test_killed_during_a_build_the_check_run_completes_after_restart(
    fake_github, registry, data_dir, tmp_path
):
    """A worker process killed mid-build leaves the job; the next start finishes its check run."""
    harness = Harness(fake_github, registry.address, data_dir)
    try:
        slow = TINY_DOCKERFILE.replace(
            "RUN python3 -c \"print('compiled', 1 + 1)\"",
            # A new token each run: a cached step would not be slow.
            f"RUN echo building-slowly-{time.time_ns()} && sleep 8 && echo done",
        )
        repo = harness.repository({"Dockerfile": slow, "app.py": APP})
        harness.deliver("pull_request", repo.merged(labels=["version:4.0.0"]))
        env = slipway_env(fake_github, registry, data_dir, tmp_path / "app.pem")
        worker = subprocess.Popen([sys.executable, "-m", "github_app", "worker"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                runs = harness.final_check_runs(repo)
                if runs and runs[0]["status"] == "in_progress":
                    break
                time.sleep(0.2)
            else:
                pytest.fail("the worker never opened the check run")
            time.sleep(1.5)  # inside the slow RUN step
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
        stderr = worker.stderr.read().decode(errors="replace")
        assert harness.store.job_counts()[JobState.RUNNING] == 1, stderr[-3000:]
        assert only(harness.final_check_runs(repo))["status"] == "in_progress"

        # Once its lease lapses (LEASE_SECONDS), any worker takes the job again.
        assert harness.store.requeue_interrupted() == [], "the lease is still live"
        assert harness.store.requeue_interrupted(now=time.time() + 61)
        harness.run_worker()
        run = only(harness.final_check_runs(repo))
        assert run["status"] == "completed" and run["conclusion"] == "success"
        assert releases(registry, repo.name) == ["4.0.0"]
    finally:
        harness.close()


def test_registry_down_is_an_infrastructure_error(fake_github, registry, data_dir):
    """An unreachable registry fails the check run; the status says `error`, not `failure`."""
    harness = Harness(fake_github, "127.0.0.1:9", data_dir, registry_patience=0)
    try:
        repo = tiny_repo(harness)
        harness.deliver("pull_request", repo.merged(labels=["version:1.0.0"]))
        harness.run_worker()
        run = only(harness.final_check_runs(repo))
        assert run["conclusion"] == "failure"
        assert "infrastructure" in run["output"]["summary"]
        assert harness.statuses(repo)[-1]["state"] == "error"
    finally:
        harness.close()


def test_healthz_answers_over_real_http(harness):
    """The running app reports its store and the Docker engine as healthy."""
    answer = requests.get(f"{harness.url}/healthz", timeout=10)
    assert answer.status_code == 200, answer.text


def test_rerun_all_checks_builds_the_suite_again(harness, registry):
    """"Re-run all checks" (check_suite rerequested) rebuilds the merge of that head commit."""
    from tests.payloads import load_event

    repo = tiny_repo(harness)
    harness.deliver("pull_request", repo.merged(labels=["version:5.0.0"]))
    harness.run_worker()
    run = only(harness.final_check_runs(repo))
    event = load_event("check_suite", "rerequested")
    event["check_suite"].update(id=run["check_suite"]["id"], head_sha=repo.head_sha)
    event["check_suite"]["app"]["id"] = harness.fake.app_id
    address_to(event, repo)
    answer = harness.deliver("check_suite", event)
    assert answer.status_code == 202, answer.text
    harness.run_worker()
    builds = harness.store.recent_builds(repository=repo.full_name)
    assert len(builds) == 2 and all(b.state is BuildState.SUCCEEDED for b in builds)
    assert builds[0].check_run_id != builds[1].check_run_id
    assert releases(registry, repo.name) == ["5.0.0"]


def test_serve_killed_during_a_build_completes_the_check_run_after_restart(
    fake_github, registry, data_dir, tmp_path
):
    """`python -m github_app serve` killed mid-build: started again, it finishes the check run."""
    harness = Harness(fake_github, registry.address, data_dir / "harness")
    try:
        slow = TINY_DOCKERFILE.replace(
            "RUN python3 -c \"print('compiled', 1 + 1)\"",
            f"RUN echo serve-slowly-{time.time_ns()} && sleep 8 && echo done",
        )
        repo = harness.repository({"Dockerfile": slow, "app.py": APP})
        port = _free_port()
        # A short lease: the restarted serve takes the killed one's job once it lapses.
        env = slipway_env(fake_github, registry, data_dir / "serve", tmp_path / "app.pem",
                          PUBLIC_URL=f"http://127.0.0.1:{port}", PORT=str(port), WEB_WORKERS="1",
                          LEASE_SECONDS="5")
        url = f"http://127.0.0.1:{port}"
        serve = _start_serve(env, url)
        try:
            body_payload = repo.merged(labels=["version:6.0.0"])
            from tests.payloads import to_body, webhook_headers

            body = to_body(body_payload)
            answer = requests.post(f"{url}/webhook", data=body, timeout=10,
                                   headers=webhook_headers("pull_request", body, SECRET))
            assert answer.status_code == 202, answer.text
            _wait(lambda: [r for r in harness.final_check_runs(repo)
                           if r["status"] == "in_progress"], "the check run to open")
            time.sleep(1.5)  # inside the slow RUN step
        finally:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait(timeout=10)
        assert only(harness.final_check_runs(repo))["status"] == "in_progress"

        serve = _start_serve(env, url)
        try:
            _wait(lambda: only(harness.final_check_runs(repo))["status"] == "completed",
                  "the check run to complete after the restart", timeout=120)
        finally:
            os.killpg(serve.pid, signal.SIGTERM)
            serve.wait(timeout=30)
        run = only(harness.final_check_runs(repo))
        assert run["conclusion"] == "success", run["output"]
        assert releases(registry, repo.name) == ["6.0.0"]
    finally:
        harness.close()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_serve(env: dict, url: str) -> subprocess.Popen:
    # Its own process group: the test ends Granian and its worker process together.
    proc = subprocess.Popen(
        [sys.executable, "-m", "github_app", "serve", "--host", "127.0.0.1"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    def up():
        try:
            return requests.get(f"{url}/healthz", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False
    _wait(up, "serve to answer /healthz")
    return proc


def _wait(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def test_a_merge_in_an_account_that_is_not_allowed_makes_no_github_call(harness, registry):
    """Outside ALLOWED_OWNERS: 202 ignored, then no token, no check run, no build, no push."""
    repo = harness.repository({"Dockerfile": TINY_DOCKERFILE, "app.py": APP}, owner="mallory")
    answer = harness.deliver("pull_request", repo.merged(labels=["version:1.0.0"]))
    assert answer.status_code == 202
    assert "mallory is not in ALLOWED_OWNERS" in answer.json()["ignored"]
    harness.run_worker()
    assert harness.fake.requests == []
    assert harness.store.recent_builds() == []
    assert registry.tags(repo.name) == []


def test_a_link_out_of_the_repository_is_the_repositorys_failure(harness, registry):
    """A symlink leaving the tree fails the build with status `failure`, naming the path."""
    from fake_github_shapes import Symlink

    repo = tiny_repo(harness, **{"config/secrets": Symlink(b"../../../../etc/shadow")})
    harness.deliver("pull_request", repo.merged(labels=["version:1.0.0"]))
    harness.run_worker()
    run = only(harness.final_check_runs(repo))
    assert run["conclusion"] == "failure"
    text = run["output"]["summary"] + (run["output"].get("text") or "")
    assert "config/secrets" in text and "the repository" in text.lower()
    assert [s["state"] for s in harness.statuses(repo)] == ["pending", "failure"]
    assert registry.tags(repo.name) == []
    build = only(harness.store.recent_builds(repository=repo.full_name))
    assert build.state is BuildState.FAILED


def test_a_private_repositorys_build_is_shown_only_to_its_readers(
        fake_github, registry, data_dir):
    """Merged in a private repository: 404 to the world, shown after signing in with GitHub."""
    harness = Harness(fake_github, registry.address, data_dir,
                      github_client_id=fake_github.client_id,
                      github_client_secret=fake_github.client_secret)
    try:
        secret = harness.repository({"Dockerfile": TINY_DOCKERFILE, "app.py": APP},
                                    private=True)
        public = harness.repository({"Dockerfile": TINY_DOCKERFILE, "app.py": APP})
        fake_github.grant("octocat", secret.full_name)
        harness.deliver("pull_request", secret.merged(labels=["version:1.0.0"]))
        harness.deliver("pull_request", public.merged(labels=["version:1.0.0"]))
        harness.run_worker()
        hidden = only(harness.store.recent_builds(repository=secret.full_name))
        shown = only(harness.store.recent_builds(repository=public.full_name))
        assert hidden.private is True and shown.private is False

        browser = requests.Session()
        paths = [f"/builds/{hidden.id}", f"/builds/{hidden.id}/log",
                 f"/badges/{secret.full_name}.svg"]
        assert [browser.get(harness.url + p).status_code for p in paths] == [404, 404, 404]
        assert browser.get(f"{harness.url}/builds/{shown.id}").status_code == 200
        assert secret.name not in browser.get(f"{harness.url}/builds").text

        start = browser.get(f"{harness.url}/login?next=/builds/{hidden.id}",
                            allow_redirects=False)
        back = requests.get(start.headers["Location"], allow_redirects=False, timeout=10)
        callback = back.headers["Location"].replace("http://slipway.example", harness.url)
        landed = browser.get(callback)
        assert landed.status_code == 200 and landed.url == f"{harness.url}/builds/{hidden.id}"
        assert "1.0.0" in landed.text
        assert [browser.get(harness.url + p).status_code for p in paths] == [200, 200, 200]
        assert secret.name in browser.get(f"{harness.url}/builds").text
    finally:
        harness.close()


def test_an_image_name_published_by_one_repository_is_refused_to_another(harness, registry):
    """Two repositories naming one image: the first owns it; the second fails, pushing nothing."""
    import uuid

    shared = f"shared-{uuid.uuid4().hex[:8]}"
    config = f"services:\n  - name: {shared}\n"
    first = tiny_repo(harness, **{".github/slipway.yml": config})
    harness.deliver("pull_request", first.merged(labels=["version:1.0.0"]))
    harness.run_worker()
    assert "1.0.0" in registry.tags(shared)
    before = {tag: registry.manifest_digest(shared, tag) for tag in registry.tags(shared)}

    second = tiny_repo(harness, **{".github/slipway.yml": config})
    harness.deliver("pull_request", second.merged(labels=["version:2.0.0"]))
    harness.run_worker()
    run = only(harness.final_check_runs(second))
    assert run["conclusion"] == "failure"
    summary = run["output"]["summary"]
    assert first.full_name in summary and "`name:`" in summary
    assert "IMAGE_NAME={owner}/{service}" in summary
    assert [s["state"] for s in harness.statuses(second)][-1] == "failure"
    assert {tag: registry.manifest_digest(shared, tag) for tag in registry.tags(shared)} == (
        before)  # nothing pushed: no 2.0.0, no floating tag moved

    # The owner goes on publishing under its name.
    first.merge_sha = harness.fake.add_commit(first.owner, first.name, {"app.py": b"print(3)\n"})
    harness.deliver("pull_request", first.merged(labels=["version:1.1.0"], title="More"))
    harness.run_worker()
    assert {"1.0.0", "1.1.0"} <= set(registry.tags(shared))


def test_image_name_owner_slash_service_keeps_forks_apart(fake_github, registry, data_dir):
    """IMAGE_NAME={owner}/{service}: the upstream and a fork publish one service side by side."""
    import uuid

    harness = Harness(fake_github, registry.address, data_dir, image_name="{owner}/{service}",
                      allowed_owners=("octo-org", "Fork-Owner"))
    try:
        name = f"orders-{uuid.uuid4().hex[:8]}"
        files = {"Dockerfile": TINY_DOCKERFILE, "app.py": APP}
        upstream = harness.repository(files, name=name)
        fork = harness.repository(files, name=name, owner="Fork-Owner")
        harness.deliver("pull_request", upstream.merged(labels=["version:1.0.0"]))
        harness.deliver("pull_request", fork.merged(labels=["version:1.0.0"]))
        harness.run_worker()
        assert "1.0.0" in registry.tags(f"octo-org/{name}")
        assert "1.0.0" in registry.tags(f"fork-owner/{name}")
        assert registry.tags(name) == []
        for repo, owner in ((upstream, "octo-org"), (fork, "fork-owner")):
            run = only(harness.final_check_runs(repo))
            assert run["conclusion"] == "success", run["output"]
            assert f"{registry.address}/{owner}/{name}:1.0.0@" in run["output"]["summary"]
            assert run["name"] == "docker build"
    finally:
        harness.close()
