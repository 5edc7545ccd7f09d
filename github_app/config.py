"""The App's configuration: read once from the environment, then passed down.

`Config.from_env(environ)` is the only reader of environment variables (the
table in DESIGN.md). A missing or malformed value raises `ConfigError` with one
line that names the variable and says what to do. Secrets (private key, webhook
secrets, registry password) never appear in `repr()` or `str()`, and no error
message echoes them. The only I/O is reading the file at GITHUB_PRIVATE_KEY_PATH.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from github_app.errors import ConfigError

DEFAULT_API_URL = "https://api.github.com"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FLOATING_KINDS = ("major", "minor", "latest")
# host[:port] or [ipv6][:port], optionally with a namespace path: registry.example.com/team
_REGISTRY = re.compile(
    r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\])(?::[0-9]{1,5})?(?:/[a-z0-9._-]+)*"
)


@dataclass(frozen=True)
class Config:
    """Everything Slipway needs to run; tests build it directly."""

    # The three App values are None only when started for setup (require_app=False).
    app_id: str | None = None
    private_key: bytes | None = field(default=None, repr=False)
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_secret_previous: str | None = field(default=None, repr=False)
    api_url: str = DEFAULT_API_URL
    target_branch: str = "develop"
    registry: str = "localhost:5000"
    registry_username: str | None = None
    registry_password: str | None = field(default=None, repr=False)
    public_url: str = "http://localhost:8080"
    data_dir: Path = Path("data")
    build_network: str | None = None
    docker_host: str | None = None
    docker_api_version: str | None = None
    docker_tls_verify: bool = False
    docker_cert_path: str | None = None
    port: int = 8080
    worker_threads: int = 2
    web_workers: int = 1
    web_threads: int = 4
    log_level: str = "INFO"
    min_free_disk: int = 2 * 1024**3  # bytes
    build_timeout: int = 1800  # seconds; a service's `timeout:` may differ, up to the max
    build_timeout_max: int = 7200
    build_memory: int = 4 * 1024**3  # bytes, every build step's container
    # Seconds a build waits, per registry call or push, for a registry that does not
    # answer (a restart) before it fails. Not in DESIGN's table: tests set it.
    registry_patience: float = 60.0
    retention_days: int = 30
    keep_images: int = 3
    stop_grace: int = 25  # seconds
    lease_seconds: int = 60
    # postgresql://user:password@host/db: one store shared by several machines.
    database_url: str | None = field(default=None, repr=False)
    floating_tags: tuple[str, ...] = ("major", "minor", "latest")
    # None: only the account that owns the App (learnt with GET /app); ("*",): any account.
    allowed_owners: tuple[str, ...] | None = None
    image_name: str = "{service}"
    github_client_id: str | None = None
    github_client_secret: str | None = field(default=None, repr=False)
    # Seconds between sweeps of the App's delivery log, and hours it reaches back (0: never).
    redeliver_interval: int = 300
    redeliver_window: int = 24

    @property
    def has_oauth_client(self) -> bool:
        """True when "Sign in with GitHub" can work: the App's OAuth client id and secret."""
        return bool(self.github_client_id and self.github_client_secret)

    @property
    def redeliver_enabled(self) -> bool:
        """True when Slipway asks GitHub for the deliveries it missed."""
        return self.redeliver_interval > 0 and self.redeliver_window > 0

    @property
    def has_app_credentials(self) -> bool:
        """True when the App id, private key and webhook secret are all known."""
        return bool(self.app_id and self.private_key and self.webhook_secret)

    @property
    def engine(self):
        """The Docker engine settings (`builder.EngineSettings`) the builds and checks use."""
        from builder.settings import EngineSettings

        return EngineSettings(host=self.docker_host, api_version=self.docker_api_version,
                              tls_verify=self.docker_tls_verify, cert_path=self.docker_cert_path)

    @property
    def webhook_secrets(self) -> tuple[str, ...]:
        """The secrets a delivery may be signed with: current first, then the previous one."""
        return tuple(s for s in (self.webhook_secret, self.webhook_secret_previous) if s)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], *, require_app: bool = True) -> Config:
        """Read and validate the configuration; raise `ConfigError` naming the first bad variable.

        With `require_app=False` the App id, private key and webhook secret may be
        missing (Slipway then serves its setup page); when given they are still checked.
        """
        env = _Environ(environ)
        app_id = env.get("GITHUB_APP_ID")
        if app_id is None:
            if require_app:
                raise _missing("GITHUB_APP_ID", "the App's id, shown on its settings page")
        elif not (app_id.isascii() and app_id.isdigit()):
            raise ConfigError(
                f"GITHUB_APP_ID must be a number (the App's id, shown on its settings page), "
                f"not {app_id!r}.",
                variable="GITHUB_APP_ID",
            )
        private_key = _private_key(env, require_app=require_app)
        webhook_secret = env.secret("GITHUB_WEBHOOK_SECRET")
        if webhook_secret is None and require_app:
            raise _missing(
                "GITHUB_WEBHOOK_SECRET",
                "the webhook secret entered in the App's settings (signs every delivery)",
            )
        if not require_app:
            _refuse_half_given_app(env)
        username = env.get("REGISTRY_USERNAME")
        password = env.secret("REGISTRY_PASSWORD")
        if (username is None) != (password is None):
            given, other = (
                ("REGISTRY_USERNAME", "REGISTRY_PASSWORD")
                if password is None
                else ("REGISTRY_PASSWORD", "REGISTRY_USERNAME")
            )
            raise ConfigError(
                f"{other} is not set but {given} is: set both for a registry that needs a "
                "login, or neither.",
                variable=other,
            )
        client_id = env.get("GITHUB_CLIENT_ID")
        client_secret = env.secret("GITHUB_CLIENT_SECRET")
        if (client_id is None) != (client_secret is None):
            given, other = (
                ("GITHUB_CLIENT_ID", "GITHUB_CLIENT_SECRET")
                if client_secret is None
                else ("GITHUB_CLIENT_SECRET", "GITHUB_CLIENT_ID")
            )
            raise ConfigError(
                f"{other} is not set but {given} is: set both (the App's OAuth client, shown "
                "on its settings page) for \"Sign in with GitHub\", or neither.",
                variable=other,
            )
        config = cls(
            app_id=app_id,
            private_key=private_key,
            webhook_secret=webhook_secret,
            webhook_secret_previous=env.secret("GITHUB_WEBHOOK_SECRET_PREVIOUS"),
            api_url=_http_url(env, "GITHUB_API_URL", DEFAULT_API_URL),
            target_branch=_target_branch(env),
            registry=_registry(env),
            registry_username=username,
            registry_password=password,
            public_url=_http_url(env, "PUBLIC_URL", "http://localhost:8080"),
            data_dir=Path(env.get("DATA_DIR", "data")),
            build_network=env.get("BUILD_NETWORK"),
            docker_host=env.get("DOCKER_HOST"),
            docker_api_version=env.get("DOCKER_API_VERSION"),
            # As the docker CLI reads it: set to anything but blank turns TLS on.
            docker_tls_verify=env.get("DOCKER_TLS_VERIFY") is not None,
            docker_cert_path=env.get("DOCKER_CERT_PATH"),
            port=_int(env, "PORT", 8080, low=1, high=65535, meaning="a TCP port"),
            worker_threads=_int(
                env, "WORKER_THREADS", 2, low=0, high=64,
                meaning="the number of builds run at once (0: serve only the web side)",
            ),
            web_workers=_int(
                env, "WEB_WORKERS", 1, low=1, high=64, meaning="the number of web processes"
            ),
            web_threads=_int(
                env, "WEB_THREADS", 4, low=1, high=256,
                meaning="the number of request threads per web process",
            ),
            log_level=_log_level(env),
            min_free_disk=_size(env, "MIN_FREE_DISK", "2g",
                                meaning="free disk a build needs before it starts"),
            build_timeout=_int(
                env, "BUILD_TIMEOUT", 1800, low=1, high=7 * 86400,
                meaning="seconds a build may take unless its service sets `timeout:`",
            ),
            build_timeout_max=_int(
                env, "BUILD_TIMEOUT_MAX", 7200, low=1, high=7 * 86400,
                meaning="the most seconds a service's `timeout:` may ask for",
            ),
            build_memory=_size(env, "BUILD_MEMORY", "4g",
                               meaning="memory limit of every build step's container"),
            retention_days=_int(
                env, "RETENTION_DAYS", 30, low=1, high=36500,
                meaning="days finished builds and their logs are kept",
            ),
            keep_images=_int(
                env, "KEEP_IMAGES", 3, low=0, high=10000,
                meaning="built images kept on the build host per service",
            ),
            stop_grace=_int(
                env, "STOP_GRACE", 25, low=0, high=86400,
                meaning="seconds a stopping process lets running builds finish",
            ),
            lease_seconds=_int(
                env, "LEASE_SECONDS", 60, low=5, high=86400,
                meaning="seconds a claimed job stays its worker's without a heartbeat",
            ),
            database_url=_database_url(env),
            floating_tags=_floating_tags(env),
            allowed_owners=_allowed_owners(env),
            image_name=_image_name(env),
            github_client_id=client_id,
            github_client_secret=client_secret,
            redeliver_interval=_int(
                env, "REDELIVER_INTERVAL", 300, low=0, high=86400,
                meaning="seconds between two reads of the App's delivery log for deliveries "
                "Slipway missed; 0: never",
            ),
            redeliver_window=_int(
                env, "REDELIVER_WINDOW", 24, low=0, high=72,
                meaning="hours back that Slipway looks for deliveries it missed (GitHub keeps "
                "three days); 0: never",
            ),
        )
        _check_build_limits(config)
        return config


