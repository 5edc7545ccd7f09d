"""A fake GitHub REST API on a loopback port that rejects what GitHub rejects.

A real HTTP server (werkzeug, threaded) in a background thread. The App reaches it through
`GITHUB_API_URL = fake.url`; nothing is patched. It enforces:

- App JWTs on `/app...` and `GET /repos/{o}/{r}/installation`: RS256 signed with the App's key,
  `iss` = the app id (int or string) or its client id, `iat` an integer not in the server's
  future, `exp` an integer in the future and at most 600 s ahead of the server's clock
  (`clock_offset` moves that clock). GitHub's 401 messages.
- Installation tokens (`Authorization: token ghs_...` or `Bearer ghs_...`) on every repository
  call: unknown or expired -> 401 `Bad credentials`; none -> 401 `Requires authentication`;
  a repository the installation cannot see -> 404 `Not Found`. (Both checks live in
  tests/fake_github_auth.py.)
- Every POST/PATCH body against the requestBody schema of its operation in `@octokit/openapi`
  (tests/openapi_validation.py) -> 422 `Invalid request.\\n\\n...`, plus GitHub's prose rules:
  check-run `output.summary` / `output.text` at most 65535 bytes (UTF-8), `output.title` present,
  at most 50 annotations, `conclusion` required with `status: completed` or `completed_at`,
  `head_sha` a commit of the repository; commit-status `description` at most 140 characters.

Python interface:

    fake = FakeGitHub(app_id=12345, enterprise=False)     # makes the App's RSA-2048 key pair
    with fake: ...                                         # or fake.start() / fake.stop()
    fake.url            API root for GITHUB_API_URL (`.../api/v3` when enterprise=True)
    fake.root_url       http://127.0.0.1:PORT (GitHubEnterprise(fake.root_url) adds /api/v3)
    fake.app_id, fake.client_id, fake.private_key_pem (PKCS#1 PEM bytes), fake.public_key
    inst = fake.add_installation(installation_id=None, account="octocat", permissions=None)
    repo = fake.add_repository("octocat", "Hello-World", files={...}, installation_id=inst,
                               default_branch="main")   # .owner .name .full_name .id .default_sha
    sha = fake.add_commit("octocat", "Hello-World", files={...}, branch=None, replace=False)
    pr = fake.add_pull_request("octocat", "Hello-World", title=..., head_sha=...,
                               merge_commit_sha=..., labels=[...], base="develop")  # -> JSON
    fake.token_lifetime = 3600       # seconds an installation token lives
    fake.codeload_lifetime = 300     # seconds a tarball redirect's token lives
    fake.clock_offset = 0            # seconds the server's clock is ahead of the machine's
    fake.check_runs                  # {id: current check-run JSON}
    fake.check_run_history(id)       # [body of the POST, body of each PATCH]
    fake.statuses                    # [StatusPost(owner, repo, sha, body)] in order received
    fake.requests                    # [RecordedRequest] every request, in order
    fake.rejections                  # [Rejection(method, path, status, message)]
    fake.tokens_issued               # [token JSON returned by POST .../access_tokens]
    fake.fail_next(method, path_regex, status, times=1, headers=None, body=None)
    fake.delay_next(method, path_regex, seconds, times=1)   # answer late (GitHub timing out)
    fake.pending_delays              # delay_next requests not yet met by a request
    fake.pending_failures            # fail_next answers not yet given
    fake.oauth_user, fake.oauth_deny, fake.grant(login, "o/r"), fake.revoke(...),
    fake.client_secret, fake.callback_urls, fake.user_token_lifetime
                                    the OAuth web flow (tests/fake_github_oauth.py)
    fake.add_manifest_code(code) -> the conversion JSON that POST /app-manifests/{code}/conversions
                                    answers once (its pem/id are this fake's App)
    fake.webhook_url, fake.webhook_secret   where the App's deliveries go, what signs them
    fake.send_webhook(event, payload, guid=None, delivered_at=None) -> the logged Attempt
                                    (status 0 when nothing listens at webhook_url)
    fake.deliveries                  # the App's delivery log (tests/fake_github_deliveries.py):
                                    .attempts, .of_guid(guid), .record(event, payload,
                                    status_code=...), .wait_for_redeliveries()
    fake.reset()                     # forget everything but the App and its key

`fail_next` matches `method` ("*" for any) and `re.search(path_regex, path)` where path is
relative to the API root (no `/api/v3`), and answers `status` with `headers` and `body`
(dict -> JSON; str/bytes -> sent as is) `times` times, before any other check.
`delay_next` matches the same way and holds the next `times` matching requests for `seconds`
before the fake handles them as usual, without holding up other requests meanwhile. Past the
client's read timeout that is GitHub timing out: the client gives up, yet the request still
takes effect once handled, as it may on GitHub.

A rejection is any 4xx that the fake decided (bad auth, invalid body, unknown route or object);
a 404 for a file that is simply absent from a commit is an answer, not a rejection. The HTTP
message is GitHub's; the recorded message adds why.

Endpoints: GET /app, GET /app/installations, GET /app/installations/{id},
POST /app/installations/{id}/access_tokens, GET /repos/{o}/{r}/installation,
POST /app-manifests/{code}/conversions, GET /app/hook/deliveries (per_page, cursor, status;
`Link` rel="next"), GET /app/hook/deliveries/{id}, POST /app/hook/deliveries/{id}/attempts
(202; delivers again in the background with the same guid); with a token: GET /repos/{o}/{r},
POST/PATCH/GET check-runs, GET check-suites/{id}/check-runs, GET commits/{ref}/check-runs,
POST statuses/{sha}, GET commits/{ref}/statuses, GET commits/{ref}/status,
GET contents/{path}?ref=, GET git/commits/{sha} (the tree sha is git's, computed from the
files: equal trees, equal shas), GET tarball/{ref} (302 to /_codeload/... with a short-lived
`?token=`, which needs no Authorization header), GET pulls/{n}.
"""

