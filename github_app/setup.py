"""Create the GitHub App from its manifest, as Probot does, and use it without a restart.

- The setup token: in setup mode Slipway makes a random token, stores it in
  `DATA_DIR/setup-token` (0600) and prints `/setup?token=...` in its log. `/setup`
  without it answers 401 and shows no manifest form, so whoever reaches
  PUBLIC_URL first cannot become the App. Once an App is configured, `/setup`
  and `/setup/callback` answer 404 and the token file is removed.
- `GET /setup?token=`: while Slipway has no App credentials, a page whose button posts
  the manifest (webhook, redirect and home URLs filled from PUBLIC_URL) to
  GitHub's "new App" page, for the user or for an organization (`?org=`).
  Once the App exists it says so and links to it.
- `GET /setup/callback?code=&state=`: GitHub's redirect after the App is
  created. The `state` must equal the one this browser was given (a cookie):
  otherwise 400. The one-time `code` is exchanged through
  `POST {api}/app-manifests/{code}/conversions` for the App's id, key and
  webhook secret, which `credentials.save` stores in DATA_DIR (0600); the
  running app's `Runtime.config` is replaced and `runtime.extras["on_credentials"]`
  (when set) is called with the new `Config`, so the worker can start.

Every request of an app without credentials first looks for a stored file, so
other processes serving the same DATA_DIR pick the App up too.
https://docs.github.com/en/apps/sharing-github-apps/registering-a-github-app-from-a-manifest
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import secrets
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
from flask import Blueprint, Response, g, render_template, request

from . import credentials, logs, owners
from .errors import ConfigError, GitHubError
from .pages import github_web_url
from .runtime import current_runtime

log = logging.getLogger(__name__)
bp = Blueprint("setup", __name__, template_folder="templates")

DEFAULT_APP_NAME = "Slipway"
DESCRIPTION = (
    "Builds a versioned Docker image of every pull request merged into the target branch "
    "and reports it as a check run, a commit status and a badge."
)
# DESIGN.md "Permissions and events". `installation` and `installation_repositories`
# are delivered to every App without subscribing, and GitHub's App settings offer
# no box for them, so the manifest does not list them.
PERMISSIONS = {
    "checks": "write",
    "statuses": "write",
    "contents": "read",
    "pull_requests": "read",
    "metadata": "read",
}
EVENTS = ("pull_request", "check_run", "check_suite")
STATE_COOKIE = "slipway_setup_state"
TOKEN_FILE = "setup-token"
# GitHub's manifest codes expire after an hour; the state lives as long.
STATE_MAX_AGE = 3600
CONVERSION_TIMEOUT = 15
_ORG = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})")
_APP_NAME_MAX = 34  # GitHub's limit on an App's name
_lock = threading.Lock()


# -- pure ---------------------------------------------------------------------


def app_manifest(public_url: str, *, name: str = DEFAULT_APP_NAME,
                 webhook_url: str | None = None) -> dict:
    """The App manifest with Slipway's URLs under `public_url` (app-manifest.json, filled).

    `webhook_url` replaces PUBLIC_URL/webhook, for a relay such as a smee.io channel.
    """
    base = public_url.rstrip("/")
    return {
        "name": name,
        "url": base,
        "description": DESCRIPTION,
        "hook_attributes": {"url": webhook_url or f"{base}/webhook", "active": True},
        "redirect_url": f"{base}/setup/callback",
        # "Sign in with GitHub" on the build pages uses the App's own OAuth client.
        "callback_urls": [f"{base}/login/callback"],
        "public": False,
        "default_permissions": dict(PERMISSIONS),
        "default_events": list(EVENTS),
    }


def new_app_url(api_url: str, *, state: str, org: str | None = None) -> str:
    """GitHub's page that registers an App from a posted manifest, for a user or an org."""
    web = github_web_url(api_url)
    path = f"/organizations/{org}/settings/apps/new" if org else "/settings/apps/new"
    return f"{web}{path}?{urlencode({'state': state})}"


def install_url(html_url: str) -> str:
    """The page where the App is installed on repositories."""
    return f"{html_url.rstrip('/')}/installations/new"


def is_reachable_by_github(public_url: str) -> bool:
    """False for loopback and unqualified host names, which GitHub cannot deliver to."""
    host = (urlsplit(public_url).hostname or "").lower()
    return not (host in ("localhost", "0.0.0.0", "::1") or host.startswith("127.")
                or "." not in host and ":" not in host)


def _is_web_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname) and len(url) <= 2000


def states_match(expected: str | None, given: str | None) -> bool:
    """The callback's `state` equals the one handed to this browser (constant time)."""
    return bool(expected and given) and hmac.compare_digest(expected, given)


# -- the setup token --------------------------------------------------------------


def token_path(data_dir) -> Path:
    return Path(data_dir) / TOKEN_FILE


