"""The webhook endpoint: verify, decide, enqueue, answer.

GitHub gives up on a delivery after 10 s, so the handler never builds, never
calls GitHub and never downloads: it verifies the signature, decides from the
payload alone and records the job with one INSERT. The worker does the rest.
https://docs.github.com/en/webhooks/using-webhooks/best-practices-for-using-webhooks"""

from __future__ import annotations

import dataclasses
import logging

from flask import Blueprint, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from github_app import webhooks
from github_app.errors import WebhookRejected
from github_app.jobs import StoreUnavailable
from github_app.runtime import current_runtime

log = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__)


@bp.post("/webhook")
def receive_webhook():
    runtime = current_runtime()
    config = runtime.config
    # An unconfigured App (setup not done yet) has no secret to check against.
    if not config.webhook_secret:
        raise WebhookRejected(503, "Slipway is not set up yet: finish the App setup at /setup.")
    secrets = [s for s in (config.webhook_secret, config.webhook_secret_previous) if s]
    delivery = webhooks.Delivery.from_http(request.headers, request.get_data(), secrets=secrets)
    decision = webhooks.decide(
        delivery, target_branch=config.target_branch, app_id=config.app_id
    )
    if isinstance(decision, webhooks.Ping):
        _count(runtime, delivery.event, "ping")
        return jsonify(pong=True, zen=decision.zen), 200
    if isinstance(decision, webhooks.Ignored):
        _count(runtime, delivery.event, "ignored")
        log.info("webhook ignored: %s", decision.reason, extra={"delivery_id": delivery.id})
        return jsonify(ignored=decision.reason), 202
    result = runtime.store.enqueue(
        delivery.id,
        repository=decision.repository,
        kind=str(decision.kind),
        request=dataclasses.asdict(decision),
    )
    if not result.created:
        _count(runtime, delivery.event, "duplicate")
        return jsonify(duplicate=result.job_id), 200
    _count(runtime, delivery.event, "accepted")
    log.info(
        "webhook accepted: %s %s", delivery.event, decision.repository,
        extra={"delivery_id": delivery.id, "job_id": result.job_id},
    )
    wakeup = runtime.extras.get("wakeup")
    if wakeup is not None:
        wakeup.set()
    return jsonify(job=result.job_id), 202


def _count(runtime, event: str, outcome: str) -> None:
    if runtime.metrics is not None:
        runtime.metrics.webhook_received(event, outcome)


@bp.app_errorhandler(WebhookRejected)
def webhook_rejected(error: WebhookRejected):
    current = current_runtime()
    _count(current, request.headers.get("X-GitHub-Event", "unknown"), f"rejected_{error.status}")
    return jsonify(error=str(error)), error.status


@bp.errorhandler(StoreUnavailable)
def store_unavailable(error: StoreUnavailable):
    # A 5xx makes GitHub mark the delivery failed, so it can be redelivered
    # once the disk is back: the merge is not lost.
    log.error("job store unavailable: %s", error)
    return jsonify(error="Slipway cannot record the delivery right now; redeliver it later."), 503


@bp.app_errorhandler(RequestEntityTooLarge)
def too_large(error: HTTPException):
    limit = request.max_content_length or 0
    return jsonify(error=f"Payload over {limit // 1024**2} MiB; GitHub never sends more."), 413
