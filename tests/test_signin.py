"""Sign in with GitHub: private repositories' builds are shown only to people who can read
them. The OAuth web flow runs against the fake GitHub over real HTTP, as a browser would."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from github_app import create_app, signin
from github_app.config import Config
from github_app.jobs import BuildState

PUBLIC_URL = "http://slipway.test"


def make_app(fake, data_dir, **config):
    settings = dict(
        app_id=str(fake.app_id), private_key=fake.private_key_pem, webhook_secret="s",
        api_url=fake.url, public_url=PUBLIC_URL, data_dir=data_dir, allowed_owners=("*",),
        github_client_id=fake.client_id, github_client_secret=fake.client_secret)
    settings.update(config)
    return create_app(Config(**settings), engine_ping=lambda: None)


def record(app, repository: str, *, private: bool | None, version: str = "1.0.0") -> int:
    store = app.extensions["slipway"].store
    job = store.enqueue(f"d-{repository}-{version}-{private}", repository=repository,
                        kind="merge", request={"pr_number": 1, "pr_title": "Release"})
    build_id = store.create_build(job.job_id, repository=repository, service="svc",
                                  pr_number=1, head_sha="a" * 40, merge_sha="b" * 40,
                                  check_run_name="docker build", private=private)
    now = store.clock()
    store.update_build(build_id, state=BuildState.SUCCEEDED, version=version,
                       reference=f"127.0.0.1:5000/svc:{version}", started_at=now - 5,
                       finished_at=now, duration=5.0)
    return build_id


@pytest.fixture
def site(fake_github, data_dir):
    fake_github.add_installation(account="octo-org")
    fake_github.add_repository("octo-org", "secret", private=True)
    fake_github.add_repository("octo-org", "open", private=False)
    fake_github.grant("octocat", "octo-org/secret")
    app = make_app(fake_github, data_dir)
    app.public_build = record(app, "octo-org/open", private=False)
    app.private_build = record(app, "octo-org/secret", private=True)
    return app


def sign_in(client, fake, login: str = "octocat", next_path: str = "/builds"):
    """Click "Sign in with GitHub" and authorize on the fake GitHub; the last answer."""
    fake.oauth_user = login
    start = client.get(f"/login?next={next_path}")
    assert start.status_code == 302
    authorize = start.headers["Location"]
    assert authorize.startswith(f"{fake.root_url}/login/oauth/authorize?")
    back = requests.get(authorize, allow_redirects=False, timeout=10)
    assert back.status_code == 302
    callback = urlsplit(back.headers["Location"])
    assert f"{callback.scheme}://{callback.netloc}{callback.path}" == f"{PUBLIC_URL}/login/callback"
    return client.get(f"{callback.path}?{callback.query}")


def private_answers(client, build_id: int) -> list[int]:
    return [client.get(path).status_code for path in (
        f"/builds/{build_id}", f"/builds/{build_id}/log", "/badges/octo-org/secret.svg",
        "/badges/octo-org/secret.json")]


def listed(client) -> str:
    return client.get("/builds").get_data(as_text=True)


def user_repo_checks(fake) -> list:
    return [r for r in fake.requests if r.auth == "user" and r.path.startswith("/repos/")]


# -- pure -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("target", "expected"), [
    ("/builds/7", "/builds/7"), ("/builds?repository=a/b", "/builds?repository=a/b"),
    (None, "/builds"), ("//evil.example/x", "/builds"), ("/\\evil.example", "/builds"),
    ("https://evil.example/", "/builds"), ("builds", "/builds"),
])
def test_after_signing_in_only_paths_of_this_site_are_followed(target, expected):
    """`next` never sends the browser to another host."""
    assert signin.safe_next(target) == expected


def test_an_access_answer_is_trusted_five_minutes_at_most():
    """The cache forgets an answer after its time to live."""
    now = [1000.0]
    cache = signin.AccessCache(ttl=300, clock=lambda: now[0])
    cache.put("ghu_x", "Octo-Org/Secret", True)
    assert cache.get("ghu_x", "octo-org/secret") is True
    assert cache.get("ghu_y", "octo-org/secret") is None
    now[0] += 301
    assert cache.get("ghu_x", "octo-org/secret") is None


def test_the_access_cache_stays_bounded():
    """Past its size the cache drops entries instead of growing."""
    cache = signin.AccessCache(max_entries=10)
    for index in range(50):
        cache.put(f"ghu_{index}", "o/r", True)
    assert len(cache._answers) <= 10


# -- anonymous, signed in, signed out -----------------------------------------------------------


def test_a_private_build_is_404_to_anyone_not_signed_in(site):
    """Its page, log, plain-text log and badges answer 404, like a build that does not exist."""
    client = site.test_client()
    assert private_answers(client, site.private_build) == [404, 404, 404, 404]

    def page_of(build_id) -> str:
        text = client.get(f"/builds/{build_id}").get_data(as_text=True)
        text = re.sub(r'nonce="[^"]+"', "", text)
        return text.replace(f"build {build_id}.", "build N.").replace(
            f"/builds/{build_id}", "/builds/N")

    assert page_of(site.private_build) == page_of(999)
    assert client.get(f"/builds/{site.public_build}").status_code == 200
    assert client.get("/badges/octo-org/open.svg").status_code == 200
    page = listed(client)
    assert "octo-org/open" in page and "octo-org/secret" not in page
    assert "sign in with GitHub" in page


def test_a_reader_signed_in_with_github_sees_the_private_build(site, fake_github):
    """octocat can read octo-org/secret on GitHub: page, log, badge and list show it."""
    client = site.test_client()
    answer = sign_in(client, fake_github, next_path=f"/builds/{site.private_build}")
    assert answer.status_code == 302
    assert answer.headers["Location"] == f"/builds/{site.private_build}"
    cookie = client.get_cookie(signin.SESSION_COOKIE)
    assert cookie.http_only and cookie.same_site == "Lax" and not cookie.secure
    assert "ghu_" not in cookie.value  # the token is in it, encrypted
    assert private_answers(client, site.private_build) == [200, 200, 200, 200]
    page = listed(client)
    assert "octo-org/secret" in page and "octo-org/open" in page
    assert "signed in as" in page and "octocat" in page
    # One GET /repos/{owner}/{repo} with the person's token served all of those pages.
    assert len(user_repo_checks(fake_github)) == 1


def test_someone_signed_in_without_access_gets_404(site, fake_github):
    """mallory is signed in but cannot read octo-org/secret: 404 and not listed."""
    client = site.test_client()
    sign_in(client, fake_github, login="mallory")
    assert private_answers(client, site.private_build) == [404, 404, 404, 404]
    assert "octo-org/secret" not in listed(client)


def test_lost_access_shows_within_five_minutes(site, fake_github):
    """An answer is cached, so a revoked reader still sees the build until it is 5 min old."""
    now = [0.0]
    site.extensions["slipway"].extras["access_cache"] = signin.AccessCache(clock=lambda: now[0])
    client = site.test_client()
    sign_in(client, fake_github)
    assert client.get(f"/builds/{site.private_build}").status_code == 200
    fake_github.revoke("octocat", "octo-org/secret")
    now[0] += 299
    assert client.get(f"/builds/{site.private_build}").status_code == 200
    now[0] += 2
    assert client.get(f"/builds/{site.private_build}").status_code == 404
    assert len(user_repo_checks(fake_github)) == 2


def test_signing_out_hides_private_builds_again(site, fake_github):
    """POST /logout removes the session; a POST from another site is refused."""
    client = site.test_client()
    sign_in(client, fake_github)
    refused = client.post("/logout", headers={"Origin": "https://evil.example"})
    assert refused.status_code == 403
    assert client.get(f"/builds/{site.private_build}").status_code == 200
    out = client.post("/logout", headers={"Origin": PUBLIC_URL})
    assert out.status_code == 303 and out.headers["Location"] == "/builds"
    assert client.get_cookie(signin.SESSION_COOKIE) is None
    assert client.get(f"/builds/{site.private_build}").status_code == 404


def test_an_expired_github_token_signs_out(site, fake_github):
    """When GitHub answers 401 to the person's token, the session goes and the build hides."""
    client = site.test_client()
    sign_in(client, fake_github)
    fake_github.clock_offset = 9 * 3600  # past the token's 8 hours
    response = client.get(f"/builds/{site.private_build}")
    assert response.status_code == 404
    assert client.get_cookie(signin.SESSION_COOKIE) is None


