"""Structured logs: one JSON object a line, with the bound ids, and no secret ever."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field

import pytest

from github_app.logs import REDACTED, bound, configure_logging, secrets_from_config

WEBHOOK_SECRET = "s3cr3t-webhook-value-1234"
INSTALLATION_TOKEN = "ghs_16C7e42F292c6912E7710c838347Ae178B4a"
JWT = (
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJpc3MiOiIxMjM0NSIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjoxNzAwMDAwNjAwfQ"
    ".c2lnbmF0dXJlLWJ5dGVzLWhlcmUtbm90LXJlYWxseS1hLXNpZ25hdHVyZQ"
)
PRIVATE_KEY = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx1y2FAKEKEYMATERIALabcdef\n"
    "T0pS3cretLine2Zz\n-----END RSA PRIVATE KEY-----\n"
)


@pytest.fixture
def log_output():
    """Configure logging into a buffer; give back a function returning the parsed lines."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    configure_logging(level="DEBUG", secrets=[WEBHOOK_SECRET, PRIVATE_KEY], stream=stream)

    def lines() -> list[dict]:
        text = stream.getvalue()
        return [json.loads(line) for line in text.splitlines()]

    lines.raw = stream.getvalue
    yield lines
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved_handlers:
        root.addHandler(handler)
    root.setLevel(saved_level)


def test_every_line_is_a_json_object_with_time_level_logger_message(log_output):
    """Each record becomes one JSON line with time, level, logger and message."""
    logger = logging.getLogger("github_app.worker")
    logger.info("building %s", "orders")
    logger.warning("push slow\nsecond line of the message")

    first, second = log_output()
    assert first["level"] == "INFO"
    assert first["logger"] == "github_app.worker"
    assert first["message"] == "building orders"
    assert first["time"].endswith("+00:00") and "T" in first["time"]
    assert second["level"] == "WARNING"
    assert second["message"] == "push slow\nsecond line of the message"
    assert len(log_output.raw().splitlines()) == 2


def test_bound_ids_appear_on_lines_inside_the_block_only(log_output):
    """The delivery id, job id and build id are on the lines written while they are bound."""
    logger = logging.getLogger("github_app.views")
    with bound(delivery_id="72d3162e-cc78-11e3-81ab-4c9367dc0958", job_id=7):
        logger.info("accepted")
        with bound(build_id=12):
            logger.info("building")
    logger.info("after")

    accepted, building, after = log_output()
    assert accepted["delivery_id"] == "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    assert accepted["job_id"] == "7"
    assert "build_id" not in accepted
    assert building["job_id"] == "7" and building["build_id"] == "12"
    assert not {"delivery_id", "job_id", "build_id"} & set(after)


def test_no_secret_reaches_the_output_however_it_is_logged(log_output):
    """Configured secrets and token-like strings are redacted in messages, extras, tracebacks."""
    logger = logging.getLogger("github_app.github")
    logger.info("verifying with secret %s", WEBHOOK_SECRET)
    logger.info("token %s for installation 42", INSTALLATION_TOKEN)
    logger.info("app jwt=%s", JWT)
    logger.info("headers %s", {"Authorization": f"token {INSTALLATION_TOKEN}", "Accept": "json"})
    logger.info("Authorization: Bearer %s", "opaque-bearer-value-999")
    logger.info("loaded key %r", PRIVATE_KEY)
    logger.info("loaded key\n%s", PRIVATE_KEY)
    logger.info("request", extra={"headers": {"authorization": "Basic dXNlcjpwYXNz"}})
    logger.info("token", extra={"installation_token": "opaque-token-value-777"})
    logger.info("signature sha256=%s", "a" * 64)
    try:
        raise RuntimeError(f"GitHub refused token {INSTALLATION_TOKEN} and {WEBHOOK_SECRET}")
    except RuntimeError:
        logger.exception("call failed")

    output = log_output.raw()
    for secret in (
        WEBHOOK_SECRET,
        INSTALLATION_TOKEN,
        JWT,
        "opaque-bearer-value-999",
        "MIIEowIBAAKCAQEAx1y2FAKEKEYMATERIALabcdef",
        "T0pS3cretLine2Zz",
        "dXNlcjpwYXNz",
        "a" * 64,
        "opaque-token-value-777",
    ):
        assert secret not in output
        assert json.dumps(secret)[1:-1] not in output  # nor in its JSON-escaped spelling
    lines = log_output()
    assert len(lines) == 11
    assert lines[0]["message"] == f"verifying with secret {REDACTED}"
    assert lines[1]["message"] == f"token {REDACTED} for installation 42"
    assert "for installation 42" in lines[1]["message"]  # the rest stays readable
    assert lines[-1]["message"] == "call failed"
    assert "RuntimeError: GitHub refused token" in lines[-1]["exception"]


def test_secrets_come_from_the_config_fields_hidden_from_repr():
    """The Config fields declared repr=False are the values the filter redacts."""

    @dataclass(frozen=True)
    class Settings:
        app_id: str
        webhook_secret: str = field(repr=False)
        registry_password: str | None = field(default=None, repr=False)

    assert secrets_from_config(Settings("123", "hush-hush", None)) == ["hush-hush"]


def test_extra_fields_are_kept_as_json_values(log_output):
    """Fields passed with extra= land as keys of the JSON object."""
    logging.getLogger("github_app.views").info(
        "webhook", extra={"event": "pull_request", "outcome": "accepted", "status": 202}
    )
    (line,) = log_output()
    assert line["event"] == "pull_request"
    assert line["outcome"] == "accepted"
    assert line["status"] == 202