from __future__ import annotations

import html
import json
import re
import secrets
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import fake_github_shapes as shapes
import openapi_validation
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fake_github_auth import (
    Refused,
    Token,
    check_repository_access,
    new_token_value,
    verify_app_jwt,
    verify_installation_token,
)
from fake_github_deliveries import DEFAULT_PER_PAGE, MAX_PER_PAGE, DeliveryLog
from fake_github_oauth import OAuthWebFlow
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

ENTERPRISE_PREFIX = "/api/v3"
RATE_LIMIT = 5000
_DOCS = "https://docs.github.com/rest"
_SHA = re.compile(r"^[0-9a-f]{40}$")


class RecordedRequest(NamedTuple):
    """One request the fake received."""

    method: str
    path: str  # relative to the API root, without query
    status: int
    auth: str  # "none" | "jwt" | "token" | "codeload" | "invalid"
    json: Any  # the parsed body, or None
    raw_path: str  # as received, with any /api/v3 prefix
    query: dict
    headers: dict
    jwt_iss: str | None  # "int" | "str" | "client_id" for an accepted JWT
    injected: bool  # answered by fail_next


class Rejection(NamedTuple):
    method: str
    path: str
    status: int
    message: str


class StatusPost(NamedTuple):
    owner: str
    repo: str
    sha: str
    body: dict


@dataclass
class Installation:
    id: int
    account: str
    permissions: dict


@dataclass
class Repository:
    owner: str
    name: str
    id: int
    installation_id: int | None
    default_branch: str
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    private: bool = True
    parents: dict[str, list[str]] = field(default_factory=dict)
    commit_times: dict[str, float] = field(default_factory=dict)

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    @property
    def default_sha(self) -> str:
        return self.branches[self.default_branch]

    def resolve(self, ref: str) -> str | None:
        """The commit sha a ref names: a sha (or its 7+ prefix), a branch, refs/heads/..."""
        ref = ref.removeprefix("refs/heads/")
        if ref in self.branches:
            return self.branches[ref]
        if ref in self.commits:
            return ref
        if re.fullmatch(r"[0-9a-f]{7,39}", ref):
            matches = [sha for sha in self.commits if sha.startswith(ref)]
            if len(matches) == 1:
                return matches[0]
        return None


class Reply(Exception):
    """Raised by a handler to answer at once (an error, usually)."""

    def __init__(self, status: int, body: Any = None, *, why: str = "", headers=None,
                 rejected: bool = True):
        super().__init__(status)
        self.status, self.body, self.why = status, body, why
        self.headers, self.rejected = headers or {}, rejected


def github_error(status: int, message: str, docs: str = _DOCS, errors=None, *, why: str = "",
                 rejected: bool = True) -> Reply:
    """GitHub's error shape: {"message", "documentation_url", "status"} (+ "errors")."""
    body = {"message": message, "documentation_url": docs, "status": str(status)}
    if errors is not None:
        body["errors"] = errors
    return Reply(status, body, why=why or message, rejected=rejected)


@contextmanager
def _answering_refusals():
    """Turn fake_github_auth's `Refused` into GitHub's error answer."""
    try:
        yield
    except Refused as refused:
        raise github_error(refused.status, refused.message, why=refused.why) from None


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args, **kwargs):  # the test output stays readable
        pass


