"""`python -m github_app doctor`: checks every part Slipway needs, one line each.

    ok    registry: 127.0.0.1:5000 answers /v2/; a test blob was pushed and deleted
    FAIL  app: GitHub refused the App's JWT (401): ...; generate a new private key ...

Each part is one small function registered with `@check("part")`, in the
order the lines print. It returns what it saw (the line of an `ok`), raises
`Problem("what is wrong; what to do")` for a `FAIL`, or `Skip(...)` when a
part it needs failed above. Adding a check is adding one such function:

    @check("owners")
    def owners(doctor: Doctor) -> str:
        accounts = [i["account"]["login"] for i in doctor.installations()]
        ...

The exit status is 0 only when every part passed. Nothing here changes
Slipway's state, except a test blob pushed to and deleted from the registry
and a file written to and removed from DATA_DIR.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import sys
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from github_app.config import format_size
from github_app.errors import ConfigError, GitHubError

HTTP_TIMEOUT = 10
DOCTOR_REPOSITORY = "slipway-doctor"
# The build logs read for the base images that builds name.
RECENT_LOGS = 50
_FROM = re.compile(r"^Step \d+/\d+ : FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?",
                   re.IGNORECASE)


class Problem(Exception):
    """A part does not work; the message says what is wrong and what to do."""


class Skip(Exception):
    """A part cannot be checked because one it needs failed above."""


@dataclass(frozen=True)
class Check:
    part: str
    run: Callable[[Doctor], str]


@dataclass(frozen=True)
class Result:
    part: str
    state: str  # "ok" | "FAIL" | "skip"
    message: str

    @property
    def line(self) -> str:
        return f"{self.state:<4}  {self.part}: {self.message}"


CHECKS: list[Check] = []


def check(part: str) -> Callable[[Callable[[Doctor], str]], Callable[[Doctor], str]]:
    """Register a check of `part`; the lines print in the order checks are registered."""

    def register(function: Callable[[Doctor], str]) -> Callable[[Doctor], str]:
        CHECKS.append(Check(part, function))
        return function

    return register


class Doctor:
    """What the checks share: the environment, and the config and clients made from it once."""

    def __init__(self, environ: Mapping[str, str]):
        self.environ = environ
        self._cache: dict[str, Any] = {}
        self._closers: list[Callable[[], None]] = []

    def _once(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            try:
                self._cache[key] = make()
            except Exception as exc:
                self._cache[key] = exc
        value = self._cache[key]
        if isinstance(value, Exception):
            raise value
        return value

    @property
    def config(self):
        """The configuration, completed by credentials /setup stored; Skip when it is bad."""
        try:
            return self._once("config", lambda: _load_config(self.environ))
        except ConfigError:
            raise Skip("needs a valid configuration (see above)") from None

    def app_config(self):
        """The configuration, when it names an App; Skip otherwise."""
        config = self.config
        if not config.has_app_credentials:
            raise Skip("needs the App's credentials (see configuration above)")
        return config

    def github(self):
        """The App's GitHub client, with short retries: doctor answers within seconds."""
        from github_app.github import GitHubApp
        from github_app.retries import RetryPolicy

        config = self.app_config()
        return self._once("github", lambda: GitHubApp(
            config.api_url, config.app_id, config.private_key,
            retry=RetryPolicy(max_attempts=2, base_delay=0.5, max_total_wait=5)))

    def app(self) -> dict:
        """`GET /app`; Skip when the app check failed."""
        try:
            return self._once("app", lambda: self.github().get_app())
        except GitHubError:
            raise Skip("needs GitHub to accept the App's JWT (see app above)") from None

    def installations(self) -> list[dict]:
        """`GET /app/installations`."""
        self.app()
        return self._once("installations", lambda: self.github().list_installations())

    def docker(self):
        """A client of the Docker engine; Skip when none answers."""
        from builder import BuilderError

        try:
            return self._once("docker", lambda: _connect(self))
        except BuilderError:
            raise Skip("needs the Docker engine (see docker above)") from None

    def close(self) -> None:
        for close in self._closers:
            close()


def run_checks(doctor: Doctor, checks: list[Check] | None = None) -> list[Result]:
    """Every check's result, in order; a check that crashes is a FAIL that says so."""
    results = []
    for item in CHECKS if checks is None else checks:
        try:
            results.append(Result(item.part, "ok", item.run(doctor)))
        except Problem as exc:
            results.append(Result(item.part, "FAIL", str(exc)))
        except Skip as exc:
            results.append(Result(item.part, "skip", str(exc)))
        except Exception as exc:  # a check's own bug must not hide the other parts
            results.append(Result(item.part, "FAIL",
                                  f"the check itself failed ({type(exc).__name__}: {exc})"))
    return results


