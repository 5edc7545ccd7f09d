"""`python -m github_app doctor` against the real setup (fake GitHub, real engine and
registry, a running Slipway), then with one part broken at a time: the lines a user reads."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import pytest
from builder_helpers import closed_port
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from github_app import doctor
from github_app.sweep import Sweeper
from tests.payloads import merged_pull_request
from tests.slipway_harness import SECRET, Harness

pytestmark = pytest.mark.docker

PARTS = ["configuration", "app", "installations", "owners", "webhook secret", "docker", "disk",
         "base images", "registry", "data dir", "database", "public url", "redelivery"]


@pytest.fixture
def slipway(fake_github, registry, data_dir):
    """A running Slipway (real HTTP) on the fake GitHub, with the App installed on octo-org."""
    fake_github.add_installation(account="octo-org")
    harness = Harness(fake_github, registry.address, data_dir)
    fake_github.webhook_url, fake_github.webhook_secret = f"{harness.url}/webhook", SECRET
    sweep(harness)  # as `serve` does at start-up
    yield harness
    harness.close()


@pytest.fixture
def environ(slipway, fake_github, registry, data_dir, tmp_path) -> dict[str, str]:
    """The environment of a doctor run on the same configuration as the running Slipway."""
    key = tmp_path / "app.pem"
    key.write_bytes(fake_github.private_key_pem)
    return {
        "GITHUB_APP_ID": str(fake_github.app_id),
        "GITHUB_PRIVATE_KEY_PATH": str(key),
        "GITHUB_WEBHOOK_SECRET": SECRET,
        "GITHUB_API_URL": fake_github.url,
        "REGISTRY": registry.address,
        "DATA_DIR": str(data_dir),
        "PUBLIC_URL": slipway.url,
        "ALLOWED_OWNERS": "octo-org",
    }


def sweep(harness) -> None:
    """One sweep of the delivery log by the running Slipway."""
    Sweeper(harness.config, harness.store, harness.github()).sweep_if_due(due_before=time.time())


def run_doctor(environ: dict[str, str]) -> tuple[int, dict[str, str]]:
    """Doctor's exit status and its lines, by part: {"registry": "ok    registry: ..."}."""
    out = io.StringIO()
    status = doctor.main(environ, out=out)
    lines = out.getvalue().splitlines()
    by_part = {line[6:].split(":", 1)[0]: line for line in lines[:-1]}
    assert list(by_part) == PARTS, lines
    return status, by_part


def failed(lines: dict[str, str]) -> list[str]:
    return [part for part, line in lines.items() if not line.startswith("ok ")]


def test_every_part_passes_on_a_working_setup_and_doctor_exits_0(environ):
    """On the real setup the command prints one `ok` line per part and exits 0."""
    done = subprocess.run([sys.executable, "-m", "github_app", "doctor"],
                          env={**os.environ, **environ}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == [f"ok    {p}" for p in PARTS]
    assert lines[-1] == "all parts ok"
    text = done.stdout
    assert "1 installation(s): octo-org" in text
    assert "accepts a ping signed with it" in text
    assert "a test blob was pushed and deleted" in text
    assert SECRET not in text and "PRIVATE KEY" not in text


def test_registry_down_fails_the_registry_line_only(environ):
    """A registry that does not answer: its line says so and how to fix it; exit 1."""
    port = closed_port()
    environ["REGISTRY"] = f"127.0.0.1:{port}"
    status, lines = run_doctor(environ)
    assert status == 1
    assert failed(lines) == ["registry"]
    assert lines["registry"] == (
        f"FAIL  registry: The registry 127.0.0.1:{port} does not answer at "
        f"http://127.0.0.1:{port} (ConnectionError); check that it runs and that REGISTRY "
        "names it as host:port."
    )


def test_a_key_of_another_app_fails_the_app_line_and_skips_what_needs_it(environ, tmp_path):
    """A private key GitHub does not know: the app line says to generate one; exit 1."""
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "other.pem").write_bytes(other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))
    environ["GITHUB_PRIVATE_KEY_PATH"] = str(tmp_path / "other.pem")
    status, lines = run_doctor(environ)
    assert status == 1
    assert failed(lines) == ["app", "installations", "owners"]
    assert lines["app"].startswith(
        f"FAIL  app: GitHub refused the App's JWT (401): the private key is not a key of App "
        f"{environ['GITHUB_APP_ID']}, or this machine's clock is wrong. Generate a private key")
    assert lines["installations"] == (
        "skip  installations: needs GitHub to accept the App's JWT (see app above)")