class FakeGitHub(OAuthWebFlow):
    """GitHub's REST API, as much of it as Slipway uses, enforced like GitHub does."""

    def __init__(self, app_id: int = 12345, enterprise: bool = False, *,
                 slug: str = "slipway", owner: str = "octocat"):
        self.app_id = app_id
        self.enterprise = enterprise
        self.slug = slug
        self.app_owner = owner
        self.client_id = "Iv23li" + secrets.token_hex(7)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_key_pem: bytes = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption())
        self.public_key = key.public_key()
        self.permissions = {"checks": "write", "statuses": "write", "contents": "read",
                            "pull_requests": "read", "metadata": "read"}
        self.events = ["pull_request", "check_run", "check_suite", "installation",
                       "installation_repositories"]
        self._lock = threading.RLock()
        self._server = None
        self._thread = None
        self.root_url = ""
        self.reset()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1") -> FakeGitHub:
        """Listen on an ephemeral port of `host` (loopback by default) in a background thread."""
        openapi_validation.load_spec()  # pay the 13 MB parse before the first request
        self._server = make_server(host, 0, self._wsgi, threaded=True,
                                   request_handler=_QuietHandler)
        self.root_url = f"http://{host}:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="fake-github")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> FakeGitHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The API root: what GITHUB_API_URL should hold."""
        return self.root_url + (ENTERPRISE_PREFIX if self.enterprise else "")

    def reset(self) -> None:
        """Forget installations, repositories, tokens and records; keep the App and its key."""
        with self._lock:
            self.token_lifetime = 3600
            self.codeload_lifetime = 300
            self.clock_offset = 0.0
            self.installations: dict[int, Installation] = {}
            self.repositories: dict[str, Repository] = {}
            self.tokens: dict[str, Token] = {}
            self.tokens_issued: list[dict] = []
            self.codeload_tokens: dict[str, tuple[str, str, float]] = {}
            self.check_runs: dict[int, dict] = {}
            self._check_run_state: dict[int, dict] = {}
            self._check_run_history: dict[int, list[dict]] = {}
            self._check_suites: dict[tuple[str, str], int] = {}
            self.statuses: list[StatusPost] = []
            self._status_objects: list[tuple[str, str, dict]] = []
            self.pull_requests: dict[tuple[str, int], dict] = {}
            self.requests: list[RecordedRequest] = []
            self.rejections: list[Rejection] = []
            self.manifest_codes: dict[str, dict] = {}
            self._failures: list[dict] = []
            self._delays: list[dict] = []
            self._rate_used: dict[str, int] = {}
            self._next_id = 1000
            self._reset_oauth()
            # Where the App's webhook deliveries go, and the secret that signs them.
            self.webhook_url: str | None = None
            self.webhook_secret: str | None = None
            self.deliveries = DeliveryLog(now=self.now, app_id=self.app_id)

    def now(self) -> float:
        """The server's clock: the machine's plus `clock_offset`."""
        return time.time() + self.clock_offset

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    # -- test set-up -------------------------------------------------------------------------

    def add_installation(self, installation_id: int | None = None, account: str = "octocat",
                         permissions: dict | None = None) -> int:
        """Install the App on `account`; its repositories added later join it. Returns the id."""
        with self._lock:
            inst_id = installation_id or self._new_id()
            self.installations[inst_id] = Installation(
                inst_id, account, dict(permissions or self.permissions))
            return inst_id

    def add_repository(self, owner: str, name: str, files: dict | None = None, *,
                       installation_id: int | None = None,
                       default_branch: str = "main", private: bool = True) -> Repository:
        """A private repository with one commit holding `files` on `default_branch`.

        Without `installation_id` it joins the installation on `owner`, if there is one.
        """
        with self._lock:
            if installation_id is None:
                installation_id = next((i.id for i in self.installations.values()
                                        if i.account.lower() == owner.lower()), None)
            repo = Repository(owner, name, self._new_id(), installation_id, default_branch,
                              private=private)
            self.repositories[repo.full_name.lower()] = repo
            self.add_commit(owner, name, files or {"README.md": f"# {name}\n"})
            return repo

    def add_commit(self, owner: str, name: str, files: dict, *, branch: str | None = None,
                   replace: bool = False) -> str:
        """A new commit on `branch` (default branch) with `files` over its parent's files.

        A value of None deletes that file; `replace=True` starts from an empty tree.
        """
        with self._lock:
            repo = self._repo(owner, name)
            branch = branch or repo.default_branch
            parent = repo.branches.get(branch) or repo.branches.get(repo.default_branch)
            tree = {} if replace or parent is None else dict(repo.commits[parent])
            for path, content in files.items():
                path = path.strip("/")
                if content is None:
                    tree.pop(path, None)
                else:
                    tree[path] = (content if isinstance(content, shapes.Symlink) else
                                  content.encode() if isinstance(content, str) else bytes(content))
            sha = secrets.token_hex(20)
            repo.commits[sha] = tree
            repo.parents[sha] = [parent] if parent else []
            repo.commit_times[sha] = self.now()
            repo.branches[branch] = sha
            return sha

    def add_pull_request(self, owner: str, name: str, *, title: str, head_sha: str,
                         merge_commit_sha: str | None = None, number: int | None = None,
                         labels: list[str] = (), base: str = "develop", head: str = "feature",
                         base_sha: str | None = None, merged: bool = True,
                         body: str | None = None) -> dict:
        """A pull request; merged (and closed) unless merged=False. Returns its JSON."""
        with self._lock:
            repo = self._repo(owner, name)
            number = number or 1 + sum(1 for key in self.pull_requests if key[0] == repo.full_name)
            now = shapes.iso8601(self.now())
            self.pull_requests[(repo.full_name.lower(), number)] = {
                "id": self._new_id(), "number": number, "title": title, "body": body,
                "labels": list(labels), "head": head, "head_sha": head_sha, "base": base,
                "base_sha": base_sha or repo.default_sha, "merged": merged,
                "state": "closed" if merged else "open",
                "merge_commit_sha": merge_commit_sha, "merged_at": now if merged else None,
                "closed_at": now if merged else None,
            }
            return self._pull_request_json(repo, number)

    def edit_pull_request(self, owner: str, name: str, number: int, *,
                          title: str | None = None, labels: list[str] | None = None) -> dict:
        """Change a pull request's title or labels, as a user does after the merge."""
        with self._lock:
            repo = self._repo(owner, name)
            pr = self.pull_requests[(repo.full_name.lower(), number)]
            if title is not None:
                pr["title"] = title
            if labels is not None:
                pr["labels"] = list(labels)
            return self._pull_request_json(repo, number)

    def reinstall(self, owner: str, name: str) -> int:
        """Uninstall the App from the repository's account and install it again.

        The old installation and its tokens stop working; returns the new id."""
        with self._lock:
            repo = self._repo(owner, name)
            old = self.installations.pop(repo.installation_id)
            new = self._new_id()
            self.installations[new] = Installation(new, old.account, dict(old.permissions))
            for other in self.repositories.values():
                if other.installation_id == old.id:
                    other.installation_id = new
            return new

    def add_manifest_code(self, code: str) -> dict:
        """Register a one-time App-manifest code; returns the conversion it will answer."""
        with self._lock:
            owner = shapes.user(self.url, self.app_owner, 1)
            result = shapes.app(self.url, app_id=self.app_id, slug=self.slug,
                                client_id=self.client_id, owner=owner,
                                permissions=self.permissions, events=self.events)
            result.update(client_secret=self.client_secret,
                          webhook_secret=secrets.token_hex(20),
                          pem=self.private_key_pem.decode())
            self.manifest_codes[code] = result
            return dict(result)

    def fail_next(self, method: str, path_regex: str, status: int, times: int = 1,
                  headers: dict | None = None, body: Any = None) -> None:
        """Answer the next `times` matching requests with `status` before any other check."""
        with self._lock:
            self._failures.append({"method": method.upper(), "regex": re.compile(path_regex),
                                   "status": status, "times": times,
                                   "headers": dict(headers or {}), "body": body})

    def delay_next(self, method: str, path_regex: str, seconds: float, times: int = 1) -> None:
        """Hold the next `times` matching requests for `seconds`, then handle them as usual."""
        with self._lock:
            self._delays.append({"method": method.upper(), "regex": re.compile(path_regex),
                                 "seconds": float(seconds), "times": times})

    @property
    def pending_failures(self) -> int:
        """How many injected failures no request has met yet."""
        with self._lock:
            return sum(failure["times"] for failure in self._failures)

    @property
    def pending_delays(self) -> int:
        """How many delayed answers no request has met yet."""
        with self._lock:
            return sum(delay["times"] for delay in self._delays)

    def send_webhook(self, event: str, payload: dict, *, guid: str | None = None,
                     delivered_at: float | None = None):
        """Deliver an event to `webhook_url` as GitHub does, and log the attempt.

        Nothing listening there (Slipway down): the attempt is logged with status 0.
        """
        return self.deliveries.send(event, payload, url=self.webhook_url,
                                    secret=self.webhook_secret, guid=guid,
                                    delivered_at=delivered_at)

    def check_run_history(self, run_id: int) -> list[dict]:
        """The bodies received for one check run: the POST, then each PATCH."""
        with self._lock:
            return list(self._check_run_history.get(run_id, []))

    # -- the WSGI application ----------------------------------------------------------------

    def _wsgi(self, environ, start_response):
        request = Request(environ)
        with self._lock:
            pause = self._injected_delay(request.method, self._api_path(request.path))
        if pause:
            time.sleep(pause)  # outside the lock: the other requests go on meanwhile
        with self._lock:
            response = self._respond(request)
        return response(environ, start_response)

    def _api_path(self, raw_path: str) -> str:
        """The path relative to the API root (no `/api/v3`)."""
        if not raw_path.startswith(("/_codeload/", "/login/oauth/")) and self.enterprise:
            return raw_path[len(ENTERPRISE_PREFIX):] if raw_path.startswith(
                ENTERPRISE_PREFIX + "/") else "/_outside_api_root" + raw_path
        return raw_path

    def _injected_delay(self, method: str, path: str) -> float:
        for delay in self._delays:
            if delay["method"] in ("*", method) and delay["regex"].search(path):
                delay["times"] -= 1
                if delay["times"] <= 0:
                    self._delays.remove(delay)
                return delay["seconds"]
        return 0.0

    def _respond(self, request: Request) -> Response:
        raw_path = request.path
        path = self._api_path(raw_path)
        record = {"auth": "none", "json": None, "jwt_iss": None, "injected": False}
        try:
            injected = self._injected_failure(request.method, path)
            if injected is not None:
                record["injected"] = True
                raise injected
            handler, params, auth = self._route(request.method, path)
            if auth == "jwt":
                record["jwt_iss"] = self._verify_jwt(request)
                record["auth"] = "jwt"
            elif auth == "token" and handler == self.get_repo and self.is_user_token_request(
                    request):
                record["auth"] = "user"
                user = self.verify_user_token(request)
                full_name = f"{params['owner']}/{params['repo']}"
                if not self.user_can_read(user.login, full_name):
                    raise github_error(404, "Not Found", rejected=False,
                                       why=f"{user.login} cannot read {full_name}")
                params["token"] = None
            elif auth == "token":
                params["token"] = self._verify_token(request, params)
                record["auth"] = "token"
            elif auth == "user":
                record["auth"] = "user"
            elif auth == "codeload":
                record["auth"] = "codeload"
            if request.method in ("POST", "PATCH", "PUT") and auth != "oauth":
                record["json"] = self._parsed_body(request, path)
                record["json"] = self._validated_body(request, path, record["json"])
            status, body, headers = handler(request, record["json"], **params)
        except Reply as reply:
            status, body, headers = reply.status, reply.body, reply.headers
            if reply.rejected and not record["injected"] and 400 <= status < 500:
                if record["auth"] == "none" and status == 401:
                    record["auth"] = "invalid" if request.headers.get("Authorization") else "none"
                self.rejections.append(Rejection(request.method, path, status, reply.why))
        response = self._response(status, body, headers, request)
        self.requests.append(RecordedRequest(
            request.method, path, status, record["auth"], record["json"], raw_path,
            dict(request.args), dict(request.headers), record["jwt_iss"], record["injected"]))
        return response

    def _response(self, status: int, body: Any, headers: dict, request: Request) -> Response:
        if isinstance(body, bytes | str):
            response = Response(body, status=status)
            response.content_type = headers.pop("Content-Type", "text/plain; charset=utf-8")
        elif body is None and status in (204, 302, 304):
            response = Response(b"", status=status)
        else:
            response = Response(json.dumps(body), status=status,
                                content_type="application/json; charset=utf-8")
        response.headers.update(self._rate_limit_headers(request))
        response.headers["X-GitHub-Media-Type"] = "github.v3; format=json"
        response.headers["X-GitHub-Api-Version-Selected"] = "2022-11-28"
        response.headers["X-GitHub-Request-Id"] = secrets.token_hex(8).upper()
        for name, value in headers.items():  # injected headers win over the defaults
            response.headers[name] = str(value)
        return response

    def _rate_limit_headers(self, request: Request) -> dict:
        who = request.headers.get("Authorization", "") or request.remote_addr or ""
        self._rate_used[who] = used = self._rate_used.get(who, 0) + 1
        limit = RATE_LIMIT if request.headers.get("Authorization") else 60
        window = int(self.now()) // 3600 * 3600 + 3600
        return {"X-RateLimit-Limit": limit, "X-RateLimit-Remaining": max(limit - used, 0),
                "X-RateLimit-Reset": window, "X-RateLimit-Used": used,
                "X-RateLimit-Resource": "core"}

    def _injected_failure(self, method: str, path: str) -> Reply | None:
        for failure in self._failures:
            if failure["method"] in ("*", method) and failure["regex"].search(path):
                failure["times"] -= 1
                if failure["times"] <= 0:
                    self._failures.remove(failure)
                body = failure["body"]
                if body is None:
                    body = {"message": _REASONS.get(failure["status"], "Server Error"),
                            "documentation_url": _DOCS, "status": str(failure["status"])}
                return Reply(failure["status"], body, headers=dict(failure["headers"]),
                             rejected=False)
        return None

    # -- routing -----------------------------------------------------------------------------

    def _route(self, method: str, path: str):
        for route_method, regex, handler, auth in _ROUTES:
            match = regex.match(path)
            if match and route_method == method:
                return getattr(self, handler), match.groupdict(), auth
        raise github_error(404, "Not Found", why=f"Not Found: the fake has no {method} {path}")

    def _parsed_body(self, request: Request, path: str) -> Any:
        raw = request.get_data()
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise github_error(400, "Problems parsing JSON",
                               why=f"Problems parsing JSON: {exc}") from None

    def _validated_body(self, request: Request, path: str, body: Any) -> Any:
        operation = openapi_validation.find_operation(request.method, path)
        docs = operation.docs_url if operation else _DOCS
        if operation is None or operation.body_schema is None:
            return body
        if body is None:
            if not operation.body_required:
                return None
            body = {}
        errors = openapi_validation.request_body_errors(request.method, path, body)
        if errors:
            lines = [openapi_validation.describe(e) for e in errors]
            raise github_error(422, "Invalid request.\n\n" + "\n".join(lines), docs,
                               errors=lines)
        return body

    # -- authentication ----------------------------------------------------------------------

    def _verify_jwt(self, request: Request) -> str:
        """Check the App's JWT like GitHub does; returns how `iss` named the App."""
        with _answering_refusals():
            return verify_app_jwt(
                request.headers.get("Authorization", ""), app_id=self.app_id,
                client_id=self.client_id, public_key=self.public_key, now=self.now())

    def _verify_token(self, request: Request, params: dict) -> Token:
        """An installation token that may read `params`' repository."""
        with _answering_refusals():
            token = verify_installation_token(
                request.headers.get("Authorization", ""), self.tokens, self.now())
            if "owner" in params:
                full_name = f"{params['owner']}/{params['repo']}"
                check_repository_access(
                    token, self.repositories.get(full_name.lower()), full_name)
        return token

    # -- /app and friends (JWT) --------------------------------------------------------------

    def _app_json(self) -> dict:
        owner = shapes.user(self.url, self.app_owner, 1)
        return shapes.app(self.url, app_id=self.app_id, slug=self.slug, client_id=self.client_id,
                          owner=owner, permissions=self.permissions, events=self.events)

    def _installation_json(self, inst: Installation) -> dict:
        account = shapes.user(self.url, inst.account, inst.id + 100000)
        return shapes.installation(self.url, inst, app_id=self.app_id, client_id=self.client_id,
                                   account=account)

    def get_app(self, request, body):
        return 200, self._app_json(), {}

    def list_installations(self, request, body):
        return 200, [self._installation_json(i) for i in self.installations.values()], {}

    def get_installation(self, request, body, installation_id):
        inst = self.installations.get(int(installation_id))
        if inst is None:
            raise github_error(404, "Not Found",
                               why=f"Not Found: no installation {installation_id}")
        return 200, self._installation_json(inst), {}

    def get_repo_installation(self, request, body, owner, repo):
        found = self.repositories.get(f"{owner}/{repo}".lower())
        if found is None or found.installation_id not in self.installations:
            raise github_error(404, "Not Found", why=f"Not Found: the App is not installed on "
                               f"{owner}/{repo}")
        return 200, self._installation_json(self.installations[found.installation_id]), {}

    def create_access_token(self, request, body, installation_id):
        inst = self.installations.get(int(installation_id))
        if inst is None:
            raise github_error(404, "Not Found",
                               why=f"Not Found: no installation {installation_id}")
        body = body or {}
        permissions = dict(inst.permissions)
        if body.get("permissions"):
            rank = {"read": 1, "write": 2, "admin": 3}
            for name, level in body["permissions"].items():
                if rank.get(level, 9) > rank.get(inst.permissions.get(name), 0):
                    raise github_error(422, "The permissions requested are not granted to this "
                                       "installation.")
            permissions = dict(body["permissions"])
        names = None
        if body.get("repositories") or body.get("repository_ids"):
            names = {name.lower() for name in body.get("repositories", [])}
            names |= {r.name.lower() for r in self.repositories.values()
                      if r.id in set(body.get("repository_ids", []))}
            names = frozenset(names)
        value = new_token_value()
        expires_at = int(self.now()) + self.token_lifetime
        self.tokens[value] = Token(value, inst.id, expires_at, names)
        result = {"token": value, "expires_at": shapes.iso8601(expires_at),
                  "permissions": permissions,
                  "repository_selection": "selected" if names else "all"}
        self.tokens_issued.append(dict(result))
        return 201, result, {}

    def convert_manifest(self, request, body, code):
        result = self.manifest_codes.pop(code, None)
        if result is None:
            raise github_error(404, "Not Found", why=f"Not Found: manifest code {code!r} is "
                               "unknown or already used")
        return 201, result, {}

    # -- the App's webhook deliveries (JWT) --------------------------------------------------

    def list_deliveries(self, request, body):
        per_page = _per_page(request.args.get("per_page"))
        status = request.args.get("status")
        if status not in (None, "success", "failure"):
            raise github_error(422, "Validation Failed", _HOOK_DOCS, errors=[
                {"resource": "WebhookDelivery", "field": "status", "code": "invalid"}],
                why=f"status must be success or failure, not {status!r}")
        cursor = request.args.get("cursor")
        start = None
        if cursor is not None:
            if not re.fullmatch(r"v1_\d+", cursor):
                raise github_error(422, "Validation Failed", _HOOK_DOCS, errors=[
                    {"resource": "WebhookDelivery", "field": "cursor", "code": "invalid"}],
                    why=f"cursor {cursor!r} is not one that a Link header gave")
            start = int(cursor[3:])
        items, following = self.deliveries.page(per_page=per_page, cursor=start, status=status)
        headers = {}
        if following is not None:
            query = f"per_page={per_page}&cursor=v1_{following}"
            if status:
                query += f"&status={status}"
            headers["Link"] = f'<{self.url}/app/hook/deliveries?{query}>; rel="next"'
        return 200, [a.simple(shapes.iso8601) for a in items], headers

    def get_delivery(self, request, body, delivery_id):
        attempt = self.deliveries.get(int(delivery_id))
        if attempt is None:
            raise github_error(404, "Not Found", _HOOK_DOCS,
                               why=f"Not Found: no delivery {delivery_id} in the last 3 days")
        return 200, attempt.full(shapes.iso8601), {}

    def redeliver(self, request, body, delivery_id):
        if not self.deliveries.redeliver(int(delivery_id), url=self.webhook_url,
                                         secret=self.webhook_secret):
            raise github_error(404, "Not Found", _HOOK_DOCS,
                               why=f"Not Found: no delivery {delivery_id} in the last 3 days")
        return 202, {}, {}

    # -- repositories (installation token) ---------------------------------------------------

    def _repo(self, owner: str, name: str) -> Repository:
        repo = self.repositories.get(f"{owner}/{name}".lower())
        if repo is None:
            raise github_error(404, "Not Found", why=f"Not Found: no repository {owner}/{name}")
        return repo

    def _repo_json(self, repo: Repository) -> dict:
        shape = shapes.repository(self.url, repo, shapes.user(self.url, repo.owner, repo.id + 1))
        shape.update(private=repo.private, visibility="private" if repo.private else "public")
        return shape

    def _commit(self, repo: Repository, ref: str) -> str:
        sha = repo.resolve(ref)
        if sha is None:
            raise github_error(422, f"No commit found for SHA: {ref}",
                               why=f"No commit found for SHA: {ref} in {repo.full_name}")
        return sha

    def get_repo(self, request, body, owner, repo, token):
        return 200, self._repo_json(self._repo(owner, repo)), {}

    def get_pull(self, request, body, owner, repo, number, token):
        found = self._repo(owner, repo)
        if (found.full_name.lower(), int(number)) not in self.pull_requests:
            raise github_error(404, "Not Found", why=f"Not Found: no pull request #{number}")
        shape = self._pull_request_json(found, int(number))
        # The media type chooses the body's renderings: github3 asks for `.full+json`.
        accept = request.headers.get("Accept", "")
        text = shape.get("body") or ""
        if ".full+json" in accept or ".html+json" in accept:
            shape["body_html"] = f"<p>{html.escape(text)}</p>" if text else ""
        if ".full+json" in accept or ".text+json" in accept:
            shape["body_text"] = text
        return 200, shape, {}

    def _pull_request_json(self, repo: Repository, number: int) -> dict:
        pr = self.pull_requests[(repo.full_name.lower(), number)]
        return shapes.pull_request(self.url, repo, self._repo_json(repo), pr)

    def get_git_commit(self, request, body, owner, repo, sha, token):
        found = self._repo(owner, repo)
        # The Git database API takes a full sha only: no branch names, no short shas.
        if sha not in found.commits:
            raise github_error(404, "Not Found", "https://docs.github.com/rest/git/commits"
                               "#get-a-commit-object", why=f"Not Found: no commit {sha} in "
                               f"{found.full_name}")
        shape = shapes.git_commit(self.url, found, sha, found.commits[sha],
                                  found.parents.get(sha, []), "Commit", found.commit_times[sha])
        return 200, shape, {}

    def get_contents(self, request, body, owner, repo, path, token):
        found = self._repo(owner, repo)
        ref = request.args.get("ref") or found.default_branch
        sha = found.resolve(ref)
        if sha is None:
            raise github_error(404, f"No commit found for the ref {ref}",
                               why=f"No commit found for the ref {ref} in {found.full_name}")
        files, path = found.commits[sha], (path or "").strip("/")
        if path in files:
            return 200, shapes.content_file(self.url, found, path, files[path], ref), {}
        if not path or any(name.startswith(path + "/") for name in files):
            return 200, shapes.content_directory(self.url, found, path, files, ref), {}
        # An absent file is an answer, not a rejection: apps probe for optional files.
        raise github_error(404, "Not Found", "https://docs.github.com/rest/repos/contents"
                           "#get-repository-content", rejected=False)

    def get_tarball(self, request, body, owner, repo, token, ref=None):
        found = self._repo(owner, repo)
        sha = found.resolve(ref or found.default_branch)
        if sha is None:
            raise github_error(404, "Not Found", why=f"Not Found: no ref {ref!r}")
        ticket = secrets.token_urlsafe(24)
        self.codeload_tokens[ticket] = (found.full_name.lower(), sha,
                                        self.now() + self.codeload_lifetime)
        location = (f"{self.root_url}/_codeload/{found.owner}/{found.name}/legacy.tar.gz/"
                    f"{sha}?token={ticket}")
        return 302, None, {"Location": location}

    def codeload(self, request, body, owner, repo, sha):
        ticket = self.codeload_tokens.get(request.args.get("token", ""))
        if ticket is None or ticket[0] != f"{owner}/{repo}".lower() or ticket[1] != sha:
            raise Reply(404, "404: Not Found", why="codeload: no valid ?token= for this archive")
        if ticket[2] <= self.now():
            raise Reply(404, "404: Not Found", why="codeload: the ?token= expired")
        found = self._repo(owner, repo)
        data = shapes.tarball(found.owner, found.name, sha, found.commits[sha])
        disposition = f"attachment; filename={found.owner}-{found.name}-{sha[:7]}.tar.gz"
        return 200, data, {"Content-Type": "application/x-gzip",
                           "Content-Disposition": disposition}

    # -- check runs --------------------------------------------------------------------------

    def create_check_run(self, request, body, owner, repo, token):
        found = self._repo(owner, repo)
        sha = self._commit(found, body["head_sha"])
        self._check_run_rules(body)
        run_id = self._new_id()
        suite_key = (found.full_name.lower(), sha)
        if suite_key not in self._check_suites:
            self._check_suites[suite_key] = self._new_id()
        state = {"id": run_id, "repo": found.full_name.lower(), "head_sha": sha,
                 "check_suite_id": self._check_suites[suite_key], "status": "queued",
                 "conclusion": None, "started_at": shapes.iso8601(self.now()),
                 "completed_at": None, "annotations_count": 0}
        self._apply_check_run(state, body)
        self._check_run_state[run_id] = state
        self._check_run_history[run_id] = [body]
        return 201, self._store_check_run(found, state), {}

    def update_check_run(self, request, body, owner, repo, check_run_id, token):
        found = self._repo(owner, repo)
        state = self._check_run_state.get(int(check_run_id))
        if state is None or state["repo"] != found.full_name.lower():
            raise github_error(404, "Not Found", why=f"Not Found: no check run {check_run_id} "
                               f"in {found.full_name}")
        self._check_run_rules(body)
        self._apply_check_run(state, body)
        self._check_run_history[state["id"]].append(body)
        return 200, self._store_check_run(found, state), {}

    def get_check_run(self, request, body, owner, repo, check_run_id, token):
        found = self._repo(owner, repo)
        state = self._check_run_state.get(int(check_run_id))
        if state is None or state["repo"] != found.full_name.lower():
            raise github_error(404, "Not Found", why=f"Not Found: no check run {check_run_id}")
        return 200, self.check_runs[state["id"]], {}

    def list_suite_check_runs(self, request, body, owner, repo, check_suite_id, token):
        found = self._repo(owner, repo)
        runs = [s for s in self._check_run_state.values()
                if s["repo"] == found.full_name.lower()
                and s["check_suite_id"] == int(check_suite_id)]
        return 200, self._check_run_list(request, runs), {}

    def list_ref_check_runs(self, request, body, owner, repo, ref, token):
        found = self._repo(owner, repo)
        sha = self._commit(found, ref)
        runs = [s for s in self._check_run_state.values()
                if s["repo"] == found.full_name.lower() and s["head_sha"] == sha]
        return 200, self._check_run_list(request, runs), {}

    def _check_run_list(self, request: Request, runs: list[dict]) -> dict:
        if request.args.get("check_name"):
            runs = [s for s in runs if s["name"] == request.args["check_name"]]
        if request.args.get("status"):
            runs = [s for s in runs if s["status"] == request.args["status"]]
        if request.args.get("filter", "latest") == "latest":
            latest: dict[str, dict] = {}
            for state in sorted(runs, key=lambda s: s["id"]):
                latest[state["name"]] = state
            runs = list(latest.values())
        runs = sorted(runs, key=lambda s: -s["id"])
        return {"total_count": len(runs), "check_runs": [self.check_runs[s["id"]] for s in runs]}

    def _check_run_rules(self, body: dict) -> None:
        """What GitHub documents in prose rather than in the schema."""
        problems = []
        output = body.get("output")
        if output is not None:
            if not output.get("title"):
                problems.append("output/title: is required when output is given")
            for key in ("summary", "text"):
                size = len((output.get(key) or "").encode("utf-8"))
                if size > 65535:
                    problems.append(f"output/{key}: is too long ({size} bytes in UTF-8, "
                                    "maximum is 65535 bytes)")
            if len(output.get("annotations") or []) > 50:
                problems.append("output/annotations: at most 50 annotations per request")
        completed = body.get("status") == "completed" or "completed_at" in body
        if completed and not body.get("conclusion"):
            problems.append("conclusion: is required when status is completed or completed_at "
                            "is given")
        if body.get("conclusion") == "stale":
            problems.append("conclusion: only GitHub can set stale")
        if problems:
            raise github_error(422, "Invalid request.\n\n" + "\n".join(problems),
                               "https://docs.github.com/rest/checks/runs", errors=problems)

    def _apply_check_run(self, state: dict, body: dict) -> None:
        for key in ("name", "details_url", "external_id", "started_at", "status",
                    "completed_at", "actions"):
            if key in body:
                state[key] = body[key]
        if body.get("conclusion"):
            state["conclusion"] = body["conclusion"]
            state["status"] = "completed"
            state.setdefault("completed_at", None)
            state["completed_at"] = state["completed_at"] or shapes.iso8601(self.now())
        elif body.get("status") in ("queued", "in_progress"):
            state["conclusion"], state["completed_at"] = None, None
        if "output" in body:
            previous = state.get("output") or {}
            state["output"] = {**previous, **{k: v for k, v in body["output"].items()
                                              if k in ("title", "summary", "text")}}
            state["annotations_count"] += len(body["output"].get("annotations") or [])

    def _store_check_run(self, repo: Repository, state: dict) -> dict:
        shape = shapes.check_run(self.url, state, repo, self._app_json())
        self.check_runs[state["id"]] = shape
        return shape

    # -- commit statuses ---------------------------------------------------------------------

    def create_status(self, request, body, owner, repo, sha, token):
        found = self._repo(owner, repo)
        commit = self._commit(found, sha)
        description = body.get("description") or ""
        if len(description) > 140:
            raise github_error(422, "Validation Failed",
                               "https://docs.github.com/rest/commits/statuses#create-a-commit-status",
                               errors=[{"resource": "Status", "code": "custom",
                                        "field": "description",
                                        "message": "description is too long (maximum is 140 "
                                                   "characters)"}],
                               why=f"description is {len(description)} characters (max 140)")
        self.statuses.append(StatusPost(found.owner, found.name, commit, body))
        creator = shapes.user(self.url, f"{self.slug}[bot]", 9000 + self.app_id % 1000, "Bot")
        item = shapes.status(self.url, found, commit, body, status_id=self._new_id(),
                             creator=creator, now=self.now())
        self._status_objects.append((found.full_name.lower(), commit, item))
        return 201, item, {}

    def list_statuses(self, request, body, owner, repo, ref, token):
        found = self._repo(owner, repo)
        sha = self._commit(found, ref)
        items = [s for r, c, s in self._status_objects if r == found.full_name.lower() and c == sha]
        return 200, list(reversed(items)), {}

    def combined_status(self, request, body, owner, repo, ref, token):
        found = self._repo(owner, repo)
        sha = self._commit(found, ref)
        items = [s for r, c, s in self._status_objects if r == found.full_name.lower() and c == sha]
        return 200, shapes.combined_status(self.url, found, sha, items, self._repo_json(found)), {}


