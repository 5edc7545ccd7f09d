"""The App's webhook delivery log, as the fake GitHub keeps it and serves it.

GitHub records every attempt to deliver a webhook to the App's URL: one entry per attempt,
the first with `redelivery: false`, each one asked for with
`POST /app/hook/deliveries/{id}/attempts` with `redelivery: true` and the same `guid`.
`status_code` is the HTTP status the App answered, or 0 when GitHub could not connect (or
gave up waiting), which the `status=failure` filter does not return: it only returns
400-599, and `status=success` 200-399.
https://docs.github.com/en/rest/apps/webhooks

    log = DeliveryLog(now=fake.now)
    log.send(event, payload, url=..., secret=...)      # POST it signed, record the attempt
    log.record(event, payload, status_code=503)        # record an attempt without sending
    log.page(per_page=30, cursor=None, status=None)    # (items, next cursor) newest first
    log.get(delivery_id); log.redeliver(delivery_id, url=..., secret=...)

Deliveries come newest first, by id; a page's `Link` header names the next page's cursor
(`v1_<id of its first delivery>`). GitHub keeps three days of deliveries.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

KEPT_SECONDS = 3 * 24 * 3600
MAX_PER_PAGE = 100
DEFAULT_PER_PAGE = 30
HOOK_ID = 292430182
# GitHub gives up on a delivery after 10 s.
DELIVERY_TIMEOUT = 10.0


@dataclass
class Attempt:
    """One attempt to deliver one event to the App's webhook URL."""

    id: int
    guid: str
    delivered_at: float
    redelivery: bool
    duration: float
    status: str
    status_code: int
    event: str
    action: str | None
    installation_id: int | None
    repository_id: int | None
    url: str
    request_headers: dict[str, str] = field(repr=False)
    payload: dict[str, Any] = field(repr=False)
    response_headers: dict[str, str] = field(default_factory=dict, repr=False)
    response_body: str | None = field(default=None, repr=False)

    def simple(self, iso8601: Callable[[float], str]) -> dict:
        """The "Simple webhook delivery" of GET /app/hook/deliveries."""
        return {"id": self.id, "guid": self.guid, "delivered_at": iso8601(self.delivered_at),
                "redelivery": self.redelivery, "duration": self.duration,
                "status": self.status, "status_code": self.status_code, "event": self.event,
                "action": self.action, "installation_id": self.installation_id,
                "repository_id": self.repository_id, "throttled_at": None}

    def full(self, iso8601: Callable[[float], str]) -> dict:
        """The "Webhook delivery" of GET /app/hook/deliveries/{delivery_id}."""
        return {**self.simple(iso8601), "url": self.url,
                "request": {"headers": dict(self.request_headers), "payload": self.payload},
                "response": {"headers": dict(self.response_headers),
                             "payload": self.response_body}}