# The engine refuses a smaller memory limit ("Minimum memory limit allowed is 6MB").
MIN_BUILD_MEMORY = 6 * 1024**2


def _check_build_limits(config: Config) -> None:
    if config.build_memory < MIN_BUILD_MEMORY:
        raise ConfigError(
            f"BUILD_MEMORY must be at least 6m (the Docker engine's smallest memory limit), "
            f"not {format_size(config.build_memory)}; 4g suits most builds.",
            variable="BUILD_MEMORY",
        )
    if config.build_timeout > config.build_timeout_max:
        raise ConfigError(
            f"BUILD_TIMEOUT ({config.build_timeout} s) is more than BUILD_TIMEOUT_MAX "
            f"({config.build_timeout_max} s), the most any build may take: lower BUILD_TIMEOUT "
            "or raise BUILD_TIMEOUT_MAX.",
            variable="BUILD_TIMEOUT",
        )


def _database_url(env: _Environ) -> str | None:
    """DATABASE_URL: unset (SQLite in DATA_DIR) or a PostgreSQL connection URL."""
    url = env.secret("DATABASE_URL")
    if url is None:
        return None
    url = url.strip()
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in ("postgresql", "postgres"):
        # Never echo the value: it may carry a password.
        raise ConfigError(
            "DATABASE_URL must be a PostgreSQL URL, postgresql://USER:PASSWORD@HOST:PORT/DB "
            "(or unset for SQLite in DATA_DIR); it starts with "
            + (f"{scheme}://" if scheme else "no scheme"),
            variable="DATABASE_URL",
        )
    return url


