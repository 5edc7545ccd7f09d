"""`python -m github_app serve | worker`: read the environment once, build
everything, run.

    serve    web + worker in one process (the default): gunicorn serves the
             Flask app, and the worker threads build in the same process
    worker   worker only, for a second machine or process on the same DATA_DIR
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time

from github_app.errors import ConfigError, SlipwayError

log = logging.getLogger("github_app")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m github_app",
        description="Slipway: builds the Docker image of every pull request merged into "
        "TARGET_BRANCH and reports it on the pull request. Configured by environment "
        "variables (see README.md).",
    )
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="web + worker in one process (the default)")
    serve.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"),
                       help="address to listen on (default 0.0.0.0, or HOST)")
    serve.add_argument("--web-threads", type=int, default=8,
                       help="threads answering HTTP requests (default 8)")
    commands.add_parser("worker", help="worker only (jobs from the same DATA_DIR)")
    args = parser.parse_args(argv)
    command = args.command or "serve"

    from github_app.config import Config

    try:
        config = Config.from_env(os.environ, require_app=False)
        config = _with_stored_credentials(config)
        if command == "worker" and not config.app_id:
            raise ConfigError("GITHUB_APP_ID is not set: the App's id, shown on its settings page")
        if command == "worker" and not config.private_key:
            raise ConfigError(
                "GITHUB_PRIVATE_KEY_PATH is not set: the path of the App's private key (.pem)"
            )
    except SlipwayError as exc:
        print(f"slipway: {exc}", file=sys.stderr)
        return 2

    from github_app.logs import configure_logging, secrets_from_config

    configure_logging(level=config.log_level, secrets=secrets_from_config(config))
    # github3 narrates every URL it builds at INFO; keep its warnings only.
    logging.getLogger("github3").setLevel(max(logging.WARNING, logging.getLogger().level))
    if command == "worker":
        return run_worker(config)
    return run_serve(config, host=args.host, web_threads=args.web_threads)


def _with_stored_credentials(config):
    """App credentials saved by the /setup flow fill in what the environment lacks."""
    from github_app import credentials

    if config.app_id:
        return config
    stored = credentials.load(config.data_dir)
    return credentials.apply(config, stored) if stored else config


def build_worker(config, store, *, metrics=None, wakeup=None):
    from github_app.github import GitHubApp
    from github_app.worker import Worker

    github = GitHubApp(config.api_url, config.app_id, config.private_key)
    return Worker(config, store, github, metrics=metrics, wakeup=wakeup)


def run_worker(config) -> int:
    from github_app.jobs import JobStore

    store = JobStore.from_data_dir(config.data_dir)
    # Another process may be serving the same store: take over only jobs whose
    # lease ran out, never ones that are still being built.
    store.requeue_interrupted()
    worker = build_worker(config, store)
    _stop_on_signals(worker.stop)
    log.info("worker started with %d threads", worker.threads)
    worker.run()
    return 0


def run_serve(config, *, host: str, web_threads: int) -> int:
    from gunicorn.app.base import BaseApplication

    from github_app import create_app
    from github_app.jobs import JobStore

    store = JobStore.from_data_dir(config.data_dir)
    # Being the only process by default, every running job we find was left
    # by our previous life: requeue it so its check run ends `completed`.
    requeued = store.requeue_interrupted(force=True)
    if requeued:
        log.info("requeued %d interrupted job(s): %s", len(requeued), requeued)
    store.close()

    class SlipwayServer(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", f"{host}:{config.port}")
            # One process: the worker threads live beside the web threads, and
            # jobs of one repository are serialised by the store either way.
            self.cfg.set("workers", 1)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", web_threads)
            self.cfg.set("timeout", 0)  # workers are long-lived threads, not requests
            self.cfg.set("accesslog", None)
            self.cfg.set("errorlog", "-")
            self.cfg.set("loglevel", "warning")

        def load(self):
            app = create_app(config)
            start_worker_when_set_up(app)
            return app

    log.info("serving on %s:%d", host, config.port)
    SlipwayServer().run()
    return 0


def start_worker_when_set_up(app) -> threading.Thread:
    """Start the build worker in this process once the App has credentials.

    Without them (first start, before /setup), the web side runs alone and the
    worker starts as soon as the setup flow stores the App's credentials."""
    runtime = app.extensions["slipway"]

    def run() -> None:
        while not runtime.config.app_id:
            time.sleep(1.0)
        worker = build_worker(runtime.config, runtime.store, metrics=runtime.metrics,
                              wakeup=runtime.extras["wakeup"])
        runtime.extras["worker"] = worker
        worker.run()

    thread = threading.Thread(target=run, name="slipway-worker", daemon=True)
    thread.start()
    return thread


def _stop_on_signals(stop) -> None:
    def handle(signum, frame):
        log.info("signal %d: finishing the running builds, taking no new ones", signum)
        stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


if __name__ == "__main__":
    sys.exit(main())
