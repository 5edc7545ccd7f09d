"""`python -m github_app serve | worker`: read the environment once, build
everything, run.

    serve    web + worker (the default): Granian serves the Flask app in
             WEB_WORKERS processes, each also running WORKER_THREADS build
             threads (0: web only)
    worker   worker only: another process on the same DATA_DIR, or a build
             host of its own sharing DATABASE_URL
    doctor   checks every part Slipway needs, one line each; exit 0 when all pass
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
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
    serve = commands.add_parser("serve", help="web + worker (the default)")
    serve.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"),
                       help="address to listen on (default 0.0.0.0, or HOST)")
    commands.add_parser("worker", help="worker only (jobs from the same DATA_DIR)")
    commands.add_parser("doctor", help="check every part Slipway needs, one line each")
    args = parser.parse_args(argv)
    command = args.command or "serve"
    if command == "doctor":
        from github_app import doctor

        return doctor.main(os.environ)

    try:
        config = load_config(os.environ)
        if command == "worker" and config.worker_threads < 1:
            raise ConfigError("WORKER_THREADS must be at least 1 for the worker command")
        if command == "worker" and not config.app_id:
            raise ConfigError("GITHUB_APP_ID is not set: the App's id, shown on its settings page")
        if command == "worker" and not config.private_key:
            raise ConfigError(
                "GITHUB_PRIVATE_KEY_PATH is not set: the path of the App's private key (.pem)"
            )
    except SlipwayError as exc:
        print(f"slipway: {exc}", file=sys.stderr)
        return 2

    setup_logging(config)
    if command == "worker":
        return run_worker(config)
    return run_serve(config, host=args.host)


def load_config(environ):
    """The config from the environment, completed by credentials the /setup flow stored."""
    from github_app.config import Config

    return _with_stored_credentials(Config.from_env(environ, require_app=False))


def setup_logging(config) -> None:
    from github_app.logs import configure_logging, secrets_from_config

    configure_logging(level=config.log_level, secrets=secrets_from_config(config))
    # github3 narrates every URL it builds at INFO; keep its warnings only.
    logging.getLogger("github3").setLevel(max(logging.WARNING, logging.getLogger().level))


def _with_stored_credentials(config):
    """App credentials saved by the /setup flow fill in what the environment lacks."""
    from github_app import credentials

    try:
        if config.database_url:  # a shared store keeps them for every node
            from github_app.jobs import JobStore

            with JobStore.from_config(config) as store:
                stored = credentials.load(config.data_dir, store=store)
        else:
            stored = credentials.load(config.data_dir)
    except SlipwayError:
        if config.app_id:  # the environment's App is complete; only its OAuth client is missing
            return config
        raise
    return credentials.apply(config, stored) if stored else config


def build_github(config, metrics=None):
    from github_app.github import GitHubApp

    return GitHubApp(config.api_url, config.app_id, config.private_key,
                     on_call=metrics.github_api_call if metrics is not None else None)


def build_worker(config, store, *, metrics=None, wakeup=None):
    from github_app.worker import Worker

    return Worker(config, store, build_github(config, metrics), metrics=metrics, wakeup=wakeup)


def start_sweeper(config, store, *, metrics=None, stop: threading.Event,
                  listening: tuple[str, int] | None = None) -> threading.Thread:
    """Sweep the App's delivery log for missed deliveries in a thread, until `stop` is set.

    `listening`: the address this process serves webhooks on; it sweeps at start-up once
    that accepts connections, so that the redeliveries it asks for find Slipway up. Without
    it (the worker command) it joins the periodic sweeps only."""
    from github_app.sweep import Sweeper

    def run() -> None:
        if listening is not None:
            _wait_until_listening(*listening, stop=stop)
        sweeper = Sweeper(config, store, build_github(config, metrics), metrics=metrics)
        sweeper.run(stop, at_start=listening is not None)

    thread = threading.Thread(target=run, name="slipway-redeliver", daemon=True)
    thread.start()
    return thread


def _wait_until_listening(host: str, port: int, *, stop: threading.Event,
                          timeout: float = 30.0) -> None:
    address = "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        try:
            socket.create_connection((address, port), timeout=1.0).close()
            return
        except OSError:
            stop.wait(0.2)


def open_store(config):
    """The job store of `config`, with its lease (LEASE_SECONDS)."""
    from github_app.jobs import JobStore

    return JobStore.from_config(config)


def run_worker(config) -> int:
    store = open_store(config)
    # Other processes and machines may be building from the same store: take
    # over only jobs whose lease ran out, never ones that are still built.
    store.requeue_interrupted()
    worker = build_worker(config, store)
    sweeping = threading.Event()

    def stop() -> None:
        sweeping.set()
        worker.stop()

    _stop_on_signals(stop)
    start_sweeper(config, store, stop=sweeping)
    log.info("worker started with %d threads", worker.threads)
    worker.run()
    log.info("worker stopped")
    return 0


def run_serve(config, *, host: str) -> int:
    """Granian serves the app in WEB_WORKERS processes; each also builds (WORKER_THREADS)."""
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces

    store = open_store(config)
    # A separate `worker` (or another node) may be building from this store
    # right now: leases decide, so only jobs whose worker stopped renewing them
    # go back, whichever store it is.
    requeued = store.requeue_interrupted()
    if requeued:
        log.info("requeued %d interrupted job(s): %s", len(requeued), requeued)
    store.close()
    # Each web process reads it (serving_app) to know where it listens.
    os.environ["HOST"] = host
    log.info("serving on %s:%d with %d web process(es)", host, config.port, config.web_workers)
    # A Rust HTTP server: gunicorn's pure-Python parsing cost more CPU per
    # delivery than the whole of Slipway's own handling (bench/webhook_load.py).
    Granian(
        "github_app.__main__:serving_app",
        factory=True,
        address=host,
        port=config.port,
        interface=Interfaces.WSGI,
        # GitHub delivers webhooks over HTTP/1.1; no per-connection protocol sniffing.
        http=HTTPModes.http1,
        workers=config.web_workers,
        blocking_threads=config.web_threads,
        respawn_failed_workers=True,
        # On SIGTERM the web process that builds lets its builds finish for
        # STOP_GRACE and hands the rest back; past that (and a margin), Granian kills.
        workers_kill_timeout=config.stop_grace + 15,
        log_level="warning",
    ).serve()
    return 0


def serving_app():
    """The app of one web process (Granian calls this in each of them)."""
    from github_app import create_app

    config = load_config(os.environ)
    setup_logging(config)
    app = create_app(config)
    if config.worker_threads > 0:
        start_worker_when_set_up(app)
    start_sweeper_when_set_up(app, listening=(os.environ.get("HOST", "0.0.0.0"), config.port))
    return app


def start_sweeper_when_set_up(app, *, listening=None) -> threading.Thread:
    """Sweep for missed deliveries from this web process once the App is set up.

    Every web process runs one; the store lets one sweep run at a time among them."""
    runtime = app.extensions["slipway"]
    stop = runtime.extras.setdefault("sweep_stop", threading.Event())

    def run() -> None:
        while not runtime.config.has_app_credentials and not stop.wait(1.0):
            pass
        if not stop.is_set():
            start_sweeper(runtime.config, runtime.store, metrics=runtime.metrics, stop=stop,
                          listening=listening).join()

    thread = threading.Thread(target=run, name="slipway-redeliver-setup", daemon=True)
    thread.start()
    return thread


def start_worker_when_set_up(app) -> threading.Thread:
    """Run the build worker in this process.

    Any number of processes (and machines) may build from one store: the
    store hands each job to one of them, one job per repository at a time.
    Without App credentials (before /setup) the worker waits until the setup
    stores them."""
    runtime = app.extensions["slipway"]

    def stopping() -> bool:
        # Granian's own handler takes SIGTERM in a web process and returns from
        # the main thread; this thread, not a daemon, sees that and winds down.
        return not threading.main_thread().is_alive()

    def run() -> None:
        while not runtime.config.app_id:
            if stopping():
                return
            time.sleep(1.0)
        worker = build_worker(runtime.config, runtime.store, metrics=runtime.metrics,
                              wakeup=runtime.extras["wakeup"])
        runtime.extras["worker"] = worker
        worker.run(stop_when=stopping)
        log.info("worker stopped")

    thread = threading.Thread(target=run, name="slipway-worker")
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
