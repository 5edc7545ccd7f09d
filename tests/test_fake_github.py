"""The fake GitHub rejects what GitHub rejects, over real HTTP with real JWTs."""

from __future__ import annotations

import base64
import io
import json
import tarfile
import time

import github3
import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

OWNER, REPO = "octocat", "Hello-World"


@pytest.fixture
def fake(fake_github):
    """conftest's fake GitHub (one per run, reset per test), by this file's short name."""
    return fake_github


@pytest.fixture
def repo(fake):
    fake.add_installation(account=OWNER)
    return fake.add_repository(OWNER, REPO, files={
        "Dockerfile": "FROM python:3.11-slim\n", "src/app.py": b"print('hi')\n"})


def app_jwt(fake, *, iat_delta=-60, exp_delta=540, iss=None, key=None) -> str:
    now = int(time.time())
    claims = {"iat": now + iat_delta, "exp": now + exp_delta,
              "iss": fake.app_id if iss is None else iss}
    # PyJWT's jwt.encode refuses an int iss since 2.10; GitHub takes both, so sign the JWS.
    payload = json.dumps(claims).encode()
    return jwt.PyJWS().encode(payload, key or fake.private_key_pem, algorithm="RS256")


def installation_token(fake, installation_id=None) -> str:
    installation_id = installation_id or next(iter(fake.installations))
    response = requests.post(f"{fake.url}/app/installations/{installation_id}/access_tokens",
                             headers={"Authorization": f"Bearer {app_jwt(fake)}"}, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()["token"]


def get_app(fake, token: str) -> requests.Response:
    return requests.get(f"{fake.url}/app", headers={"Authorization": f"Bearer {token}"},
                        timeout=10)


def api(fake, method, path, token, **kwargs) -> requests.Response:
    headers = {"Authorization": f"token {token}"} if token else {}
    return requests.request(method, f"{fake.url}{path}", headers=headers, timeout=10, **kwargs)


# -- App JWT ------------------------------------------------------------------------------------

def test_valid_jwt_reads_the_app_and_records_the_form_of_iss(fake):
    """A JWT signed by the App's key with iss = app id is accepted, as int or as string."""
    assert get_app(fake, app_jwt(fake)).json()["id"] == fake.app_id
    assert get_app(fake, app_jwt(fake, iss=str(fake.app_id))).status_code == 200
    assert [r.jwt_iss for r in fake.requests] == ["int", "str"]
    assert fake.rejections == []


def test_jwt_signed_by_another_key_is_rejected(fake):
    """A JWT with a signature the App's public key does not verify answers 401."""
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    response = get_app(fake, app_jwt(fake, key=other))
    assert response.status_code == 401
    assert response.json()["message"] == "A JSON web token could not be decoded"
    assert "documentation_url" in response.json()


def test_jwt_with_another_iss_is_rejected(fake):
    """A JWT whose iss is not the App answers 401 Integration not found."""
    response = get_app(fake, app_jwt(fake, iss=fake.app_id + 1))
    assert (response.status_code, response.json()["message"]) == (401, "Integration not found")


def test_jwt_expiring_eleven_minutes_ahead_is_rejected(fake):
    """GitHub refuses a JWT whose exp is more than 10 minutes ahead of its clock."""
    response = get_app(fake, app_jwt(fake, iat_delta=0, exp_delta=660))
    assert response.status_code == 401
    assert response.json()["message"] == "'Expiration time' claim ('exp') is too far in the future"


def test_jwt_issued_in_the_future_is_rejected(fake):
    """A JWT whose iat is ahead of GitHub's clock answers 401."""
    response = get_app(fake, app_jwt(fake, iat_delta=30))
    assert response.status_code == 401
    assert "'Issued at' claim ('iat') must be an Integer" in response.json()["message"]


def test_expired_jwt_is_rejected(fake):
    """A JWT past its exp answers 401."""
    response = get_app(fake, app_jwt(fake, iat_delta=-700, exp_delta=-100))
    assert response.status_code == 401
    assert "'Expiration time' claim ('exp') must be a numeric value" in response.json()["message"]


def test_server_clock_behind_turns_a_full_ten_minute_jwt_away(fake):
    """With GitHub's clock 30 s behind, exp = now + 600 is too far ahead, now + 540 is fine."""
    fake.clock_offset = -30
    assert get_app(fake, app_jwt(fake, iat_delta=-60, exp_delta=600)).status_code == 401
    assert get_app(fake, app_jwt(fake, iat_delta=-60, exp_delta=540)).status_code == 200


def test_installation_token_is_not_an_app_jwt(fake, repo):
    """/app endpoints refuse an installation token."""
    token = installation_token(fake)
    assert get_app(fake, token).status_code == 401


def test_undecodable_and_missing_jwt_are_rejected(fake):
    """Garbage in the Bearer header, or none at all, answers 401."""
    assert get_app(fake, "not-a-jwt").json()["message"] == "A JSON web token could not be decoded"
    assert requests.get(f"{fake.url}/app", timeout=10).status_code == 401


# -- installation tokens ------------------------------------------------------------------------

def test_access_token_has_githubs_shape(fake, repo):
    """POST .../access_tokens answers a ghs_ token with expires_at in ISO 8601 Z."""
    inst = next(iter(fake.installations))
    response = requests.post(f"{fake.url}/app/installations/{inst}/access_tokens",
                             headers={"Authorization": f"Bearer {app_jwt(fake)}"}, timeout=10)
    body = response.json()
    assert response.status_code == 201
    assert body["token"].startswith("ghs_")
    assert body["expires_at"].endswith("Z") and body["repository_selection"] == "all"
    assert body["permissions"]["checks"] == "write"


def test_repository_call_without_token_is_rejected(fake, repo):
    """A repository call without Authorization answers 401."""
    assert api(fake, "GET", f"/repos/{OWNER}/{REPO}", None).status_code == 401
    assert fake.rejections[-1].status == 401


def test_app_jwt_is_not_an_installation_token(fake, repo):
    """A repository call with the App's JWT answers 401 Bad credentials."""
    response = requests.get(f"{fake.url}/repos/{OWNER}/{REPO}", timeout=10,
                            headers={"Authorization": f"Bearer {app_jwt(fake)}"})
    assert (response.status_code, response.json()["message"]) == (401, "Bad credentials")


def test_expired_installation_token_is_rejected(fake, repo):
    """An installation token past its expires_at answers 401 Bad credentials."""
    fake.token_lifetime = 1
    token = installation_token(fake)
    assert api(fake, "GET", f"/repos/{OWNER}/{REPO}", token).status_code == 200
    fake.clock_offset = 2
    response = api(fake, "GET", f"/repos/{OWNER}/{REPO}", token)
    assert (response.status_code, response.json()["message"]) == (401, "Bad credentials")


def test_token_of_another_installation_cannot_see_the_repository(fake, repo):
    """A token of an installation that does not cover the repository gets 404, as on GitHub."""
    other = fake.add_installation(account="someone-else")
    fake.add_repository("someone-else", "theirs", installation_id=other)
    token = installation_token(fake, other)
    response = api(fake, "GET", f"/repos/{OWNER}/{REPO}", token)
    assert (response.status_code, response.json()["message"]) == (404, "Not Found")
    assert api(fake, "GET", "/repos/someone-else/theirs", token).status_code == 200


def test_repo_installation_lookup_needs_the_jwt(fake, repo):
    """GET /repos/{o}/{r}/installation answers the installation to a JWT."""
    response = requests.get(f"{fake.url}/repos/{OWNER}/{REPO}/installation", timeout=10,
                            headers={"Authorization": f"Bearer {app_jwt(fake)}"})
    assert response.status_code == 200
    assert response.json()["id"] == repo.installation_id


# -- request bodies -----------------------------------------------------------------------------

def test_valid_check_run_is_created_and_recorded(fake, repo):
    """A valid check run answers 201 in GitHub's shape and is recorded."""
    token = installation_token(fake)
    body = {"name": "docker build", "head_sha": repo.default_sha, "status": "in_progress",
            "external_id": "7", "details_url": "http://localhost:8080/builds/7"}
    response = api(fake, "POST", f"/repos/{OWNER}/{REPO}/check-runs", token, json=body)
    assert response.status_code == 201, response.text
    run = response.json()
    assert run["status"] == "in_progress" and run["head_sha"] == repo.default_sha
    assert run["app"]["id"] == fake.app_id and run["check_suite"]["id"]
    assert fake.check_runs[run["id"]] == run
    assert fake.check_run_history(run["id"]) == [body]
    second = api(fake, "POST", f"/repos/{OWNER}/{REPO}/check-runs", token,
                 json={"name": "other", "head_sha": repo.default_sha}).json()
    assert second["check_suite"]["id"] == run["check_suite"]["id"]
    assert fake.rejections == []


def test_check_run_completes_by_patch(fake, repo):
    """Giving a conclusion completes the run; the PATCH body joins the history."""
    token = installation_token(fake)
    run = api(fake, "POST", f"/repos/{OWNER}/{REPO}/check-runs", token,
              json={"name": "docker build", "head_sha": repo.default_sha}).json()
    patch = {"conclusion": "success", "output": {"title": "Pushed", "summary": "ok"}}
    response = api(fake, "PATCH", f"/repos/{OWNER}/{REPO}/check-runs/{run['id']}", token,
                   json=patch)
    assert response.status_code == 200
    assert response.json()["status"] == "completed"
    assert response.json()["output"]["summary"] == "ok"
    assert fake.check_run_history(run["id"])[1] == patch
    listed = api(fake, "GET", f"/repos/{OWNER}/{REPO}/commits/{repo.default_sha}/check-runs",
                 token).json()
    assert [r["id"] for r in listed["check_runs"]] == [run["id"]]


def test_unknown_conclusion_is_invalid(fake, repo):
    """A conclusion outside the OpenAPI enum answers 422 Invalid request."""
    token = installation_token(fake)
    response = api(fake, "POST", f"/repos/{OWNER}/{REPO}/check-runs", token,
                   json={"name": "b", "head_sha": repo.default_sha, "conclusion": "passed"})
    assert response.status_code == 422
    assert response.json()["message"].startswith("Invalid request.\n\n")
    assert "conclusion" in response.json()["message"]
    assert fake.check_runs == {}


def test_summary_of_65536_bytes_is_invalid(fake, repo):
    """GitHub counts the 65535 limit of summary in bytes: 21846 three-byte characters fail."""
    token = installation_token(fake)
    summary = "€" * 21846  # 65538 bytes, 21846 characters
    response = api(fake, "POST", f"/repos/{OWNER}/{REPO}/check-runs", token,
                   json={"name": "b", "head_sha": repo.default_sha,
                         "output": {"title": "t", "summary": summary}})
    assert response.status_code == 422
    exact = api(fake, "POST", f"/repos/{OWNER}/{REPO}/check-runs", token,
                json={"name": "b", "head_sha": repo.default_sha,
                      "output": {"title": "t", "summary": "x" * 65536}})
    assert exact.status_code == 422
    fits = api(fake, "POST", f"/repos/{OWNER}/{REPO}/check-runs", token,
               json={"name": "b", "head_sha": repo.default_sha,
                     "output": {"title": "t", "summary": "x" * 65535}})
    assert fits.status_code == 201


def test_output_without_title_and_completed_without_conclusion_are_invalid(fake, repo):
    """GitHub's prose rules: output needs a title; status completed needs a conclusion."""
    token = installation_token(fake)
    path = f"/repos/{OWNER}/{REPO}/check-runs"
    no_title = {"name": "b", "head_sha": repo.default_sha, "output": {"summary": "s"}}
    no_conclusion = {"name": "b", "head_sha": repo.default_sha, "status": "completed"}
    assert api(fake, "POST", path, token, json=no_title).status_code == 422
    assert api(fake, "POST", path, token, json=no_conclusion).status_code == 422


def test_check_run_on_unknown_commit_is_invalid(fake, repo):
    """A head_sha the repository does not hold answers 422."""
    token = installation_token(fake)
    response = api(fake, "POST", f"/repos/{OWNER}/{REPO}/check-runs", token,
                   json={"name": "b", "head_sha": "0" * 40})
    assert response.status_code == 422


def test_status_description_of_141_characters_is_invalid(fake, repo):
    """A commit status description longer than 140 characters answers 422."""
    token = installation_token(fake)
    path = f"/repos/{OWNER}/{REPO}/statuses/{repo.default_sha}"
    response = api(fake, "POST", path, token, json={"state": "pending", "description": "x" * 141})
    assert response.status_code == 422
    assert fake.statuses == []
    ok = {"state": "pending", "description": "x" * 140, "context": "slipway/docker"}
    assert api(fake, "POST", path, token, json=ok).status_code == 201
    assert fake.statuses == [(OWNER, REPO, repo.default_sha, ok)]
    combined = api(fake, "GET", f"/repos/{OWNER}/{REPO}/commits/{repo.default_sha}/status",
                   token).json()
    assert combined["state"] == "pending"


def test_malformed_json_is_a_400(fake, repo):
    """A body that is not JSON answers 400 Problems parsing JSON."""
    token = installation_token(fake)
    response = api(fake, "POST", f"/repos/{OWNER}/{REPO}/statuses/{repo.default_sha}", token,
                   data=b"{state: success")
    assert (response.status_code, response.json()["message"]) == (400, "Problems parsing JSON")


# -- contents, tarball, pulls -------------------------------------------------------------------

def test_contents_in_base64_and_404_when_absent(fake, repo):
    """GET contents answers base64 JSON for a file and 404 Not Found for an absent one."""
    token = installation_token(fake)
    first = repo.default_sha
    sha = fake.add_commit(OWNER, REPO, {".github/slipway.yml": "services: []\n"})
    found = api(fake, "GET", f"/repos/{OWNER}/{REPO}/contents/.github/slipway.yml", token,
                params={"ref": sha})
    assert found.status_code == 200 and found.json()["encoding"] == "base64"
    assert base64.b64decode(found.json()["content"]) == b"services: []\n"
    absent = api(fake, "GET", f"/repos/{OWNER}/{REPO}/contents/.github/slipway.yml", token,
                 params={"ref": first})
    assert (absent.status_code, absent.json()["message"]) == (404, "Not Found")
    assert fake.rejections == []


def test_tarball_redirects_to_codeload_with_githubs_layout(fake, repo):
    """The tarball answers 302 to a codeload URL whose gzip tar has one top folder."""
    token = installation_token(fake)
    sha = repo.default_sha
    response = api(fake, "GET", f"/repos/{OWNER}/{REPO}/tarball/{sha}", token,
                   allow_redirects=False)
    assert response.status_code == 302
    location = response.headers["Location"]
    assert "token=" in location
    archive = requests.get(location, timeout=10)  # no Authorization header: the query is enough
    assert archive.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        names = tar.getnames()
        top = f"{OWNER}-{REPO}-{sha[:7]}"
        assert {name.split("/")[0] for name in names} == {top}
        assert tar.extractfile(f"{top}/src/app.py").read() == b"print('hi')\n"
        assert tar.pax_headers["comment"] == sha
    bare = requests.get(location.split("?")[0], timeout=10)
    assert bare.status_code == 404


def test_pull_request_in_githubs_shape(fake, repo):
    """GET pulls/{n} answers the pull request the test registered."""
    token = installation_token(fake)
    merge = fake.add_commit(OWNER, REPO, {"x": "1"}, branch="develop")
    fake.add_pull_request(OWNER, REPO, number=7, title="Release 1.4.0", head_sha=repo.default_sha,
                          merge_commit_sha=merge, labels=["version:1.4.0"])
    pr = api(fake, "GET", f"/repos/{OWNER}/{REPO}/pulls/7", token).json()
    assert pr["merge_commit_sha"] == merge and pr["merged"] is True
    assert [label["name"] for label in pr["labels"]] == ["version:1.4.0"]
    assert pr["base"]["ref"] == "develop"


# -- failure injection, rate limits, manifests, enterprise --------------------------------------

def test_fail_next_answers_502_then_200(fake, repo):
    """fail_next makes GitHub answer 502 once, then the real answer."""
    token = installation_token(fake)
    fake.fail_next("GET", r"^/repos/[^/]+/[^/]+$", 502)
    assert api(fake, "GET", f"/repos/{OWNER}/{REPO}", token).status_code == 502
    assert api(fake, "GET", f"/repos/{OWNER}/{REPO}", token).status_code == 200
    assert fake.rejections == []


def test_delay_next_times_out_a_client_then_still_takes_effect(fake, repo):
    """A delayed POST times the client out, yet GitHub creates the check run afterwards."""
    token = installation_token(fake)
    fake.delay_next("POST", "check-runs", 1.5)
    started = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        requests.post(f"{fake.url}/repos/{OWNER}/{REPO}/check-runs", timeout=0.5,
                      headers={"Authorization": f"token {token}"},
                      json={"name": "late", "head_sha": repo.default_sha})
    # Meanwhile the fake answers others at once: the delay holds no lock.
    assert api(fake, "GET", f"/repos/{OWNER}/{REPO}", token).status_code == 200
    assert time.monotonic() - started < 1.5
    deadline = time.monotonic() + 5
    while not fake.check_runs and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [run["name"] for run in fake.check_runs.values()] == ["late"]
    # Only once: the next request is answered at once.
    started = time.monotonic()
    response = api(fake, "POST", f"/repos/{OWNER}/{REPO}/check-runs", token,
                   json={"name": "prompt", "head_sha": repo.default_sha})
    assert response.status_code == 201 and time.monotonic() - started < 1.0


def test_fail_next_rate_limit_headers_override(fake, repo):
    """An injected 403 carries the headers the test gave, over the default rate-limit ones."""
    token = installation_token(fake)
    reset = int(time.time()) + 5
    fake.fail_next("*", "check-runs", 403, headers={"x-ratelimit-remaining": "0",
                                                    "x-ratelimit-reset": str(reset)})
    response = api(fake, "POST", f"/repos/{OWNER}/{REPO}/check-runs", token,
                   json={"name": "b", "head_sha": repo.default_sha})
    assert response.status_code == 403
    assert response.headers["x-ratelimit-remaining"] == "0"
    assert response.headers["x-ratelimit-reset"] == str(reset)


def test_every_response_has_rate_limit_headers(fake, repo):
    """Rate-limit headers come with answers and with errors."""
    for response in (get_app(fake, app_jwt(fake)), api(fake, "GET", "/nowhere", None)):
        for name in ("limit", "remaining", "reset", "used", "resource"):
            assert f"x-ratelimit-{name}" in response.headers


def test_manifest_code_converts_once(fake):
    """A registered manifest code converts once, with the App's id and key; then 404."""
    expected = fake.add_manifest_code("abc123")
    response = requests.post(f"{fake.url}/app-manifests/abc123/conversions", timeout=10)
    assert response.status_code == 201
    body = response.json()
    assert body == expected and body["id"] == fake.app_id
    assert body["pem"].encode() == fake.private_key_pem
    secrets = {"client_id", "client_secret", "webhook_secret", "pem"}
    assert secrets | {"slug", "name", "owner", "html_url"} <= set(body)
    again = requests.post(f"{fake.url}/app-manifests/abc123/conversions", timeout=10)
    assert again.status_code == 404


def test_enterprise_mount_refuses_paths_outside_api_v3(enterprise_fake_github):
    """Mounted under /api/v3, the fake refuses paths without the prefix and doubled ones."""
    fake = enterprise_fake_github
    assert fake.url.endswith("/api/v3")
    token = app_jwt(fake)
    assert get_app(fake, token).status_code == 200
    headers = {"Authorization": f"Bearer {token}"}
    assert requests.get(f"{fake.root_url}/app", headers=headers, timeout=10).status_code == 404
    doubled = requests.get(f"{fake.url}/api/v3/app", headers=headers, timeout=10)
    assert doubled.status_code == 404
    assert len(fake.rejections) == 2


# -- github3.py's dialect -----------------------------------------------------------------------

def test_github3_app_flow_creates_a_check_run_and_a_status(repo, fake):
    """github3.py authenticates as the App and its installation, then reports to the fake."""
    client = github3.GitHub()
    client.session.base_url = fake.url
    # PyJWT >= 2.10 refuses an int iss, so github3 needs the app id as a string.
    client.login_as_app(fake.private_key_pem, str(fake.app_id))
    installation = client.app_installation_for_repository(OWNER, REPO)
    assert installation.id == repo.installation_id
    client.login_as_app_installation(fake.private_key_pem, str(fake.app_id), installation.id)
    repository = client.repository(OWNER, REPO)
    assert repository.full_name == f"{OWNER}/{REPO}"
    run = repository.create_check_run(name="docker build", head_sha=repo.default_sha,
                                      status="in_progress",
                                      output={"title": "Building", "summary": "started"})
    assert run.status == "in_progress"
    run.update(conclusion="success", output={"title": "Pushed", "summary": "done"})
    assert fake.check_runs[run.id]["conclusion"] == "success"
    status = repository.create_status(repo.default_sha, "success", context="slipway/docker",
                                      description="Pushed 1.0.0")
    assert status.state == "success"
    assert fake.statuses[-1].body["context"] == "slipway/docker"
    fake.add_pull_request(OWNER, REPO, number=3, title="Release 1.4.0", head_sha=repo.default_sha,
                          merge_commit_sha=repo.default_sha, labels=["semver:patch"])
    pull = client.pull_request(OWNER, REPO, 3)  # github3 asks for the `.full+json` media type
    assert (pull.title, pull.merged, pull.base.ref) == ("Release 1.4.0", True, "develop")
    assert repository.file_contents("src/app.py").decoded == b"print('hi')\n"
    assert fake.rejections == []


def test_github3_enterprise_client_reaches_the_prefixed_fake(repo, enterprise_fake_github):
    """GitHubEnterprise adds /api/v3 once, and the fake mounted there answers."""
    fake = enterprise_fake_github
    fake.add_installation(account=OWNER)
    made = fake.add_repository(OWNER, REPO)
    client = github3.GitHubEnterprise(fake.root_url)
    client.login_as_app(fake.private_key_pem, str(fake.app_id))
    installation = client.app_installation_for_repository(OWNER, REPO)
    client.login_as_app_installation(fake.private_key_pem, str(fake.app_id), installation.id)
    assert client.repository(OWNER, REPO).default_branch == made.default_branch
    assert fake.rejections == []
    assert all(r.raw_path.startswith("/api/v3/") for r in fake.requests)


def test_git_commit_has_githubs_shape_and_a_tree_sha_computed_from_the_files(fake, repo):
    """GET git/commits/{sha}: GitHub's shape; equal trees give equal shas, as git computes them."""
    from openapi_validation import response_body_errors

    token = installation_token(fake)
    first = repo.default_sha
    same = fake.add_commit(OWNER, REPO, files={}, branch="feature")  # same files, new commit
    other = fake.add_commit(OWNER, REPO, files={"src/app.py": "print('bye')\n"})
    answers = {sha: api(fake, "GET", f"/repos/{OWNER}/{REPO}/git/commits/{sha}", token)
               for sha in (first, same, other)}
    for sha, answer in answers.items():
        assert answer.status_code == 200, answer.text
        path = f"/repos/{OWNER}/{REPO}/git/commits/{sha}"
        assert response_body_errors("GET", path, 200, answer.json()) == []
        assert answer.json()["sha"] == sha
    tree = {sha: answer.json()["tree"]["sha"] for sha, answer in answers.items()}
    assert tree[first] == tree[same] != tree[other]
    # `git write-tree` of Dockerfile + src/app.py with these bytes gives this sha.
    assert tree[first] == shapes_tree({"Dockerfile": b"FROM python:3.11-slim\n",
                                                  "src/app.py": b"print('hi')\n"})
    assert answers[other].json()["parents"][0]["sha"] == first
    unknown = api(fake, "GET", f"/repos/{OWNER}/{REPO}/git/commits/{'0' * 40}", token)
    assert unknown.status_code == 404


def shapes_tree(files: dict) -> str:
    """The tree sha `git write-tree` prints for `files`, by running git itself."""
    import subprocess
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as root:
        subprocess.run(["git", "init", "-q", root], check=True)
        for name, data in files.items():
            path = Path(root, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        subprocess.run(["git", "-C", root, "add", "."], check=True)
        return subprocess.run(["git", "-C", root, "write-tree"], check=True,
                              capture_output=True, text=True).stdout.strip()


# -- the OAuth web flow ("Sign in with GitHub") -------------------------------------------------


def _authorize(fake, redirect_uri="http://app.test/login/callback", state="st"):
    answer = requests.get(f"{fake.root_url}/login/oauth/authorize", allow_redirects=False,
                          params={"client_id": fake.client_id, "redirect_uri": redirect_uri,
                                  "state": state}, timeout=5)
    assert answer.status_code == 302
    from urllib.parse import parse_qs, urlsplit
    return {k: v[0] for k, v in parse_qs(urlsplit(answer.headers["Location"]).query).items()}


def _exchange(fake, code, *, secret=None, accept="application/json"):
    return requests.post(f"{fake.root_url}/login/oauth/access_token", timeout=5,
                         headers={"Accept": accept},
                         data={"client_id": fake.client_id,
                               "client_secret": secret or fake.client_secret, "code": code})


def test_fake_oauth_flow_gives_a_user_token_that_reads_granted_repositories(fake_github):
    """authorize -> code -> ghu_ token; GET /user names the person; GET /repos follows grants."""
    fake_github.add_repository("octo-org", "secret", private=True)
    fake_github.add_repository("octo-org", "other", private=True)
    fake_github.grant("octocat", "octo-org/secret")
    query = _authorize(fake_github)
    assert query["state"] == "st"
    answer = _exchange(fake_github, query["code"])
    assert answer.status_code == 200
    body = answer.json()
    assert body["token_type"] == "bearer" and body["access_token"].startswith("ghu_")
    token = body["access_token"]
    assert api(fake_github, "GET", "/user", token).json()["login"] == "octocat"
    assert api(fake_github, "GET", "/repos/octo-org/secret", token).status_code == 200
    assert api(fake_github, "GET", "/repos/octo-org/other", token).status_code == 404
    assert api(fake_github, "GET", "/user", "ghu_" + "x" * 36).status_code == 401


def test_fake_oauth_errors_are_200s_as_on_github(fake_github):
    """A used code and a wrong client secret answer 200 with GitHub's error body."""
    code = _authorize(fake_github)["code"]
    assert "access_token" in _exchange(fake_github, code).json()
    assert _exchange(fake_github, code).json()["error"] == "bad_verification_code"
    wrong = _exchange(fake_github, _authorize(fake_github)["code"], secret="nope")
    assert wrong.status_code == 200 and wrong.json()["error"] == "incorrect_client_credentials"
    form = _exchange(fake_github, "unknown", accept="*/*")
    assert form.headers["Content-Type"].startswith("application/x-www-form-urlencoded")
    assert "error=bad_verification_code" in form.text


def test_fake_oauth_redirect_uri_must_match_the_callback_urls(fake_github):
    """Outside the App's callback URLs GitHub sends the browser back with redirect_uri_mismatch."""
    fake_github.callback_urls = ["http://app.test/login/callback"]
    assert _authorize(fake_github, redirect_uri="http://evil.test/x")["error"] == (
        "redirect_uri_mismatch")
    fake_github.oauth_deny = True
    assert _authorize(fake_github)["error"] == "access_denied"
