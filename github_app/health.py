"""`GET /healthz`: does the job store answer, does the Docker engine answer.

200 when both do, 503 when either does not, and the JSON body says which part
failed and why, so `docker compose ps`, a load balancer or a person reading
`curl` output knows where to look."""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Blueprint, jsonify

from .runtime import current_runtime

log = logging.getLogger(__name__)

bp = Blueprint("health", __name__)


def run_check(check: Callable[[], object] | None, missing: str) -> str:
    """'ok' when `check` returns without raising (and not False), else 'error: why'."""
    if check is None:
        return f"error: {missing}"
    try:
        result = check()
    except Exception as exc:  # any failure is the answer, not a crash of /healthz
        text = str(exc).strip()
        reason = f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
        return f"error: {reason[:300]}"
    if result is False:
        return "error: check returned false"
    return "ok"


@bp.get("/healthz")
def healthz():
    runtime = current_runtime()
    store_check = getattr(runtime.store, "healthcheck", None)
    checks = {
        "store": run_check(store_check, "no job store configured"),
        "docker": run_check(runtime.engine_ping, "no Docker engine configured"),
    }
    healthy = all(value == "ok" for value in checks.values())
    if not healthy:
        log.warning("unhealthy: %s", checks)
    response = jsonify({"status": "ok" if healthy else "unhealthy", "checks": checks})
    response.status_code = 200 if healthy else 503
    response.headers["Cache-Control"] = "no-store"
    return response
