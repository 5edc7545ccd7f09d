"""The build pages in a real headless browser (Debian's chromium, driven by playwright).

The app runs on a real HTTP server on a loopback port; the test writes to a
running build's log the way the worker does and watches the open page grow."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
from flask import Flask
from werkzeug.serving import make_server

from github_app import pages
from github_app.config import Config
from github_app.jobs import BuildState, JobStore
from github_app.runtime import Runtime

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DIGEST = "sha256:5d1f0b7c2e4a9f3b8c6d1e0f2a4b6c8d0e2f4a6b8c0d2e4f6a8b0c2d4e6f8a0b"
# Set SLIPWAY_UPDATE_SCREENSHOTS=1 to refresh the screenshot the README shows.
README_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs/screenshots/build-page.png"


@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (scripts/test-env does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def server(data_dir):
    """The pages served by a real HTTP server on a loopback port, in a thread."""
    config = Config(data_dir=data_dir, public_url="http://127.0.0.1")
    store = JobStore.from_data_dir(data_dir)
    app = Flask(__name__)
    app.extensions["slipway"] = Runtime(config=config, store=store)
    app.register_blueprint(pages.bp)
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    http.url = f"http://127.0.0.1:{http.server_port}"
    http.store, http.config = store, config
    yield http
    http.shutdown()
    thread.join(10)
    store.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.console_errors = []
    page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
    yield page
    context.close()


def record_build(store: JobStore, *, delivery: str, state: BuildState, pr: int,
                 private: bool = False, **fields) -> int:
    job = store.enqueue(
        delivery,
        repository="octo-org/orders",
        kind="merge",
        request={"pr_number": pr, "pr_title": f"Release 1.{pr}.0: orders endpoint"},
    )
    build_id = store.create_build(
        job.job_id,
        repository="octo-org/orders",
        service="orders",
        pr_number=pr,
        head_sha="4f2a" * 10,
        merge_sha="9c1e" * 10,
        check_run_name="docker build",
        private=private,
    )
    store.update_build(build_id, state=state, **fields)
    return build_id


def succeed(store: JobStore, build_id: int, version: str) -> None:
    now = store.clock()
    store.update_build(
        build_id,
        state=BuildState.SUCCEEDED,
        version=version,
        version_source="the PR title",
        reference=f"127.0.0.1:5000/orders:{version}",
        digest=DIGEST,
        size=131_400_000,
        finished_at=now,
        duration=now - store.get_build(build_id).started_at,
    )


def test_builds_list_renders_in_a_browser(server, page):
    """/builds shows each build's repository, PR, service, version and status."""
    now = server.store.clock()
    done = record_build(
        server.store, delivery="d-1", state=BuildState.RUNNING, pr=3, started_at=now - 95
    )
    succeed(server.store, done, "1.3.0")
    record_build(server.store, delivery="d-2", state=BuildState.RUNNING, pr=4, started_at=now)

    page.goto(f"{server.url}/builds")
    rows = page.locator("table.builds tbody tr")
    assert rows.count() == 2
    assert rows.nth(0).inner_text().split("\t")[:6] == [
        "2",
        "octo-org/orders",
        "#4",
        "orders",
        "",
        "RUNNING",
    ]
    assert rows.nth(1).inner_text().split("\t")[:7] == [
        "1",
        "octo-org/orders",
        "#3",
        "orders",
        "1.3.0",
        "SUCCEEDED",
        "1 min 35 s",
    ]
    page.select_option("select[name=status]", "succeeded")
    page.click("button[type=submit]")
    page.wait_for_url("**/builds?repository=&status=succeeded")
    assert page.locator("table.builds tbody tr").count() == 1
    assert page.console_errors == []


