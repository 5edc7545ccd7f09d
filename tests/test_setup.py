"""App setup from the manifest: /setup posts it to GitHub, /setup/callback exchanges the code
against the fake GitHub's conversion endpoint, and the running app uses the new App at once."""

from __future__ import annotations

import json
import logging
import os
import stat
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from payloads import load_event, to_body, webhook_headers

from github_app import create_app, credentials, setup
from github_app.config import Config
from github_app.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_URL = "https://slipway.example.org"


class FormReader(HTMLParser):
    """The forms of a page: action, method and inputs."""

    def __init__(self):
        super().__init__()
        self.forms: list[dict] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.forms.append({"action": attrs.get("action"), "method": attrs.get("method"),
                               "inputs": {}})
        elif tag == "input" and self.forms:
            self.forms[-1]["inputs"][attrs.get("name")] = attrs.get("value")
        elif tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])


def read_page(response) -> FormReader:
    reader = FormReader()
    reader.feed(response.get_data(as_text=True))
    return reader


def manifest_form(response) -> dict:
    (form,) = [f for f in read_page(response).forms if f["method"] == "post"]
    return form


def make_app(data_dir: Path, api_url: str = "https://api.github.com", **config):
    app = create_app(
        Config(api_url=api_url, public_url=PUBLIC_URL, data_dir=data_dir, **config),
        engine_ping=lambda: None,
    )
    return app


@pytest.fixture
def app(data_dir, fake_github):
    return make_app(data_dir, fake_github.url)


@pytest.fixture
def client(app):
    return app.test_client()


def setup_link(client, query: str = "") -> str:
    """/setup with the setup token, as Slipway prints it in its log, and `query` ("?org=x")."""
    token = setup.read_setup_token(client.application.extensions["slipway"].config.data_dir)
    return f"/setup{query}{'&' if query else '?'}token={token}"


def start_setup(client, query: str = "") -> str:
    """Open /setup as a browser would; return the state GitHub will send back."""
    response = client.get(setup_link(client, query))
    assert response.status_code == 200
    action = manifest_form(response)["action"]
    return parse_qs(urlsplit(action).query)["state"][0]


def conversions(fake) -> list:
    return [r for r in fake.requests if r.path.startswith("/app-manifests/")]


def ping_delivery(secret: str | None):
    body = to_body(load_event("ping"))
    return body, webhook_headers("ping", body, secret)


# -- the manifest ---------------------------------------------------------------


def test_manifest_file_is_what_setup_posts():
    """app-manifest.json at the top is the manifest /setup posts, with placeholder URLs."""
    on_disk = json.loads((ROOT / "app-manifest.json").read_text())
    assert on_disk == setup.app_manifest("https://slipway.example.com")
    assert on_disk["public"] is False
    assert on_disk["default_permissions"] == {
        "checks": "write", "statuses": "write", "contents": "read",
        "pull_requests": "read", "metadata": "read",
    }
    # installation and installation_repositories reach every App without a subscription.
    assert on_disk["default_events"] == ["pull_request", "check_run", "check_suite"]


def test_setup_page_posts_the_filled_manifest_to_github(client, fake_github):
    """/setup has a button that posts the manifest, with PUBLIC_URL's webhook and callback."""
    response = client.get(setup_link(client))
    assert response.status_code == 200
    form = manifest_form(response)
    assert form["action"].startswith(f"{fake_github.url}/settings/apps/new?state=")
    action = urlsplit(form["action"])
    manifest = json.loads(form["inputs"]["manifest"])
    assert manifest["url"] == PUBLIC_URL
    assert manifest["hook_attributes"]["url"] == f"{PUBLIC_URL}/webhook"
    assert manifest["redirect_url"] == f"{PUBLIC_URL}/setup/callback"
    assert manifest["callback_urls"] == [f"{PUBLIC_URL}/login/callback"]
    assert manifest["default_permissions"]["checks"] == "write"
    state = parse_qs(action.query)["state"][0]
    cookie = client.get_cookie(setup.STATE_COOKIE, path="/setup")
    assert cookie.value == state and len(state) >= 32
    assert cookie.http_only
    assert "form-action 'self'" in response.headers["Content-Security-Policy"]


