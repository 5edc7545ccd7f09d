"""What the registry already holds, read through the Registry HTTP API v2.

https://distribution.github.io/distribution/spec/api/ : tags of a repository,
and the labels of a tagged image (manifest -> config blob -> config.Labels),
so that callers can pick the next version and keep published versions immutable.

Basic auth and the bearer-token challenge (``WWW-Authenticate: Bearer realm=...``)
are answered when ``username``/``password`` are given (a token is also asked
for anonymously, as public registries hand those out).
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

import requests

from builder.errors import RegistryUnreachable

TIMEOUT = 10
MANIFEST_TYPES = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
])
_INDEX_TYPES = (
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
)


def list_tags(
    registry: str, name: str, *, username: str | None = None, password: str | None = None
) -> list[str]:
    """Every tag of ``name`` in ``registry``; ``[]`` when the repository is unknown."""
    session = _Session(registry, username, password)
    tags: list[str] = []
    path: str | None = f"/v2/{name}/tags/list?n=1000"
    while path:
        response = session.get(path, scope=f"repository:{name}:pull")
        if response.status_code == 404:
            return []
        _raise_for_status(response, registry)
        tags.extend(response.json().get("tags") or [])
        path = _next_page(response)
    return tags


def image_labels(
    registry: str,
    name: str,
    tag: str,
    *,
    username: str | None = None,
    password: str | None = None,
) -> dict[str, str] | None:
    """The labels of ``name:tag`` (``{}`` when it has none); None when there is no such tag."""
    session = _Session(registry, username, password)
    scope = f"repository:{name}:pull"
    response = session.get(f"/v2/{name}/manifests/{tag}", scope=scope,
                           headers={"Accept": MANIFEST_TYPES})
    if response.status_code == 404:
        return None
    _raise_for_status(response, registry)
    manifest = response.json()
    if manifest.get("mediaType") in _INDEX_TYPES or "manifests" in manifest:
        entry = _pick_platform(manifest.get("manifests") or [])
        if entry is None:
            return {}
        response = session.get(f"/v2/{name}/manifests/{entry['digest']}", scope=scope,
                               headers={"Accept": MANIFEST_TYPES})
        _raise_for_status(response, registry)
        manifest = response.json()
    config_digest = (manifest.get("config") or {}).get("digest")
    if not config_digest:  # schema 1 manifests carry no config blob
        return {}
    response = session.get(f"/v2/{name}/blobs/{config_digest}", scope=scope)
    _raise_for_status(response, registry)
    return dict((response.json().get("config") or {}).get("Labels") or {})


def registry_url(registry: str) -> str:
    """``http://`` for loopback (as the engine treats it) or an explicit scheme, else ``https://``."""
    if registry.startswith(("http://", "https://")):
        return registry.rstrip("/")
    host = urlsplit(f"//{registry}").hostname or ""
    if host == "localhost" or _is_loopback(host):
        return f"http://{registry}"
    return f"https://{registry}"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _pick_platform(manifests: list[dict]) -> dict | None:
    for entry in manifests:
        platform = entry.get("platform") or {}
        if platform.get("os") == "linux" and platform.get("architecture") == "amd64":
            return entry
    return manifests[0] if manifests else None


def _next_page(response: requests.Response) -> str | None:
    match = re.search(r"<([^>]+)>\s*;\s*rel=\"?next\"?", response.headers.get("Link", ""))
    return match.group(1) if match else None


def _raise_for_status(response: requests.Response, registry: str) -> None:
    if response.status_code < 400:
        return
    if response.status_code in (401, 403):
        raise RegistryUnreachable(
            f"The registry {registry} refused to answer ({response.status_code}); set "
            f"REGISTRY_USERNAME and REGISTRY_PASSWORD to an account that may read it.",
            registry=registry, detail=response.text[:500],
        )
    raise RegistryUnreachable(
        f"The registry {registry} answered {response.status_code} to "
        f"{response.request.method} {response.request.path_url}; check its log.",
        registry=registry, detail=response.text[:500],
    )


class _Session:
    """GETs against one registry, answering auth challenges as they come."""

    def __init__(self, registry: str, username: str | None, password: str | None):
        self.registry = registry
        self.base = registry_url(registry)
        self.auth = (username, password or "") if username else None
        self.http = requests.Session()
        self.http.headers["User-Agent"] = "slipway-builder"
        self.token: str | None = None

    def get(self, path: str, *, scope: str, headers: dict | None = None) -> requests.Response:
        url = path if path.startswith("http") else self.base + path
        response = self._send(url, headers)
        if response.status_code == 401 and self._answer_challenge(response, scope):
            response = self._send(url, headers)
        return response

    def _send(self, url: str, headers: dict | None) -> requests.Response:
        headers = dict(headers or {})
        auth = None
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        else:
            auth = self.auth
        try:
            return self.http.get(url, headers=headers, auth=auth, timeout=TIMEOUT)
        except requests.RequestException as exc:
            raise RegistryUnreachable(
                f"The registry {self.registry} does not answer at {self.base} "
                f"({type(exc).__name__}); check that it runs and that REGISTRY names it "
                f"as host:port.",
                registry=self.registry, detail=str(exc),
            ) from exc

    def _answer_challenge(self, response: requests.Response, scope: str) -> bool:
        """Fetch a bearer token when the registry asks for one; True when there is one."""
        challenge = response.headers.get("WWW-Authenticate", "")
        if not challenge.lower().startswith("bearer "):
            return False
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.pop("realm", None)
        if not realm or self.token:
            return False
        params.setdefault("scope", scope)
        try:
            answer = self.http.get(realm, params=params, auth=self.auth, timeout=TIMEOUT)
        except requests.RequestException as exc:
            raise RegistryUnreachable(
                f"The token service of {self.registry} at {realm} does not answer; check the "
                f"registry's auth configuration.", registry=self.registry, detail=str(exc),
            ) from exc
        if answer.status_code >= 400:
            return False
        body = answer.json()
        self.token = body.get("token") or body.get("access_token")
        return bool(self.token)