class _Environ:
    """The environment, where a variable set to blanks counts as not set."""

    def __init__(self, environ: Mapping[str, str]):
        self._environ = environ

    def get(self, name: str, default: str | None = None) -> str | None:
        value = self._environ.get(name)
        if value is None or not value.strip():
            return default
        return value.strip()

    def raw(self, name: str) -> str | None:
        """The value as given, blanks included (None only when the variable is absent)."""
        return self._environ.get(name)

    def secret(self, name: str) -> str | None:
        """A secret exactly as given: GitHub signs with every character of it."""
        value = self._environ.get(name)
        return value if value and value.strip() else None


# The three values that make an App, each by the variable(s) that may give it.
_APP_PARTS = (
    (("GITHUB_APP_ID",), "GITHUB_APP_ID"),
    (("GITHUB_PRIVATE_KEY_PATH", "GITHUB_PRIVATE_KEY"),
     "GITHUB_PRIVATE_KEY_PATH (or GITHUB_PRIVATE_KEY)"),
    (("GITHUB_WEBHOOK_SECRET",), "GITHUB_WEBHOOK_SECRET"),
)


def _refuse_half_given_app(env: _Environ) -> None:
    """Some of the App's id, key and secret but not all: a typo, not setup mode."""
    given = [any(env.secret(name) for name in names) for names, _ in _APP_PARTS]
    if any(given) and not all(given):
        missing = [label for (_, label), ok in zip(_APP_PARTS, given, strict=True) if not ok]
        present = [label for (_, label), ok in zip(_APP_PARTS, given, strict=True) if ok]
        raise ConfigError(
            f"The App is half configured: {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set but {' and '.join(present)} "
            f"{'is' if len(present) == 1 else 'are'}; set all three (from the App's settings), "
            "or none of them to start in setup mode.",
            variable=_APP_PARTS[given.index(False)][0][0],
        )


