"""Chaos soak: many `semver:patch` merges while Slipway, the registry and GitHub fail.

One command, bounded in time, that proves the unattended promises of issue 7 hold
together: Slipway runs as production runs it (`python -m github_app serve`, its own
`DATA_DIR` and `PORT`), builds with the real Docker engine, pushes to a registry
process of its own (so the soak may restart it) and talks to the fake GitHub
(tests/fake_github.py, a real HTTP server). While the merges come in:

- Slipway's process group is SIGKILLed at random moments (`--kills`, at least 5)
  and started again after a short pause;
- the registry is stopped and started again (`--registry-restarts`, 2);
- GitHub answers 5xx now and then, and now and then takes longer than the
  client's read timeout (`delay_next`: the request may still take effect);
- a delivery that got no 2xx answer (Slipway down, or a 5xx) is redelivered with
  the same `X-GitHub-Delivery`, as an operator's "Redeliver" does, until one is
  answered (Slipway's own redelivery sweep, when it has one, may beat it to it).

At the end it checks what a team would notice:

- every merge has exactly one completed, successful check run on its head sha;
- each repository's versions run 0.0.1, 0.0.2, ... with no gap and no repeat,
  in the check runs and in the registry;
- every tag's digest in the registry equals the one its check run reports, and
  its revision label is the merge commit;
- no job is left queued or running in the store, no check run is left open;
- `DATA_DIR` holds no work folder and stays under `--max-data-mb`; the local
  images of each service stay within `KEEP_IMAGES` (once pruning exists).

Its last line is `soak: M merges, P published, L lost, D duplicated, K kills survived`;
it exits 0 only when every check passes. It removes what it created (images,
registry storage, DATA_DIR) unless `--keep`.

    bash scripts/test-env          # engine, base image, docker-registry, test fixtures
    DOCKER_API_VERSION=1.41 python3 bench/soak.py [--merges 40 --repos 4 --kills 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from builder import registry as registry_api  # noqa: E402
from tests.fake_github import start_fake_github  # noqa: E402
from tests.payloads import merged_pull_request  # noqa: E402

OWNER = "soak-org"
SECRET = "soak webhook secret"
CHECK_RUN = "docker build"
SERVICE_LABEL = "dev.slipway.service"
REVISION_LABEL = "org.opencontainers.image.revision"
REFERENCE = re.compile(
    r"(?P<name>[a-z0-9][a-z0-9._/-]*):(?P<tag>[\w.+-]+)@(?P<digest>sha256:[0-9a-f]{64})")
SEMVER = re.compile(r"^\d+\.\d+\.\d+$")
# The registry's access log line of a manifest PUT under a release tag that was accepted.
RELEASE_PUSH = re.compile(
    r'"PUT /v2/(?P<name>[^ ]+)/manifests/(?P<tag>\d+\.\d+\.\d+) HTTP/[\d.]+" 201')
MANIFEST_TYPES = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
])

DOCKERFILE = """\
FROM python:3.11-slim
COPY app.py /app/app.py
RUN python3 /app/app.py
"""


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


# -- the processes the soak owns ---------------------------------------------------------


class Registry:
    """A `docker-registry serve` process of the soak's own, on its own port and storage."""

    def __init__(self, root: Path, port: int):
        self.address = f"127.0.0.1:{port}"
        self.storage = root / "registry"
        self.config = root / "registry.yml"
        self.log = root / "registry.log"
        self.process: subprocess.Popen | None = None
        self.storage.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {self.storage}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.address}\n")

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(["docker-registry", "serve", str(self.config)],
                                            stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://{self.address}/v2/", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise SystemExit(f"soak: the registry did not start; see {self.log}")

    def wait_for_release_push(self, timeout: float) -> str | None:
        """Block until the access log shows a release tag's manifest PUT; its `name:tag`.

        Reads only what was logged after the call, every 10 ms."""
        deadline = time.monotonic() + timeout
        with open(self.log, "rb") as log:
            log.seek(0, os.SEEK_END)
            pending = b""
            while time.monotonic() < deadline:
                pending += log.read()
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    match = RELEASE_PUSH.search(line.decode(errors="replace"))
                    if match:
                        return f"{match['name']}:{match['tag']}"
                time.sleep(0.01)
        return None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


class Slipway:
    """`python -m github_app serve` in a process group of its own, killed whole."""

    def __init__(self, env: dict[str, str], log: Path, port: int):
        self.env, self.log, self.port = env, log, port
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        with open(self.log, "ab") as out:
            out.write(f"\n===== soak: start {self.starts + 1} at {time.time():.3f}\n".encode())
            self.process = subprocess.Popen(
                [sys.executable, "-m", "github_app", "serve", "--host", "127.0.0.1"],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                start_new_session=True)
        self.starts += 1

    def wait_listening(self, timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"soak: Slipway exited with {self.process.returncode}; "
                                 f"see {self.log}")
            try:
                requests.get(f"{self.url}/healthz", timeout=1)
                return True
            except requests.RequestException:
                time.sleep(0.1)
        return False

    def kill(self) -> None:
        """SIGKILL the whole group: Granian's web processes die with their parent."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process = None

    def stop(self, grace: float = 40) -> int | None:
        """SIGTERM, as an operator stops it; SIGKILL after `grace` seconds."""
        if self.process is None:
            return None
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            code = self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            code = None
        except ProcessLookupError:
            code = self.process.poll()
        self.kill()
        return code


# -- the merges ----------------------------------------------------------------------------


@dataclass
class Merge:
    number: int
    repo: str
    head_sha: str
    merge_sha: str
    guid: str
    sent_at: float
    redeliveries: int = 0
    last_redelivery: float = 0.0


@dataclass
class Chaos:
    kills: list[dict] = field(default_factory=list)
    registry_restarts: int = 0
    github_faults: Counter = field(default_factory=Counter)
    redeliveries: int = 0


GITHUB_FAULTS = [
    # (weight, kind, method, path regex, status or seconds)
    (3, "5xx", "*", r".", 502),
    (2, "5xx", "*", r".", 503),
    (2, "5xx", "POST", r"/check-runs$", 500),
    (2, "5xx", "PATCH", r"/check-runs/\d+$", 502),
    (1, "5xx", "POST", r"/statuses/", 503),
    (2, "5xx", "GET", r"/tarball/", 502),
    (1, "5xx", "POST", r"/access_tokens$", 500),
    (1, "5xx", "GET", r"/contents/", 502),
    # github3 reads for 10 s: these answer after it gave up
    (1, "timeout", "GET", r"/tarball/|/contents/", 11.0),
    (1, "timeout", "PATCH", r"/check-runs/\d+$", 11.0),
    (1, "timeout", "POST", r"/check-runs$", 11.0),
]


class Soak:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)  # the merges
        self.chaos_rng = random.Random(args.seed + 1)  # kills and restarts
        self.fault_rng = random.Random(args.seed + 2)  # GitHub's faults
        self.run_id = uuid.uuid4().hex[:6]
        self.root = Path(tempfile.mkdtemp(prefix=f"slipway-soak-{self.run_id}-"))
        self.data_dir = self.root / "data"
        self.fake = start_fake_github()
        port = args.registry_port if port_is_free(args.registry_port) else free_port()
        self.registry = Registry(self.root, port)
        self.repos = [f"soak-{self.run_id}-r{i + 1}" for i in range(args.repos)]
        self.installation = self.fake.add_installation(account=OWNER)
        self.merges: list[Merge] = []
        self.chaos = Chaos()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.merging_done = threading.Event()
        self.deadline = time.monotonic() + args.time_limit
        slipway_port = free_port()
        self.slipway = Slipway(self._slipway_env(slipway_port), self.root / "slipway.log",
                               slipway_port)
        self.fake.webhook_url = f"{self.slipway.url}/webhook"
        self.fake.webhook_secret = SECRET

    def _slipway_env(self, port: int) -> dict[str, str]:
        # Nothing of the caller's Slipway settings leaks in (a DATABASE_URL would share a store).
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("GITHUB_", "SLIPWAY_", "REGISTRY", "DATABASE_URL"))}
        env.update({
            "PYTHONPATH": str(ROOT),
            "DOCKER_API_VERSION": env.get("DOCKER_API_VERSION", "1.41"),
            "GITHUB_APP_ID": str(self.fake.app_id),
            "GITHUB_PRIVATE_KEY": self.fake.private_key_pem.decode(),
            "GITHUB_WEBHOOK_SECRET": SECRET,
            "GITHUB_API_URL": self.fake.url,
            "REGISTRY": self.registry.address,
            "DATA_DIR": str(self.data_dir),
            "PORT": str(port),
            "PUBLIC_URL": f"http://127.0.0.1:{port}",
            "BUILD_NETWORK": "host",
            "ALLOWED_OWNERS": OWNER,
            "WORKER_THREADS": str(self.args.worker_threads),
            "WEB_WORKERS": "1",
            "KEEP_IMAGES": str(self.args.keep_images),
            "LEASE_SECONDS": str(self.args.lease_seconds),
            "STOP_GRACE": "20",
            "MIN_FREE_DISK": "1g",
            "REDELIVER_INTERVAL": "15",
            "LOG_LEVEL": "INFO",
        })
        return env

    # -- setting up ------------------------------------------------------------------------

    def seed_base_layers(self) -> None:
        """Push the base image to the soak's fresh registry once, as a team's registry
        holds it already: the engine then mounts its layers into each new repository
        instead of uploading 100+ MB per repository, which on a busy machine made the
        first builds long enough for three kills to fall on them."""
        self.base_ref = f"{self.registry.address}/soak-{self.run_id}-base:seed"
        subprocess.run(["docker", "tag", "python:3.11-slim", self.base_ref], check=True)
        subprocess.run(["docker", "push", "-q", self.base_ref], check=True,
                       stdout=subprocess.DEVNULL)

    def create_repositories(self) -> None:
        for name in self.repos:
            self.fake.add_repository(OWNER, name, installation_id=self.installation,
                                     default_branch="develop",
                                     files={"Dockerfile": DOCKERFILE, "app.py": "print(0)\n"})

    def merge(self, number: int) -> Merge:
        """A pull request with `semver:patch`, merged into develop; its webhook delivered."""
        repo = self.repos[(number - 1) % len(self.repos)]
        # Each merge changes app.py, so every build makes a new image.
        files = {"app.py": f"print('soak {self.run_id} merge {number}')\n"}
        head = self.fake.add_commit(OWNER, repo, files, branch=f"feature-{number}")
        merge_sha = self.fake.add_commit(OWNER, repo, files)
        title = f"Change number {number}"
        self.fake.add_pull_request(OWNER, repo, number=number, title=title, head_sha=head,
                                   merge_commit_sha=merge_sha, labels=["semver:patch"],
                                   head=f"feature-{number}")
        payload = merged_pull_request(labels=["semver:patch"], title=title,
                                      merge_commit_sha=merge_sha)
        payload["number"] = payload["pull_request"]["number"] = number
        payload["installation"] = {"id": self.installation, "node_id": "MDIzOkludGVncmF0aW9u"}
        found = self.fake.repositories[f"{OWNER}/{repo}".lower()]
        repository = payload["repository"]
        repository.update(name=repo, full_name=f"{OWNER}/{repo}", id=found.id,
                          html_url=f"https://github.com/{OWNER}/{repo}")
        repository["owner"]["login"] = OWNER
        for side in ("base", "head"):
            payload["pull_request"][side]["repo"] = dict(repository)
        payload["pull_request"]["head"]["sha"] = head
        attempt = self.fake.send_webhook("pull_request", payload)
        merge = Merge(number, repo, head, merge_sha, attempt.guid, time.monotonic())
        with self.lock:
            self.merges.append(merge)
        return merge

    # -- the threads -----------------------------------------------------------------------

    def merging(self) -> None:
        try:
            for number in range(1, self.args.merges + 1):
                if self.stopping.is_set() or time.monotonic() > self.deadline:
                    return
                merge = self.merge(number)
                attempt = self.fake.deliveries.of_guid(merge.guid)[-1]
                say(f"merge {number:3d} {merge.repo}: delivery answered {attempt.status_code}")
                time.sleep(self.rng.uniform(*self.args.merge_gap))
        finally:
            self.merging_done.set()

    def redelivering(self) -> None:
        """What an operator does with "Redeliver" for a delivery that never got a 2xx."""
        while not self.stopping.wait(2.0):
            now = time.monotonic()
            with self.lock:
                merges = list(self.merges)
            for merge in merges:
                attempts = self.fake.deliveries.of_guid(merge.guid)
                if any(200 <= a.status_code < 300 for a in attempts):
                    continue
                if now - max(merge.sent_at, merge.last_redelivery) < 4.0:
                    continue
                merge.last_redelivery = now
                merge.redeliveries += 1
                self.chaos.redeliveries += 1
                self.fake.deliveries.redeliver(attempts[-1].id, url=self.fake.webhook_url,
                                               secret=self.fake.webhook_secret)

    def killing(self) -> None:
        """SIGKILL Slipway and restart the registry, in a shuffled order, at random gaps."""
        started = time.monotonic()
        aimed = min(self.args.kills_after_push, self.args.kills)
        plan = ["kill"] * (self.args.kills - aimed) + ["registry"] * self.args.registry_restarts
        self.chaos_rng.shuffle(plan)
        for i in range(aimed):  # early, while builds come in: a push to wait for
            plan.insert(2 * i, "kill-after-push")
        for kind in plan:
            if self.stopping.wait(self.chaos_rng.uniform(*self.args.chaos_gap)):
                return
            if kind.startswith("kill"):
                pushed = None
                if kind == "kill-after-push":
                    # The narrowest window of all: the image is in the registry, the
                    # record may not say so yet.
                    pushed = self.registry.wait_for_release_push(timeout=60)
                running = self.jobs_by_state().get("running", 0)
                self.slipway.kill()
                down = self.chaos_rng.uniform(0.5, 4.0)
                self.chaos.kills.append({"at": round(time.monotonic() - started, 1),
                                         "jobs_running": running, "down": round(down, 1),
                                         "after_push": pushed})
                say(f"chaos: SIGKILL Slipway ({running} job(s) running"
                    f"{', right after the push of ' + pushed if pushed else ''}), "
                    f"down for {down:.1f} s")
                time.sleep(down)
                self.slipway.start()
                if self.slipway.wait_listening():
                    self.chaos.kills[-1]["came_back"] = True
            else:
                self.registry.stop()
                down = self.chaos_rng.uniform(1.0, 4.0)
                say(f"chaos: registry stopped, down for {down:.1f} s")
                time.sleep(down)
                self.registry.start()
                self.chaos.registry_restarts += 1

    def github_faults(self) -> None:
        weights = [f[0] for f in GITHUB_FAULTS]
        while not self.stopping.wait(self.fault_rng.uniform(*self.args.fault_gap)):
            if self.merging_done.is_set() and self.chaos.registry_restarts >= \
                    self.args.registry_restarts and len(self.chaos.kills) >= self.args.kills:
                return
            if self.fake.pending_failures or self.fake.pending_delays:
                continue  # "now and then": faults do not pile up while no one calls
            _, kind, method, path, value = self.fault_rng.choices(GITHUB_FAULTS, weights)[0]
            if kind == "5xx":
                self.fake.fail_next(method, path, value)
            else:
                self.fake.delay_next(method, path, value)
            self.chaos.github_faults[f"{kind} {method} {path}"] += 1

    # -- observing -------------------------------------------------------------------------

    def store(self) -> sqlite3.Connection | None:
        path = self.data_dir / "slipway.sqlite3"
        if not path.exists():
            return None
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        connection.row_factory = sqlite3.Row
        return connection

    def jobs_by_state(self) -> dict[str, int]:
        connection = self.store()
        if connection is None:
            return {}
        try:
            return {row["state"]: row["n"] for row in connection.execute(
                "SELECT state, count(*) AS n FROM jobs GROUP BY state")}
        except sqlite3.Error:
            return {}
        finally:
            connection.close()

    def runs_of(self, merge: Merge) -> list[dict]:
        return [run for run in list(self.fake.check_runs.values())
                if run.get("head_sha") == merge.head_sha and run.get("name") == CHECK_RUN]

    def settled(self) -> bool:
        """Every merge answered and completed, and the queue is empty."""
        with self.lock:
            merges = list(self.merges)
        if len(merges) < self.args.merges:
            return False
        for merge in merges:
            if not any(r["status"] == "completed" for r in self.runs_of(merge)):
                return False
        jobs = self.jobs_by_state()
        return jobs.get("queued", 0) == 0 and jobs.get("running", 0) == 0

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> int:
        args = self.args
        self.registry.start()
        self.seed_base_layers()
        self.create_repositories()
        self.slipway.start()
        if not self.slipway.wait_listening():
            raise SystemExit(f"soak: Slipway did not answer; see {self.slipway.log}")
        say(f"soak {self.run_id}: {args.merges} merges over {args.repos} repositories, "
            f"registry {self.registry.address}, Slipway {self.slipway.url}, in {self.root}")
        threads = [threading.Thread(target=self.merging, name="merging", daemon=True),
                   threading.Thread(target=self.redelivering, name="redeliver", daemon=True),
                   threading.Thread(target=self.killing, name="chaos", daemon=True),
                   threading.Thread(target=self.github_faults, name="faults", daemon=True)]
        for thread in threads:
            thread.start()
        started = time.monotonic()
        chaos_thread = threads[2]
        while time.monotonic() < self.deadline:
            if self.merging_done.is_set() and not chaos_thread.is_alive() and self.settled():
                break
            time.sleep(1.0)
        else:
            say("soak: time limit reached before every merge settled")
        # A few seconds more, for a late duplicate to show.
        time.sleep(3.0)
        self.stopping.set()
        self.fake.deliveries.wait_for_redeliveries(timeout=12)
        elapsed = time.monotonic() - started
        jobs_live = self.jobs_by_state()
        code = self.slipway.stop()
        say(f"soak: Slipway stopped with SIGTERM (exit {code}) after {elapsed:.0f} s")
        self.images_at_stop = self.local_images()
        if (ROOT / "github_app" / "pruning.py").exists():
            # Pruning runs at start and then hourly: one more start, as a deploy
            # would, shows what the bound holds the build host to.
            self.slipway.start()
            self.slipway.wait_listening()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and any(
                    n > self.args.keep_images for n in self.local_images().values()):
                time.sleep(1.0)
            second = self.slipway.stop()
            say(f"soak: started once more to prune, stopped again (exit {second})")
            code = code if code != 0 else second
        return self.verify(jobs_live, code, elapsed)

    # -- the checks ------------------------------------------------------------------------

    def verify(self, jobs_live: dict[str, int], stop_code, elapsed: float) -> int:
        self.lost_causes: Counter = Counter()
        problems: list[str] = []
        lost = duplicated = published = 0
        reported: dict[str, list[tuple[str, str, Merge]]] = defaultdict(list)
        open_runs = 0
        for merge in sorted(self.merges, key=lambda m: m.number):
            runs = self.runs_of(merge)
            good = [r for r in runs if r["status"] == "completed" and r["conclusion"] == "success"]
            open_runs += sum(1 for r in runs if r["status"] != "completed")
            if not good:
                lost += 1
                done = [r for r in runs if r["status"] == "completed"]
                self.lost_causes[_cause(done[-1]) if done else "no completed check run"] += 1
                why = "; ".join(f"{r['status']}/{r['conclusion']}: {_gist(r)}"
                                for r in runs) or "no check run"
                attempts = [a.status_code for a in self.fake.deliveries.of_guid(merge.guid)]
                problems.append(f"lost: merge {merge.number} ({merge.repo}, deliveries "
                                f"{attempts}): {why}")
                continue
            if len(good) > 1:
                duplicated += len(good) - 1
                problems.append(f"duplicated: merge {merge.number} has {len(good)} successful "
                                "check runs")
            for run in good:
                match = REFERENCE.search((run.get("output") or {}).get("summary") or "")
                if match is None:
                    problems.append(f"merge {merge.number}: no image reference in the check "
                                    f"run's summary")
                    continue
                reported[merge.repo].append((match["tag"], match["digest"], merge))
        for merge in self.merges:
            statuses = [st.body for st in self.fake.statuses
                        if st.sha == merge.merge_sha and st.body.get("context") == "slipway/docker"]
            if statuses and statuses[-1].get("state") != "success" and any(
                    r["conclusion"] == "success" for r in self.runs_of(merge)):
                problems.append(f"merge {merge.number}: the last commit status is "
                                f"{statuses[-1].get('state')}, its check run succeeded")
        if open_runs:
            problems.append(f"{open_runs} check run(s) on the merges' head commits left open "
                            "(queued or in_progress)")
        for repo in self.repos:
            entries = reported[repo]
            tags = [tag for tag, _, _ in entries]
            repeats = [tag for tag, n in Counter(tags).items() if n > 1]
            if repeats:
                duplicated += sum(Counter(tags)[t] - 1 for t in repeats)
                problems.append(f"{repo}: version(s) reported twice: {sorted(repeats)}")
            # The published versions run 0.0.1 .. 0.0.n; a lost merge is counted above,
            # so here only a gap or a repeat among what was published is a problem.
            got = sorted(set(tags), key=_semver_key)
            expected = [f"0.0.{i}" for i in range(1, len(got) + 1)]
            if got != expected:
                missing = sorted(set(expected) - set(got), key=_semver_key)
                problems.append(f"{repo}: versions {got} skip {missing}")
            in_registry = sorted((t for t in registry_api.list_tags(self.registry.address, repo)
                                  if SEMVER.match(t)), key=_semver_key)
            orphans = sorted(set(in_registry) - set(tags), key=_semver_key)
            reported_merges = {merge.merge_sha for _, _, merge in entries}
            for orphan in orphans:
                labels = registry_api.image_labels(self.registry.address, repo, orphan) or {}
                revision = labels.get(REVISION_LABEL)
                if revision in reported_merges:
                    duplicated += 1  # the merge was published under two versions
                    problems.append(f"{repo}:{orphan} is a second version of merge commit "
                                    f"{revision}, whose check run reports another")
                else:
                    problems.append(f"{repo}:{orphan} (from {revision}) is in the registry, "
                                    f"and no check run reports it")
            unpushed = sorted(set(tags) - set(in_registry), key=_semver_key)
            if unpushed:
                problems.append(f"{repo}: check runs report {unpushed}, absent from the registry")
            for tag, digest, merge in entries:
                actual = self.registry_digest(repo, tag)
                if actual != digest:
                    problems.append(f"{repo}:{tag}: the check run of merge {merge.number} "
                                    f"reports {digest}, the registry holds {actual}")
                    continue
                published += 1
                history = self.tag_history(repo, tag)
                if len(history) > 1:
                    duplicated += 1
                    problems.append(f"{repo}:{tag} was pushed with {len(history)} different "
                                    f"digests: {history}")
                labels = registry_api.image_labels(self.registry.address, repo, tag) or {}
                if labels.get(REVISION_LABEL) != merge.merge_sha:
                    problems.append(f"{repo}:{tag}: revision {labels.get(REVISION_LABEL)}, "
                                    f"not merge {merge.number}'s {merge.merge_sha}")
        final_jobs = self.jobs_by_state()
        for state in ("queued", "running"):
            if jobs_live.get(state) or final_jobs.get(state):
                problems.append(f"jobs left {state}: {jobs_live.get(state, 0)} before the stop, "
                                f"{final_jobs.get(state, 0)} after")
        if stop_code != 0:
            problems.append(f"SIGTERM: Slipway exited {stop_code}, not 0")
        problems += self.check_bounds()
        self.print_summary(final_jobs, elapsed)
        for problem in problems:
            print(f"PROBLEM {problem}")
        kills = len(self.chaos.kills)
        if kills < self.args.kills:
            problems.append(f"only {kills} kills happened")
        survived = sum(1 for k in self.chaos.kills if k.get("came_back"))
        print("PASS: every check held" if not problems else f"FAIL: {len(problems)} problem(s)")
        print(f"soak: {len(self.merges)} merges, {published} published, {lost} lost, "
              f"{duplicated} duplicated, {survived} kills survived", flush=True)
        return 0 if not problems else 1

    def registry_digest(self, repo: str, tag: str) -> str | None:
        answer = requests.head(f"http://{self.registry.address}/v2/{repo}/manifests/{tag}",
                               headers={"Accept": MANIFEST_TYPES}, timeout=10)
        return answer.headers.get("Docker-Content-Digest") if answer.ok else None

    def tag_history(self, repo: str, tag: str) -> list[str]:
        """Every digest the tag ever pointed to: the registry's storage keeps an index."""
        index = (self.registry.storage / "docker/registry/v2/repositories" / repo /
                 "_manifests/tags" / tag / "index/sha256")
        return sorted(f"sha256:{p.name}" for p in index.iterdir()) if index.is_dir() else []

    def local_images(self) -> dict[str, int]:
        counts = {}
        for repo in self.repos:
            out = subprocess.run(["docker", "images", "-q", "--no-trunc", "--filter",
                                  f"label={SERVICE_LABEL}={repo}"],
                                 capture_output=True, text=True, check=True).stdout.split()
            counts[repo] = len(set(out))
        return counts

    def check_bounds(self) -> list[str]:
        problems = []
        size = sum(p.stat().st_size for p in self.data_dir.rglob("*") if p.is_file())
        self.data_mb = size / 1024**2
        work = self.data_dir / "work"
        leftovers = sorted(p.name for p in work.iterdir()) if work.is_dir() else []
        if leftovers:
            problems.append(f"DATA_DIR/work holds {len(leftovers)} folder(s) left behind: "
                            f"{leftovers[:5]}")
        if self.data_mb > self.args.max_data_mb:
            problems.append(f"DATA_DIR is {self.data_mb:.1f} MB, over {self.args.max_data_mb} MB")
        self.images = self.local_images()
        self.pruning = (ROOT / "github_app" / "pruning.py").exists()
        over = {r: n for r, n in self.images.items() if n > self.args.keep_images}
        if over and self.pruning:
            problems.append(f"local images over KEEP_IMAGES={self.args.keep_images}: {over}")
        return problems

    def print_summary(self, jobs: dict[str, int], elapsed: float) -> None:
        kills = self.chaos.kills
        mid = sum(1 for k in kills if k["jobs_running"])
        print()
        print(f"duration:            {elapsed:.0f} s (limit {self.args.time_limit} s)")
        aimed = sum(1 for k in kills if k.get("after_push"))
        print(f"kills:               {len(kills)} ({mid} while a job was running, {aimed} "
              f"right after a push was observed): "
              f"{json.dumps(kills)}")
        print(f"registry restarts:   {self.chaos.registry_restarts}")
        faults = sum(self.chaos.github_faults.values())
        print(f"GitHub faults:       {faults} injected: {dict(self.chaos.github_faults)}")
        injected = sum(1 for r in self.fake.requests if r.injected)
        print(f"GitHub requests:     {len(self.fake.requests)} ({injected} answered by an "
              f"injected 5xx), {len(self.fake.rejections)} rejected")
        statuses = Counter(a.status_code for a in self.fake.deliveries.attempts)
        print(f"redeliveries:        {self.chaos.redeliveries} asked by the soak; "
              f"delivery attempts per answer: {dict(statuses)}")
        print(f"jobs in the store:   {jobs}")
        print(f"DATA_DIR:            {self.data_mb:.1f} MB (bound {self.args.max_data_mb} MB)")
        state = "pruning is on this commit" if self.pruning else \
            "pruning has not landed on this commit: not checked"
        print(f"local images:        {self.images} (KEEP_IMAGES={self.args.keep_images}; {state}); "
              f"at the first stop: {self.images_at_stop}")
        if self.lost_causes:
            print(f"lost, by cause:      {dict(self.lost_causes)}")
        for rejection in self.fake.rejections[:10]:
            print(f"GitHub rejected:     {rejection}")

    # -- cleaning up -----------------------------------------------------------------------

    def cleanup(self) -> None:
        self.stopping.set()
        self.slipway.kill()
        self.registry.stop()
        self.fake.stop()
        ids = set()
        for repo in self.repos:
            out = subprocess.run(["docker", "images", "-q", "--no-trunc", "--filter",
                                  f"label={SERVICE_LABEL}={repo}"],
                                 capture_output=True, text=True).stdout.split()
            ids.update(out)
        prefix = f"{self.registry.address}/soak-{self.run_id}-"
        listing = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"],
                                 capture_output=True, text=True).stdout.split()
        references = [ref for ref in listing if ref.startswith(prefix)]
        if references:
            subprocess.run(["docker", "rmi", *references], capture_output=True)
        if ids:
            subprocess.run(["docker", "rmi", *sorted(ids)], capture_output=True)
        if self.args.keep:
            say(f"soak: kept {self.root} (slipway.log, registry.log, data/)")
        else:
            shutil.rmtree(self.root, ignore_errors=True)


