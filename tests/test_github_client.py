"""github_app.github against the fake GitHub: JWT, installation tokens, check runs, statuses,
contents, tarballs, Enterprise URLs, retries and the errors a user reads."""

from __future__ import annotations

import logging
import socket
import threading
import time

import jwt
import pytest
from fake_github import FakeGitHub

from github_app.errors import INFRASTRUCTURE, REPOSITORY, GitHubError, SourceError
from github_app.github import GitHubApp
from github_app.retries import RetryPolicy
from github_app.tokens import TokenCache, api_roots, app_jwt, jwt_claims

OWNER, REPO = "octocat", "Hello-World"
SLIPWAY_YML = b"services:\n  - name: orders\n    context: services/orders\n"


# -- pure ------------------------------------------------------------------------------------


def test_jwt_claims_backdate_iat_and_stay_under_ten_minutes():
    """iat is 60 s in the past against drift, exp 9 minutes ahead, iss the app id as a string."""
    assert jwt_claims(12345, 1_700_000_000.7) == {
        "iat": 1_699_999_940,
        "exp": 1_700_000_540,
        "iss": "12345",
    }


def test_app_jwt_is_rs256_signed_with_the_private_key():
    """The JWT verifies with the App's public key and algorithm RS256."""
    fake = FakeGitHub(app_id=7)
    token = app_jwt(7, fake.private_key_pem, time.time())
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    claims = jwt.decode(token, fake.public_key, algorithms=["RS256"])
    assert claims["iss"] == "7"


@pytest.mark.parametrize(
    ("url", "flavour", "roots"),
    [
        ("https://api.github.com", "github", ["https://api.github.com"]),
        ("https://api.github.com/", "github", ["https://api.github.com"]),
        ("https://ghe.example.com/api/v3", "enterprise", ["https://ghe.example.com/api/v3"]),
        ("https://ghe.example.com/api/v3/", "enterprise", ["https://ghe.example.com/api/v3"]),
        (
            "https://ghe.example.com",
            "enterprise",
            ["https://ghe.example.com", "https://ghe.example.com/api/v3"],
        ),
        ("https://proxy.example.com/github", "enterprise", ["https://proxy.example.com/github"]),
    ],
)
def test_api_roots_never_double_api_v3(url, flavour, roots):
    """A GHES URL with or without /api/v3 means HOST/api/v3; a bare host is tried as is first."""
    assert api_roots(url) == (flavour, roots)


def test_token_cache_fetches_once_and_renews_inside_the_margin():
    """A cached token is reused until fewer than 300 s are left; then it is fetched again."""
    now = [1000.0]
    fetched = []

    def fetch(installation_id):
        fetched.append(installation_id)
        return f"token-{len(fetched)}", now[0] + 3600

    cache = TokenCache(fetch, lambda: now[0])
    assert cache.get(1)[0] == cache.get(1)[0] == "token-1"
    now[0] += 3600 - 300
    assert cache.get(1)[0] == "token-1"  # exactly 300 s left: still good
    now[0] += 1
    assert cache.get(1)[0] == "token-2"
    assert cache.get(2)[0] == "token-3"  # another installation has its own token
    assert "token" not in repr(cache).replace("TokenCache", "")


# -- against the fake ------------------------------------------------------------------------


@pytest.fixture
def fake(fake_github):
    """conftest's fake GitHub (one per run, reset per test), by this file's short name."""
    return fake_github


class Clock:
    """The machine's clock, moved by the test."""

    def __init__(self, offset: float = 0.0):
        self.offset = offset

    def __call__(self) -> float:
        return time.time() + self.offset


