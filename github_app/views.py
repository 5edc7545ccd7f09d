"""POST /webhook: verify, decide, enqueue, answer.

GitHub gives up on a delivery after 10 s, so the handler never builds, never
calls GitHub and never downloads: it verifies the signature, decides from the
payload alone and records the job with one INSERT. The worker does the rest.
https://docs.github.com/en/webhooks/using-webhooks/best-practices-for-using-webhooks

`receive_delivery` is that logic, free of any web framework. `WebhookEndpoint`
serves it as plain WSGI in front of the Flask app: GitHub can send bursts of
deliveries, and Flask's request and response machinery cost more CPU than all
of the handler's own work (bench/webhook_load.py).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from github_app import setup, webhooks
from github_app.errors import WebhookRejected
from github_app.jobs import StoreUnavailable

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhook"
# GitHub caps webhook payloads at 25 MB.
# https://docs.github.com/en/webhooks/webhook-events-and-payloads#payload-cap
MAX_WEBHOOK_BYTES = 25 * 1024 * 1024

_REQUEST_FIELDS = tuple(f.name for f in dataclasses.fields(webhooks.BuildRequest))
_REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized",
            405: "Method Not Allowed", 411: "Length Required", 413: "Payload Too Large",
            503: "Service Unavailable"}


def receive_delivery(runtime, headers: Mapping[str, str], body: bytes) -> tuple[int, dict]:
    """The answer to one delivery, as (HTTP status, JSON body)."""
    # Read on every delivery: the /setup flow may replace the config while running.
    config = runtime.config
    if not config.webhook_secret:
        setup.pick_up_stored_credentials(runtime)
        config = runtime.config
    if not config.webhook_secret:
        return 503, {"error": "Slipway is not set up yet: finish the App setup at /setup."}
    try:
        delivery = webhooks.Delivery.from_http(headers, body, secrets=config.webhook_secrets)
        decision = webhooks.decide(
            delivery, target_branch=config.target_branch, app_id=config.app_id
        )
        installing = webhooks.installing_account(delivery)
    except WebhookRejected as error:
        # The event header of a refused delivery is not trusted: as a label it
        # would let anyone grow the metrics without bound.
        _count(runtime, "unverified", f"rejected_{error.status}")
        return error.status, {"error": str(error)}
    if isinstance(decision, webhooks.Ping):
        _count(runtime, delivery.event, "ping")
        return 200, {"pong": True, "zen": decision.zen}
    rule = runtime.owners.rule()
    if installing is not None and rule is not None and not rule.allows(installing):
        log.warning("the App was installed on %s: add it to ALLOWED_OWNERS to build it, or "
                    "uninstall the App from it", rule.refusal(installing),
                    extra={"delivery_id": delivery.id})
    if isinstance(decision, webhooks.Ignored):
        _count(runtime, delivery.event, "ignored")
        log.info("webhook ignored: %s", decision.reason, extra={"delivery_id": delivery.id})
        return 202, {"ignored": decision.reason}
    if rule is None:
        # Known once GET /app answers (owners.py); a 5xx lets GitHub redeliver it then.
        _count(runtime, delivery.event, "unavailable")
        return 503, {"error": "Slipway does not know yet which account owns the App, so it "
                              "cannot tell whether this repository may be built; redeliver "
                              "it later, or set ALLOWED_OWNERS."}
    if not rule.allows(decision.owner):
        _count(runtime, delivery.event, "ignored")
        reason = rule.refusal(decision.owner)
        log.info("webhook ignored: %s", reason, extra={"delivery_id": delivery.id})
        return 202, {"ignored": reason}
    try:
        result = runtime.store.enqueue(
            delivery.id,
            repository=decision.repository,
            kind=str(decision.kind),
            # Shallow on purpose: every field is a plain value; asdict deep-copies.
            request={name: getattr(decision, name) for name in _REQUEST_FIELDS},
        )
    except StoreUnavailable as error:
        # A 5xx makes GitHub mark the delivery failed, so it can be redelivered
        # once the disk is back: the merge is not lost.
        log.error("job store unavailable: %s", error, extra={"delivery_id": delivery.id})
        _count(runtime, delivery.event, "unavailable")
        return 503, {"error": "Slipway cannot record the delivery right now; redeliver it later."}
    if not result.created:
        _count(runtime, delivery.event, "duplicate")
        return 200, {"duplicate": result.job_id}
    _count(runtime, delivery.event, "accepted")
    log.info("webhook accepted: %s %s", delivery.event, decision.repository,
             extra={"delivery_id": delivery.id, "job_id": result.job_id})
    wakeup = runtime.extras.get("wakeup")
    if wakeup is not None:
        wakeup.set()
    return 202, {"job": result.job_id}


def _count(runtime, event: str, outcome: str) -> None:
    if runtime.metrics is not None:
        runtime.metrics.webhook_received(event, outcome)


class WebhookEndpoint:
    """WSGI middleware: answers `/webhook` itself and hands every other path to `app`."""

    def __init__(self, app: Callable, runtime):
        self.app = app
        self.runtime = runtime

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != WEBHOOK_PATH:
            return self.app(environ, start_response)
        if environ.get("REQUEST_METHOD") != "POST":
            return _answer(start_response, 405, {"error": "Deliveries are POSTed."},
                           [("Allow", "POST")])
        body = _read_body(environ)
        if body is None:
            return _answer(start_response, 413, {
                "error": f"Payload over {MAX_WEBHOOK_BYTES // 1024**2} MiB; GitHub never "
                         "sends more."})
        status, answer = receive_delivery(self.runtime, _headers(environ), body)
        return _answer(start_response, status, answer)


def _read_body(environ: dict) -> bytes | None:
    """The request body, or None when it is over the cap (refused before it is read)."""
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        try:
            size = int(length)
        except ValueError:
            size = -1
        if size > MAX_WEBHOOK_BYTES:
            return None
        if size >= 0:
            return stream.read(size)
    # No length (chunked): read at most one byte past the cap to tell.
    body = stream.read(MAX_WEBHOOK_BYTES + 1)
    return None if len(body) > MAX_WEBHOOK_BYTES else body


# The headers a delivery is read from, by their WSGI environ keys.
_DELIVERY_HEADERS = {
    "HTTP_X_HUB_SIGNATURE_256": "X-Hub-Signature-256",
    "HTTP_X_GITHUB_EVENT": "X-GitHub-Event",
    "HTTP_X_GITHUB_DELIVERY": "X-GitHub-Delivery",
}


def _headers(environ: dict) -> dict[str, str]:
    return {name: environ[key] for key, name in _DELIVERY_HEADERS.items() if key in environ}


def _answer(start_response: Callable, status: int, body: dict[str, Any],
            extra_headers: list[tuple[str, str]] = ()) -> list[bytes]:
    data = orjson.dumps(body)
    start_response(
        f"{status} {_REASONS.get(status, 'Error')}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
         *extra_headers],
    )
    return [data]