@pytest.mark.parametrize(
    ("api_url", "org", "expected"),
    [
        ("https://api.github.com", None, "https://github.com/settings/apps/new"),
        ("https://api.github.com", "acme", "https://github.com/organizations/acme/settings/apps/new"),
        ("https://ghe.example.com/api/v3", None, "https://ghe.example.com/settings/apps/new"),
        ("https://ghe.example.com/api/v3", "acme",
         "https://ghe.example.com/organizations/acme/settings/apps/new"),
    ],
)
def test_manifest_goes_to_the_github_of_the_api_url(data_dir, api_url, org, expected):
    """github.com for api.github.com, the Enterprise host for HOST/api/v3; ?org= for an org."""
    client = make_app(data_dir, api_url).test_client()
    response = client.get(setup_link(client, f"?org={org}" if org else ""))
    action = manifest_form(response)["action"]
    assert action.split("?")[0] == expected
    web_root = expected.split("/organizations")[0].split("/settings")[0]
    assert f"form-action 'self' {web_root}" in response.headers["Content-Security-Policy"]


def test_setup_page_takes_another_app_name(client):
    """?name= renames the App in the manifest (GitHub App names are unique)."""
    form = manifest_form(client.get(setup_link(client, "?name=Slipway+acme")))
    manifest = json.loads(form["inputs"]["manifest"])
    assert manifest["name"] == "Slipway acme"


def test_bad_organization_name_is_refused(client):
    """?org= with characters GitHub logins never have is a 400, not a link to a wrong page."""
    response = client.get(setup_link(client, "?org=acme/../../evil"))
    assert response.status_code == 400
    assert "not a GitHub organization login" in response.get_data(as_text=True)


def test_setup_page_warns_when_github_cannot_reach_public_url(data_dir):
    """With PUBLIC_URL on localhost, /setup says a tunnel is needed."""
    app = create_app(Config(public_url="http://localhost:8080", data_dir=data_dir),
                     engine_ping=lambda: None)
    client = app.test_client()
    text = client.get(setup_link(client)).get_data(as_text=True)
    assert "GitHub cannot reach http://localhost:8080" in text
    assert "smee" in text


# -- the callback ---------------------------------------------------------------


def test_full_setup_flow_stores_credentials_and_accepts_signed_webhooks(
        app, client, data_dir, fake_github, caplog):
    """GitHub's redirect is exchanged, stored 0600, and the new secret verifies webhooks at once."""
    caplog.set_level(logging.DEBUG)
    body, headers = ping_delivery("anything")
    assert client.post("/webhook", data=body, headers=headers).status_code == 503

    conversion = fake_github.add_manifest_code("code-1234")
    state = start_setup(client)
    response = client.get(f"/setup/callback?code=code-1234&state={state}")

    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "The GitHub App is created" in page
    install = f"{conversion['html_url']}/installations/new"
    assert install in read_page(response).links
    for secret in ("pem", "webhook_secret", "client_secret"):
        assert conversion[secret] not in page
        assert conversion[secret] not in caplog.text
    assert "BEGIN RSA PRIVATE KEY" not in page

    path = data_dir / "app-credentials.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    stored = json.loads(path.read_text())
    assert stored["id"] == conversion["id"]
    assert stored["pem"] == conversion["pem"]
    assert stored["webhook_secret"] == conversion["webhook_secret"]

    config = app.extensions["slipway"].config
    assert config.app_id == str(fake_github.app_id)
    assert config.private_key == fake_github.private_key_pem
    assert config.has_app_credentials

    body, headers = ping_delivery(conversion["webhook_secret"])
    assert client.post("/webhook", data=body, headers=headers).status_code == 200
    body, headers = ping_delivery("not-the-secret")
    assert client.post("/webhook", data=body, headers=headers).status_code == 401


def test_setup_is_done_once(client, fake_github, data_dir):
    """After setup, /setup and a replayed callback answer 404 and exchange nothing again."""
    fake_github.add_manifest_code("once")
    token = setup.read_setup_token(data_dir)
    state = start_setup(client)
    assert client.get(f"/setup/callback?code=once&state={state}").status_code == 200

    assert not setup.token_path(data_dir).exists()
    for path in ("/setup", f"/setup?token={token}", f"/setup/callback?code=once&state={state}"):
        again = client.get(path)
        assert again.status_code == 404
        assert not [f for f in read_page(again).forms if f["method"] == "post"]
    assert len(conversions(fake_github)) == 1