def _missing(name: str, meaning: str) -> ConfigError:
    return ConfigError(f"{name} is not set: {meaning}.", variable=name)


def _private_key(env: _Environ, *, require_app: bool) -> bytes | None:
    path = env.get("GITHUB_PRIVATE_KEY_PATH")
    text = env.get("GITHUB_PRIVATE_KEY")
    if path is not None and text is not None:
        raise ConfigError(
            "GITHUB_PRIVATE_KEY_PATH and GITHUB_PRIVATE_KEY are both set: keep only one.",
            variable="GITHUB_PRIVATE_KEY",
        )
    if path is not None:
        try:
            pem = Path(path).expanduser().read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"GITHUB_PRIVATE_KEY_PATH names {path}, which cannot be read "
                f"({exc.strerror or exc}): point it at the .pem file downloaded from the "
                "App's settings.",
                variable="GITHUB_PRIVATE_KEY_PATH",
            ) from None
        return _check_rsa_key(pem, "GITHUB_PRIVATE_KEY_PATH")
    if text is not None:
        return _check_rsa_key(_pem_from_text(text), "GITHUB_PRIVATE_KEY")
    if require_app:
        raise ConfigError(
            "GITHUB_PRIVATE_KEY_PATH is not set: the path of the App's private key (.pem), "
            "or put the key itself in GITHUB_PRIVATE_KEY.",
            variable="GITHUB_PRIVATE_KEY_PATH",
        )
    return None


def _pem_from_text(text: str) -> bytes:
    """PEM text, PEM with literal `\\n` escapes (one-line .env files), or base64 of the PEM."""
    text = text.strip().strip("'\"")
    if "-----BEGIN" in text:
        return text.replace("\\r", "").replace("\\n", "\n").encode()
    try:
        decoded = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if b"-----BEGIN" not in decoded:
        raise ConfigError(
            "GITHUB_PRIVATE_KEY holds neither a PEM key (-----BEGIN ... PRIVATE KEY-----) nor "
            "base64 of one: paste the .pem file downloaded from the App's settings.",
            variable="GITHUB_PRIVATE_KEY",
        )
    return decoded


