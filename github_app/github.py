"""GitHub's REST API as the App sees it: the only module that imports github3.

`GitHubApp` signs the App's JWT, fetches and caches installation tokens and
hands out `InstallationClient`s, whose methods take and return plain data
(dicts, bytes, paths). Every call goes through one loop that logs it (method,
path template, status: never a header, token or key), retries what
`retries.RetryPolicy` allows and turns failures into `GitHubError`s whose
message says what to do. `error.retryable` is True for failures of GitHub or
the network (5xx, no connection, a rate limit past the wait cap); `blame` is
the error tree's "infrastructure" for all of them.

github3 provides the sessions (GitHub or GitHubEnterprise, timeouts, JSON
headers), URL building and, where it maps to a single request, the call
itself (`pull_request`). Check runs, statuses, contents and archives go
through github3's session (`_get`/`_post`/`_patch`) so request bodies pass
through byte for byte as `reporting.py` built them, without github3 first
fetching the repository.
"""

from __future__ import annotations

import base64
import email.utils
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import github3
import requests
import urllib3

from github_app.errors import REPOSITORY, GitHubError, SourceError
from github_app.retries import RetryPolicy, is_infrastructure_failure, rate_limit_wait
from github_app.tokens import TokenCache, api_roots, app_jwt, enterprise_host_root

log = logging.getLogger(__name__)

CLOCK_SKEW_THRESHOLD = 30
DOWNLOAD_CHUNK = 64 * 1024


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


class _HeaderAuth(requests.auth.AuthBase):
    """Sets `Authorization: <scheme> <credential>` per request; its repr never shows it."""

    def __init__(self, scheme: str, credential: Callable[[], str]):
        self._scheme = scheme
        self._credential = credential

    def __call__(self, request):
        request.headers["Authorization"] = f"{self._scheme} {self._credential()}"
        return request

    def __repr__(self) -> str:
        return f"<{self._scheme} auth (redacted)>"


class _NoAuth(requests.auth.AuthBase):
    """No Authorization header: the archive's redirect URL carries its own short-lived grant."""

    def __call__(self, request):
        request.headers.pop("Authorization", None)
        return request

    def __repr__(self) -> str:
        return "<no auth>"


