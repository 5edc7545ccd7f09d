"""The loop every GitHub call goes through: the only module that imports github3.

`Session` is one github3 client (GitHub or GitHubEnterprise, timeouts, JSON
headers, URL building) with the App's auth. `Session.call` runs one request:
it logs it (method, path template, status: never a header, token or key),
retries what `retries.RetryPolicy` allows and turns a failure into a
`GitHubError` whose message says what to do. `error.retryable` is True for
failures of GitHub or the network (5xx, no connection, a rate limit past the
wait cap); `blame` is the error tree's "infrastructure" for all of them.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import github3
import requests
import urllib3

from github_app.errors import GitHubError
from github_app.retries import RetryPolicy, is_infrastructure_failure, rate_limit_wait
from github_app.tokens import enterprise_host_root

# github.py's logger: every line about GitHub's API keeps one `logger` name, whichever
# of the two modules writes it.
log = logging.getLogger("github_app.github")


class _RedactQueryGrants(logging.Filter):
    """Hide `?token=` grants in urllib3's debug lines: the archive redirect carries one."""

    _GRANT = re.compile(r"([?&](?:token|access_token)=)[^&\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "token=" in message:
            record.msg, record.args = self._GRANT.sub(r"\1[REDACTED]", message), ()
        return True


# urllib3 logs each request line with its query at debug level; only its records pass here.
logging.getLogger("urllib3.connectionpool").addFilter(_RedactQueryGrants())

JWT_REFUSED = (
    "GitHub refused the App's JWT ({status}: {message}): check GITHUB_APP_ID and the private "
    "key, and the machine's clock (JWT iat/exp)"
)


class HeaderAuth(requests.auth.AuthBase):
    """Sets `Authorization: <scheme> <credential>` per request; its repr never shows it."""

    def __init__(self, scheme: str, credential: Callable[[], str]):
        self._scheme = scheme
        self._credential = credential

    def __call__(self, request):
        request.headers["Authorization"] = f"{self._scheme} {self._credential()}"
        return request

    def __repr__(self) -> str:
        return f"<{self._scheme} auth (redacted)>"


class NoAuth(requests.auth.AuthBase):
    """No Authorization header: the archive's redirect URL carries its own short-lived grant."""

    def __call__(self, request):
        request.headers.pop("Authorization", None)
        return request

    def __repr__(self) -> str:
        return "<no auth>"


class Session:
    """One github3 client plus the loop every call goes through: log, retry, map errors."""

    def __init__(
        self,
        auth: requests.auth.AuthBase,
        who: str,
        *,
        flavour: str,
        base_url: str,
        api_root: Callable[[], str],
        user_agent: str,
        retry: RetryPolicy,
        clock: Callable[[], float],
        on_answer: Callable[[int | None], None],
    ):
        """`who` is "app" or "installation": it picks the error sentences of a 401 or 404.

        `api_root` is asked at each call: an ambiguous API URL is settled by the
        first call. `on_answer` is told the status of every answer (None: no answer).
        """
        self._who = who
        self._api_root = api_root
        self._retry = retry
        self._clock = clock
        self._on_answer = on_answer
        if flavour == "github":
            self.gh = github3.GitHub()
        else:
            # GitHubEnterprise appends /api/v3 itself; every URL names its root anyway
            # (`url`), as a bare host's root is settled by the first call.
            self.gh = github3.GitHubEnterprise(enterprise_host_root(base_url))
            self.gh.session.base_url = base_url
        # github3's Accept (v3.full+json) stays: its objects read the `body_html` it brings.
        self.gh.session.headers.update(
            {
                "User-Agent": user_agent,
                "X-GitHub-Api-Version": "2022-11-28",
            }
        )
        self.gh.session.auth = auth

    def url(self, *segments: Any, root: str | None = None) -> str:
        """The URL of an API path under `root` (default: the App's settled root)."""
        return self.gh._build_url(
            *(quote(str(s), safe="") for s in segments), base_url=root or self._api_root()
        )

    def get_without_github3_log(self, url: str, **kwargs) -> requests.Response:
        """GET through the session, not `gh._get`, whose debug log would print the URL."""
        try:
            return self.gh.session.request("GET", url, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise github3.exceptions.ConnectionError(exc) from None

    def call(
        self,
        method: str,
        template: str,
        send: Callable[[], requests.Response | Any],
        *,
        idempotent: bool = True,
        accept: tuple[int, ...] = (),
    ) -> Any:
        """Run `send` (one github3 request) until it succeeds or the policy gives up.

        `send` returns a requests Response or github3's parsed result; statuses in
        `accept` are returned to the caller instead of raised.
        """
        policy = self._retry
        waited = 0.0
        attempt = 0
        while True:
            attempt += 1
            reached = True
            try:
                result = send()
            except github3.exceptions.ConnectionError as exc:
                response, reached = None, not _never_sent(exc.exception)
                log.debug(
                    "GitHub %s %s -> no answer (%s)", method, template, type(exc.exception).__name__
                )
            except github3.exceptions.TransportError as exc:
                raise GitHubError(
                    f"GitHub could not be asked {method} {template}: "
                    f"{type(exc.exception).__name__}",
                    status=None,
                ) from None
            except github3.exceptions.GitHubException as exc:
                # ResponseError carries the response; IncompleteResponse & co. do not.
                response = getattr(exc, "response", None)
                if response is None:
                    raise GitHubError(
                        f"GitHub's answer to {method} {template} could not be read: "
                        f"{getattr(exc, 'msg', exc)}",
                        status=None,
                    ) from None
            else:
                if not isinstance(result, requests.Response):
                    log.debug("GitHub %s %s -> 200", method, template)
                    self._on_answer(200)
                    return result
                response = result
            self._on_answer(None if response is None else response.status_code)
            if response is not None:
                log.debug("GitHub %s %s -> %s", method, template, response.status_code)
                if response.status_code < 400 or response.status_code in accept:
                    return response
            status = None if response is None else response.status_code
            headers = {} if response is None else response.headers
            now = self._clock()
            delay = policy.next_delay(
                attempt,
                status,
                headers,
                now,
                waited=waited,
                idempotent=idempotent or not reached,
            )
            if delay is None:
                raise self.error(method, template, response, attempt, waited, now)
            log.info(
                "GitHub %s %s failed (%s); retrying in %.1f s",
                method,
                template,
                status or "no answer",
                delay,
            )
            policy.sleep(delay)
            waited += delay

    def error(self, method, template, response, attempts, waited, now) -> GitHubError:
        """The GitHubError of a call that failed after `attempts` attempts and `waited` s."""
        where = f"{method} {template}"
        if response is None:
            error = GitHubError(
                f"GitHub could not be reached at {self._api_root()} ({where}, {attempts} "
                "attempts): check the network and GITHUB_API_URL",
                status=None,
            )
            error.retryable = True
            return error
        status = response.status_code
        message = _github_message(response)
        wait = rate_limit_wait(status, response.headers, now)
        if wait is not None:
            text = (
                f"GitHub's rate limit for the App was hit ({where}): it asks to wait "
                f"{wait:.0f} s, beyond what Slipway waits ({self._retry.max_total_wait:.0f} s "
                f"in all, {waited:.0f} s already); re-run the build later"
            )
        elif status == 401 and self._who == "app":
            text = JWT_REFUSED.format(status=status, message=message)
        elif status == 401:
            text = (
                f"GitHub refused the installation token ({where}, 401: {message}); "
                "the installation may have been suspended or removed"
            )
        elif status == 404 and self._who == "app":
            text = (
                f"GitHub knows no installation of the App with this id ({where}, 404: "
                f"{message}): the App is not installed on that repository, or was "
                "uninstalled; install it from the App's settings page"
            )
        elif status == 404:
            text = (
                f"GitHub answered 404 for {where} ({message}): the repository or object "
                "does not exist, or the App is not installed on that repository"
            )
        elif status == 403:
            text = (
                f"GitHub refused {where} (403: {message}): the App lacks a permission; "
                "it needs checks: write, statuses: write, contents: read, pull_requests: "
                "read (app-manifest.json), accepted on the installation"
            )
        elif status == 422:
            text = f"GitHub rejected the request {where} as invalid (422): {message}"
        elif status >= 500:
            text = (
                f"GitHub answered {status} for {where} after {attempts} attempts "
                f"({message}): GitHub is having trouble; re-run the build later"
            )
        else:
            text = f"GitHub answered {status} for {where}: {message}"
        error = GitHubError(text, status=status)
        error.retryable = is_infrastructure_failure(status, response.headers)
        return error


def _github_message(response: requests.Response) -> str:
    """GitHub's `message` and the `errors` of a 422, or the start of a non-JSON body."""
    try:
        body = response.json()
    except ValueError:
        return (response.text or response.reason or "no message")[:200].strip()
    if not isinstance(body, dict):
        return str(body)[:200]
    message = body.get("message") or response.reason or "no message"
    details = [
        e.get("message") or json.dumps(e, sort_keys=True) if isinstance(e, dict) else str(e)
        for e in body.get("errors") or []
    ]
    return f"{message}: {'; '.join(details)}" if details else message


def _never_sent(exc: BaseException) -> bool:
    """True when the connection itself failed, so the request never reached GitHub."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    # urllib3 2: NewConnectionError (refused, no route) is a ConnectTimeoutError.
    return isinstance(reason, urllib3.exceptions.ConnectTimeoutError)
