"""GitHub's OAuth web flow with the App's own client, and the calls made with a person's token.

https://docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app/generating-a-user-access-token-for-a-github-app

- `authorize_url`: where "Sign in with GitHub" sends the browser (the web host of
  GITHUB_API_URL: github.com, or the GitHub Enterprise Server host);
- `exchange_code`: `POST {web}/login/oauth/access_token`, which answers 200 even when
  it refuses (`{"error": "bad_verification_code", ...}`): every refusal becomes
  `SignInFailed` with a sentence saying what to do;
- `user_login`: `GET {api}/user`;
- `can_read`: `GET {api}/repos/{owner}/{repo}` with the person's token: 200 is yes,
  404 (or 403) no; 401 means the token is no longer good (`TokenRejected`).

The token is the person's secret: it never reaches a log line or an error message.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

import requests

from github_app.errors import GitHubError, SlipwayError

TIMEOUT = 10
_HEADERS = {"User-Agent": "Slipway-sign-in", "X-GitHub-Api-Version": "2022-11-28"}
# What GitHub's error codes mean for the person signing in.
_REFUSALS = {
    "bad_verification_code": "GitHub did not accept the sign-in code (it works once and "
                             "expires after 10 minutes): sign in again.",
    "incorrect_client_credentials": "GitHub refused Slipway's OAuth client: "
                                    "GITHUB_CLIENT_ID or GITHUB_CLIENT_SECRET is wrong. Ask "
                                    "Slipway's operator to copy them from the App's settings.",
    "redirect_uri_mismatch": "GitHub refused the sign-in address: the App's callback URL "
                             "must be PUBLIC_URL/login/callback. Ask Slipway's operator to "
                             "add it in the App's settings.",
    "access_denied": "Sign-in was cancelled on GitHub.",
}


class SignInFailed(SlipwayError):
    """Signing in did not work; the message says what to do (`.code`: GitHub's error code)."""

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.code = code


class TokenRejected(SlipwayError):
    """GitHub no longer accepts the person's token (expired or revoked): sign in again."""


def refusal_message(code: str | None, description: str | None = None) -> str:
    """The sentence for one of GitHub's OAuth error codes."""
    if code in _REFUSALS:
        return _REFUSALS[code]
    return f"GitHub refused to sign you in ({code or 'no reason given'}): sign in again."


def github_web_url(api_url: str) -> str:
    from github_app.pages import github_web_url as web_url  # pages imports this module

    return web_url(api_url)


def authorize_url(api_url: str, *, client_id: str, redirect_uri: str, state: str) -> str:
    """GitHub's page that asks the person to authorize the App, then comes back with a code."""
    query = urlencode({"client_id": client_id, "redirect_uri": redirect_uri, "state": state})
    return f"{github_web_url(api_url)}/login/oauth/authorize?{query}"


def exchange_code(api_url: str, *, client_id: str, client_secret: str, code: str,
                  redirect_uri: str) -> str:
    """The person's access token for the one-time `code`; raises SignInFailed."""
    try:
        response = requests.post(
            f"{github_web_url(api_url)}/login/oauth/access_token",
            data={"client_id": client_id, "client_secret": client_secret, "code": code,
                  "redirect_uri": redirect_uri},
            headers={**_HEADERS, "Accept": "application/json"},
            timeout=TIMEOUT,
        )
    except requests.RequestException as exc:
        raise SignInFailed(f"GitHub could not be reached to finish signing in "
                           f"({type(exc).__name__}): try again in a minute.") from None
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if response.status_code != 200 or not isinstance(answer, dict):
        raise SignInFailed(f"GitHub answered {response.status_code} to the sign-in: try again "
                           "in a minute.")
    if answer.get("error"):
        raise SignInFailed(refusal_message(answer.get("error")), code=answer.get("error"))
    token = answer.get("access_token")
    if not isinstance(token, str) or not token:
        raise SignInFailed("GitHub's answer to the sign-in holds no token: sign in again.")
    return token


def user_login(api_url: str, token: str) -> str:
    """`GET /user` with the person's token: their login."""
    response = _get(api_url, "/user", token)
    if response.status_code == 401:
        raise TokenRejected("GitHub no longer accepts your sign-in: sign in again.")
    login = _json(response).get("login") if response.status_code == 200 else None
    if not isinstance(login, str) or not login:
        raise SignInFailed(f"GitHub answered {response.status_code} when asked who you are: "
                           "sign in again.")
    return login


def can_read(api_url: str, token: str, repository: str) -> bool:
    """Whether the person may read `owner/repo`: `GET /repos/{owner}/{repo}` answers 200.

    Raises TokenRejected on 401 and GitHubError when GitHub gives no usable answer (then
    the answer is not known and must not be cached)."""
    owner, _, name = repository.partition("/")
    response = _get(api_url, f"/repos/{quote(owner, safe='')}/{quote(name, safe='')}", token)
    if response.status_code == 200:
        return True
    if response.status_code in (403, 404):
        return False
    if response.status_code == 401:
        raise TokenRejected("GitHub no longer accepts your sign-in: sign in again.")
    raise GitHubError(f"GitHub answered {response.status_code} to GET /repos/{repository}.",
                      status=response.status_code)


def _get(api_url: str, path: str, token: str) -> requests.Response:
    try:
        return requests.get(
            f"{api_url.rstrip('/')}{path}",
            headers={**_HEADERS, "Accept": "application/vnd.github+json",
                     "Authorization": f"Bearer {token}"},
            timeout=TIMEOUT,
        )
    except requests.RequestException as exc:
        raise GitHubError(f"GitHub could not be reached ({type(exc).__name__}).") from None


def _json(response: requests.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