def test_a_forged_session_cookie_counts_for_nothing(site):
    """A cookie that does not verify is no session (and is removed)."""
    client = site.test_client()
    client.set_cookie(signin.SESSION_COOKIE, "eyJsb2dpbiI6Im9jdG9jYXQifQ.forged.sig")
    assert client.get(f"/builds/{site.private_build}").status_code == 404
    assert client.get_cookie(signin.SESSION_COOKIE) is None


def test_the_session_cookie_is_secure_under_https(fake_github, data_dir):
    """With an https PUBLIC_URL the session and state cookies carry Secure."""
    app = make_app(fake_github, data_dir, public_url="https://slipway.test")
    client = app.test_client()
    start = client.get("/login")
    assert "Secure" in start.headers["Set-Cookie"] and "HttpOnly" in start.headers["Set-Cookie"]


# -- the OAuth flow's refusals ------------------------------------------------------------------


def test_a_callback_whose_state_is_not_this_browsers_is_refused(site, fake_github):
    """A forged or replayed state is a 400 and the code is never exchanged."""
    client = site.test_client()
    client.get("/login")
    response = client.get("/login/callback?code=abc&state=forged")
    assert response.status_code == 400
    assert "not from this browser" in response.get_data(as_text=True)
    other = site.test_client()  # never opened /login
    assert other.get("/login/callback?code=abc&state=forged").status_code == 400
    assert [r for r in fake_github.requests if r.path == "/login/oauth/access_token"] == []
    assert other.get_cookie(signin.SESSION_COOKIE) is None