def test_an_app_installed_nowhere_says_how_to_install_it(environ, fake_github):
    """No installation: nothing would ever be built, and the line says where to install."""
    fake_github.installations.clear()
    status, lines = run_doctor(environ)
    assert status == 1 and failed(lines) == ["installations"]
    assert lines["installations"].startswith(
        "FAIL  installations: The App is installed on no account, so no merge reaches "
        "Slipway: install it from ")


def test_a_slipway_running_with_another_secret_fails_the_secret_line(environ):
    """The running Slipway refuses a ping signed with this secret: they differ."""
    environ["GITHUB_WEBHOOK_SECRET"] = "not the secret Slipway runs with"
    status, lines = run_doctor(environ)
    assert status == 1 and failed(lines) == ["webhook secret"]
    assert "refuses a ping signed with GITHUB_WEBHOOK_SECRET (401): it runs with another " \
           "secret" in lines["webhook secret"]
    assert "not the secret Slipway runs with" not in "\n".join(lines.values())


def test_a_secret_with_a_trailing_newline_is_named(environ):
    """A secret pasted with a line break fails before anything is signed with it."""
    environ["GITHUB_WEBHOOK_SECRET"] = SECRET + "\n"
    status, lines = run_doctor(environ)
    assert status == 1 and failed(lines) == ["webhook secret"]
    assert "ends with a space or a line break" in lines["webhook secret"]


def test_too_little_free_disk_fails_the_disk_line(environ):
    """MIN_FREE_DISK above what is free: builds would not start, and the line says so."""
    environ["MIN_FREE_DISK"] = "1000t"
    status, lines = run_doctor(environ)
    assert status == 1 and failed(lines) == ["disk"]
    assert "below MIN_FREE_DISK (1000.0 TiB): builds will not start" in lines["disk"]


def test_a_base_image_missing_from_the_engine_is_named(environ, data_dir):
    """A FROM image of a recent build that the engine lacks is named, with what to do."""
    (data_dir / "logs").mkdir()
    (data_dir / "logs" / "1.log").write_text(
        "Step 1/4 : FROM slipway-doctor-missing-base:1 AS deps\n"
        "Step 2/4 : FROM python:3.11-slim\n"
        "Step 3/4 : COPY --from=deps /x /x\n"
        "Step 4/4 : FROM deps\n")
    status, lines = run_doctor(environ)
    assert status == 1 and failed(lines) == ["base images"]
    assert lines["base images"].startswith(
        "FAIL  base images: slipway-doctor-missing-base:1 (FROM in recent builds) is not in "
        "the Docker engine")
    assert "python:3.11-slim" not in lines["base images"]


def test_an_unwritable_data_dir_is_named(environ, tmp_path):
    """DATA_DIR under a plain file cannot be written; its line says what to do."""
    (tmp_path / "a-file").write_text("")
    environ["DATA_DIR"] = str(tmp_path / "a-file" / "data")
    status, lines = run_doctor(environ)
    assert "data dir" in failed(lines) and status == 1
    assert lines["data dir"].startswith(
        f"FAIL  data dir: DATA_DIR {tmp_path}/a-file/data cannot be written (")


def test_nothing_at_public_url_fails_the_public_url_line(environ):
    """PUBLIC_URL where no Slipway answers: the line says to start it or fix the URL."""
    environ["PUBLIC_URL"] = f"http://127.0.0.1:{closed_port()}"
    status, lines = run_doctor(environ)
    assert status == 1 and failed(lines) == ["public url"]
    assert "Nothing answers at " in lines["public url"]
    assert "not tried against Slipway: nothing answers at PUBLIC_URL" in lines["webhook secret"]


def test_a_half_given_app_fails_configuration_and_skips_the_app_parts(environ):
    """A configuration Slipway would refuse: its one line, and the parts needing it skipped."""
    del environ["GITHUB_PRIVATE_KEY_PATH"]
    status, lines = run_doctor(environ)
    assert status == 1
    assert lines["configuration"].startswith(
        "FAIL  configuration: The App is half configured: GITHUB_PRIVATE_KEY_PATH (or "
        "GITHUB_PRIVATE_KEY) is not set")
    assert lines["app"] == "skip  app: needs a valid configuration (see above)"
    assert failed(lines)[:5] == ["configuration", "app", "installations", "owners",
                                 "webhook secret"]


def test_the_last_sweep_and_the_deliveries_that_failed_in_the_window_are_shown(
        environ, slipway, fake_github):
    """A merge GitHub could not deliver: the redelivery line counts it and the request made."""
    fake_github.deliveries.record("pull_request", merged_pull_request(), status_code=0)
    fake_github.deliveries.record("ping", {"zen": "Approachable is better."}, status_code=200)
    sweep(slipway)
    status, lines = run_doctor(environ)
    assert status == 0, lines
    assert lines["redelivery"].startswith("ok    redelivery: last sweep ")
    assert lines["redelivery"].endswith(
        "s ago: read 2 deliveries on 1 page(s); 1 failed delivery in the last 24 h; "
        "1 redelivery(ies) asked for, 0 pending, 0 already received")


