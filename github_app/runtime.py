"""What the blueprints and the worker share in one process: the config, the
job store, the metrics and a way to ask the Docker engine whether it answers.

`create_app` puts one `Runtime` in `app.extensions["slipway"]`; views read it
with `current_runtime()` instead of module globals, so tests can run several
apps side by side."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import current_app


@dataclass
class Runtime:
    config: Any  # github_app.config.Config
    store: Any  # github_app.jobs.JobStore
    metrics: Any = None  # github_app.metrics.Metrics
    # Raises when the engine does not answer; /healthz reports its message.
    engine_ping: Callable[[], None] | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    # Whose installations are built (github_app.owners.AllowedOwners).
    owners: Any = None


def current_runtime() -> Runtime:
    return current_app.extensions["slipway"]