def status_text(status_code: int, *, timed_out: bool = False) -> str:
    """What GitHub writes in `status` for an answer (0: no answer)."""
    if status_code == 0:
        return "timed out" if timed_out else "failed to connect to host"
    if 200 <= status_code < 300:
        return "OK"
    return f"Invalid HTTP Response: {status_code}"


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class DeliveryLog:
    """Every delivery attempt to the App's webhook URL, newest last in memory."""

    def __init__(self, *, now: Callable[[], float], app_id: int):
        self._now = now
        self._app_id = app_id
        self._lock = threading.RLock()
        self._attempts: list[Attempt] = []
        self._next_id = 11_000_000_000
        self._threads: list[threading.Thread] = []

    # -- what the tests see ------------------------------------------------------------------

    @property
    def attempts(self) -> list[Attempt]:
        """Every attempt still kept, oldest first."""
        with self._lock:
            return [a for a in self._attempts if self._kept(a)]

    def of_guid(self, guid: str) -> list[Attempt]:
        return [a for a in self.attempts if a.guid == guid]

    def wait_for_redeliveries(self, timeout: float = 15.0) -> None:
        """Block until every redelivery asked for so far has been attempted."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0.0))

    # -- making attempts ---------------------------------------------------------------------

    def send(self, event: str, payload: dict, *, url: str | None, secret: str | None,
             guid: str | None = None, delivered_at: float | None = None) -> Attempt:
        """Deliver `payload` to `url` as GitHub does (signed, 10 s limit) and record it.

        With no `url`, or nothing listening there, the attempt is recorded with status 0.
        """
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = self._headers(event, guid or str(uuid.uuid4()), body, secret)
        return self._attempt(event, payload, body, headers, url=url, redelivery=False,
                             delivered_at=delivered_at)

    def record(self, event: str, payload: dict, *, status_code: int, guid: str | None = None,
               delivered_at: float | None = None, redelivery: bool = False,
               url: str = "http://slipway.example/webhook") -> Attempt:
        """Record an attempt without sending it, as if the App had answered `status_code`."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = self._headers(event, guid or str(uuid.uuid4()), body, None)
        return self._store(event, payload, headers, url=url, redelivery=redelivery,
                           status_code=status_code, status=status_text(status_code),
                           duration=0.01, delivered_at=delivered_at)

    def redeliver(self, delivery_id: int, *, url: str | None, secret: str | None) -> bool:
        """Send delivery `delivery_id` again in the background; False when it is unknown."""
        original = self._find(delivery_id)
        if original is None:
            return False
        body = json.dumps(original.payload, separators=(",", ":")).encode()
        headers = self._headers(original.event, original.guid, body, secret)

        def attempt() -> None:
            self._attempt(original.event, original.payload, body, headers, url=url,
                          redelivery=True, delivered_at=None)

        # GitHub answers 202 and delivers afterwards.
        thread = threading.Thread(target=attempt, name="fake-github-redelivery", daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()
        return True

    def _headers(self, event: str, guid: str, body: bytes, secret: str | None) -> dict:
        headers = {
            "Accept": "*/*",
            "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/044aadd",
            "X-GitHub-Delivery": guid,
            "X-GitHub-Event": event,
            "X-GitHub-Hook-ID": str(HOOK_ID),
            "X-GitHub-Hook-Installation-Target-ID": str(self._app_id),
            "X-GitHub-Hook-Installation-Target-Type": "integration",
        }
        if secret:
            headers["X-Hub-Signature-256"] = sign(body, secret)
        return headers

    def _attempt(self, event, payload, body, headers, *, url, redelivery, delivered_at):
        started = time.monotonic()
        status_code, response_headers, response_body, timed_out = 0, {}, None, False
        if url:
            try:
                answer = requests.post(url, data=body, headers=headers,
                                       timeout=DELIVERY_TIMEOUT, allow_redirects=False)
                status_code = answer.status_code
                response_headers, response_body = dict(answer.headers), answer.text
            except requests.Timeout:
                timed_out = True
            except requests.ConnectionError:
                pass
        return self._store(event, payload, headers, url=url or "", redelivery=redelivery,
                           status_code=status_code,
                           status=status_text(status_code, timed_out=timed_out),
                           duration=round(time.monotonic() - started, 3),
                           delivered_at=delivered_at, response_headers=response_headers,
                           response_body=response_body)

    def _store(self, event, payload, headers, *, url, redelivery, status_code, status, duration,
               delivered_at, response_headers=None, response_body=None) -> Attempt:
        installation = payload.get("installation") or {}
        repository = payload.get("repository") or {}
        with self._lock:
            self._next_id += 1
            attempt = Attempt(
                id=self._next_id, guid=headers["X-GitHub-Delivery"],
                delivered_at=self._now() if delivered_at is None else delivered_at,
                redelivery=redelivery, duration=duration, status=status,
                status_code=status_code, event=event, action=payload.get("action"),
                installation_id=installation.get("id"), repository_id=repository.get("id"),
                url=url, request_headers=dict(headers), payload=payload,
                response_headers=dict(response_headers or {}), response_body=response_body)
            self._attempts.append(attempt)
            return attempt

    # -- reading -----------------------------------------------------------------------------

    def _kept(self, attempt: Attempt) -> bool:
        return attempt.delivered_at > self._now() - KEPT_SECONDS

    def _find(self, delivery_id: int) -> Attempt | None:
        with self._lock:
            return next((a for a in self._attempts
                         if a.id == delivery_id and self._kept(a)), None)

    def get(self, delivery_id: int) -> Attempt | None:
        return self._find(delivery_id)

    def page(self, *, per_page: int, cursor: int | None,
             status: str | None) -> tuple[list[Attempt], int | None]:
        """One page, newest first, from the delivery `cursor` on; and the next page's cursor."""
        items = sorted(self.attempts, key=lambda a: -a.id)
        if status == "success":
            items = [a for a in items if 200 <= a.status_code <= 399]
        elif status == "failure":
            items = [a for a in items if 400 <= a.status_code <= 599]
        if cursor is not None:
            items = [a for a in items if a.id <= cursor]
        page, rest = items[:per_page], items[per_page:]
        return page, (rest[0].id if rest else None)