class Sleeps(list):
    """An injected sleep that records each wait instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps():
    return Sleeps()


def make_app(fake, sleeps, *, url=None, clock=None, key=None, **policy) -> GitHubApp:
    policy.setdefault("jitter", lambda: 0.0)
    return GitHubApp(
        url or fake.url,
        fake.app_id,
        key or fake.private_key_pem,
        clock=clock or Clock(),
        retry=RetryPolicy(sleep=sleeps, **policy),
    )


def setup_repo(fake, files=None):
    inst = fake.add_installation(account=OWNER)
    repo = fake.add_repository(OWNER, REPO, files=files, installation_id=inst)
    return inst, repo


def in_progress(sha: str) -> dict:
    return {
        "name": "docker build",
        "head_sha": sha,
        "status": "in_progress",
        "started_at": "2024-05-01T10:00:00Z",
        "details_url": "http://localhost:8080/builds/1",
        "output": {"title": "Building orders 1.4.0", "summary": "Build started."},
    }


COMPLETED = {
    "status": "completed",
    "conclusion": "success",
    "completed_at": "2024-05-01T10:03:00Z",
    "output": {
        "title": "Pushed orders:1.4.0",
        "summary": "localhost:5000/orders:1.4.0@sha256:" + "a" * 64,
    },
}


def token_requests(fake) -> list:
    return [r for r in fake.requests if r.path.endswith("/access_tokens")]


def test_jwt_is_accepted_and_yields_an_installation_token(fake, sleeps):
    """The App's JWT is accepted and the installation token comes back with its expiry."""
    inst, _ = setup_repo(fake)
    token, expires_at = make_app(fake, sleeps).installation_token(inst)
    assert token == fake.tokens_issued[-1]["token"]
    assert expires_at == pytest.approx(fake.now() + 3600, abs=5)
    (request,) = token_requests(fake)
    assert (request.status, request.auth, request.jwt_iss) == (201, "jwt", "str")
    assert fake.rejections == []


def test_concurrent_callers_share_one_token_request(fake, sleeps):
    """Eight workers asking at once cause one access_tokens request and get the same token."""
    inst, _ = setup_repo(fake)
    app = make_app(fake, sleeps)
    barrier = threading.Barrier(8)
    tokens = []

    def ask():
        barrier.wait()
        tokens.append(app.installation_token(inst)[0])

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(tokens) == 8 and len(set(tokens)) == 1
    assert len(token_requests(fake)) == 1


def test_token_is_cached_until_five_minutes_are_left(fake, sleeps):
    """A token is reused while 5 minutes or more remain, renewed below that."""
    inst, _ = setup_repo(fake)
    fake.token_lifetime = 310
    clock = Clock()
    app = make_app(fake, sleeps, clock=clock)
    first = app.installation_token(inst)[0]
    assert app.installation_token(inst)[0] == first
    clock.offset = 11  # 299 s left on our clock
    second = app.installation_token(inst)[0]
    assert second != first
    assert len(token_requests(fake)) == 2


def test_a_build_that_outlives_its_token_reports_with_a_fresh_one(fake, sleeps):
    """An hour later, the check run's update goes out with a new token, not the expired one."""
    inst, repo = setup_repo(fake)
    clock = Clock()
    client = make_app(fake, sleeps, clock=clock).installation(inst)
    run = client.create_check_run(OWNER, REPO, in_progress(repo.default_sha))
    clock.offset = fake.clock_offset = 3700  # both clocks an hour and more later
    client.update_check_run(OWNER, REPO, run["id"], COMPLETED)
    assert fake.check_runs[run["id"]]["conclusion"] == "success"
    assert len(token_requests(fake)) == 2
    assert fake.rejections == []


def test_check_run_is_created_and_completed(fake, sleeps):
    """The bodies pass the fake's OpenAPI validation and land as one check run."""
    inst, repo = setup_repo(fake)
    client = make_app(fake, sleeps).installation(inst)
    created = client.create_check_run(OWNER, REPO, in_progress(repo.default_sha))
    assert created["status"] == "in_progress"
    updated = client.update_check_run(OWNER, REPO, created["id"], COMPLETED)
    assert (updated["status"], updated["conclusion"]) == ("completed", "success")
    assert fake.check_run_history(created["id"]) == [in_progress(repo.default_sha), COMPLETED]
    assert client.get_check_run(OWNER, REPO, created["id"])["output"]["summary"].endswith("a" * 64)
    suite = created["check_suite"]["id"]
    assert [r["id"] for r in client.list_check_runs_for_suite(OWNER, REPO, suite)] == [
        created["id"]
    ]
    assert fake.rejections == []


