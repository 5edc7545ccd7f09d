"""Sign in with GitHub, so that private repositories' builds are shown only to their readers.

- `GET /login?next=/builds/7`: sends the browser to GitHub's authorize page of the
  App's own OAuth client (GITHUB_CLIENT_ID), with a random `state` kept in a signed,
  short-lived cookie of this browser;
- `GET /login/callback?code=&state=`: the `state` must be this browser's; the code
  becomes the person's token (`oauth.exchange_code`), `GET /user` names them, and
  the session cookie is set; then back to `next`;
- `POST /logout`: the session cookie goes.

The session is a signed cookie (HttpOnly, SameSite=Lax, Secure under https) that
holds the login and the person's token, encrypted. Both keys derive from the App's
client secret and private key, so every web process and node of one App shares them
and nothing is stored on the server. `Visibility` decides what a viewer may read:
public builds to anyone, private ones to people whose token reads the repository
(`GET /repos/{owner}/{repo}` answers 200), an answer kept at most `ACCESS_TTL` seconds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography.fernet import Fernet, InvalidToken
from flask import Blueprint, Response, g, redirect, render_template, request
from itsdangerous import BadSignature, URLSafeTimedSerializer

from . import oauth
from .errors import GitHubError
from .runtime import current_runtime

log = logging.getLogger(__name__)
bp = Blueprint("signin", __name__, template_folder="templates")

SESSION_COOKIE = "slipway_session"
STATE_COOKIE = "slipway_signin"
# GitHub's user tokens of an App live 8 hours; the session no longer.
SESSION_MAX_AGE = 8 * 3600
STATE_MAX_AGE = 600
# How long an answer of GET /repos/{owner}/{repo} is trusted (the issue: at most 5 minutes).
ACCESS_TTL = 300.0
ACCESS_CACHE_ENTRIES = 10_000


@dataclass(frozen=True)
class Viewer:
    """The person signed in: their GitHub login and token (never shown, never logged)."""

    login: str
    token: str

    def __repr__(self) -> str:
        return f"Viewer({self.login!r})"


# -- pure ---------------------------------------------------------------------


def session_keys(client_secret: str, private_key: bytes | None) -> tuple[bytes, bytes]:
    """The signing key and the Fernet key of the session cookie, derived from the App's
    secrets: the same in every process of one App, new when its secrets change."""
    seed = hashlib.sha256(b"slipway sessions\0" + client_secret.encode() + b"\0"
                          + (private_key or b"")).digest()
    sign = hmac.new(seed, b"sign", hashlib.sha256).digest()
    encrypt = base64.urlsafe_b64encode(hmac.new(seed, b"encrypt", hashlib.sha256).digest())
    return sign, encrypt


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path of this site only, never another host."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/builds"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/builds"
    return target


class AccessCache:
    """Answers of "may this token read that repository", each trusted for `ttl` seconds."""

    def __init__(self, ttl: float = ACCESS_TTL, max_entries: int = ACCESS_CACHE_ENTRIES,
                 clock=time.monotonic):
        self.ttl, self.max_entries, self.clock = ttl, max_entries, clock
        self._answers: dict[tuple[str, str], tuple[bool, float]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(token: str, repository: str) -> tuple[str, str]:
        # Only a digest of the token is kept in memory.
        return hashlib.sha256(token.encode()).hexdigest()[:32], repository.lower()

    def get(self, token: str, repository: str) -> bool | None:
        with self._lock:
            found = self._answers.get(self._key(token, repository))
        if found is None or found[1] <= self.clock():
            return None
        return found[0]

    def put(self, token: str, repository: str, allowed: bool) -> None:
        with self._lock:
            if len(self._answers) >= self.max_entries:
                now = self.clock()
                self._answers = {k: v for k, v in self._answers.items() if v[1] > now}
                while len(self._answers) >= self.max_entries:
                    self._answers.pop(next(iter(self._answers)))
            self._answers[self._key(token, repository)] = (allowed, self.clock() + self.ttl)


# -- the session --------------------------------------------------------------


def _serializers(config) -> tuple[URLSafeTimedSerializer, Fernet] | None:
    if not config.has_oauth_client:
        return None
    sign, encrypt = session_keys(config.github_client_secret, config.private_key)
    return URLSafeTimedSerializer(sign, salt="slipway-session"), Fernet(encrypt)


def current_viewer() -> Viewer | None:
    """The person signed in on this request, or None."""
    if "viewer" in g:
        return g.viewer
    g.viewer = None
    cookie = request.cookies.get(SESSION_COOKIE)
    keys = _serializers(current_runtime().config) if cookie else None
    if keys is not None:
        serializer, fernet = keys
        try:
            data = serializer.loads(cookie, max_age=SESSION_MAX_AGE)
            token = fernet.decrypt(data["token"].encode()).decode()
            g.viewer = Viewer(login=str(data["login"]), token=token)
        except (BadSignature, InvalidToken, KeyError, TypeError, AttributeError):
            g.drop_session = True
    return g.viewer


def _session_cookie(config, viewer: Viewer) -> str:
    serializer, fernet = _serializers(config)
    return serializer.dumps({"login": viewer.login,
                             "token": fernet.encrypt(viewer.token.encode()).decode()})


def _secure(config) -> bool:
    return config.public_url.startswith("https://")


def set_session(response: Response, config, viewer: Viewer) -> None:
    response.set_cookie(SESSION_COOKIE, _session_cookie(config, viewer), max_age=SESSION_MAX_AGE,
                        path="/", httponly=True, samesite="Lax", secure=_secure(config))


def drop_session(response: Response, config) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="Lax",
                           secure=_secure(config))


@bp.after_app_request
def _drop_broken_session(response: Response) -> Response:
    """A session GitHub no longer honours (or a cookie that does not verify) is removed."""
    if g.get("drop_session"):
        drop_session(response, current_runtime().config)
    return response


# -- who may read what ---------------------------------------------------------


class Visibility:
    """What the viewer of one request may see."""

    def __init__(self, viewer: Viewer | None, *, api_url: str, cache: AccessCache):
        self.viewer, self.api_url, self.cache = viewer, api_url, cache
        self._known: dict[str, bool] = {}

    def can_read(self, repository: str) -> bool:
        """Whether the viewer may read `owner/repo` (a private one: GitHub says so)."""
        if self.viewer is None:
            return False
        key = repository.lower()
        if key in self._known:
            return self._known[key]
        allowed = self.cache.get(self.viewer.token, repository)
        if allowed is None:
            try:
                allowed = oauth.can_read(self.api_url, self.viewer.token, repository)
            except oauth.TokenRejected:
                log.info("GitHub no longer accepts the token of %s: signed out",
                         self.viewer.login)
                g.drop_session = True
                self.viewer = None
                return False
            except GitHubError as exc:
                # Not known, so not shown, and not remembered: the next request asks again.
                log.warning("could not check %s's access to %s: %s", self.viewer.login,
                            repository, exc)
                self._known[key] = False
                return False
            self.cache.put(self.viewer.token, repository, allowed)
        self._known[key] = allowed
        return allowed

    def shows(self, build) -> bool:
        """Public builds to anyone; the others to readers of their repository."""
        return build.public or self.can_read(build.repository)

    def readable(self, repositories: Iterable[str]) -> set[str]:
        return {name for name in repositories if self.can_read(name)}


def visibility() -> Visibility:
    """The Visibility of the current request."""
    if "visibility" not in g:
        runtime = current_runtime()
        cache = runtime.extras.setdefault("access_cache", AccessCache())
        g.visibility = Visibility(current_viewer(), api_url=runtime.config.api_url, cache=cache)
    return g.visibility


# -- views --------------------------------------------------------------------


def _page(status: int, title: str, message: str) -> Response:
    response = Response(render_template("pages/error.html", code=status, title=title,
                                        message=message), status=status)
    response.headers["Cache-Control"] = "no-store"
    return response


def _not_configured() -> Response:
    return _page(404, "Sign-in is not configured",
                 "Signing in with GitHub needs the App's OAuth client: Slipway's operator sets "
                 "GITHUB_CLIENT_ID and GITHUB_CLIENT_SECRET (the App's settings show the client "
                 "id and make client secrets), or creates the App from /setup, which stores "
                 "them.")


def _state_serializer(config) -> URLSafeTimedSerializer:
    sign, _ = session_keys(config.github_client_secret, config.private_key)
    return URLSafeTimedSerializer(sign, salt="slipway-signin-state")


@bp.get("/login")
def login():
    config = current_runtime().config
    if not config.has_oauth_client:
        return _not_configured()
    state = secrets.token_urlsafe(32)
    target = safe_next(request.args.get("next"))
    response = redirect(oauth.authorize_url(
        config.api_url, client_id=config.github_client_id,
        redirect_uri=f"{config.public_url}/login/callback", state=state))
    response.set_cookie(STATE_COOKIE, _state_serializer(config).dumps({"state": state,
                                                                       "next": target}),
                        max_age=STATE_MAX_AGE, path="/login", httponly=True, samesite="Lax",
                        secure=_secure(config))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/login/callback")
def finish_login():
    config = current_runtime().config
    if not config.has_oauth_client:
        return _not_configured()
    try:
        expected = _state_serializer(config).loads(request.cookies.get(STATE_COOKIE, ""),
                                                   max_age=STATE_MAX_AGE)
    except BadSignature:
        expected = None
    given = request.args.get("state") or ""
    if not (isinstance(expected, dict) and isinstance(expected.get("state"), str)
            and given and hmac.compare_digest(expected["state"], given)):
        return _page(400, "This sign-in is not from this browser",
                     "The state GitHub sent back is not the one this browser was given (or the "
                     "sign-in took over 10 minutes), so it was not used. Sign in again.")
    if request.args.get("error"):
        return _page(400, "Not signed in", oauth.refusal_message(request.args.get("error")))
    code = request.args.get("code") or ""
    if not code:
        return _page(400, "Not signed in", "GitHub's redirect carries no code: sign in again.")
    try:
        token = oauth.exchange_code(
            config.api_url, client_id=config.github_client_id,
            client_secret=config.github_client_secret, code=code,
            redirect_uri=f"{config.public_url}/login/callback")
        login_name = oauth.user_login(config.api_url, token)
    except (oauth.SignInFailed, oauth.TokenRejected, GitHubError) as exc:
        log.warning("sign-in failed: %s", exc)
        return _page(400 if isinstance(exc, oauth.SignInFailed) else 502, "Not signed in",
                     str(exc))
    log.info("%s signed in", login_name)
    response = redirect(safe_next(expected.get("next")))
    set_session(response, config, Viewer(login_name, token))
    response.delete_cookie(STATE_COOKIE, path="/login")
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/logout")
def logout():
    config = current_runtime().config
    origin = request.headers.get("Origin")
    # SameSite=Lax keeps the cookie off other sites' POSTs; the Origin check keeps them
    # from signing people out.
    if origin and origin.rstrip("/") not in (config.public_url.rstrip("/"), request.host_url
                                             .rstrip("/")):
        return _page(403, "Not signed out", "Sign out from Slipway's own pages.")
    response = redirect("/builds", code=303)
    drop_session(response, config)
    return response
