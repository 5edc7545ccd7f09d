"""Config.from_env: every variable of DESIGN.md, one clear line per bad value, no secret leaks."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from github_app.config import Config
from github_app.errors import ConfigError

SECRET = "webhook-secret-do-not-print"


@pytest.fixture(scope="module")
def rsa_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    # GitHub hands out PKCS#1 ("BEGIN RSA PRIVATE KEY") files.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


@pytest.fixture
def environ(rsa_pem) -> dict[str, str]:
    return {
        "GITHUB_APP_ID": "12345",
        "GITHUB_PRIVATE_KEY": rsa_pem.decode(),
        "GITHUB_WEBHOOK_SECRET": SECRET,
    }


def error_for(environ: dict[str, str], **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        Config.from_env(environ, **kwargs)
    return info.value


def test_defaults_match_the_design(environ):
    """Only the three App values are required; everything else has DESIGN.md's default."""
    config = Config.from_env(environ)
    assert config.app_id == "12345"
    assert config.webhook_secret == SECRET
    assert config.webhook_secret_previous is None
    assert config.api_url == "https://api.github.com"
    assert config.target_branch == "develop"
    assert config.registry == "localhost:5000"
    assert config.registry_username is None and config.registry_password is None
    assert config.public_url == "http://localhost:8080"
    assert config.data_dir == Path("data")
    assert config.build_network is None
    assert config.port == 8080
    assert config.worker_threads == 2
    assert config.log_level == "INFO"
    assert config.has_app_credentials
    assert config.webhook_secrets == (SECRET,)


def test_every_variable_is_read(environ, tmp_path):
    """Each variable of the table lands in its field, URLs without a trailing slash."""
    environ.update(
        GITHUB_WEBHOOK_SECRET_PREVIOUS="old-secret",
        GITHUB_API_URL="https://ghe.example.com/api/v3/",
        TARGET_BRANCH="main",
        REGISTRY="registry.example.com:5000",
        REGISTRY_USERNAME="ci",
        REGISTRY_PASSWORD="registry-pass",
        PUBLIC_URL="https://slipway.example.com/",
        DATA_DIR=str(tmp_path),
        BUILD_NETWORK="host",
        DOCKER_HOST="unix:///var/run/docker.sock",
        PORT="9000",
        WORKER_THREADS="4",
        LOG_LEVEL="debug",
    )
    config = Config.from_env(environ)
    assert config.api_url == "https://ghe.example.com/api/v3"
    assert config.public_url == "https://slipway.example.com"
    assert config.target_branch == "main"
    assert config.registry == "registry.example.com:5000"
    assert (config.registry_username, config.registry_password) == ("ci", "registry-pass")
    assert config.data_dir == tmp_path
    assert config.build_network == "host"
    assert config.docker_host == "unix:///var/run/docker.sock"
    assert (config.port, config.worker_threads, config.log_level) == (9000, 4, "DEBUG")
    assert config.webhook_secrets == (SECRET, "old-secret")


def test_secrets_never_appear_in_repr_or_str(environ):
    """repr() and str() of a Config hold no secret, so logging it is safe."""
    environ.update(GITHUB_WEBHOOK_SECRET_PREVIOUS="old-secret", REGISTRY_USERNAME="ci",
                   REGISTRY_PASSWORD="registry-pass")
    config = Config.from_env(environ)
    for text in (repr(config), str(config)):
        assert SECRET not in text
        assert "old-secret" not in text
        assert "registry-pass" not in text
        assert "PRIVATE KEY" not in text
        assert "12345" in text


@pytest.mark.parametrize(
    ("variable", "words"),
    [
        ("GITHUB_APP_ID", "settings page"),
        ("GITHUB_WEBHOOK_SECRET", "webhook secret"),
        ("GITHUB_PRIVATE_KEY", "GITHUB_PRIVATE_KEY_PATH is not set"),
    ],
)
def test_a_missing_app_value_names_the_variable(environ, variable, words):
    """A missing required value stops start-up with one line naming it and what it is."""
    del environ[variable]
    error = error_for(environ)
    message = str(error)
    assert "\n" not in message
    assert error.variable in message
    assert words in message


def test_a_blank_value_counts_as_missing(environ):
    """GITHUB_APP_ID set to blanks (a common .env slip) is reported as not set."""
    environ["GITHUB_APP_ID"] = "  "
    assert str(error_for(environ)).startswith("GITHUB_APP_ID is not set: ")