def main(environ: Mapping[str, str], out=sys.stdout) -> int:
    """Print one line per part; 0 only when every part passed."""
    doctor = Doctor(environ)
    try:
        results = run_checks(doctor)
    finally:
        doctor.close()
    for result in results:
        print(result.line, file=out)
    failed = [r.part for r in results if r.state != "ok"]
    print("all parts ok" if not failed else
          f"{len(failed)} part(s) need attention: {', '.join(failed)}", file=out)
    return 0 if not failed else 1


def _load_config(environ: Mapping[str, str]):
    from github_app import credentials
    from github_app.config import Config

    config = Config.from_env(environ, require_app=False)
    if not config.app_id and not config.database_url:
        stored = credentials.load(config.data_dir)
        if stored:
            config = credentials.apply(config, stored)
    elif not config.app_id:
        from github_app.jobs import JobStore

        try:
            with JobStore.from_config(config) as store:
                stored = credentials.load(config.data_dir, store=store)
        except Exception:  # the database check below says why it cannot be read
            stored = None
        if stored:
            config = credentials.apply(config, stored)
    return config


# -- the checks, in the order their lines print ----------------------------------------


@check("configuration")
def configuration(doctor: Doctor) -> str:
    try:
        config = doctor._once("config", lambda: _load_config(doctor.environ))
    except ConfigError as exc:
        raise Problem(f"{exc} Slipway will not start until this is fixed.") from None
    if not config.has_app_credentials:
        raise Problem(
            "Slipway has no App yet: set GITHUB_APP_ID, GITHUB_PRIVATE_KEY_PATH and "
            f"GITHUB_WEBHOOK_SECRET, or start it and create the App at {config.public_url}/setup."
        )
    return (f"App {config.app_id}, GitHub API {config.api_url}, registry {config.registry}, "
            f"DATA_DIR {config.data_dir}, builds merges into {config.target_branch}")


@check("app")
def app(doctor: Doctor) -> str:
    config = doctor.app_config()
    try:
        found = doctor._once("app", lambda: doctor.github().get_app())
    except GitHubError as exc:
        if exc.status == 401:
            raise Problem(
                f"GitHub refused the App's JWT (401): the private key is not a key of App "
                f"{config.app_id}, or this machine's clock is wrong. Generate a private key in "
                "the App's settings, point GITHUB_PRIVATE_KEY_PATH at it, and check the clock "
                "(NTP)."
            ) from None
        if exc.status == 404:
            raise Problem(
                f"GitHub at {config.api_url} knows no App with id {config.app_id} (404): "
                "copy GITHUB_APP_ID from the App's settings page, and check GITHUB_API_URL."
            ) from None
        raise Problem(f"{exc}.") from None
    owner = (found.get("owner") or {}).get("login", "?")
    return (f"GitHub accepts the App's JWT: App {found.get('slug') or found.get('name')} "
            f"(id {found.get('id')}) of {owner}")


@check("installations")
def installations(doctor: Doctor) -> str:
    try:
        found = doctor.installations()
    except GitHubError as exc:
        raise Problem(f"{exc}.") from None
    if not found:
        where = doctor.app().get("html_url") or "the App's public page"
        raise Problem(
            "The App is installed on no account, so no merge reaches Slipway: install it from "
            f"{where} (Install App), choosing the repositories to build."
        )
    accounts = sorted({(i.get("account") or {}).get("login", "?") for i in found})
    return f"{len(found)} installation(s): {', '.join(accounts)}"


@check("owners")
def owners(doctor: Doctor) -> str:
    """Each installation's account, and whether ALLOWED_OWNERS lets it build."""
    from github_app.owners import OwnerRule

    config = doctor.app_config()
    try:
        found = doctor.installations()
    except GitHubError:
        raise Skip("needs the installations (see installations above)") from None
    if config.allowed_owners is not None:
        rule = OwnerRule.of(config.allowed_owners)
        source = f"ALLOWED_OWNERS={','.join(config.allowed_owners)}"
    else:
        app_owner = (doctor.app().get("owner") or {}).get("login") or "?"
        rule = OwnerRule.of([app_owner], origin="the App's owner")
        source = f"ALLOWED_OWNERS unset: only the App's owner {app_owner}"
    accounts = sorted({(i.get("account") or {}).get("login") or "?" for i in found},
                      key=str.lower)
    allowed = [a for a in accounts if rule.allows(a)]
    refused = [a for a in accounts if not rule.allows(a)]
    listing = ", ".join([f"{a} (built)" for a in allowed]
                        + [f"{a} (NOT allowed: ignored)" for a in refused])
    if not accounts:
        return f"no installation yet; {source}"
    if not allowed:
        raise Problem(
            f"{listing}; {source}, so nothing is ever built: add the accounts to build to "
            "ALLOWED_OWNERS (comma-separated, or * for any), or install the App on an "
            "allowed account.")
    return f"{listing}; {source}"