def ensure_setup_token(data_dir) -> str:
    """The setup token of DATA_DIR: read, or made (0600 from its first byte) when absent.

    Every web process of one DATA_DIR shares the file, so all accept the same token."""
    path = token_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        existing = read_setup_token(data_dir)
        if existing:
            return existing
        path.unlink(missing_ok=True)  # empty or unreadable: make a new one
        return ensure_setup_token(data_dir)
    with os.fdopen(fd, "w") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write(token + "\n")
    return token


def read_setup_token(data_dir) -> str | None:
    try:
        return token_path(data_dir).read_text().strip() or None
    except OSError:
        return None


def announce_setup_mode(config) -> str | None:
    """Make (or reuse) the setup token and print the link that opens setup with it."""
    try:
        token = ensure_setup_token(config.data_dir)
    except OSError as exc:
        log.error("Slipway has no GitHub App yet, and the setup token cannot be written to %s "
                  "(%s): make DATA_DIR writable and restart to set it up",
                  token_path(config.data_dir), exc.strerror or exc)
        return None
    # WARNING, so that LOG_LEVEL=WARNING still shows the way in.
    log.warning("Slipway has no GitHub App yet: open %s/setup?token=%s to create it (the token "
                "is also in %s)", config.public_url, token, token_path(config.data_dir))
    return token


def token_matches(data_dir, given: str | None) -> bool:
    expected = read_setup_token(data_dir)
    return bool(expected and given) and hmac.compare_digest(expected.encode(), given.encode())


# -- GitHub -------------------------------------------------------------------


def exchange_code(api_url: str, code: str, *, timeout: float = CONVERSION_TIMEOUT) -> dict:
    """`POST /app-manifests/{code}/conversions` (no authentication): the new App and its secrets.

    Raises `GitHubError` whose message says what to do; `.status` is GitHub's
    answer, None when GitHub could not be reached.
    """
    url = f"{api_url.rstrip('/')}/app-manifests/{requests.utils.quote(code, safe='')}/conversions"
    try:
        response = requests.post(
            url,
            headers={"Accept": "application/vnd.github+json",
                     "X-GitHub-Api-Version": "2022-11-28",
                     "User-Agent": "Slipway-setup"},
            timeout=timeout,
        )
    except requests.RequestException as exc:
        raise GitHubError(
            f"GitHub could not be reached at {api_url} ({type(exc).__name__}): check "
            "GITHUB_API_URL and this machine's network, then open /setup and try again."
        ) from None
    if response.status_code in (404, 422):
        raise GitHubError(
            "GitHub does not accept this setup code: a code works once and expires after an "
            "hour. If the App was created on GitHub, delete it (Settings > Developer settings > "
            "GitHub Apps) or set its credentials by hand; then open /setup and create it again.",
            status=response.status_code,
        )
    if response.status_code != 201:
        raise GitHubError(
            f"GitHub answered {response.status_code} to the manifest conversion: open /setup "
            "and try again in a minute.",
            status=response.status_code,
        )
    try:
        conversion = response.json()
    except ValueError:
        conversion = None
    if not isinstance(conversion, dict):
        raise GitHubError("GitHub's answer to the manifest conversion is not JSON.",
                          status=response.status_code)
    return conversion


# -- the running app ------------------------------------------------------------


def shared_store(runtime: Any):
    """The store when every node shares it (DATABASE_URL): the App's credentials live there."""
    return runtime.store if runtime.config.database_url else None


def adopt_credentials(runtime: Any, stored: dict) -> bool:
    """Make `runtime` use the stored App; call `on_credentials`. False when it already had one."""
    with _lock:
        config = runtime.config
        if config.has_app_credentials:
            return False
        updated = credentials.apply(config, stored)
        if not updated.has_app_credentials:
            return False
        runtime.config = updated
        runtime.extras["app"] = credentials.public_view(stored)
        logs.add_secrets(updated)
        if runtime.owners is not None:
            runtime.owners.learn_app_owner(stored.get("owner"))
            if runtime.owners.rule() is None:
                owners.ask_github_for_app_owner(runtime.owners, updated)
    log.info("GitHub App %s (id %s) is set up; webhooks are accepted from now on",
             stored.get("slug"), stored.get("id"))
    on_credentials = runtime.extras.get("on_credentials")
    if on_credentials is not None:
        on_credentials(updated)
    return True


@bp.before_app_request
def _pick_up_stored_credentials() -> None:
    pick_up_stored_credentials(current_runtime())


def pick_up_stored_credentials(runtime: Any) -> None:
    """Adopt the App credentials another process (or an earlier run) stored.

    One stat per request, and only while this app has no App credentials."""
    config = runtime.config
    if config.has_app_credentials or config.app_id or config.private_key or config.webhook_secret:
        return
    try:
        stored = credentials.load(config.data_dir, store=shared_store(runtime))
    except ConfigError as exc:
        log.warning("stored App credentials not used: %s", exc)
        return
    if stored is not None:
        adopt_credentials(runtime, stored)


# -- views --------------------------------------------------------------------