class _Session:
    """One github3 client plus the loop every call goes through: log, retry, map errors."""

    def __init__(self, app: GitHubApp, auth: requests.auth.AuthBase, who: str):
        self._app = app
        self._who = who
        if app._flavour == "github":
            self.gh = github3.GitHub()
        else:
            # GitHubEnterprise appends /api/v3 itself; every URL names its root anyway
            # (`url`), as a bare host's root is settled by the first call.
            self.gh = github3.GitHubEnterprise(enterprise_host_root(app._roots[0]))
            self.gh.session.base_url = app._roots[0]
        # github3's Accept (v3.full+json) stays: its objects read the `body_html` it brings.
        self.gh.session.headers.update(
            {
                "User-Agent": app._user_agent,
                "X-GitHub-Api-Version": "2022-11-28",
            }
        )
        self.gh.session.auth = auth

    def url(self, *segments: Any, root: str | None = None) -> str:
        """The URL of an API path under `root` (default: the App's settled root)."""
        return self.gh._build_url(
            *(quote(str(s), safe="") for s in segments), base_url=root or self._app._root
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
        policy = self._app._retry
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
                    self._app._observe(200)
                    return result
                response = result
            self._app._observe(None if response is None else response.status_code)
            if response is not None:
                log.debug("GitHub %s %s -> %s", method, template, response.status_code)
                if response.status_code < 400 or response.status_code in accept:
                    return response
            status = None if response is None else response.status_code
            headers = {} if response is None else response.headers
            now = self._app._clock()
            delay = policy.next_delay(
                attempt,
                status,
                headers,
                now,
                waited=waited,
                idempotent=idempotent or not reached,
            )
            if delay is None:
                raise self._error(method, template, response, attempt, waited, now)
            log.info(
                "GitHub %s %s failed (%s); retrying in %.1f s",
                method,
                template,
                status or "no answer",
                delay,
            )
            policy.sleep(delay)
            waited += delay

    def _error(self, method, template, response, attempts, waited, now) -> GitHubError:
        where = f"{method} {template}"
        if response is None:
            error = GitHubError(
                f"GitHub could not be reached at {self._app._root} ({where}, {attempts} "
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
                f"{wait:.0f} s, beyond what Slipway waits ({self._app._retry.max_total_wait:.0f} s "
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


class GitHubApp:
    """The App: signs its JWT, caches one installation token per installation."""

    def __init__(
        self,
        api_url: str,
        app_id: int | str,
        private_key_pem: str | bytes,
        *,
        clock: Callable[[], float] = time.time,
        retry: RetryPolicy | None = None,
        user_agent: str = "slipway",
        on_call: Callable[[int | None], None] | None = None,
    ):
        self.app_id = str(app_id)
        # Told the status of every answer (None: no answer), for /metrics.
        self._on_call = on_call
        self._key = private_key_pem
        self._clock = clock
        self._retry = retry or RetryPolicy()
        self._user_agent = user_agent
        self._flavour, self._roots = api_roots(api_url)
        self._root = self._roots[0]
        self._root_settled = len(self._roots) == 1
        # Server clock minus ours, learnt from the Date of a 401 on the JWT.
        self._skew = 0.0
        self._tokens = TokenCache(self._create_token, clock)
        self._clients: dict[int, InstallationClient] = {}
        self._guard = threading.Lock()
        self._session = _Session(self, _HeaderAuth("Bearer", self.jwt), who="app")

    def __repr__(self) -> str:
        return f"<GitHubApp {self.app_id} at {self._root}>"

    def _observe(self, status: int | None) -> None:
        if self._on_call is not None:
            self._on_call(status)

    @property
    def api_root(self) -> str:
        """The REST API root in use (settled by the first call when the URL was ambiguous)."""
        return self._root

    def jwt(self) -> str:
        """A fresh JWT for the App, corrected for a clock skew GitHub reported."""
        return app_jwt(self.app_id, self._key, self._clock() + self._skew)

    def installation(self, installation_id: int) -> InstallationClient:
        """The client of one installation (shared: its token cache and connections)."""
        with self._guard:
            client = self._clients.get(int(installation_id))
            if client is None:
                client = InstallationClient(self, int(installation_id))
                self._clients[int(installation_id)] = client
            return client

    def installation_token(self, installation_id: int) -> tuple[str, float]:
        """A token of the installation with at least 5 minutes left, and its expiry (epoch s).

        One request per installation at a time: concurrent callers wait for it and
        share its token.
        """
        return self._tokens.get(int(installation_id))

    def _create_token(self, installation_id: int) -> tuple[str, float]:
        template = "/app/installations/{installation_id}/access_tokens"
        candidates = self._candidate_roots()
        for root in candidates:
            url = self._session.url(
                "app", "installations", installation_id, "access_tokens", root=root
            )
            response = self._post_token(url, template)
            # An ambiguous URL: a 404 or a non-JSON answer means the API is not at this root.
            if root != candidates[-1] and (response.status_code == 404 or not _is_json(response)):
                continue
            break
        if response.status_code >= 400:
            raise self._session._error("POST", template, response, 1, 0.0, self._clock())
        self._settle_root(root)
        body = response.json()
        return body["token"], self._local_expiry(body["expires_at"])

    def _post_token(self, url: str, template: str) -> requests.Response:
        def send():
            return self._session.gh._post(url)

        response = self._session.call("POST", template, send, accept=(401, 404))
        if response.status_code == 401 and self._learn_skew(response):
            response = self._session.call("POST", template, send, accept=(404,))
        return response

    def _candidate_roots(self) -> list[str]:
        return [self._root] if self._root_settled else list(self._roots)

    def _settle_root(self, root: str) -> None:
        if not self._root_settled:
            self._root, self._root_settled = root, True
            log.info("GitHub API root: %s", root)

    def _learn_skew(self, response: requests.Response) -> bool:
        """Adopt the server's clock from its Date header; True when that changes the JWT."""
        server_now = _date_header(response)
        if server_now is None:
            return False
        skew = server_now - self._clock()
        if abs(skew - self._skew) < CLOCK_SKEW_THRESHOLD:
            return False
        log.warning("GitHub's clock differs from ours by %.0f s; correcting the App's JWT", skew)
        self._skew = skew
        return True

    def _local_expiry(self, expires_at: str) -> float:
        """The token's expiry on our clock: GitHub states it on its own clock."""
        expiry = datetime.fromisoformat(expires_at.replace("Z", "+00:00")).timestamp()
        return expiry - self._skew


class InstallationClient:
    """GitHub calls on behalf of one installation; each one carries a valid token."""

    def __init__(self, app: GitHubApp, installation_id: int):
        self.installation_id = installation_id
        self._app = app
        self._session = _Session(
            app,
            _HeaderAuth("token", lambda: app.installation_token(installation_id)[0]),
            who="installation",
        )

    def __repr__(self) -> str:
        return f"<InstallationClient {self.installation_id} of App {self._app.app_id}>"

    def _ensure_root(self) -> None:
        """Settle an ambiguous API root (the first token request does) before building URLs."""
        if not self._app._root_settled:
            self._app.installation_token(self.installation_id)
        self._session.gh.session.base_url = self._app._root

    def _json(self, method, template, segments, *, body=None, params=None, idempotent=True):
        self._ensure_root()
        s = self._session
        url = s.url(*segments)
        data = None if body is None else json.dumps(body)
        send = {
            "GET": lambda: s.gh._get(url, params=params),
            "POST": lambda: s.gh._post(url, data=data, json=False),
            "PATCH": lambda: s.gh._patch(url, data=data),
        }[method]
        return s.call(method, template, send, idempotent=idempotent).json()

    def create_check_run(self, owner: str, repo: str, body: Mapping) -> dict:
        """POST /repos/{owner}/{repo}/check-runs; the created check run."""
        # Not idempotent: a retried create can leave two check runs (see retries.py).
        return self._json(
            "POST",
            "/repos/{owner}/{repo}/check-runs",
            ("repos", owner, repo, "check-runs"),
            body=body,
            idempotent=False,
        )

    def update_check_run(self, owner: str, repo: str, check_run_id: int, body: Mapping) -> dict:
        """PATCH /repos/{owner}/{repo}/check-runs/{check_run_id}; the updated check run."""
        return self._json(
            "PATCH",
            "/repos/{owner}/{repo}/check-runs/{check_run_id}",
            ("repos", owner, repo, "check-runs", check_run_id),
            body=body,
        )

    def get_check_run(self, owner: str, repo: str, check_run_id: int) -> dict:
        """GET /repos/{owner}/{repo}/check-runs/{check_run_id}."""
        return self._json(
            "GET",
            "/repos/{owner}/{repo}/check-runs/{check_run_id}",
            ("repos", owner, repo, "check-runs", check_run_id),
        )

    def list_check_runs_for_suite(self, owner: str, repo: str, suite_id: int) -> list[dict]:
        """Every check run of a check suite (all pages)."""
        runs: list[dict] = []
        page = 1
        while True:
            body = self._json(
                "GET",
                "/repos/{owner}/{repo}/check-suites/{check_suite_id}/check-runs",
                ("repos", owner, repo, "check-suites", suite_id, "check-runs"),
                params={"per_page": 100, "page": page},
            )
            batch = body.get("check_runs") or []
            runs.extend(batch)
            if not batch or len(runs) >= body.get("total_count", 0):
                return runs
            page += 1

    def create_status(self, owner: str, repo: str, sha: str, body: Mapping) -> dict:
        """POST /repos/{owner}/{repo}/statuses/{sha}; the created status."""
        # Retried like an idempotent call: a repeated status only repeats the latest state.
        return self._json(
            "POST",
            "/repos/{owner}/{repo}/statuses/{sha}",
            ("repos", owner, repo, "statuses", sha),
            body=body,
        )

    def get_pull_request(self, owner: str, repo: str, number: int) -> dict:
        """GET /repos/{owner}/{repo}/pulls/{pull_number}, through github3's own call."""
        self._ensure_root()
        gh = self._session.gh
        pull = self._session.call(
            "GET",
            "/repos/{owner}/{repo}/pulls/{pull_number}",
            lambda: gh.pull_request(owner, repo, number),
        )
        if pull is None:
            raise GitHubError(f"There is no pull request #{number} in {owner}/{repo}", status=404)
        return pull.as_dict()

    def get_file(self, owner: str, repo: str, path: str, ref: str) -> bytes | None:
        """The content of a file at `ref` (contents API), or None when there is none."""
        self._ensure_root()
        s = self._session
        template = "/repos/{owner}/{repo}/contents/{path}"
        url = s.url("repos", owner, repo, "contents") + "/" + quote(path.lstrip("/"), safe="/")
        response = s.call(
            "GET", template, lambda: s.gh._get(url, params={"ref": ref}), accept=(404,)
        )
        if response.status_code == 404:
            return None
        body = response.json()
        if isinstance(body, list) or body.get("type") != "file":
            return None
        if body.get("encoding") == "base64" and body.get("content") is not None:
            return base64.b64decode(body["content"])
        # Files over 1 MB come without content: ask for the raw media type.
        raw = s.call(
            "GET",
            template,
            lambda: s.gh._get(
                url, params={"ref": ref}, headers={"Accept": "application/vnd.github.raw"}
            ),
        )
        return raw.content

    def download_tarball(
        self, owner: str, repo: str, ref: str, dest: Path, *, max_bytes: int
    ) -> Path:
        """Save the repository's tarball at `ref` to `dest` (a file, or a folder to put it in).

        GitHub answers with a 302 to a short-lived codeload URL, which is fetched
        without our token. Over `max_bytes`, the download stops and raises SourceError.
        """
        self._ensure_root()
        s = self._session
        dest = Path(dest)
        if dest.is_dir():
            dest = dest / f"{repo}-{ref[:12]}.tar.gz"
        partial = dest.with_name(dest.name + ".part")
        template = "/repos/{owner}/{repo}/tarball/{ref}"
        url = s.url("repos", owner, repo, "tarball", ref)
        try:
            response = s.call(
                "GET", template, lambda: s.gh._get(url, allow_redirects=False, stream=True)
            )
            location = response.headers.get("Location") if response.is_redirect else None
            if location:
                response.close()
                # The location's query is a grant to the archive: log the host only.
                where = f"{urlsplit(location).netloc} (archive redirect)"
                response = s.call(
                    "GET",
                    where,
                    lambda: s.get_without_github3_log(
                        location, stream=True, auth=_NoAuth(), headers={"Accept": "*/*"}
                    ),
                )
            _check_length(response, max_bytes, owner, repo, ref)
            written = 0
            with response, open(partial, "wb") as out:
                for chunk in response.iter_content(DOWNLOAD_CHUNK):
                    written += len(chunk)
                    if written > max_bytes:
                        raise _too_large(max_bytes, owner, repo, ref)
                    out.write(chunk)
            partial.replace(dest)
            return dest
        except requests.RequestException as exc:
            error = GitHubError(
                f"The download of {owner}/{repo}'s source at {ref[:12]} broke off "
                f"({type(exc).__name__}); re-run the build",
                status=None,
            )
            error.retryable = True
            raise error from None
        finally:
            partial.unlink(missing_ok=True)


def _check_length(response, max_bytes, owner, repo, ref) -> None:
    length = response.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > max_bytes:
        response.close()
        raise _too_large(max_bytes, owner, repo, ref)


def _too_large(max_bytes: int, owner: str, repo: str, ref: str) -> SourceError:
    error = SourceError(
        f"The source archive of {owner}/{repo} at {ref[:12]} is larger than "
        f"{max_bytes // 1024**2} MiB ({max_bytes} bytes), the most Slipway downloads; "
        "keep large files out of the repository (Git LFS or an artifact store)"
    )
    error.blame = REPOSITORY
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


def _is_json(response: requests.Response) -> bool:
    try:
        response.json()
    except ValueError:
        return False
    return True


def _date_header(response: requests.Response) -> float | None:
    value = response.headers.get("Date")
    try:
        return email.utils.parsedate_to_datetime(value).timestamp() if value else None
    except (TypeError, ValueError):
        return None


def _never_sent(exc: BaseException) -> bool:
    """True when the connection itself failed, so the request never reached GitHub."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    # urllib3 2: NewConnectionError (refused, no route) is a ConnectTimeoutError.
    return isinstance(reason, urllib3.exceptions.ConnectTimeoutError)
