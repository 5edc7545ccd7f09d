"""Structured logs: one JSON object a line, never holding a secret.

Each line has `time` (UTC, ISO 8601), `level`, `logger` and `message`, plus the
`delivery_id`, `job_id` and `build_id` bound in the current context (see
`bound`), the fields passed with `extra=` and, on errors, the `exception`.

Secrets are removed in two places: `RedactingFilter` rewrites the record before
any handler formats it, and `JsonFormatter` redacts every string it writes, so
a value that reaches the line through `extra=` or a traceback is caught too.
What counts as a secret: the configured values (the webhook secrets, the
private key, the registry password: the `Config` fields declared with
`repr=False`) and anything that looks like one: GitHub tokens (`ghs_...`,
`ghp_...`, `github_pat_...`), JWTs, PEM private keys, the value of an
`Authorization` header."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

REDACTED = "[REDACTED]"

# Shorter configured values would redact ordinary words all over the logs.
MIN_SECRET_LENGTH = 4

_CONTEXT: dict[str, ContextVar[str | None]] = {
    name: ContextVar(name, default=None) for name in ("delivery_id", "job_id", "build_id")
}

_PATTERNS = [
    # PEM private keys, with real newlines or `\n` escapes between the lines.
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.DOTALL),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[^\s\"']*"),
    # GitHub tokens: https://github.blog/2021-04-05-behind-githubs-new-authentication-token-formats/
    re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9_]{16,}|github_pat_[A-Za-z0-9_]{22,})"),
    # JWTs: three base64url parts, the first one a JSON object ("eyJ" is '{"').
    re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"),
    # The value of an Authorization header, however it was printed.
    re.compile(
        r"""(?i)(?<=authorization)(["']?\s*[:=]\s*["']?)(?:(?:bearer|token|basic)\s+)?[^\s"',}]+"""
    ),
    # The webhook signature is derived from the secret; keep it out too.
    re.compile(r"\bsha(?:1|256)=[0-9a-f]{40,64}\b"),
]

# Keys of structured fields (`extra=`, header dicts) whose values are secrets.
_SECRET_KEY = re.compile(r"(?i)authorization|token|secret|password|private_key|^cookie$")


class Redactor:
    """Removes configured secret values and secret-looking strings from text."""

    def __init__(self, secrets: Iterable[str | None] = ()):
        self._values: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str | None]) -> None:
        """Redact these values too (secrets that became known after start-up)."""
        values = {s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}
        # A PEM key may be logged with its newlines escaped; catch both spellings.
        values |= {s.replace("\n", "\\n") for s in values if "\n" in s}
        self._values = sorted(set(self._values) | values, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for value in self._values:
            text = text.replace(value, REDACTED)
        for pattern in _PATTERNS:
            if pattern.groups:
                text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
            else:
                text = pattern.sub(REDACTED, text)
        return text

    def redact_value(self, value: Any) -> Any:
        """Redact strings, and strings inside lists, tuples and dicts."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {
                k: REDACTED if _SECRET_KEY.search(str(k)) and v else self.redact_value(v)
                for k, v in value.items()
            }
        if isinstance(value, (list, tuple)):
            return [self.redact_value(v) for v in value]
        return value


def secrets_from_config(config: Any) -> list[str]:
    """The values of the Config fields declared with `repr=False`: its secrets."""
    if config is None or not dataclasses.is_dataclass(config):
        return []
    values = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name, None)
        if not f.repr and isinstance(value, str | bytes):
            values.append(value.decode() if isinstance(value, bytes) else value)
    return values


class RedactingFilter(logging.Filter):
    """Rewrites each record so that no handler can print a secret."""

    def __init__(self, redactor: Redactor):
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not lose the record
            message = f"{record.msg!r} {record.args!r}"
        record.msg = self.redactor.redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor.redact(record.exc_text)
            record.exc_info = None  # formatters would print the raw traceback again
        return True


# Attributes every LogRecord has; anything else came from `extra=`.
_RECORD_ATTRIBUTES = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, context, extras."""

    def __init__(self, redactor: Redactor | None = None):
        super().__init__()
        self.redactor = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, var in _CONTEXT.items():
            value = getattr(record, name, None) or var.get()
            if value is not None:
                entry[name] = value
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and key not in entry:
                entry[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        entry = self.redactor.redact_value(entry)
        return json.dumps(entry, default=str, ensure_ascii=False)


@contextlib.contextmanager
def bound(
    *, delivery_id: str | None = None, job_id: Any = None, build_id: Any = None
) -> Iterator[None]:
    """Add these ids to every log line written inside the block (this thread or task only)."""
    tokens = []
    for name, value in (("delivery_id", delivery_id), ("job_id", job_id), ("build_id", build_id)):
        if value is not None:
            tokens.append((_CONTEXT[name], _CONTEXT[name].set(str(value))))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


_active_redactor: Redactor | None = None


def add_secrets(config: Any) -> None:
    """Keep the secrets of `config` out of the logs from now on (e.g. after /setup)."""
    if _active_redactor is not None:
        _active_redactor.add(secrets_from_config(config))


def configure_logging(
    *, level: str | int = "INFO", secrets: Iterable[str | None] = (), stream: IO[str] | None = None
) -> logging.Handler:
    """Send every log record of the process as a JSON line to `stream` (stderr by default).

    Replaces the root logger's handlers, so call it once at start-up. Returns the handler."""
    global _active_redactor
    redactor = _active_redactor = Redactor(secrets)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(redactor))
    handler.addFilter(RedactingFilter(redactor))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