def _gist(run: dict) -> str:
    """What failed and why, on one line, from a check run's summary."""
    summary = (run.get("output") or {}).get("summary") or ""
    lines = [line.strip() for line in summary.splitlines() if line.strip()]
    failed = next((line for line in lines if line.startswith("**What failed")), "")
    detail = next((line for line in lines if not line.startswith("**")), "")
    return f"{failed} {detail}".replace("**", "")[:300]


def _cause(run: dict) -> str:
    """A short name for why a check run failed: its "What failed" and the error's start."""
    summary = (run.get("output") or {}).get("summary") or ""
    lines = [line.strip() for line in summary.splitlines() if line.strip()]
    failed = next((line for line in lines if line.startswith("**What failed")), "?")
    detail = next((line for line in lines if not line.startswith("**")), "")
    detail = re.sub(r"127\.0\.0\.1:\d+", "HOST", detail)
    return (failed.replace("**What failed:**", "").strip() + ": " + detail[:70]).strip()


def _semver_key(tag: str):
    return tuple(int(part) for part in tag.split("."))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merges", type=int, default=40)
    parser.add_argument("--repos", type=int, default=4)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--kills-after-push", type=int, default=2,
                        help="how many of the kills wait for a release push to be observed "
                             "in the registry's access log, then kill at once")
    parser.add_argument("--registry-restarts", type=int, default=2)
    parser.add_argument("--time-limit", type=int, default=1200, help="seconds (default 1200)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--registry-port", type=int, default=5055)
    parser.add_argument("--worker-threads", type=int, default=2)
    parser.add_argument("--keep-images", type=int, default=2)
    parser.add_argument("--lease-seconds", type=int, default=15)
    parser.add_argument("--max-data-mb", type=float, default=50.0)
    parser.add_argument("--merge-gap", type=float, nargs=2, default=(1.0, 5.0),
                        metavar=("MIN", "MAX"), help="seconds between merges")
    parser.add_argument("--chaos-gap", type=float, nargs=2, default=(10.0, 30.0),
                        metavar=("MIN", "MAX"),
                        help="seconds between two kills or registry restarts")
    parser.add_argument("--fault-gap", type=float, nargs=2, default=(2.0, 6.0),
                        metavar=("MIN", "MAX"), help="seconds between injected GitHub faults")
    parser.add_argument("--keep", action="store_true", help="keep the logs and DATA_DIR")
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    os.environ.setdefault("DOCKER_API_VERSION", "1.41")
    if shutil.which("docker-registry") is None:
        raise SystemExit("soak: docker-registry is missing; run bash scripts/test-env first")
    if subprocess.run(["docker", "image", "inspect", "python:3.11-slim"],
                      capture_output=True).returncode != 0:
        raise SystemExit("soak: the base image python:3.11-slim is missing; run "
                         "bash scripts/test-env first")
    say(f"soak: seed {args.seed} (--seed {args.seed} plays the same chaos plan again)")
    soak = Soak(args)
    try:
        return soak.run()
    finally:
        soak.cleanup()


if __name__ == "__main__":
    sys.exit(main())