def _check_rsa_key(pem: bytes, variable: str) -> bytes:
    # GitHub signs App JWTs with RS256 only, so the key must be RSA; say why it is not,
    # never what it holds.
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise ConfigError(
            f"{variable}: the private key is protected by a passphrase; use the unencrypted "
            ".pem file that GitHub generated.",
            variable=variable,
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(
            f"{variable} does not hold a readable PEM private key: use the .pem file from the "
            "App's settings (Generate a private key).",
            variable=variable,
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(
            f"{variable} holds a private key that is not RSA: GitHub App keys are RSA; use "
            "the .pem file from the App's settings.",
            variable=variable,
        )
    return pem


def _http_url(env: _Environ, name: str, default: str) -> str:
    value = env.get(name, default)
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"{name} must be an http(s) URL such as {default}, not {value!r}.", variable=name
        )
    return value.rstrip("/")


def _registry(env: _Environ) -> str:
    value = env.get("REGISTRY", "localhost:5000")
    if "://" in value or not _REGISTRY.fullmatch(value.rstrip("/")):
        raise ConfigError(
            f"REGISTRY must be a registry host with an optional port, such as localhost:5000 "
            f"or registry.example.com (no http://), not {value!r}.",
            variable="REGISTRY",
        )
    return value.rstrip("/")


def _int(env: _Environ, name: str, default: int, *, low: int, high: int, meaning: str) -> int:
    value = env.get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or not low <= number <= high:
        raise ConfigError(
            f"{name} must be a whole number from {low} to {high} ({meaning}), not {value!r}.",
            variable=name,
        )
    return number


_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)i?b?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str) -> int | None:
    """Bytes of a size written as Docker writes it (`512m`, `2g`, `1.5G`, `100000`), or None."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        return None
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_size(size: float) -> str:
    """`2.0 GiB`, `512.0 MiB`: how a size reads in a message."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _size(env: _Environ, name: str, default: str, *, meaning: str) -> int:
    value = env.get(name, default)
    size = parse_size(value)
    if size is None:
        raise ConfigError(
            f"{name} must be a size such as {default}, 512m or 10g ({meaning}), not {value!r}.",
            variable=name,
        )
    return size


def _target_branch(env: _Environ) -> str:
    value = env.get("TARGET_BRANCH", "develop")
    if value.startswith("refs/") or any(c.isspace() for c in value):
        raise ConfigError(
            f"TARGET_BRANCH must be a branch name such as develop (without refs/heads/), "
            f"not {value!r}.",
            variable="TARGET_BRANCH",
        )
    return value


def _log_level(env: _Environ) -> str:
    value = env.get("LOG_LEVEL", "INFO").upper()
    if value not in LOG_LEVELS:
        raise ConfigError(
            f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {value!r}.",
            variable="LOG_LEVEL",
        )
    return value


def _floating_tags(env: _Environ) -> tuple[str, ...]:
    # Blanks count as unset everywhere else, but here an empty value says "none".
    raw = env.raw("FLOATING_TAGS")
    if raw is None:
        return ("major", "minor", "latest")
    kinds = tuple(dict.fromkeys(part.strip().lower() for part in raw.split(",") if part.strip()))
    unknown = [kind for kind in kinds if kind not in FLOATING_KINDS]
    if unknown:
        raise ConfigError(
            f"FLOATING_TAGS may list {', '.join(FLOATING_KINDS)} (comma-separated; empty: "
            f"none), not {unknown[0]!r}.",
            variable="FLOATING_TAGS",
        )
    return kinds


# A GitHub login: letters, digits and single hyphens, at most 39 characters.
_LOGIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}")
IMAGE_NAME_FIELDS = ("service", "owner", "repo")
_TEMPLATE_FIELD = re.compile(r"\{([^{}]*)\}")


def _allowed_owners(env: _Environ) -> tuple[str, ...] | None:
    value = env.get("ALLOWED_OWNERS")
    if value is None:
        return None
    owners = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    if owners == ("*",):
        return owners
    bad = [owner for owner in owners if not _LOGIN.fullmatch(owner)]
    if not owners or bad:
        raise ConfigError(
            "ALLOWED_OWNERS must be GitHub accounts separated by commas (octo-org,octocat), "
            f"or * for any account, not {value!r}.",
            variable="ALLOWED_OWNERS",
        )
    return owners


def _image_name(env: _Environ) -> str:
    value = env.get("IMAGE_NAME", "{service}")
    fields = _TEMPLATE_FIELD.findall(value)
    leftover = _TEMPLATE_FIELD.sub("", value)
    if ("service" not in fields or any(f not in IMAGE_NAME_FIELDS for f in fields)
            or "{" in leftover or "}" in leftover):
        raise ConfigError(
            "IMAGE_NAME must be an image name template holding {service}, and optionally "
            f"{{owner}} and {{repo}}, such as {{owner}}/{{service}}, not {value!r}.",
            variable="IMAGE_NAME",
        )
    return value
