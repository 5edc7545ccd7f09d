"""Slipway, the GitHub App: `create_app(config)` wires the blueprints to one
job store. Wiring only; the logic lives in the modules it imports."""

from __future__ import annotations

import threading

from flask import Flask

from github_app.runtime import Runtime

__all__ = ["create_app"]

def create_app(config=None, *, store=None, metrics=None, engine_ping=None) -> Flask:
    """The Flask app. Without `config`, reads it from the environment once."""
    from github_app import credentials, health, owners, pages, setup, signin, views
    from github_app import metrics as metrics_module
    from github_app.config import Config
    from github_app.disk import DiskGuard
    from github_app.jobs import JobStore

    if config is None:
        import os

        config = Config.from_env(os.environ, require_app=False)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = views.MAX_WEBHOOK_BYTES
    app.json.sort_keys = False
    if store is None:
        store = JobStore.from_config(config)
    if metrics is None:
        metrics = metrics_module.Metrics(queue_depth=store.queue_depth)
    if engine_ping is None:
        engine_ping = docker_engine_ping(config)
    runtime = app.extensions["slipway"] = Runtime(
        config=config,
        store=store,
        metrics=metrics,
        engine_ping=engine_ping,
        extras={"wakeup": threading.Event(), "docker_root": DiskGuard(config).docker_root},
        owners=owners.owners_of(config, credentials.stored_owner(config)),
    )
    if not config.has_app_credentials:
        setup.announce_setup_mode(config)
    for blueprint in (pages.bp, health.bp, metrics_module.bp, setup.bp, signin.bp):
        app.register_blueprint(blueprint)
    app.wsgi_app = views.WebhookEndpoint(app.wsgi_app, runtime)
    return app


def docker_engine_ping(config):
    """A check for /healthz: raises EngineUnreachable, saying what to do, when no engine answers.

    The builder owns the Docker SDK; this reuses its client, made from `config.engine`."""
    from builder import engine

    client = None

    def ping() -> None:
        nonlocal client
        client = engine.connect(client, settings=config.engine)

    return ping