def test_commit_status_is_posted_unchanged(fake, sleeps):
    """The status body reaches GitHub as reporting.py built it."""
    inst, repo = setup_repo(fake)
    body = {
        "state": "pending",
        "target_url": "http://localhost:8080/builds/1",
        "description": "Building orders 1.4.0",
        "context": "slipway/docker",
    }
    answer = (
        make_app(fake, sleeps).installation(inst).create_status(OWNER, REPO, repo.default_sha, body)
    )
    assert answer["state"] == "pending"
    assert fake.statuses[-1].body == body and fake.statuses[-1].sha == repo.default_sha


def test_get_file_returns_bytes_or_none(fake, sleeps):
    """A file's bytes at a ref; None when the file is not there."""
    inst, repo = setup_repo(fake, files={".github/slipway.yml": SLIPWAY_YML, "README.md": "hi"})
    client = make_app(fake, sleeps).installation(inst)
    assert client.get_file(OWNER, REPO, ".github/slipway.yml", repo.default_sha) == SLIPWAY_YML
    assert client.get_file(OWNER, REPO, ".github/missing.yml", repo.default_sha) is None
    assert client.get_file(OWNER, REPO, ".github", repo.default_sha) is None  # a folder


def test_tree_sha_is_equal_for_commits_with_the_same_files(fake, sleeps):
    """Two commits with the same files have one tree sha; a changed file gives another."""
    inst, repo = setup_repo(fake, files={"README.md": "hi"})
    head = repo.default_sha
    merge = fake.add_commit(OWNER, REPO, files={}, branch="develop")
    changed = fake.add_commit(OWNER, REPO, files={"README.md": "bye"}, branch="other")
    client = make_app(fake, sleeps).installation(inst)
    assert client.get_tree_sha(OWNER, REPO, head) == client.get_tree_sha(OWNER, REPO, merge)
    assert client.get_tree_sha(OWNER, REPO, changed) != client.get_tree_sha(OWNER, REPO, head)


def test_get_pull_request_returns_the_json(fake, sleeps):
    """The pull request comes back as GitHub's JSON, through github3's own call."""
    inst, repo = setup_repo(fake)
    fake.add_pull_request(
        OWNER,
        REPO,
        title="Release 1.4.0",
        head_sha=repo.default_sha,
        merge_commit_sha=repo.default_sha,
        number=7,
    )
    pull = make_app(fake, sleeps).installation(inst).get_pull_request(OWNER, REPO, 7)
    assert (pull["number"], pull["title"]) == (7, "Release 1.4.0")


def test_tarball_follows_the_redirect_and_streams_to_disk(fake, sleeps, tmp_path):
    """The archive is fetched from the codeload redirect without the token and saved."""
    import tarfile

    inst, repo = setup_repo(fake, files={"Dockerfile": "FROM python:3.11-slim\n"})
    client = make_app(fake, sleeps).installation(inst)
    path = client.download_tarball(
        OWNER, REPO, repo.default_sha, tmp_path / "src.tar.gz", max_bytes=10 * 1024**2
    )
    with tarfile.open(path) as tar:
        assert any(name.endswith("/Dockerfile") for name in tar.getnames())
    codeload = [r for r in fake.requests if r.auth == "codeload"]
    assert len(codeload) == 1 and "Authorization" not in codeload[0].headers


def test_tarball_over_max_bytes_is_refused_and_leaves_nothing(fake, sleeps, tmp_path):
    """An archive larger than max_bytes stops the download with a clear error and no file."""
    import os

    inst, repo = setup_repo(fake, files={"big.bin": os.urandom(200_000)})
    client = make_app(fake, sleeps).installation(inst)
    with pytest.raises(SourceError, match="larger than") as caught:
        client.download_tarball(OWNER, REPO, repo.default_sha, tmp_path, max_bytes=50_000)
    assert caught.value.blame == REPOSITORY
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", ["/api/v3", "/api/v3/", "", "/"])
def test_enterprise_url_with_or_without_api_v3(enterprise_fake_github, sleeps, suffix):
    """GITHUB_API_URL as https://HOST/api/v3 or https://HOST reaches HOST/api/v3, never doubled."""
    fake = enterprise_fake_github
    inst, repo = setup_repo(fake)
    app = make_app(fake, sleeps, url=fake.root_url + suffix)
    client = app.installation(inst)
    run = client.create_check_run(OWNER, REPO, in_progress(repo.default_sha))
    assert fake.check_runs[run["id"]]["name"] == "docker build"
    assert app.api_root == fake.root_url + "/api/v3"
    assert not any("/api/v3/api/v3" in r.raw_path for r in fake.requests)
    assert [r.raw_path for r in fake.requests][-1] == f"/api/v3/repos/{OWNER}/{REPO}/check-runs"