def test_build_page_follows_the_log_live_and_shows_the_result(server, page, tmp_path):
    """A running build's page grows as the log grows, without a reload, then shows the image."""
    store = server.store
    build_id = record_build(
        store, delivery="d-1", state=BuildState.RUNNING, pr=14, started_at=store.clock() - 20
    )
    log = server.store.build_log(build_id)
    log.append("Step 1/5 : FROM python:3.11-slim")
    log.append(" ---> 0b2d5a1f3c4e")
    log.flush()  # the worker's log reaches the store within half a second; now, for the test

    page.goto(f"{server.url}/builds/{build_id}")
    assert page.locator("#status").inner_text() == "RUNNING"
    assert page.locator("#pr-link").get_attribute("href") == (
        "https://github.com/octo-org/orders/pull/14"
    )
    assert page.locator("#commit-link").get_attribute("href") == (
        "https://github.com/octo-org/orders/commit/" + "9c1e" * 10
    )
    assert "Step 1/5 : FROM python:3.11-slim" in page.locator("#log").inner_text()
    page.evaluate("window.stillTheSamePage = true")

    steps = [
        "Step 2/5 : WORKDIR /app",
        "Step 3/5 : COPY requirements.txt .",
        "Step 4/5 : RUN pip install -r requirements.txt",
        "Successfully installed Flask-3.0.3 gunicorn-22.0.0",
        'Step 5/5 : CMD ["gunicorn", "-b", "0.0.0.0:8000", "app:app"]',
        "Successfully built 7e41c0a9d2b8",
        "<script>document.title='pwned'</script> is printed, not run",
    ]
    for step in steps:
        log.append(step)
        page.wait_for_function(
            "text => document.getElementById('log').textContent.includes(text)",
            arg=step,
            timeout=10_000,
        )
    assert page.evaluate("window.stillTheSamePage") is True  # grew in place, no reload
    assert page.title() != "pwned"
    assert page.locator("#log").inner_text().count("Step 1/5") == 1  # nothing read twice

    log.append(f"pushed 127.0.0.1:5000/orders:1.14.0 digest: {DIGEST}")
    log.close()
    succeed(store, build_id, "1.14.0")
    # The script reloads the page once the build is over, to show its result.
    page.wait_for_function(
        "() => document.getElementById('status').textContent.trim() === 'succeeded'",
        timeout=15_000,
    )
    assert page.locator("#pull-command").inner_text() == (
        f"docker pull 127.0.0.1:5000/orders:1.14.0@{DIGEST}"
    )
    assert page.locator("#version").inner_text() == "1.14.0 from the PR title"
    assert "pushed 127.0.0.1:5000/orders:1.14.0" in page.locator("#log").inner_text()
    assert page.locator("#live").count() == 0
    assert page.console_errors == []  # the CSP let our own style and script run

    shot = tmp_path / "build-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("SLIPWAY_UPDATE_SCREENSHOTS") == "1":
        README_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, README_SCREENSHOT)


def test_build_page_is_readable_without_javascript(server, browser):
    """With JavaScript off the running build's page shows its log and refreshes itself."""
    build_id = record_build(
        server.store, delivery="d-1", state=BuildState.RUNNING, pr=5, started_at=1.0
    )
    with server.store.build_log(build_id) as log:
        log.append("Step 1/2 : FROM python:3.11-slim")

    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto(f"{server.url}/builds/{build_id}")
        assert page.locator("#log").inner_text().strip() == "Step 1/2 : FROM python:3.11-slim"
        assert page.locator("#status").inner_text() == "RUNNING"
        with server.store.build_log(build_id) as log:
            log.append('Step 2/2 : CMD ["python"]')
        # <noscript><meta refresh> reloads every 5 s while the build runs.
        page.wait_for_selector("#log:has-text('Step 2/2')", timeout=15_000)
    finally:
        context.close()


@pytest.fixture
def signin_server(data_dir, fake_github):
    """The whole app (create_app) with the fake GitHub's OAuth client, on a loopback port."""
    import socket

    from github_app import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = Config(app_id=str(fake_github.app_id), private_key=fake_github.private_key_pem,
                    webhook_secret="s", api_url=fake_github.url, data_dir=data_dir,
                    public_url=f"http://127.0.0.1:{port}", allowed_owners=("*",),
                    github_client_id=fake_github.client_id,
                    github_client_secret=fake_github.client_secret)
    app = create_app(config, engine_ping=lambda: None)
    http = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    http.url, http.store = config.public_url, app.extensions["slipway"].store
    yield http
    http.shutdown()
    thread.join(10)


def test_signing_in_with_github_shows_a_private_build_and_signing_out_hides_it(
        signin_server, page, fake_github):
    """A private build is a 404 until its reader signs in with GitHub, and after signing out."""
    fake_github.add_installation(account="octo-org")
    fake_github.add_repository("octo-org", "orders", private=True)
    fake_github.grant("octocat", "octo-org/orders")
    build_id = record_build(signin_server.store, delivery="d-p", state=BuildState.RUNNING, pr=9,
                            started_at=signin_server.store.clock(), private=True)

    assert page.goto(f"{signin_server.url}/builds/{build_id}").status == 404
    page.goto(f"{signin_server.url}/builds")
    assert page.locator("table.builds").count() == 0
    assert "sign in with GitHub" in page.locator("#private-note").inner_text()

    page.click("#sign-in")  # to the fake GitHub's authorize page, which comes straight back
    page.wait_for_url(f"{signin_server.url}/builds")
    assert " ".join(page.locator("#viewer").inner_text().split()).startswith(
        "signed in as octocat")
    assert page.locator(f"#build-{build_id}").count() == 1
    assert page.goto(f"{signin_server.url}/builds/{build_id}").status == 200
    assert page.locator("#status").inner_text() == "RUNNING"

    page.click("#sign-out")
    page.wait_for_url(f"{signin_server.url}/builds")
    assert page.locator("#sign-in").count() == 1
    assert page.locator(f"#build-{build_id}").count() == 0
    assert page.goto(f"{signin_server.url}/builds/{build_id}").status == 404
    # The browser reports each 404 it was asked to load; nothing else may fail.
    assert [e for e in page.console_errors if "status of 404" not in e] == []