def test_setup_mode_starts_without_app_credentials():
    """require_app=False lets Slipway start for its setup page with no App values."""
    config = Config.from_env({}, require_app=False)
    assert config.app_id is None and config.private_key is None and config.webhook_secret is None
    assert not config.has_app_credentials
    assert config.webhook_secrets == ()


def test_setup_mode_still_checks_values_that_are_given():
    """A malformed App id is reported even when the App values are optional."""
    error = error_for({"GITHUB_APP_ID": "my-app"}, require_app=False)
    assert error.variable == "GITHUB_APP_ID"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GITHUB_APP_ID", "abc"),
        ("GITHUB_APP_ID", "12.5"),
        ("PORT", "http"),
        ("PORT", "0"),
        ("PORT", "65536"),
        ("WORKER_THREADS", "-1"),
        ("GITHUB_API_URL", "api.github.com"),
        ("GITHUB_API_URL", "ftp://api.github.com"),
        ("PUBLIC_URL", "localhost:8080"),
        ("TARGET_BRANCH", "refs/heads/develop"),
        ("REGISTRY", "http://localhost:5000"),
        ("LOG_LEVEL", "loud"),
        ("BUILD_TIMEOUT", "30m"),
        ("BUILD_TIMEOUT", "0"),
        ("BUILD_TIMEOUT_MAX", "-1"),
        ("BUILD_MEMORY", "lots"),
        ("BUILD_MEMORY", "1m"),
    ],
)
def test_a_malformed_value_is_named_with_the_fix(environ, variable, value):
    """A malformed value raises one line that names the variable and the expected form."""
    environ[variable] = value
    error = error_for(environ)
    assert error.variable == variable
    message = str(error)
    assert message.startswith(variable)
    assert "\n" not in message
    assert "must be" in message


def test_build_limits_default_to_the_design_and_are_read(environ):
    """BUILD_TIMEOUT 1800 s, BUILD_TIMEOUT_MAX 7200 s, BUILD_MEMORY 4g; each variable is read."""
    config = Config.from_env(environ)
    assert (config.build_timeout, config.build_timeout_max) == (1800, 7200)
    assert config.build_memory == 4 * 1024**3
    environ.update(BUILD_TIMEOUT="600", BUILD_TIMEOUT_MAX="900", BUILD_MEMORY="512m")
    config = Config.from_env(environ)
    assert (config.build_timeout, config.build_timeout_max) == (600, 900)
    assert config.build_memory == 512 * 1024**2


def test_a_build_timeout_over_its_maximum_is_refused(environ):
    environ.update(BUILD_TIMEOUT="9000")
    error = error_for(environ)
    assert error.variable == "BUILD_TIMEOUT" and "BUILD_TIMEOUT_MAX" in str(error)


def test_docker_engine_settings_are_read_here(environ):
    """DOCKER_HOST, DOCKER_API_VERSION, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH: the engine's."""
    environ.update(DOCKER_HOST="tcp://10.0.0.5:2376", DOCKER_API_VERSION="1.41",
                   DOCKER_TLS_VERIFY="1", DOCKER_CERT_PATH="/etc/docker/certs")
    engine = Config.from_env(environ).engine
    assert (engine.host, engine.api_version) == ("tcp://10.0.0.5:2376", "1.41")
    assert (engine.tls_verify, engine.cert_path) == (True, "/etc/docker/certs")
    assert engine.environment() == {"DOCKER_HOST": "tcp://10.0.0.5:2376",
                                    "DOCKER_TLS_VERIFY": "1",
                                    "DOCKER_CERT_PATH": "/etc/docker/certs"}


def test_registry_credentials_come_in_pairs(environ):
    """A username without a password names the missing one."""
    environ["REGISTRY_USERNAME"] = "ci"
    error = error_for(environ)
    assert error.variable == "REGISTRY_PASSWORD"