def test_expired_code_shows_what_to_do(client, data_dir, fake_github):
    """A code GitHub does not know (used or older than an hour) gives a clear error page."""
    state = start_setup(client)
    response = client.get(f"/setup/callback?code=stale&state={state}")
    assert response.status_code == 400
    text = response.get_data(as_text=True)
    assert "GitHub does not accept this setup code" in text
    assert "expires after an hour" in text
    assert not (data_dir / "app-credentials.json").exists()
    assert manifest_form(client.get(setup_link(client)))  # setup can start over


def test_unreachable_github_is_a_502(data_dir):
    """No answer from GITHUB_API_URL: 502 with the URL to check, nothing stored."""
    client = make_app(data_dir, "http://127.0.0.1:9").test_client()
    state = start_setup(client)
    response = client.get(f"/setup/callback?code=x&state={state}")
    assert response.status_code == 502
    assert "GitHub could not be reached at http://127.0.0.1:9" in response.get_data(as_text=True)
    assert not (data_dir / "app-credentials.json").exists()


@pytest.mark.parametrize("state", ["wrong", ""])
def test_state_mismatch_is_refused(client, fake_github, data_dir, state):
    """A callback whose state is not this browser's is a 400 and its code is never used."""
    fake_github.add_manifest_code("forged")
    start_setup(client)
    response = client.get(f"/setup/callback?code=forged&state={state}")
    assert response.status_code == 400
    assert "not from this browser" in response.get_data(as_text=True)
    assert conversions(fake_github) == []
    assert not (data_dir / "app-credentials.json").exists()


def test_callback_without_setup_cookie_is_refused(app, fake_github):
    """A browser that never opened /setup (a link from elsewhere) gets a 400."""
    fake_github.add_manifest_code("elsewhere")
    response = app.test_client().get("/setup/callback?code=elsewhere&state=abc")
    assert response.status_code == 400
    assert conversions(fake_github) == []


def test_app_configured_from_the_environment_has_no_setup(data_dir, fake_github):
    """With GITHUB_APP_ID etc. set, /setup answers 404 and no setup token is made."""
    app = make_app(data_dir, fake_github.url, app_id="42",
                   private_key=fake_github.private_key_pem, webhook_secret="s" * 20,
                   allowed_owners=("*",))
    response = app.test_client().get("/setup")
    assert response.status_code == 404
    assert not setup.token_path(data_dir).exists()


# -- stored credentials, start-up and other processes -------------------------------


def test_another_app_on_the_same_data_dir_picks_up_the_stored_app(client, data_dir, fake_github):
    """A second process (or the app after a restart) uses the stored App without the env."""
    conversion = fake_github.add_manifest_code("shared")
    state = start_setup(client)
    client.get(f"/setup/callback?code=shared&state={state}")

    other = make_app(data_dir, fake_github.url)
    body, headers = ping_delivery(conversion["webhook_secret"])
    assert other.test_client().post("/webhook", data=body, headers=headers).status_code == 200
    assert other.extensions["slipway"].config.app_id == str(conversion["id"])

    restarted = credentials.apply(Config.from_env({"DATA_DIR": str(data_dir)}, require_app=False),
                                  credentials.load(data_dir))
    assert restarted.has_app_credentials
    assert restarted.webhook_secret == conversion["webhook_secret"]


def test_environment_wins_over_stored_credentials(data_dir, fake_github):
    """Stored credentials never override an App id, key or secret from the environment."""
    credentials.save(data_dir, fake_github.add_manifest_code("c"))
    config = Config(app_id="7", data_dir=data_dir)
    assert credentials.apply(config, credentials.load(data_dir)) is config