@check("webhook secret")
def webhook_secret(doctor: Doctor) -> str:
    config = doctor.app_config()
    secret = config.webhook_secret
    if secret != secret.strip():
        raise Problem(
            "GITHUB_WEBHOOK_SECRET starts or ends with a space or a line break, and GitHub "
            "signs with every character: remove it (unless the App's secret has it too)."
        )
    said = _secret_in_the_delivery_log(doctor)
    # The running Slipway must verify with this same secret: a signed ping shows it.
    body = json.dumps({"zen": "Slipway doctor", "hook_id": 0}).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    try:
        answer = requests.post(
            f"{config.public_url}/webhook", data=body, timeout=HTTP_TIMEOUT,
            headers={"Content-Type": "application/json", "X-GitHub-Event": "ping",
                     "X-GitHub-Delivery": f"doctor-{uuid.uuid4()}",
                     "X-Hub-Signature-256": signature})
    except requests.RequestException:
        return f"{said}; not tried against Slipway: nothing answers at PUBLIC_URL (see below)"
    if answer.status_code == 401:
        raise Problem(
            f"The Slipway at {config.public_url} refuses a ping signed with "
            "GITHUB_WEBHOOK_SECRET (401): it runs with another secret. Give it the App's "
            "webhook secret and restart it (rotate with GITHUB_WEBHOOK_SECRET_PREVIOUS)."
        )
    if answer.status_code == 200:
        return f"{said}; the Slipway at {config.public_url} accepts a ping signed with it"
    return f"{said}; the Slipway at {config.public_url} answered {answer.status_code} to a ping"


def _secret_in_the_delivery_log(doctor: Doctor) -> str:
    """What GitHub's own delivery log says of the secret: its latest answer was not a 401."""
    try:
        page, _ = doctor.github().hook_deliveries(per_page=25)
    except (GitHubError, Skip):
        return "set (GitHub's delivery log could not be read)"
    answered = [d for d in page if isinstance(d, dict) and d.get("status_code")]
    if not answered:
        return "set (no delivery in GitHub's log yet)"
    latest = max(answered, key=lambda d: str(d.get("delivered_at") or ""))
    if latest.get("status_code") == 401:
        raise Problem(
            f"GitHub's latest delivery ({latest.get('event')}, {latest.get('delivered_at')}) "
            "was refused with 401: the App's webhook secret and GITHUB_WEBHOOK_SECRET differ. "
            "Set the same secret in the App's settings and here (rotate with "
            "GITHUB_WEBHOOK_SECRET_PREVIOUS), then Redeliver the refused deliveries."
        )
    return f"set; GitHub's latest delivery was answered {latest.get('status_code')}"


@check("docker")
def docker_engine(doctor: Doctor) -> str:
    from builder import BuilderError, engine

    try:
        client = doctor._once("docker", lambda: _connect(doctor))
    except BuilderError as exc:
        raise Problem(str(exc)) from None
    where = doctor.config.engine.where
    return f"Docker {engine.engine_version(client)} answers at {where}"


def _connect(doctor: Doctor):
    from builder import engine

    client = engine.connect(settings=doctor.config.engine)
    doctor._closers.append(client.close)
    return client


@check("disk")
def disk(doctor: Doctor) -> str:
    from builder import engine
    from github_app.disk import free_spaces, shortfalls

    config = doctor.config
    root = engine.data_root(doctor.docker())
    spaces = free_spaces(config.data_dir, root)
    short = shortfalls(spaces, config.min_free_disk)
    if short:
        where = "; ".join(f"{format_size(s.free)} free in {s.path} ({s.what})" for s in short)
        raise Problem(
            f"{where}, below MIN_FREE_DISK ({format_size(config.min_free_disk)}): builds will "
            "not start. Free some space (unused images, old logs) or lower MIN_FREE_DISK."
        )
    seen = ", ".join(f"{format_size(s.free)} free in {s.path}" for s in spaces)
    if not any(s.path == root for s in spaces):
        seen += f" (the engine's data root {root} is not on this machine: not measured)"
    return f"{seen}; builds need {format_size(config.min_free_disk)}"


@check("base images")
def base_images(doctor: Doctor) -> str:
    from builder import engine

    names = named_base_images(doctor.config.data_dir)
    if not names:
        return "no build has named a base image yet"
    client = doctor.docker()
    missing = [name for name in names if not engine.has_image(client, name)]
    if missing:
        raise Problem(
            f"{', '.join(missing)} (FROM in recent builds) {'is' if len(missing) == 1 else 'are'} "
            "not in the Docker engine, so the next build must pull it: where the engine "
            "cannot pull, load it (docker load) or build it on this host first."
        )
    return f"{', '.join(names)} in the Docker engine"