def test_502_then_success_is_retried(fake, sleeps):
    """A 502 on creating a check run is retried once, and one check run exists."""
    inst, repo = setup_repo(fake)
    client = make_app(fake, sleeps, base_delay=1.0).installation(inst)
    fake.fail_next("POST", r"/check-runs$", 502)
    client.create_check_run(OWNER, REPO, in_progress(repo.default_sha))
    assert len(fake.check_runs) == 1
    assert sleeps == [0.5]  # base 1 s, jitter 0 -> half the backoff


def test_403_with_retry_after_waits_as_asked(fake, sleeps):
    """A secondary rate limit's Retry-After is the wait before the retry."""
    inst, repo = setup_repo(fake)
    client = make_app(fake, sleeps).installation(inst)
    fake.fail_next(
        "POST",
        r"/statuses/",
        403,
        headers={"Retry-After": "7"},
        body={"message": "You have exceeded a secondary rate limit."},
    )
    body = {"state": "success", "context": "slipway/docker"}
    client.create_status(OWNER, REPO, repo.default_sha, body)
    assert sleeps == [7.0]
    assert len(fake.statuses) == 1


def test_rate_limit_beyond_the_cap_fails_at_once(fake, sleeps):
    """A rate limit that resets in an hour fails now with a rate-limit sentence."""
    inst, repo = setup_repo(fake)
    client = make_app(fake, sleeps).installation(inst)
    reset = int(time.time()) + 3600
    fake.fail_next(
        "GET",
        r"/check-runs/",
        403,
        headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)},
        body={"message": "API rate limit exceeded for installation ID 1."},
    )
    with pytest.raises(GitHubError, match="rate limit") as caught:
        client.get_check_run(OWNER, REPO, 1)
    assert sleeps == []
    assert (caught.value.status, caught.value.retryable) == (403, True)


def test_persistent_500_gives_up_after_the_bound(fake, sleeps):
    """A 500 that does not go away is tried max_attempts times, then raises GitHubError."""
    inst, _ = setup_repo(fake)
    client = make_app(fake, sleeps, max_attempts=3).installation(inst)
    fake.fail_next("GET", r"/check-runs/\d+$", 500, times=10)
    with pytest.raises(GitHubError, match="500") as caught:
        client.get_check_run(OWNER, REPO, 99)
    assert (caught.value.status, caught.value.retryable) == (500, True)
    assert caught.value.blame == INFRASTRUCTURE
    assert len(sleeps) == 2
    assert len([r for r in fake.requests if r.path.endswith("/check-runs/99")]) == 3


def test_a_500_on_creating_a_check_run_is_not_retried(fake, sleeps):
    """GitHub may have created the run before its 500: no retry, no duplicate."""
    inst, repo = setup_repo(fake)
    client = make_app(fake, sleeps).installation(inst)
    fake.fail_next("POST", r"/check-runs$", 500)
    with pytest.raises(GitHubError):
        client.create_check_run(OWNER, REPO, in_progress(repo.default_sha))
    assert sleeps == []


def test_unreachable_github_is_an_infrastructure_error(sleeps):
    """Nothing listening: retried with backoff, then a sentence that names the URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    fake = FakeGitHub(app_id=1)
    app = GitHubApp(
        f"http://127.0.0.1:{port}/api/v3",
        1,
        fake.private_key_pem,
        retry=RetryPolicy(max_attempts=3, sleep=sleeps, jitter=lambda: 0.0),
    )
    with pytest.raises(GitHubError, match="could not be reached") as caught:
        app.installation_token(1)
    assert (caught.value.status, caught.value.retryable) == (None, True)
    assert len(sleeps) == 2


def test_invalid_body_gives_githubs_validation_message(fake, sleeps):
    """A 422 carries GitHub's own validation message and is not retried."""
    inst, repo = setup_repo(fake)
    client = make_app(fake, sleeps).installation(inst)
    body = {**in_progress(repo.default_sha), "status": "completed"}  # no conclusion
    with pytest.raises(GitHubError, match="conclusion") as caught:
        client.create_check_run(OWNER, REPO, body)
    assert (caught.value.status, caught.value.retryable) == (422, False)
    assert sleeps == []


