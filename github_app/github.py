"""GitHub's REST API as the App sees it: the App and its installations.

`GitHubApp` signs the App's JWT, fetches and caches installation tokens and
hands out `InstallationClient`s, whose methods take and return plain data
(dicts, bytes, paths). Every call goes through `github_calls.Session`, the one
loop that logs, retries and turns failures into `GitHubError`s whose message
says what to do.

github3 (imported by github_calls only) provides the sessions, URL building
and, where it maps to a single request, the call itself (`pull_request`).
Check runs, statuses, contents and archives go through github3's session
(`_get`/`_post`/`_patch`) so request bodies pass through byte for byte as
`reporting.py` built them, without github3 first fetching the repository.
"""

from __future__ import annotations

import base64
import email.utils
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from urllib.parse import quote, urlsplit

import requests

from github_app.errors import GitHubError, SourceRefused
from github_app.github_calls import HeaderAuth, NoAuth, Session
from github_app.redelivery import next_cursor
from github_app.retries import RetryPolicy
from github_app.tokens import TokenCache, api_roots, app_jwt

log = logging.getLogger(__name__)

CLOCK_SKEW_THRESHOLD = 30
DOWNLOAD_CHUNK = 64 * 1024


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
        self._session = self._new_session(HeaderAuth("Bearer", self.jwt), who="app")

    def __repr__(self) -> str:
        return f"<GitHubApp {self.app_id} at {self._root}>"

    def _observe(self, status: int | None) -> None:
        if self._on_call is not None:
            self._on_call(status)

    def _new_session(self, auth: requests.auth.AuthBase, who: str) -> Session:
        """A github3 session that follows this App's API root, retry policy and clock."""
        return Session(
            auth,
            who,
            flavour=self._flavour,
            base_url=self._roots[0],
            api_root=lambda: self._root,
            user_agent=self._user_agent,
            retry=self._retry,
            clock=self._clock,
            on_answer=self._observe,
        )

    @property
    def api_root(self) -> str:
        """The REST API root in use (settled by the first call when the URL was ambiguous)."""
        return self._root

    def jwt(self) -> str:
        """A fresh JWT for the App, corrected for a clock skew GitHub reported."""
        return app_jwt(self.app_id, self._key, self._clock() + self._skew)

    def get_app(self) -> dict:
        """`GET /app` with the App's JWT: its id, slug, name and owner (`owner.login`)."""
        candidates = self._candidate_roots()
        for root in candidates:
            url = self._session.url("app", root=root)
            response = self._session.call("GET", "/app", lambda url=url: self._session.gh._get(url),
                                          accept=(401, 404))
            if root != candidates[-1] and (response.status_code == 404 or not _is_json(response)):
                continue
            break
        if response.status_code == 401 and self._learn_skew(response):
            response = self._session.call("GET", "/app", lambda: self._session.gh._get(url))
        if response.status_code >= 400:
            raise self._session.error("GET", "/app", response, 1, 0.0, self._clock())
        self._settle_root(root)
        return response.json()

    def list_installations(self) -> list[dict]:
        """`GET /app/installations` (every page): the accounts the App is installed on."""
        self.get_app()  # settles the API root and the clock skew first
        found: list[dict] = []
        page = 1
        url = self._session.url("app", "installations")
        while True:
            params = {"per_page": 100, "page": page}
            batch = self._session.call(
                "GET", "/app/installations",
                lambda params=params: self._session.gh._get(url, params=params),
            ).json()
            found.extend(batch)
            if len(batch) < 100:
                return found
            page += 1

    def app_owner(self) -> str:
        """The login of the account that owns the App."""
        owner = (self.get_app().get("owner") or {}).get("login")
        if not isinstance(owner, str) or not owner:
            raise GitHubError("GitHub's answer to GET /app names no owner.")
        return owner

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
            raise self._session.error("POST", template, response, 1, 0.0, self._clock())
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

    def hook_deliveries(
        self, *, per_page: int, cursor: str | None = None
    ) -> tuple[object, str | None]:
        """One page of the App's delivery log, newest first, and the next page's cursor.

        GET /app/hook/deliveries with the App's JWT; the items are returned as GitHub sent
        them (`redelivery.parse_page` reads them). No `status` filter: `status=failure`
        leaves out the deliveries GitHub could not make at all (status code 0).
        """
        params = {"per_page": per_page}
        if cursor is not None:
            params["cursor"] = cursor
        response = self._app_call("GET", "/app/hook/deliveries", ("app", "hook", "deliveries"),
                                  params=params)
        return response.json(), next_cursor(response.headers.get("Link"))

    def redeliver(self, delivery_id: int) -> None:
        """POST /app/hook/deliveries/{delivery_id}/attempts: GitHub answers 202, then sends
        the delivery again with the same guid."""
        # Not idempotent: a retried request could deliver twice (the store's dedupe by
        # delivery id would still build once), so only what cannot have reached GitHub retries.
        self._app_call(
            "POST",
            "/app/hook/deliveries/{delivery_id}/attempts",
            ("app", "hook", "deliveries", int(delivery_id), "attempts"),
            idempotent=False,
        )

    def _app_call(self, method, template, segments, *, params=None, idempotent=True):
        """One call with the App's JWT, trying each candidate root of an ambiguous API URL."""
        session = self._session
        candidates = self._candidate_roots()
        for root in candidates:
            url = session.url(*segments, root=root)
            if method == "GET":
                def send(url=url):
                    return session.gh._get(url, params=params)
            else:
                def send(url=url):
                    return session.gh._post(url)
            response = session.call(method, template, send, idempotent=idempotent,
                                    accept=(401, 404))
            if response.status_code == 401 and self._learn_skew(response):
                response = session.call(method, template, send, idempotent=idempotent,
                                        accept=(404,))
            if root != candidates[-1] and (response.status_code == 404 or not _is_json(response)):
                continue
            break
        if response.status_code >= 400:
            raise session.error(method, template, response, 1, 0.0, self._clock())
        self._settle_root(root)
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
        self._session = app._new_session(
            HeaderAuth("token", lambda: app.installation_token(installation_id)[0]),
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

    def get_tree_sha(self, owner: str, repo: str, sha: str) -> str:
        """GET /repos/{owner}/{repo}/git/commits/{sha} -> tree.sha: equal trees, equal shas."""
        body = self._json(
            "GET",
            "/repos/{owner}/{repo}/git/commits/{commit_sha}",
            ("repos", owner, repo, "git", "commits", sha),
        )
        return body["tree"]["sha"]

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

    def list_check_runs_for_ref(self, owner: str, repo: str, ref: str, *,
                                check_name: str) -> list[dict]:
        """Every check run named `check_name` on `ref`, older attempts included (all pages)."""
        runs: list[dict] = []
        page = 1
        while True:
            body = self._json(
                "GET",
                "/repos/{owner}/{repo}/commits/{ref}/check-runs",
                ("repos", owner, repo, "commits", ref, "check-runs"),
                params={"check_name": check_name, "filter": "all", "per_page": 100,
                        "page": page},
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
                        location, stream=True, auth=NoAuth(), headers={"Accept": "*/*"}
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


def _too_large(max_bytes: int, owner: str, repo: str, ref: str) -> SourceRefused:
    return SourceRefused(
        f"The source archive of {owner}/{repo} at {ref[:12]} is larger than "
        f"{max_bytes // 1024**2} MiB ({max_bytes} bytes), the most Slipway downloads; "
        "keep large files out of the repository (Git LFS or an artifact store)"
    )


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