def named_base_images(data_dir: Path) -> list[str]:
    """The images that recent build logs name in FROM (not stages, not scratch)."""
    logs = sorted((Path(data_dir) / "logs").glob("*.log"),
                  key=lambda p: p.stat().st_mtime, reverse=True)[:RECENT_LOGS]
    names: list[str] = []
    for path in logs:
        stages = set()
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                match = _FROM.match(line)
                if not match:
                    continue
                image, stage = match.group(1), match.group(2)
                if image.lower() != "scratch" and image not in stages and image not in names:
                    names.append(image)
                if stage:
                    stages.add(stage)
    return names


@check("registry")
def registry(doctor: Doctor) -> str:
    from builder import BuilderError
    from builder.registry import Registry

    config = doctor.config
    api = Registry(config.registry, username=config.registry_username,
                   password=config.registry_password)
    try:
        api.check_api()
        deleted = api.round_trip_blob(DOCTOR_REPOSITORY)
    except BuilderError as exc:
        raise Problem(str(exc)) from None
    if not deleted:
        raise Problem(
            f"{config.registry} took a test blob but does not allow deletes: enable "
            "storage.delete (REGISTRY_STORAGE_DELETE_ENABLED=true) so tags can be moved and "
            "removed."
        )
    login = f" as {config.registry_username}" if config.registry_username else ""
    return f"{config.registry} answers /v2/{login}; a test blob was pushed and deleted"


@check("data dir")
def data_dir(doctor: Doctor) -> str:
    path = Path(doctor.config.data_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".doctor-") as probe:
            probe.write(b"slipway doctor")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        raise Problem(
            f"DATA_DIR {path} cannot be written ({exc.strerror or exc}): point DATA_DIR at a "
            "directory this user may write, on a disk that keeps it across restarts."
        ) from None
    return f"{path.absolute()} is writable"


@check("database")
def database(doctor: Doctor) -> str:
    from github_app import postgres
    from github_app.jobs import SCHEMA_VERSION, StoreUnavailable

    url = doctor.config.database_url
    if not url:
        return "DATABASE_URL is not set: the job store is SQLite in DATA_DIR"
    where = postgres.redacted_url(url)
    try:
        server, version = postgres.probe(url)
    except StoreUnavailable as exc:
        raise Problem(str(exc)) from None
    if version is None:
        return (f"PostgreSQL {server} at {where} answers and takes writes; Slipway's tables "
                "are created when serve or worker first starts")
    if version > SCHEMA_VERSION:
        raise Problem(f"the store at {where} has schema version {version}, newer than this "
                      f"Slipway's {SCHEMA_VERSION}: upgrade Slipway on this node to the "
                      "version the other nodes run")
    return (f"PostgreSQL {server} at {where} answers and takes writes; schema version "
            f"{version}" + (" (upgraded when serve or worker starts)"
                            if version < SCHEMA_VERSION else ""))


@check("public url")
def public_url(doctor: Doctor) -> str:
    url = f"{doctor.config.public_url}/healthz"
    try:
        answer = requests.get(url, timeout=HTTP_TIMEOUT)
    except requests.RequestException as exc:
        raise Problem(
            f"Nothing answers at {url} ({type(exc).__name__}): start Slipway "
            "(python -m github_app serve), or set PUBLIC_URL to the address where GitHub and "
            "browsers reach it."
        ) from None
    try:
        checks = answer.json().get("checks") or {}
    except ValueError:
        checks = None
    if checks is None:
        raise Problem(f"{url} answered {answer.status_code} without Slipway's JSON: PUBLIC_URL "
                      "names another server; point it at Slipway.")
    if answer.status_code != 200:
        failed = ", ".join(f"{part} ({state})" for part, state in checks.items()
                           if state != "ok")
        raise Problem(f"{url} answers {answer.status_code}: {failed}.")
    return f"{url} answers 200"


@check("redelivery")
def redelivery_sweep(doctor: Doctor) -> str:
    import time

    from github_app import redelivery
    from github_app.jobs import JobStore
    from github_app.store import DATABASE_NAME

    config = doctor.config
    if not config.redeliver_enabled:
        return ("off (REDELIVER_INTERVAL or REDELIVER_WINDOW is 0): a merge GitHub could not "
                "deliver stays unbuilt until someone presses Redeliver in the App's settings")
    if not (Path(config.data_dir) / DATABASE_NAME).exists():
        raise Problem(f"DATA_DIR {config.data_dir} holds no job store yet: start Slipway "
                      "(python -m github_app serve); it sweeps at start-up")
    with JobStore.from_data_dir(config.data_dir) as store:
        record = store.last_sweep()
    summary = redelivery.Summary.from_json(record.summary) if record.summary else None
    healthy, line = redelivery.report_last_sweep(summary, now=time.time(),
                                                 interval=config.redeliver_interval)
    if not healthy:
        raise Problem(line)
    return line

