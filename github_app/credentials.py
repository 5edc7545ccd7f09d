"""The App's credentials as the manifest setup stored them: DATA_DIR/app-credentials.json,
or, with a shared store (DATABASE_URL), the store's `settings`, so every node has them.

`save(data_dir, conversion)` writes what GitHub's manifest conversion answered
(`POST /app-manifests/{code}/conversions`) to a file that is mode 0600 from the
moment it exists and is never overwritten; `load(data_dir)` reads it back;
`apply(config, stored)` fills a `Config` whose environment had no App
credentials. The environment always wins: a stored App is used only when none
of GITHUB_APP_ID, the private key and GITHUB_WEBHOOK_SECRET is set.

Disk only, no network. The secrets (pem, webhook_secret, client_secret) go to
the file and to `Config`, never to a log line or an error message.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from github_app.config import Config
from github_app.errors import ConfigError

FILENAME = "app-credentials.json"
SETTING = "app-credentials"  # the name of the setting that holds them in a shared store
# What is kept of the conversion answer: enough to sign JWTs, verify deliveries
# and link to the App. `owner` is reduced to its login.
KEPT_FIELDS = ("id", "slug", "name", "html_url", "client_id", "client_secret",
               "webhook_secret", "pem")
REQUIRED_FIELDS = ("id", "pem", "webhook_secret")


class CredentialsExist(FileExistsError):
    """Credentials are already stored; setup never replaces them."""


def credentials_path(data_dir: Path | str) -> Path:
    """Where the stored App credentials live."""
    return Path(data_dir) / FILENAME


def where(data_dir: Path | str, store=None) -> str:
    """Where the credentials live, for a log line: the file, or the shared store."""
    return f"the store's settings ({store.path})" if store is not None else str(
        credentials_path(data_dir))


def save(data_dir: Path | str, conversion: Mapping[str, Any], *, now: float | None = None,
         store=None) -> dict:
    """Store a manifest conversion in DATA_DIR with mode 0600; return what was stored.

    With ``store`` (a shared store: DATABASE_URL), in its settings instead.
    Raises `CredentialsExist` when some are already there, `ConfigError` when
    the conversion lacks the id, key or webhook secret.
    """
    stored = {name: conversion.get(name) for name in KEPT_FIELDS}
    owner = conversion.get("owner") or {}
    stored["owner"] = owner.get("login") if isinstance(owner, Mapping) else None
    stored["created_at"] = int(time.time() if now is None else now)
    _check(stored, source="GitHub's answer to the manifest conversion")
    if store is not None:
        # One INSERT decides: two nodes finishing setup at once keep the first App.
        if not store.put_setting_once(SETTING, json.dumps(stored)):
            raise CredentialsExist(f"{where(data_dir, store)} already hold an App's credentials.")
        return stored
    path = credentials_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = (json.dumps(stored, indent=2) + "\n").encode()
    # Written to a private temporary file, then linked into place: the file is
    # 0600 from its first byte (umask can only remove bits) and a second setup
    # finishing at the same moment cannot replace the first one's App.
    temporary = path.with_name(f".{FILENAME}.{os.getpid()}.{time.monotonic_ns()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(body)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            raise CredentialsExist(f"{path} already holds an App's credentials.") from None
    finally:
        temporary.unlink(missing_ok=True)
    return stored


def load(data_dir: Path | str, *, store=None) -> dict | None:
    """The stored credentials, or None when setup has not stored any.

    With ``store`` (a shared store), read from its settings. Raises
    `ConfigError` when they exist but cannot be used.
    """
    if store is not None:
        text = store.get_setting(SETTING)
        if text is None:
            return None
        return _parsed(text, source=where(data_dir, store))
    path = credentials_path(data_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(
            f"{path} cannot be read ({exc.strerror or exc}): the App credentials stored by "
            "setup must be readable by the user Slipway runs as.",
            variable="DATA_DIR",
        ) from None
    return _parsed(text, source=str(path))


def _parsed(text: str, *, source: str) -> dict:
    try:
        stored = json.loads(text)
    except ValueError:
        stored = None
    if not isinstance(stored, dict):
        raise ConfigError(
            f"{source} is not the JSON that setup writes: remove it and open /setup again, or "
            "set GITHUB_APP_ID, GITHUB_PRIVATE_KEY_PATH and GITHUB_WEBHOOK_SECRET.",
            variable="DATA_DIR",
        )
    _check(stored, source=source)
    return stored


def apply(config: Config, stored: Mapping[str, Any] | None) -> Config:
    """`config` with the stored App id, key and webhook secret, unless the environment set any;
    and with the stored OAuth client of that App, unless GITHUB_CLIENT_ID is set."""
    if stored is None:
        return config
    if not _has_any_app_value(config):
        config = dataclasses.replace(
            config,
            app_id=str(stored["id"]),
            private_key=stored["pem"].encode(),
            webhook_secret=stored["webhook_secret"],
        )
    client_id, client_secret = stored.get("client_id"), stored.get("client_secret")
    if (config.github_client_id is None and str(stored["id"]) == str(config.app_id)
            and isinstance(client_id, str) and client_id
            and isinstance(client_secret, str) and client_secret):
        config = dataclasses.replace(
            config, github_client_id=client_id, github_client_secret=client_secret
        )
    return config


def stored_owner(config: Config) -> str | None:
    """The account that owns the App, as the manifest setup stored it, when `config` uses it."""
    try:
        stored = load(config.data_dir)
    except ConfigError:
        return None
    if stored is None or str(stored.get("id")) != str(config.app_id):
        return None
    owner = stored.get("owner")
    return owner if isinstance(owner, str) and owner else None


def public_view(stored: Mapping[str, Any]) -> dict:
    """What a page may show of the stored App: no key, no secret."""
    return {name: stored.get(name) for name in ("id", "slug", "name", "html_url", "owner",
                                                "client_id", "created_at")}


def _has_any_app_value(config: Config) -> bool:
    return any(value is not None for value in
               (config.app_id, config.private_key, config.webhook_secret))


def _check(stored: Mapping[str, Any], *, source: str) -> None:
    missing = [name for name in REQUIRED_FIELDS if not stored.get(name)]
    if missing:
        raise ConfigError(
            f"{source} has no {', '.join(missing)}: create the App again from /setup, or set "
            "GITHUB_APP_ID, GITHUB_PRIVATE_KEY_PATH and GITHUB_WEBHOOK_SECRET.",
            variable="DATA_DIR",
        )
    app_id = str(stored["id"])
    if not (app_id.isascii() and app_id.isdigit()):
        raise ConfigError(f"{source}: the App id is not a number.", variable="DATA_DIR")
    if not isinstance(stored["pem"], str) or not isinstance(stored["webhook_secret"], str):
        raise ConfigError(f"{source}: the key and webhook secret must be text.",
                          variable="DATA_DIR")
    try:
        key = serialization.load_pem_private_key(stored["pem"].encode(), password=None)
    except (TypeError, ValueError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(
            f"{source} does not hold a readable RSA private key: create the App again from "
            "/setup, or set GITHUB_PRIVATE_KEY_PATH to the App's .pem file.",
            variable="DATA_DIR",
        )
