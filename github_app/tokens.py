"""The App's credentials: its JWT's claims and the cache of installation tokens.

No network: `TokenCache` calls the `fetch` it is given (github.py's request to
GitHub) and reads the `clock` it is given. Tokens never reach a repr.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from urllib.parse import urlsplit

import jwt

GITHUB_COM_API = "https://api.github.com"
ENTERPRISE_API_PATH = "/api/v3"
# https://docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app/generating-a-json-web-token-jwt-for-a-github-app
# "iat: 60 seconds in the past to allow for clock drift"; "exp: no more than 10 minutes
# into the future". exp = now + 540 keeps exp <= server_now + 600 as long as the server's
# clock is at most 60 s behind ours, the same drift that iat - 60 tolerates; a server
# ahead of us is accepted up to 540 s. Beyond that, github.py corrects the clock from the
# Date header of GitHub's 401.
JWT_BACKDATE = 60
JWT_LIFETIME = 540
# Renew an installation token with less than this left, so that a build that outlives
# the token (1 hour) still reports with a valid one.
TOKEN_RENEW_MARGIN = 300


def jwt_claims(app_id: int | str, now: float) -> dict:
    """The claims of the App's JWT at time `now` (seconds since the epoch)."""
    return {"iat": int(now) - JWT_BACKDATE, "exp": int(now) + JWT_LIFETIME, "iss": str(app_id)}


def app_jwt(app_id: int | str, private_key_pem: str | bytes, now: float) -> str:
    """The App's JWT, signed RS256 with its private key."""
    return jwt.encode(jwt_claims(app_id, now), private_key_pem, algorithm="RS256")


def api_roots(api_url: str) -> tuple[str, list[str]]:
    """The github3 flavour ("github" or "enterprise") and the candidate API roots of `api_url`.

    `https://HOST/api/v3` and `https://HOST` both reach GitHub Enterprise Server's
    `https://HOST/api/v3`, never `/api/v3/api/v3`. A bare host is ambiguous: it can
    also be an API served at the root (GHE.com's `api.SUBDOMAIN.ghe.com`, a proxy, a
    test server), so it yields two candidates, the root first; the first call settles it.
    """
    url = api_url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"GITHUB_API_URL must be an http(s) URL, got {api_url!r}")
    if url == GITHUB_COM_API:
        return "github", [GITHUB_COM_API]
    if parts.path:
        return "enterprise", [url]
    return "enterprise", [url, url + ENTERPRISE_API_PATH]


def enterprise_host_root(api_root: str) -> str:
    """What github3.GitHubEnterprise expects: the root without its /api/v3."""
    return api_root.removesuffix(ENTERPRISE_API_PATH)


class TokenCache:
    """Installation tokens by installation id, renewed with less than `margin` seconds left.

    One fetch per installation at a time: concurrent callers wait for it and share
    its token. Different installations fetch in parallel.
    """

    def __init__(
        self,
        fetch: Callable[[int], tuple[str, float]],
        clock: Callable[[], float],
        *,
        margin: float = TOKEN_RENEW_MARGIN,
    ):
        self._fetch = fetch
        self._clock = clock
        self._margin = margin
        self._tokens: dict[int, tuple[str, float]] = {}
        self._locks: dict[int, threading.Lock] = {}
        self._guard = threading.Lock()

    def __repr__(self) -> str:
        return f"<TokenCache of {len(self._tokens)} installations>"

    def get(self, installation_id: int) -> tuple[str, float]:
        """A token with at least `margin` seconds left, and its expiry (epoch seconds)."""
        cached = self._fresh(installation_id)
        if cached:
            return cached
        with self._lock_for(installation_id):
            cached = self._fresh(installation_id)
            if cached:
                return cached
            token = self._fetch(installation_id)
            self._tokens[installation_id] = token
            return token

    def _fresh(self, installation_id: int) -> tuple[str, float] | None:
        token = self._tokens.get(installation_id)
        if token and token[1] - self._clock() >= self._margin:
            return token
        return None

    def _lock_for(self, installation_id: int) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(installation_id, threading.Lock())