def test_wrong_key_names_the_app_id_key_and_clock(fake, sleeps):
    """A JWT GitHub refuses says what to check."""
    inst, _ = setup_repo(fake)
    other_key = FakeGitHub(app_id=1).private_key_pem
    with pytest.raises(GitHubError, match="GITHUB_APP_ID and the private key") as caught:
        make_app(fake, sleeps, key=other_key).installation_token(inst)
    assert caught.value.status == 401
    assert "clock" in str(caught.value)


def test_unknown_installation_says_the_app_is_not_installed(fake, sleeps):
    """A 404 on the installation says to install the App."""
    with pytest.raises(GitHubError, match="not installed") as caught:
        make_app(fake, sleeps).installation_token(424242)
    assert (caught.value.status, caught.value.retryable) == (404, False)


@pytest.mark.parametrize("server_offset", [-50, 0, 300, 530])
def test_jwt_tolerates_a_server_clock_60_s_behind_to_540_s_ahead(fake, sleeps, server_offset):
    """iat - 60 and exp + 540 keep the JWT valid for a server clock in [-60 s, +540 s]."""
    inst, _ = setup_repo(fake)
    fake.clock_offset = server_offset
    make_app(fake, sleeps).installation_token(inst)
    assert fake.rejections == []


def test_server_clock_two_minutes_behind_is_refused_with_the_clock_hint(fake, sleeps):
    """Beyond 60 s behind, iat is in the server's future; the error points at the clock.

    (The fake's Date header follows the machine's clock, not `clock_offset`, so the
    correction from Date that fixes a drifting local clock cannot apply here.)"""
    inst, _ = setup_repo(fake)
    fake.clock_offset = -120
    with pytest.raises(GitHubError, match=r"clock \(JWT iat/exp\)"):
        make_app(fake, sleeps).installation_token(inst)


def test_local_clock_ahead_is_corrected_from_githubs_date_header(fake, sleeps):
    """Our clock 5 minutes fast: the 401's Date header corrects the JWT and the call succeeds."""
    inst, _ = setup_repo(fake)
    app = make_app(fake, sleeps, clock=Clock(offset=300))
    app.installation_token(inst)
    assert [r.status for r in token_requests(fake)] == [401, 201]


def test_tokens_and_key_never_reach_logs_reprs_or_errors(fake, sleeps, caplog, tmp_path):
    """Debug logs of a whole flow, reprs and error messages hold no token, JWT or key."""
    caplog.set_level(logging.DEBUG)
    inst, repo = setup_repo(fake)
    app = make_app(fake, sleeps)
    client = app.installation(inst)
    run = client.create_check_run(OWNER, REPO, in_progress(repo.default_sha))
    client.update_check_run(OWNER, REPO, run["id"], COMPLETED)
    client.download_tarball(OWNER, REPO, repo.default_sha, tmp_path, max_bytes=10**7)
    fake.fail_next("GET", r"/check-runs/", 401, body={"message": "Bad credentials"})
    with pytest.raises(GitHubError) as caught:
        client.get_check_run(OWNER, REPO, run["id"])
    token = fake.tokens_issued[-1]["token"]
    seen = caplog.text + repr(app) + repr(client) + repr(client._session.gh) + str(caught.value)
    assert token not in seen and token[4:12] not in seen
    assert "eyJ" not in seen
    assert "PRIVATE KEY" not in seen
    (grant,) = [r.query["token"] for r in fake.requests if r.auth == "codeload"]
    assert grant not in seen  # the archive redirect's short-lived grant
    assert "GitHub POST /repos/{owner}/{repo}/check-runs -> 201" in caplog.text
