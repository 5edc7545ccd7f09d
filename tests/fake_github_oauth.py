"""The fake GitHub's OAuth web flow for the App's own client ("Sign in with GitHub").

A mixin of `FakeGitHub` (tests/fake_github.py), answering as GitHub does:
https://docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app/generating-a-user-access-token-for-a-github-app

- `GET /login/oauth/authorize?client_id=&redirect_uri=&state=`: GitHub shows its consent
  page; the fake plays the person `oauth_user` who clicks "Authorize" (or, with
  `oauth_deny`, "Cancel") and redirects at once to `redirect_uri?code=&state=` (or
  `?error=access_denied&...`). An unknown client id is a 404 page; a `redirect_uri` outside
  `callback_urls` (when set) redirects to the first callback URL with
  `error=redirect_uri_mismatch`, as GitHub does.
- `POST /login/oauth/access_token` (form, JSON or query; `Accept: application/json` or
  not): a one-time code that lives 10 minutes becomes a `ghu_` token that lives
  `user_token_lifetime` seconds. Errors come as GitHub sends them: **200** with
  `{"error": "bad_verification_code" | "incorrect_client_credentials" |
  "redirect_uri_mismatch", "error_description", "error_uri"}`.
- `GET /user` with the user's token: the person; `GET /repos/{o}/{r}` with it: 200 when
  the person may read the repository (`grant(login, "owner/repo")`, or a public
  repository), else 404 `Not Found`; an unknown or expired token is 401 `Bad credentials`.

On GitHub Enterprise Server (`enterprise=True`) the `/login/oauth/...` pages live on the
web root, outside `/api/v3`, as they do there.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import string
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

_TROUBLESHOOTING = ("https://docs.github.com/apps/managing-oauth-apps/"
                    "troubleshooting-oauth-app-access-token-request-errors")
CODE_LIFETIME = 600


@dataclass
class UserToken:
    value: str
    login: str
    expires_at: float


class OAuthWebFlow:
    """Mixed into FakeGitHub: `self._new_id`, `self.now`, `self.url`, `self.repositories`."""

    def _reset_oauth(self) -> None:
        self.oauth_user = "octocat"
        self.oauth_deny = False
        self.callback_urls: list[str] = []
        self.client_secret = getattr(self, "client_secret", None) or secrets.token_hex(20)
        self.user_token_lifetime = 28800
        self.oauth_codes: dict[str, tuple[str, str, float]] = {}  # code -> login, uri, expiry
        self.user_tokens: dict[str, UserToken] = {}
        self.user_access: dict[str, set[str]] = {}

    def grant(self, login: str, full_name: str) -> None:
        """Let the person `login` read `owner/repo` (a collaborator, an org member)."""
        self.user_access.setdefault(login.lower(), set()).add(full_name.lower())

    def revoke(self, login: str, full_name: str) -> None:
        self.user_access.get(login.lower(), set()).discard(full_name.lower())

    def user_can_read(self, login: str, full_name: str) -> bool:
        repo = self.repositories.get(full_name.lower())
        if repo is None:
            return False
        return not repo.private or full_name.lower() in self.user_access.get(login.lower(), ())

    # -- the pages ------------------------------------------------------------------------------

    def oauth_authorize(self, request, body):
        from tests.fake_github import Reply

        args = request.args
        if args.get("client_id") != self.client_id:
            raise Reply(404, "<html><body>Not Found</body></html>",
                        headers={"Content-Type": "text/html"},
                        why=f"authorize: unknown client_id {args.get('client_id')!r}")
        state = args.get("state")
        redirect_uri = args.get("redirect_uri") or (self.callback_urls or [""])[0]
        if self.callback_urls and not any(redirect_uri.startswith(url)
                                          for url in self.callback_urls):
            return self._redirect(self.callback_urls[0], {
                "error": "redirect_uri_mismatch",
                "error_description": "The redirect_uri MUST match the registered callback URL "
                                     "for this application.",
                "error_uri": f"{_TROUBLESHOOTING}/#redirect-uri-mismatch", "state": state})
        if self.oauth_deny:
            return self._redirect(redirect_uri, {
                "error": "access_denied",
                "error_description": "The user has denied your application access.",
                "error_uri": f"{_TROUBLESHOOTING}/#access-denied", "state": state})
        code = secrets.token_hex(10)
        self.oauth_codes[code] = (self.oauth_user, redirect_uri, self.now() + CODE_LIFETIME)
        return self._redirect(redirect_uri, {"code": code, "state": state})

    def oauth_access_token(self, request, body):
        fields = dict(parse_qsl(request.query_string.decode()))
        raw = request.get_data(as_text=True)
        if raw.strip().startswith("{"):
            with contextlib.suppress(ValueError):
                fields.update(json.loads(raw))
        else:
            fields.update(parse_qsl(raw))
        if (fields.get("client_id") != self.client_id
                or fields.get("client_secret") != self.client_secret):
            answer = {"error": "incorrect_client_credentials",
                      "error_description": "The client_id and/or client_secret passed are "
                                           "incorrect.",
                      "error_uri": f"{_TROUBLESHOOTING}/#incorrect-client-credentials"}
            return self._token_answer(request, answer)
        found = self.oauth_codes.pop(fields.get("code") or "", None)
        if found is None or found[2] <= self.now():
            answer = {"error": "bad_verification_code",
                      "error_description": "The code passed is incorrect or expired.",
                      "error_uri": f"{_TROUBLESHOOTING}/#bad-verification-code"}
            return self._token_answer(request, answer)
        login, redirect_uri, _ = found
        if fields.get("redirect_uri") and fields["redirect_uri"] != redirect_uri:
            answer = {"error": "redirect_uri_mismatch",
                      "error_description": "The redirect_uri MUST match the registered callback "
                                           "URL for this application.",
                      "error_uri": f"{_TROUBLESHOOTING}/#redirect-uri-mismatch2"}
            return self._token_answer(request, answer)
        token = "ghu_" + "".join(secrets.choice(string.ascii_letters + string.digits)
                                 for _ in range(36))
        self.user_tokens[token] = UserToken(token, login, self.now() + self.user_token_lifetime)
        refresh = "ghr_" + secrets.token_hex(38)
        return self._token_answer(request, {
            "access_token": token, "expires_in": self.user_token_lifetime,
            "refresh_token": refresh, "refresh_token_expires_in": 15897600,
            "token_type": "bearer", "scope": ""})

    def get_authenticated_user(self, request, body):
        import fake_github_shapes as shapes

        user = self.verify_user_token(request)
        return 200, shapes.user(self.url, user.login, 5000 + len(user.login)), {}

    # -- helpers ------------------------------------------------------------------------------

    def verify_user_token(self, request) -> UserToken:
        from tests.fake_github import github_error

        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        if not credential:
            raise github_error(401, "Requires authentication", why="no Authorization header")
        token = self.user_tokens.get(credential) if scheme.lower() in ("token", "bearer") else None
        if token is None:
            raise github_error(401, "Bad credentials", why="Bad credentials: unknown user token")
        if token.expires_at <= self.now():
            raise github_error(401, "Bad credentials",
                               why="Bad credentials: the user token expired")
        return token

    def is_user_token_request(self, request) -> bool:
        return request.headers.get("Authorization", "").partition(" ")[2].startswith("ghu_")

    def _redirect(self, uri: str, query: dict):
        query = {k: v for k, v in query.items() if v is not None}
        separator = "&" if urlsplit(uri).query else "?"
        return 302, None, {"Location": f"{uri}{separator}{urlencode(query)}"}

    def _token_answer(self, request, answer: dict):
        # GitHub answers 200 even for errors; form-encoded unless JSON is asked for.
        if "json" in request.headers.get("Accept", ""):
            return 200, answer, {}
        return 200, urlencode(answer), {"Content-Type": "application/x-www-form-urlencoded; "
                                                        "charset=utf-8"}
