"""`GET /healthz`: is every part a build needs fine?

- `store`: the job store answers reads and writes;
- `docker`: the Docker engine answers;
- `worker`: when jobs wait, some worker (a thread of this process or a
  separate `worker`) has shown a heartbeat within the last 60 s;
- `disk`: DATA_DIR and the engine's data root have MIN_FREE_DISK free.

200 when all are, 503 otherwise, and the JSON body says which part failed and
why, so `docker compose ps`, a load balancer or a person reading `curl` output
knows where to look. `worker_heartbeat_age` and `free_disk` say what was seen.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from flask import Blueprint, jsonify

from .config import format_size
from .disk import free_spaces, shortfalls
from .liveness import worker_problem
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
    if isinstance(result, str):
        return f"error: {result}"
    return "ok"


@bp.get("/healthz")
def healthz():
    runtime = current_runtime()
    store_check = getattr(runtime.store, "healthcheck", None)
    seen: dict[str, object] = {}
    checks = {
        "store": run_check(store_check, "no job store configured"),
        "docker": run_check(runtime.engine_ping, "no Docker engine configured"),
        "worker": run_check(lambda: _worker(runtime, seen), ""),
        "disk": run_check(lambda: _disk(runtime, seen), ""),
    }
    healthy = all(value == "ok" for value in checks.values())
    if not healthy:
        log.warning("unhealthy: %s", checks)
    response = jsonify({"status": "ok" if healthy else "unhealthy", "checks": checks, **seen})
    response.status_code = 200 if healthy else 503
    response.headers["Cache-Control"] = "no-store"
    return response


def _worker(runtime, seen: dict) -> str | None:
    """None when fine, else why (a str): jobs wait and no worker beats."""
    store = runtime.store
    last = store.last_heartbeat()
    now = time.time()
    seen["worker_heartbeat_age"] = None if last is None else round(now - last, 1)
    return worker_problem(queued=store.queue_depth(), last_heartbeat=last, now=now)


def _disk(runtime, seen: dict) -> str | None:
    """None when every place builds write to has MIN_FREE_DISK free, else why."""
    config = runtime.config
    docker_root = runtime.extras.get("docker_root")
    spaces = free_spaces(config.data_dir, docker_root() if docker_root else None)
    seen["free_disk"] = {space.path: space.free for space in spaces}
    short = shortfalls(spaces, config.min_free_disk)
    if not short:
        return None
    return "; ".join(f"{format_size(s.free)} free in {s.path} ({s.what})" for s in short) + \
        f", below MIN_FREE_DISK ({format_size(config.min_free_disk)}): builds do not start"