class TestPrivateKey:
    def test_key_from_a_file(self, environ, rsa_pem, tmp_path):
        """GITHUB_PRIVATE_KEY_PATH names the .pem file GitHub generated."""
        path = tmp_path / "app.pem"
        path.write_bytes(rsa_pem)
        del environ["GITHUB_PRIVATE_KEY"]
        environ["GITHUB_PRIVATE_KEY_PATH"] = str(path)
        assert Config.from_env(environ).private_key == rsa_pem

    def test_key_with_escaped_newlines(self, environ, rsa_pem):
        """A one-line key with literal \\n escapes (as .env files hold it) is accepted."""
        environ["GITHUB_PRIVATE_KEY"] = rsa_pem.decode().replace("\n", "\\n")
        loaded = Config.from_env(environ).private_key
        assert serialization.load_pem_private_key(loaded, None).key_size == 2048

    def test_key_in_base64(self, environ, rsa_pem):
        """Base64 of the .pem file is accepted."""
        environ["GITHUB_PRIVATE_KEY"] = base64.b64encode(rsa_pem).decode()
        assert Config.from_env(environ).private_key == rsa_pem

    def test_missing_file(self, environ, tmp_path):
        """A path that does not exist is named, with the fix."""
        del environ["GITHUB_PRIVATE_KEY"]
        environ["GITHUB_PRIVATE_KEY_PATH"] = str(tmp_path / "nope.pem")
        error = error_for(environ)
        assert error.variable == "GITHUB_PRIVATE_KEY_PATH"
        assert "nope.pem" in str(error)

    def test_garbage_is_refused_without_echoing_it(self, environ):
        """A value that is no key is refused, and the message does not repeat it."""
        environ["GITHUB_PRIVATE_KEY"] = "hunter2-not-a-key"
        error = error_for(environ)
        assert error.variable == "GITHUB_PRIVATE_KEY"
        assert "hunter2" not in str(error)

    def test_broken_pem_is_refused_without_echoing_it(self, environ, rsa_pem):
        """A damaged PEM is refused; no line of it reaches the message."""
        lines = rsa_pem.decode().splitlines()
        environ["GITHUB_PRIVATE_KEY"] = "\n".join(lines[:3] + lines[-1:])
        error = error_for(environ)
        assert "readable PEM private key" in str(error)
        assert lines[1] not in str(error)

    def test_a_non_rsa_key_is_refused(self, environ):
        """GitHub Apps sign with RS256, so an EC key is refused with that reason."""
        key = ec.generate_private_key(ec.SECP256R1())
        environ["GITHUB_PRIVATE_KEY"] = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        assert "not RSA" in str(error_for(environ))

    def test_an_encrypted_key_is_refused(self, environ):
        """A passphrase-protected key is refused with that reason."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        environ["GITHUB_PRIVATE_KEY"] = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass"),
        ).decode()
        assert "passphrase" in str(error_for(environ))

    def test_both_sources_set_is_ambiguous(self, environ, tmp_path):
        """Setting both the path and the key asks to keep only one."""
        environ["GITHUB_PRIVATE_KEY_PATH"] = str(tmp_path / "app.pem")
        assert "keep only one" in str(error_for(environ))


def test_operating_bounds_have_the_design_defaults(environ):
    """MIN_FREE_DISK, RETENTION_DAYS, KEEP_IMAGES, STOP_GRACE, LEASE_SECONDS: DESIGN.md defaults."""
    config = Config.from_env(environ)
    assert config.min_free_disk == 2 * 1024**3
    assert (config.retention_days, config.keep_images) == (30, 3)
    assert (config.stop_grace, config.lease_seconds) == (25, 60)


def test_operating_bounds_are_read(environ):
    """Sizes are written as Docker writes them; each bound lands in its field."""
    environ.update(MIN_FREE_DISK="512m", RETENTION_DAYS="7", KEEP_IMAGES="0",
                   STOP_GRACE="5", LEASE_SECONDS="20")
    config = Config.from_env(environ)
    assert config.min_free_disk == 512 * 1024**2
    assert (config.retention_days, config.keep_images) == (7, 0)
    assert (config.stop_grace, config.lease_seconds) == (5, 20)
    environ["MIN_FREE_DISK"] = "1.5G"
    assert Config.from_env(environ).min_free_disk == int(1.5 * 1024**3)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("MIN_FREE_DISK", "lots"), ("MIN_FREE_DISK", "-1g"), ("RETENTION_DAYS", "0"),
     ("KEEP_IMAGES", "three"), ("STOP_GRACE", "-5"), ("LEASE_SECONDS", "1")],
)
def test_a_malformed_bound_is_named(environ, variable, value):
    """A bad operating bound stops start-up with one line naming it and the value given."""
    environ[variable] = value
    error = error_for(environ)
    assert error.variable == variable
    assert variable in str(error) and repr(value) in str(error) and "\n" not in str(error)


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        (("GITHUB_APP_ID",), ("GITHUB_PRIVATE_KEY_PATH", "GITHUB_WEBHOOK_SECRET")),
        (("GITHUB_APP_ID", "GITHUB_WEBHOOK_SECRET"), ("GITHUB_PRIVATE_KEY_PATH",)),
        (("GITHUB_PRIVATE_KEY", "GITHUB_WEBHOOK_SECRET"), ("GITHUB_APP_ID",)),
        (("GITHUB_WEBHOOK_SECRET",), ("GITHUB_APP_ID", "GITHUB_PRIVATE_KEY_PATH")),
    ],
)
def test_a_half_given_app_is_refused_even_in_setup_mode(environ, given, missing):
    """Some of id, key and secret set, not all: one line naming what is missing, not setup mode."""
    partial = {name: environ[name] for name in given}
    error = error_for(partial, require_app=False)
    message = str(error)
    assert "\n" not in message and message.startswith("The App is half configured: ")
    named_missing = message.split(" not set")[0]
    for name in missing:
        assert name in named_missing
    assert error.variable == missing[0]
    assert SECRET not in message and "PRIVATE KEY-----" not in message


def test_serve_with_a_half_given_app_exits_with_one_line(environ, tmp_path):
    """`python -m github_app serve` with a half-given App exits 2, naming what is missing."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("GITHUB_")}
    env.update(GITHUB_APP_ID="12345", GITHUB_WEBHOOK_SECRET=SECRET, DATA_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "github_app", "serve", "--host", "127.0.0.1"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines == [
        "slipway: The App is half configured: GITHUB_PRIVATE_KEY_PATH (or GITHUB_PRIVATE_KEY) "
        "is not set but GITHUB_APP_ID and GITHUB_WEBHOOK_SECRET are; set all three (from the "
        "App's settings), or none of them to start in setup mode."
    ]


def test_floating_tags_default_to_major_minor_latest_and_empty_means_none(environ):
    """FLOATING_TAGS: unset moves major, minor and latest; empty moves none; a subset is kept."""
    assert Config.from_env(environ).floating_tags == ("major", "minor", "latest")
    assert Config.from_env({**environ, "FLOATING_TAGS": ""}).floating_tags == ()
    assert Config.from_env({**environ, "FLOATING_TAGS": " Latest, minor"}).floating_tags \
        == ("latest", "minor")


def test_an_unknown_floating_tag_is_named_with_the_choices(environ):
    """FLOATING_TAGS=patch fails start-up with one line naming the variable and the choices."""
    error = error_for({**environ, "FLOATING_TAGS": "major,patch"})
    assert error.variable == "FLOATING_TAGS"
    assert "'patch'" in str(error) and "major, minor, latest" in str(error)


def test_database_url_selects_postgresql_and_stays_out_of_repr(environ):
    """DATABASE_URL is read as given and, since it may hold a password, never shown."""
    assert Config.from_env(environ).database_url is None
    environ["DATABASE_URL"] = "postgresql://slipway:db-pass@db.example:5432/slipway"
    config = Config.from_env(environ)
    assert config.database_url == "postgresql://slipway:db-pass@db.example:5432/slipway"
    assert "db-pass" not in repr(config)


def test_a_database_url_that_is_not_postgresql_says_what_is_expected(environ):
    """A MySQL or SQLite URL is refused with the form expected, never echoing the value."""
    environ["DATABASE_URL"] = "mysql://root:hunter22@db/slipway"
    error = error_for(environ)
    assert error.variable == "DATABASE_URL"
    assert "postgresql://USER:PASSWORD@HOST:PORT/DB" in str(error)
    assert "hunter22" not in str(error)


def test_redelivery_sweeps_every_5_minutes_over_24_hours_by_default(environ):
    """REDELIVER_INTERVAL and REDELIVER_WINDOW: DESIGN.md's 300 s and 24 h."""
    config = Config.from_env(environ)
    assert (config.redeliver_interval, config.redeliver_window) == (300, 24)
    assert config.redeliver_enabled


@pytest.mark.parametrize("variable", ["REDELIVER_INTERVAL", "REDELIVER_WINDOW"])
def test_redelivery_0_means_never(environ, variable):
    environ[variable] = "0"
    assert not Config.from_env(environ).redeliver_enabled


@pytest.mark.parametrize(("variable", "value"), [("REDELIVER_INTERVAL", "5m"),
                                                 ("REDELIVER_INTERVAL", "-1"),
                                                 ("REDELIVER_WINDOW", "73")])
def test_a_malformed_redelivery_setting_is_named(environ, variable, value):
    """A window past GitHub's three days of log, or a non-number, stops start-up with one line."""
    environ[variable] = value
    error = error_for(environ)
    assert error.variable == variable
    assert repr(value) in str(error) and "\n" not in str(error)