def test_a_used_code_is_githubs_bad_verification_code(site, fake_github):
    """GitHub answers 200 with bad_verification_code for a used code: a page says what to do."""
    client = site.test_client()
    first = client.get("/login")
    back = requests.get(first.headers["Location"], allow_redirects=False, timeout=10)
    code = parse_qs(urlsplit(back.headers["Location"]).query)["code"][0]
    state = parse_qs(urlsplit(back.headers["Location"]).query)["state"][0]
    assert client.get(f"/login/callback?code={code}&state={state}").status_code == 302
    client.get("/login")  # a new state in this browser, the old code replayed
    again = client.get("/login")
    state = parse_qs(urlsplit(again.headers["Location"]).query)["state"][0]
    replay = client.get(f"/login/callback?code={code}&state={state}")
    assert replay.status_code == 400
    assert "did not accept the sign-in code" in replay.get_data(as_text=True)


def test_cancelling_on_github_says_so(site, fake_github):
    """Cancel on GitHub's page comes back as error=access_denied: not signed in, told why."""
    fake_github.oauth_deny = True
    client = site.test_client()
    start = client.get("/login")
    back = requests.get(start.headers["Location"], allow_redirects=False, timeout=10)
    callback = urlsplit(back.headers["Location"])
    response = client.get(f"{callback.path}?{callback.query}")
    assert response.status_code == 400
    assert "cancelled" in response.get_data(as_text=True)
    assert client.get_cookie(signin.SESSION_COOKIE) is None


def test_a_wrong_client_secret_names_the_variables(fake_github, data_dir):
    """GitHub's incorrect_client_credentials becomes a page naming GITHUB_CLIENT_SECRET."""
    app = make_app(fake_github, data_dir, github_client_secret="not-the-secret")
    response = sign_in(app.test_client(), fake_github)
    assert response.status_code == 400
    assert "GITHUB_CLIENT_SECRET" in response.get_data(as_text=True)
    assert "not-the-secret" not in response.get_data(as_text=True)


# -- without a client, and GitHub Enterprise ----------------------------------------------------


def test_without_an_oauth_client_private_builds_are_not_shown_and_the_page_says_why(
        fake_github, data_dir):
    """No GITHUB_CLIENT_ID: nobody can sign in, private builds stay hidden, /builds explains."""
    app = make_app(fake_github, data_dir, github_client_id=None, github_client_secret=None)
    record(app, "octo-org/secret", private=True)
    record(app, "octo-org/legacy", private=None)  # recorded before privacy was: hidden too
    public = record(app, "octo-org/open", private=False)
    client = app.test_client()
    page = listed(client)
    assert "octo-org/secret" not in page and "octo-org/legacy" not in page
    assert f'id="build-{public}"' in page
    assert "signing in with GitHub is not configured" in page and "GITHUB_CLIENT_ID" in page
    login = client.get("/login")
    assert login.status_code == 404 and "GITHUB_CLIENT_SECRET" in login.get_data(as_text=True)


@pytest.fixture
def own_enterprise_fake():
    """An Enterprise fake of this test's own: the shared one has served other test files."""
    from tests.fake_github import start_fake_github

    fake = start_fake_github(app_id=54322, enterprise=True)
    yield fake
    fake.stop()


def test_github_enterprise_signs_in_on_its_own_host(own_enterprise_fake, data_dir):
    """With GITHUB_API_URL=https://HOST/api/v3 the authorize page is https://HOST/login/..."""
    fake = own_enterprise_fake
    fake.add_installation(account="octo-org")
    fake.add_repository("octo-org", "secret", private=True)
    fake.grant("octocat", "octo-org/secret")
    app = make_app(fake, data_dir)
    build = record(app, "octo-org/secret", private=True)
    client = app.test_client()
    assert fake.url.endswith("/api/v3")
    sign_in(client, fake)
    assert client.get(f"/builds/{build}").status_code == 200