def test_a_sweep_that_could_not_read_the_log_fails_the_redelivery_line(
        environ, slipway, fake_github):
    fake_github.fail_next("GET", r"^/app/hook/deliveries$", 502, times=10)
    sweep(slipway)
    status, lines = run_doctor(environ)
    assert status == 1 and failed(lines) == ["redelivery"]
    assert "1 error(s): GitHub answered 502 for GET /app/hook/deliveries" in lines["redelivery"]
    assert "Slipway sweeps again every 300 s" in lines["redelivery"]


def test_redelivery_off_is_said_with_what_it_costs(environ):
    environ["REDELIVER_INTERVAL"] = "0"
    status, lines = run_doctor(environ)
    assert status == 0
    assert "until someone presses Redeliver in the App's settings" in lines["redelivery"]


def test_adding_a_check_is_one_function():
    """A helper adds a part with @check; it runs in order and its Problem is a FAIL line."""
    added = []

    @doctor.check("example")
    def example(d):
        raise doctor.Problem("the example is broken; fix it")

    try:
        results = doctor.run_checks(doctor.Doctor({}), [doctor.CHECKS[-1]])
        added = [r.line for r in results]
    finally:
        doctor.CHECKS.pop()
    assert added == ["FAIL  example: the example is broken; fix it"]


def test_a_database_url_that_answers_passes_and_one_that_does_not_says_what_to_check(
        environ, postgres_url):
    """DATABASE_URL is checked: a reachable PostgreSQL passes (no password printed); a wrong
    password fails the database line only, saying what to check."""
    environ["DATABASE_URL"] = postgres_url
    status, lines = run_doctor(environ)
    assert "PostgreSQL 1" in lines["database"] and "answers and takes writes" in lines["database"]
    assert lines["database"].startswith("ok ")
    assert ":slipway@" not in lines["database"]

    environ["DATABASE_URL"] = postgres_url.replace("slipway:slipway@", "slipway:wrong-pass@")
    status, lines = run_doctor(environ)
    assert status == 1
    assert failed(lines) == ["database"]
    assert "check that PostgreSQL is up and that DATABASE_URL names it" in lines["database"]
    assert "wrong-pass" not in lines["database"]


def test_github_signing_with_another_secret_fails_the_secret_line(environ, fake_github, slipway):
    """GitHub's delivery log shows Slipway answering 401: the App's secret and Slipway's
    differ, though Slipway and this environment agree; the line says to set the same."""
    from tests.payloads import load_event

    fake_github.webhook_url = f"{slipway.url}/webhook"
    fake_github.webhook_secret = "the secret typed into the App's settings"
    fake_github.send_webhook("ping", load_event("ping"))
    status, lines = run_doctor(environ)
    assert status == 1 and failed(lines) == ["webhook secret"]
    assert lines["webhook secret"].startswith("FAIL  webhook secret: GitHub's latest delivery "
                                              "(ping, ")
    assert "was refused with 401: the App's webhook secret and GITHUB_WEBHOOK_SECRET " \
           "differ" in lines["webhook secret"]

    fake_github.webhook_secret = SECRET
    fake_github.send_webhook("ping", load_event("ping"))
    status, lines = run_doctor(environ)
    assert status == 0, lines
    assert "GitHub's latest delivery was answered 200" in lines["webhook secret"]


def test_owners_lists_each_installation_and_names_those_not_allowed(environ, fake_github):
    """An installation on an account outside ALLOWED_OWNERS is listed as ignored."""
    fake_github.add_installation(account="mallory")
    status, lines = run_doctor(environ)
    assert status == 0, lines
    assert lines["owners"] == ("ok    owners: octo-org (built), mallory (NOT allowed: ignored); "
                               "ALLOWED_OWNERS=octo-org")


def test_owners_fails_when_no_installation_may_build(environ, fake_github):
    """Without ALLOWED_OWNERS only the App's owner builds; installed elsewhere only: FAIL."""
    del environ["ALLOWED_OWNERS"]
    status, lines = run_doctor(environ)
    assert status == 1 and failed(lines) == ["owners"]
    assert lines["owners"].startswith(
        f"FAIL  owners: octo-org (NOT allowed: ignored); ALLOWED_OWNERS unset: only the App's "
        f"owner {fake_github.app_owner}, so nothing is ever built: add the accounts")