def test_credentials_file_is_private_whatever_the_umask(data_dir, fake_github):
    """The file is 0600 even with umask 000, and a second save never replaces it."""
    old = os.umask(0)
    try:
        credentials.save(data_dir, fake_github.add_manifest_code("a"))
    finally:
        os.umask(old)
    path = credentials.credentials_path(data_dir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(credentials.CredentialsExist):
        credentials.save(data_dir, fake_github.add_manifest_code("b"))
    assert [p.name for p in data_dir.iterdir()] == ["app-credentials.json"]  # no temporary left


def test_no_stored_credentials_is_none(data_dir):
    """Before setup, load() finds nothing and apply() changes nothing."""
    config = Config(data_dir=data_dir)
    assert credentials.load(data_dir) is None
    assert credentials.apply(config, None) is config


def test_damaged_credentials_file_names_the_fix(data_dir):
    """A file that is not what setup writes stops start-up with one line saying what to do."""
    credentials.credentials_path(data_dir).write_text("{not json")
    with pytest.raises(ConfigError, match="remove it and open /setup again"):
        credentials.load(data_dir)
    credentials.credentials_path(data_dir).write_text(json.dumps(
        {"id": 1, "pem": "nope", "webhook_secret": "s"}))
    with pytest.raises(ConfigError, match="readable RSA private key") as info:
        credentials.load(data_dir)
    assert "nope" not in str(info.value)


def test_on_credentials_is_called_with_the_new_config(app, client, fake_github):
    """runtime.extras['on_credentials'] hears of the new App (to start the worker)."""
    heard = []
    app.extensions["slipway"].extras["on_credentials"] = heard.append
    fake_github.add_manifest_code("hook")
    state = start_setup(client)
    client.get(f"/setup/callback?code=hook&state={state}")
    assert [c.app_id for c in heard] == [str(fake_github.app_id)]


def test_webhook_url_can_be_a_relay(client):
    """?webhook_url= (a smee.io channel on a laptop) becomes the App's webhook URL."""
    form = manifest_form(client.get(setup_link(client, "?webhook_url=https://smee.io/abc123")))
    manifest = json.loads(form["inputs"]["manifest"])
    assert manifest["hook_attributes"]["url"] == "https://smee.io/abc123"
    assert manifest["redirect_url"] == f"{PUBLIC_URL}/setup/callback"
    assert client.get(setup_link(client, "?webhook_url=javascript:alert(1)")).status_code == 400


def test_secrets_from_setup_never_reach_the_log_later(client, fake_github):
    """A secret that /setup brought in is redacted from log lines written after it."""
    import io

    from github_app.logs import configure_logging

    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging(level="INFO", stream=stream)
    try:
        conversion = fake_github.add_manifest_code("code-logs")
        state = start_setup(client)
        assert client.get(f"/setup/callback?code=code-logs&state={state}").status_code == 200
        logging.getLogger("github_app.test").warning(
            "a careless line: %s and %s", conversion["webhook_secret"], conversion["pem"])
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    text = stream.getvalue()
    assert "a careless line" in text
    assert conversion["webhook_secret"] not in text
    assert "BEGIN RSA PRIVATE KEY" not in text


def test_home_redirects_to_setup_until_the_app_is_set_up_then_to_builds(
        app, client, fake_github):
    """`GET /` leads to /setup in setup mode, and to /builds once setup stored the App."""
    response = client.get("/")
    assert response.status_code == 302
    assert response.headers["Location"] == "/setup"

    fake_github.add_manifest_code("code-home")
    state = start_setup(client)
    assert client.get(f"/setup/callback?code=code-home&state={state}").status_code == 200
    response = client.get("/")
    assert response.status_code == 302
    assert response.headers["Location"] == "/builds"
    assert client.get(response.headers["Location"]).status_code == 200


def test_home_redirects_to_builds_when_the_environment_gives_the_app(data_dir, fake_github):
    """An App configured by the environment is never in setup mode: `/` shows the builds."""
    app = make_app(data_dir, fake_github.url, app_id=str(fake_github.app_id),
                   private_key=fake_github.private_key_pem, webhook_secret="s")
    response = app.test_client().get("/")
    assert (response.status_code, response.headers["Location"]) == (302, "/builds")


# -- the setup token ------------------------------------------------------------------


def test_setup_without_the_token_is_401_and_shows_no_form(client, data_dir):
    """Whoever reaches PUBLIC_URL first cannot create the App: no token, no manifest form."""
    for path in ("/setup", "/setup?token=", "/setup?token=wrong", "/setup?org=acme"):
        response = client.get(path)
        assert response.status_code == 401
        assert not [f for f in read_page(response).forms if f["method"] == "post"]
        assert "setup-token" in response.get_data(as_text=True)
    assert client.get_cookie(setup.STATE_COOKIE, path="/setup") is None
    assert manifest_form(client.get(setup_link(client)))


def test_the_setup_token_is_private_and_shared_by_every_process(data_dir):
    """DATA_DIR/setup-token is 0600, and a second process on the same DATA_DIR reuses it."""
    old = os.umask(0)
    try:
        first = make_app(data_dir)
    finally:
        os.umask(old)
    path = setup.token_path(data_dir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = setup.read_setup_token(data_dir)
    assert len(token) >= 32
    make_app(data_dir)
    assert setup.read_setup_token(data_dir) == token
    assert first.test_client().get(f"/setup?token={token}").status_code == 200


def test_serve_prints_the_setup_link_in_its_log(data_dir, tmp_path):
    """`python -m github_app serve` in setup mode logs /setup?token=..., which opens setup."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log_path = tmp_path / "serve.log"
    env = {key: value for key, value in os.environ.items() if not key.startswith("GITHUB_")}
    env.update(DATA_DIR=str(data_dir), PORT=str(port), WORKER_THREADS="0",
               LOG_LEVEL="WARNING", PUBLIC_URL=f"http://127.0.0.1:{port}")
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "github_app", "serve", "--host",
                                    "127.0.0.1"], env=env, stdout=log_file, stderr=log_file)
    try:
        deadline = time.monotonic() + 30
        link = None
        while link is None and time.monotonic() < deadline:
            for line in log_path.read_text().splitlines():
                if "/setup?token=" in line:
                    message = json.loads(line)["message"]
                    link = message.split(" ")[message.split(" ").index("open") + 1]
            time.sleep(0.2)
        assert link == f"http://127.0.0.1:{port}/setup?token={setup.read_setup_token(data_dir)}"
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(link, timeout=5) as response:
                    assert response.status == 200
                    assert b'name="manifest"' in response.read()
                break
            except urllib.error.URLError as exc:
                if isinstance(exc, urllib.error.HTTPError):
                    raise
                time.sleep(0.2)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/setup", timeout=5)
        assert refused.value.code == 401
    finally:
        process.terminate()
        process.wait(20)


def test_setup_stores_the_oauth_client_so_sign_in_works_at_once(client, app, fake_github):
    """The manifest conversion's client id and secret become the sign-in client, unlogged."""
    conversion = fake_github.add_manifest_code("code-oauth")
    state = start_setup(client)
    assert client.get(f"/setup/callback?code=code-oauth&state={state}").status_code == 200
    config = app.extensions["slipway"].config
    assert config.github_client_id == conversion["client_id"]
    assert config.github_client_secret == conversion["client_secret"]
    start = client.get("/login")
    assert start.status_code == 302
    assert f"client_id={conversion['client_id']}" in start.headers["Location"]
    assert "client_secret" not in repr(config)


def test_with_a_shared_store_every_node_gets_the_app_setup_created(
        data_dir, tmp_path, fake_github, postgres_url):
    """With DATABASE_URL the credentials go to the store, not to one node's DATA_DIR: a web
    node with a DATA_DIR of its own verifies webhooks with the new secret at once."""
    node = make_app(data_dir, fake_github.url, database_url=postgres_url)
    other_dir = tmp_path / "other-node"
    other_dir.mkdir()
    other = make_app(other_dir, fake_github.url, database_url=postgres_url)
    conversion = fake_github.add_manifest_code("shared-store")
    client = node.test_client()
    state = start_setup(client)
    assert client.get(f"/setup/callback?code=shared-store&state={state}").status_code == 200

    assert not (data_dir / "app-credentials.json").exists()
    body, headers = ping_delivery(conversion["webhook_secret"])
    assert other.test_client().post("/webhook", data=body, headers=headers).status_code == 200
    with pytest.raises(credentials.CredentialsExist):
        credentials.save(other_dir, conversion, store=other.extensions["slipway"].store)
    for app in (node, other):
        app.extensions["slipway"].store.close()