_REASONS = {400: "Bad Request", 401: "Bad credentials", 403: "Forbidden", 404: "Not Found",
            409: "Conflict", 422: "Validation Failed", 429: "Too Many Requests",
            500: "Server Error", 502: "Server Error", 503: "Service Unavailable"}

_HOOK_DOCS = "https://docs.github.com/rest/apps/webhooks"


def _per_page(value: str | None) -> int:
    """GitHub's `per_page`: a number up to 100 (more is cut to 100); otherwise the default."""
    if value is None or not value.strip().isdigit() or int(value) < 1:
        return DEFAULT_PER_PAGE
    return min(int(value), MAX_PER_PAGE)


_R = r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)"
_ROUTES = [
    (method, re.compile(f"^{pattern}$"), handler, auth)
    for method, pattern, handler, auth in [
        ("GET", r"/app", "get_app", "jwt"),
        ("GET", r"/app/installations", "list_installations", "jwt"),
        ("GET", r"/app/installations/(?P<installation_id>\d+)", "get_installation", "jwt"),
        ("POST", r"/app/installations/(?P<installation_id>\d+)/access_tokens",
         "create_access_token", "jwt"),
        ("GET", _R + r"/installation", "get_repo_installation", "jwt"),
        ("GET", r"/app/hook/deliveries", "list_deliveries", "jwt"),
        ("GET", r"/app/hook/deliveries/(?P<delivery_id>\d+)", "get_delivery", "jwt"),
        ("POST", r"/app/hook/deliveries/(?P<delivery_id>\d+)/attempts", "redeliver", "jwt"),
        ("POST", r"/app-manifests/(?P<code>[^/]+)/conversions", "convert_manifest", "none"),
        ("GET", _R, "get_repo", "token"),
        ("GET", r"/user", "get_authenticated_user", "user"),
        ("GET", r"/login/oauth/authorize", "oauth_authorize", "oauth"),
        ("POST", r"/login/oauth/access_token", "oauth_access_token", "oauth"),
        ("GET", _R + r"/pulls/(?P<number>\d+)", "get_pull", "token"),
        ("GET", _R + r"/contents/?(?P<path>.*)", "get_contents", "token"),
        ("GET", _R + r"/git/commits/(?P<sha>[^/]+)", "get_git_commit", "token"),
        ("GET", _R + r"/tarball/?(?P<ref>.+)?", "get_tarball", "token"),
        ("POST", _R + r"/check-runs", "create_check_run", "token"),
        ("PATCH", _R + r"/check-runs/(?P<check_run_id>\d+)", "update_check_run", "token"),
        ("GET", _R + r"/check-runs/(?P<check_run_id>\d+)", "get_check_run", "token"),
        ("GET", _R + r"/check-suites/(?P<check_suite_id>\d+)/check-runs",
         "list_suite_check_runs", "token"),
        ("GET", _R + r"/commits/(?P<ref>.+)/check-runs", "list_ref_check_runs", "token"),
        ("POST", _R + r"/statuses/(?P<sha>[^/]+)", "create_status", "token"),
        ("GET", _R + r"/commits/(?P<ref>.+)/statuses", "list_statuses", "token"),
        ("GET", _R + r"/commits/(?P<ref>.+)/status", "combined_status", "token"),
        ("GET", r"/_codeload/(?P<owner>[^/]+)/(?P<repo>[^/]+)/legacy\.tar\.gz/"
                r"(?P<sha>[0-9a-f]{40})", "codeload", "codeload"),
    ]
]


def start_fake_github(app_id: int = 12345, enterprise: bool = False,
                      host: str = "127.0.0.1") -> FakeGitHub:
    """A started FakeGitHub; the caller stops it (conftest's session fixture does)."""
    return FakeGitHub(app_id=app_id, enterprise=enterprise).start(host)
