"""Slipway end to end: the real app on a loopback port, the fake GitHub, the
real Docker engine and registry. Used by the end-to-end tests and benchmarks.

    harness = Harness(fake_github, registry_address, data_dir)
    repo = harness.repository(files={"Dockerfile": ...})
    answer = harness.deliver("pull_request", repo.merged(labels=["version:1.2.3"]))
    harness.run_worker()          # drains the queue (burst) and returns
"""

from __future__ import annotations

import copy
import threading
import uuid
from dataclasses import dataclass

import requests
from werkzeug.serving import make_server

from github_app import create_app
from github_app.config import Config
from github_app.github import GitHubApp
from github_app.retries import RetryPolicy
from github_app.worker import Worker
from tests.payloads import merged_pull_request, pull_request_event, to_body, webhook_headers

SECRET = "e2e webhook secret"

# A tiny image that builds in seconds: the app's own tests need no pip install.
TINY_DOCKERFILE = """\
FROM python:3.11-slim
COPY app.py /app/app.py
RUN python3 -c "print('compiled', 1 + 1)"
CMD ["python3", "/app/app.py"]
"""


@dataclass
class Repo:
    harness: Harness
    owner: str
    name: str
    installation_id: int
    head_sha: str
    merge_sha: str
    private: bool = False

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    def merged(self, labels=(), title="Add orders endpoint", base_ref="develop", merged=True,
               *, number: int | None = None, head_sha: str | None = None,
               merge_sha: str | None = None, head_owner: str | None = None):
        """The real `pull_request` `closed` example, pointed at this repository."""
        payload = merged_pull_request(labels=list(labels), title=title, base_ref=base_ref,
                                      merged=merged, merge_commit_sha=merge_sha or self.merge_sha)
        payload = self._pointed(payload, head_sha=head_sha or self.head_sha, number=number,
                                head_owner=head_owner)
        # The same pull request on the fake GitHub, for a re-run to read again.
        pull = payload["pull_request"]
        self.harness.fake.add_pull_request(
            self.owner, self.name, title=title, head_sha=pull["head"]["sha"],
            merge_commit_sha=pull["merge_commit_sha"], number=pull["number"],
            labels=list(labels), base=base_ref, merged=merged)
        return payload

    def pull_request(self, action: str, labels=(), title="Add orders endpoint", *,
                     number: int = 12, head_sha: str | None = None, label: str | None = None,
                     head_owner: str | None = None, changes: dict | None = None,
                     before: str | None = None):
        """A real `pull_request` example of an open pull request (`opened`, `labeled`, ...)."""
        payload = pull_request_event(action, labels=list(labels), title=title, label=label,
                                     changes=changes, before=before)
        return self._pointed(payload, head_sha=head_sha or self.head_sha, number=number,
                             head_owner=head_owner)

    def _pointed(self, payload: dict, *, head_sha: str, number: int | None,
                 head_owner: str | None) -> dict:
        payload["installation"] = {"id": self.installation_id, "node_id": "MDIzOkludGVncmF0aW9u"}
        repository = payload["repository"]
        repository["name"] = self.name
        repository["full_name"] = self.full_name
        repository["owner"]["login"] = self.owner
        repository["html_url"] = f"https://github.com/{self.full_name}"
        repository["private"] = self.private
        pr = payload["pull_request"]
        for side in ("base", "head"):
            pr[side]["repo"] = copy.deepcopy(repository)
        pr["head"]["sha"] = head_sha
        if payload.get("action") == "synchronize":
            payload["after"] = head_sha
        if number is not None:
            pr["number"] = payload["number"] = number
        if head_owner is not None:  # a fork: same name, another owner
            fork = pr["head"]["repo"]
            fork["owner"] = copy.deepcopy(fork["owner"])
            fork["owner"]["login"] = head_owner
            fork["full_name"] = f"{head_owner}/{self.name}"
            fork["fork"] = True
        return payload


class Harness:
    def __init__(self, fake, registry: str, data_dir, *, threads: int = 2, **config):
        self.fake = fake
        # repository() installs the App on octo-org; the fake's App belongs to octocat.
        config.setdefault("allowed_owners", ("octo-org",))
        self.config = Config(
            app_id=str(fake.app_id),
            private_key=fake.private_key_pem,
            webhook_secret=SECRET,
            api_url=fake.url,
            registry=registry,
            public_url="http://slipway.example",
            data_dir=data_dir,
            build_network="host",
            worker_threads=threads,
            **config,
        )
        self.app = create_app(self.config)
        self.runtime = self.app.extensions["slipway"]
        self.store = self.runtime.store
        self._server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self.store.close()

    def github(self) -> GitHubApp:
        # Fast retries: the tests inject 5xx and must not wait for real backoff.
        return GitHubApp(self.config.api_url, self.config.app_id, self.config.private_key,
                         retry=RetryPolicy(max_attempts=4, base_delay=0.01, max_total_wait=5),
                         on_call=self.runtime.metrics.github_api_call)

    def worker(self, **options) -> Worker:
        return Worker(self.config, self.store, self.github(), metrics=self.runtime.metrics,
                      wakeup=self.runtime.extras["wakeup"], **options)

    def run_worker(self, **options) -> None:
        """Drain the queue, as `worker.run(burst=True)` does, and return."""
        self.worker(**options).run(burst=True)

    def repository(self, files: dict, *, name: str | None = None, owner: str = "octo-org",
                   merge_files: dict | None = None, private: bool = False) -> Repo:
        """A repository on the fake GitHub with the App installed; head and merge commits."""
        name = name or f"svc-{uuid.uuid4().hex[:8]}"
        installation = self.fake.add_installation(account=owner)
        created = self.fake.add_repository(owner, name, files=files, installation_id=installation,
                                           private=private)
        head_sha = created.default_sha  # read before the merge commit moves the branch
        merge_sha = self.fake.add_commit(owner, name, files=merge_files or {})
        return Repo(self, owner, name, installation, head_sha, merge_sha, private)

    def deliver(self, event: str, payload: dict, *, secret: str | None = SECRET,
                delivery_id: str | None = None) -> requests.Response:
        """POST a signed delivery over real HTTP, as GitHub does."""
        body = to_body(payload)
        return requests.post(f"{self.url}/webhook", data=body, timeout=10,
                             headers=webhook_headers(event, body, secret,
                                                     delivery_id=delivery_id))

    def final_check_runs(self, repo: Repo, head_sha: str | None = None) -> list[dict]:
        head_sha = head_sha or repo.head_sha
        return [run for run in self.fake.check_runs.values() if run.get("head_sha") == head_sha]

    def statuses(self, repo: Repo) -> list[dict]:
        return [s.body for s in self.fake.statuses if s.sha == repo.merge_sha]
