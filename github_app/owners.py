"""Which accounts' installations are built: ALLOWED_OWNERS, or the App's own owner.

`OwnerRule` is the pure rule (a set of logins, or any). `AllowedOwners` is the
rule in force in one process: from ALLOWED_OWNERS at once, or, by default, from
the account that owns the App, which GitHub tells (`GET /app`) once; until then
the rule is unknown and deliveries that would build are answered 503, so
GitHub marks them failed and they can be redelivered.

The webhook handler reads the rule on every delivery: a lookup in a frozenset,
never a call to GitHub (the handler answers thousands of deliveries a second).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)

ANY = "*"
# Retrying GET /app when GitHub cannot be reached at start: 1 s, 2 s, ... up to a minute.
RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0


@dataclass(frozen=True)
class OwnerRule:
    """The accounts whose installations are built (`accounts` lowercased; None: any)."""

    accounts: frozenset[str] | None
    # Where the rule came from, for messages: "ALLOWED_OWNERS" or "the App's owner".
    origin: str = "ALLOWED_OWNERS"

    @classmethod
    def of(cls, owners: Iterable[str], *, origin: str = "ALLOWED_OWNERS") -> OwnerRule:
        owners = tuple(owners)
        if ANY in owners:
            return cls(None, origin)
        return cls(frozenset(owner.lower() for owner in owners), origin)

    def allows(self, account: str | None) -> bool:
        """True when builds of `account` (a GitHub login, any case) may run."""
        if self.accounts is None:
            return True
        return bool(account) and account.lower() in self.accounts

    def refusal(self, account: str | None) -> str:
        """Why `account` is not built, for the webhook's answer and the logs."""
        if self.origin == "ALLOWED_OWNERS":
            return (f"account {account} is not in ALLOWED_OWNERS: its repositories are not "
                    "built")
        return (f"account {account} does not own this App and ALLOWED_OWNERS is not set: only "
                "the App owner's repositories are built")


class AllowedOwners:
    """The owner rule of this process; `rule()` is None until the App's owner is known."""

    def __init__(self, configured: tuple[str, ...] | None, *, app_owner: str | None = None):
        self.configured = configured
        self._rule: OwnerRule | None = None
        self._known = threading.Event()
        if configured is not None:
            self._set(OwnerRule.of(configured))
        elif app_owner:
            self.learn_app_owner(app_owner)

    def rule(self) -> OwnerRule | None:
        return self._rule

    def learn_app_owner(self, login: str) -> None:
        """Adopt the App owner's account (GET /app, or the manifest setup's answer)."""
        if self.configured is not None or not login:
            return
        if self._rule is None or self._rule.accounts != frozenset({login.lower()}):
            log.info("builds are allowed for the App owner's account %s (ALLOWED_OWNERS "
                     "is not set)", login)
        self._set(OwnerRule.of([login], origin="the App's owner"))

    def wait(self, timeout: float) -> bool:
        """Block until the rule is known (tests, start-up); False on timeout."""
        return self._known.wait(timeout)

    def _set(self, rule: OwnerRule) -> None:
        self._rule = rule
        self._known.set()

    def learn_in_background(self, fetch_owner: Callable[[], str], *,
                            sleep: Callable[[float], bool] | None = None) -> threading.Thread:
        """Ask `fetch_owner` (GET /app) in a thread, retrying with backoff until it answers."""
        stop = threading.Event()
        pause = sleep or stop.wait

        def run() -> None:
            delay = RETRY_FIRST_SECONDS
            while self._rule is None:
                try:
                    self.learn_app_owner(fetch_owner())
                    return
                except Exception as exc:  # GitHub down, bad key: say so, retry, never die
                    log.warning(
                        "could not learn the account that owns the App (GET /app): %s; "
                        "deliveries that would build are answered 503 until it is known "
                        "(retrying in %.0f s; set ALLOWED_OWNERS to skip this)", exc, delay)
                pause(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)

        thread = threading.Thread(target=run, name="slipway-app-owner", daemon=True)
        thread.start()
        return thread


def owners_of(config, stored_owner: str | None = None) -> AllowedOwners:
    """The owner rule of a process started with `config`.

    Without ALLOWED_OWNERS, the App's owner comes from the manifest setup's answer
    (`stored_owner`) or else from `GET /app`, asked in the background.
    """
    owners = AllowedOwners(config.allowed_owners, app_owner=stored_owner)
    if owners.rule() is None and config.has_app_credentials:
        ask_github_for_app_owner(owners, config)
    return owners


def ask_github_for_app_owner(owners: AllowedOwners, config) -> threading.Thread:
    """Learn the App's owner with `GET /app` (the App's JWT) in the background."""
    from github_app.github import GitHubApp

    app = GitHubApp(config.api_url, config.app_id, config.private_key)
    return owners.learn_in_background(app.app_owner)