@bp.before_request
def _set_nonce() -> None:
    g.csp_nonce = secrets.token_urlsafe(16)


@bp.after_request
def _security_headers(response: Response) -> Response:
    nonce = g.get("csp_nonce", "")
    web = github_web_url(current_runtime().config.api_url)
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; style-src 'nonce-{nonce}'; img-src 'self' data:; "
        f"form-action 'self' {web}; base-uri 'none'; frame-ancestors 'none'"
    )
    # The callback's URL holds the one-time code: no page it links to learns it.
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.get("/setup")
def show_setup():
    runtime = current_runtime()
    config = runtime.config
    if config.has_app_credentials:
        return _not_found()
    token = request.args.get("token") or ""
    if not token_matches(config.data_dir, token):
        return _error_page(
            401, "The setup link is needed",
            "Creating the GitHub App needs the setup token, so that only whoever runs "
            "Slipway can do it. Open the link Slipway printed in its log at start "
            "(/setup?token=...), or add ?token= with the contents of the file setup-token "
            "in Slipway's data directory (DATA_DIR).")
    org = (request.args.get("org") or "").strip() or None
    if org is not None and not _ORG.fullmatch(org):
        return _error_page(400, "Not an organization name",
                           f"{org!r} is not a GitHub organization login (letters, digits and "
                           "hyphens, at most 39).")
    name = (request.args.get("name") or "").strip()[:_APP_NAME_MAX] or DEFAULT_APP_NAME
    webhook_url = (request.args.get("webhook_url") or "").strip() or None
    if webhook_url is not None and not _is_web_url(webhook_url):
        return _error_page(400, "Not a webhook URL",
                           "The webhook URL must be an http(s) URL such as "
                           "https://smee.io/XXXX.")
    state = secrets.token_urlsafe(32)
    response = Response(render_template(
        "setup.html",
        action=new_app_url(config.api_url, state=state, org=org),
        manifest=app_manifest(config.public_url, name=name, webhook_url=webhook_url),
        org=org,
        name=name,
        webhook_url=webhook_url,
        public_url=config.public_url,
        reachable=is_reachable_by_github(config.public_url),
        github=github_web_url(config.api_url),
        token=token,
    ))
    response.set_cookie(
        STATE_COOKIE, state, max_age=STATE_MAX_AGE, path="/setup", httponly=True,
        samesite="Lax", secure=config.public_url.startswith("https://"),
    )
    return response


@bp.get("/setup/callback")
def finish_setup():
    runtime = current_runtime()
    config = runtime.config
    if config.has_app_credentials:
        # A reload of the callback, or a second tab: the App exists, nothing to exchange.
        return _not_found()
    if not states_match(request.cookies.get(STATE_COOKIE), request.args.get("state")):
        return _error_page(
            400, "This setup link is not from this browser",
            "The state in GitHub's redirect does not match the one this browser was given, "
            "so the code was not used. Open /setup in this browser and click the button "
            "again.")
    code = (request.args.get("code") or "").strip()
    if not code:
        return _error_page(400, "No setup code",
                           "GitHub's redirect carries a code; this request has none. Open "
                           "/setup and click the button again.")
    try:
        conversion = exchange_code(config.api_url, code)
        stored = credentials.save(config.data_dir, conversion, store=shared_store(runtime))
    except GitHubError as exc:
        log.warning("manifest conversion failed: %s", exc)
        status = 400 if exc.status in (404, 422) else 502
        return _error_page(status, "GitHub did not hand over the App", str(exc))
    except credentials.CredentialsExist:
        stored = credentials.load(config.data_dir, store=shared_store(runtime))
    except ConfigError as exc:
        return _error_page(502, "GitHub's answer is not usable", str(exc))
    log.info("GitHub App %s (id %s) created from the manifest; credentials stored in %s",
             stored.get("slug"), stored.get("id"),
             credentials.where(config.data_dir, shared_store(runtime)))
    adopt_credentials(runtime, stored)
    token_path(config.data_dir).unlink(missing_ok=True)
    response = _done_page(runtime, just_created=True)
    response.delete_cookie(STATE_COOKIE, path="/setup")
    return response


def _done_page(runtime: Any, *, just_created: bool) -> Response:
    app = runtime.extras.get("app")
    if app is None:
        try:
            stored = credentials.load(runtime.config.data_dir, store=shared_store(runtime))
        except ConfigError:
            stored = None
        app = credentials.public_view(stored) if stored else {"id": runtime.config.app_id}
    html_url = app.get("html_url")
    return Response(render_template(
        "setup_done.html",
        app=app,
        just_created=just_created,
        install=install_url(html_url) if html_url else None,
        public_url=runtime.config.public_url,
    ))


def _not_found() -> Response:
    return _error_page(404, "Not found", "There is nothing here.")


def _error_page(status: int, title: str, message: str) -> Response:
    response = Response(render_template("setup_error.html", title=title, message=message))
    response.status_code = status
    return response
