"""The registry through its HTTP API v2 alone: no Docker engine, no layer ever moves.

https://distribution.github.io/distribution/spec/api/ . Reading: tags of a
repository, and the labels of a tagged image (manifest -> config blob ->
config.Labels), so that callers can pick the next version and keep published
versions immutable. Writing: put a manifest under more tags (floating tags),
delete one tag and only that tag, and publish a staged image under a release
tag with new labels (a new config blob, the same layers: a copy of kilobytes).

Basic auth and the bearer-token challenge (``WWW-Authenticate: Bearer realm=...``)
are answered when ``username``/``password`` are given (a token is also asked
for anonymously, as public registries hand those out).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
import urllib3

from builder import patience
from builder.errors import RegistryUnreachable

log = logging.getLogger(__name__)

TIMEOUT = 10
MANIFEST_TYPES = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
])
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
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


@dataclass(frozen=True)
class StoredImage:
    """One single-platform image as the registry holds it: its manifest and config."""

    name: str
    digest: str  # of the manifest
    media_type: str
    manifest: dict
    config: dict

    @property
    def labels(self) -> dict[str, str]:
        return dict((self.config.get("config") or {}).get("Labels") or {})

    @property
    def size(self) -> int:
        """Bytes of the config and the (compressed) layers."""
        parts = [self.manifest.get("config") or {}, *(self.manifest.get("layers") or [])]
        return sum(int(part.get("size") or 0) for part in parts)


class Registry:
    """Reads and writes of one repository's manifests, tags and blobs."""

    def __init__(self, registry: str, *, username: str | None = None,
                 password: str | None = None):
        self.registry = registry
        self._session = _Session(registry, username, password)

    def read_image(self, name: str, reference: str) -> StoredImage | None:
        """The manifest and config of ``name:reference``; None when there is no such tag.

        Only a single-platform image (what the engine pushes) is read: for an index
        it raises rather than guess which platform to publish.
        """
        raw = self._manifest_bytes(name, reference)
        if raw is None:
            return None
        body, media_type, digest = raw
        manifest = json.loads(body)
        media_type = manifest.get("mediaType") or media_type
        if media_type in _INDEX_TYPES or "manifests" in manifest or "config" not in manifest:
            raise RegistryUnreachable(
                f"{self.registry}/{name}:{reference} is not a single-platform image "
                f"({media_type}); Slipway publishes only the images it pushed itself.",
                registry=self.registry,
            )
        response = self._session.get(f"/v2/{name}/blobs/{manifest['config']['digest']}",
                                     scope=_pull(name))
        _raise_for_status(response, self.registry)
        return StoredImage(name, digest, media_type, manifest, response.json())

    def put_tags(self, name: str, source: str, tags: list[str]) -> str:
        """Put the very manifest of ``name:source`` under each of ``tags``; return its digest.

        The bytes are sent back as they came, so every tag names the same digest.
        """
        raw = self._manifest_bytes(name, source)
        if raw is None:
            raise RegistryUnreachable(
                f"{self.registry}/{name}:{source} is gone from the registry, so no tag can "
                f"be moved to it; check that nothing deletes Slipway's tags.",
                registry=self.registry,
            )
        body, media_type, digest = raw
        for tag in tags:
            self._put_manifest(name, tag, body, media_type)
        return digest

    def publish(self, image: StoredImage, tag: str, labels: Mapping[str, str],
                *, created: str) -> StoredImage:
        """Publish ``image``'s layers as ``name:tag`` with ``labels`` added to its config.

        A new config blob and a new manifest: the layers are referenced where they
        already are, so this costs a few requests whatever the image's size.
        """
        config = json.loads(json.dumps(image.config))
        inner = config.setdefault("config", {})
        inner["Labels"] = {**(inner.get("Labels") or {}), **labels}
        config["created"] = created
        config_bytes = json.dumps(config, separators=(",", ":"), sort_keys=True).encode()
        config_digest = self._put_blob(image.name, config_bytes)
        manifest = json.loads(json.dumps(image.manifest))
        manifest["config"] = {**manifest["config"], "digest": config_digest,
                              "size": len(config_bytes)}
        body = json.dumps(manifest, indent=3).encode()
        digest = self._put_manifest(image.name, tag, body, image.media_type)
        return StoredImage(image.name, digest, image.media_type, manifest, config)

    def delete_tag(self, name: str, tag: str) -> bool:
        """Delete ``name:tag`` and no other tag; False when it was not there.

        The registry deletes manifests, not tags, and a manifest goes with every
        tag that names it. So the tag is first pointed at a manifest of its own
        (an empty image whose config is unique), which is then deleted: a release
        tag that shared the old digest keeps it.
        """
        if self._manifest_bytes(name, tag) is None:
            return False
        marker = json.dumps({"slipway": {"deleted_tag": tag, "nonce": uuid.uuid4().hex}},
                            separators=(",", ":")).encode()
        config_digest = self._put_blob(name, marker)
        body = json.dumps({
            "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "size": len(marker), "digest": config_digest},
            "layers": [],
        }).encode()
        digest = self._put_manifest(name, tag, body, DOCKER_MANIFEST)
        response = self._session.request("DELETE", f"/v2/{name}/manifests/{digest}",
                                         scope=_delete(name))
        if response.status_code == 405:
            raise RegistryUnreachable(
                f"The registry {self.registry} does not allow deletes, so the tag {name}:{tag} "
                f"stays (emptied); enable storage.delete in its configuration.",
                registry=self.registry, detail=response.text[:500],
            )
        if response.status_code != 404:
            _raise_for_status(response, self.registry)
        return True

    def check_api(self) -> None:
        """Raise RegistryUnreachable, saying what to do, unless ``/v2/`` answers 200."""
        response = self._session.get("/v2/", scope="registry:catalog:*")
        if response.status_code == 200:
            return
        if response.status_code == 401:
            advice = ("set REGISTRY_USERNAME and REGISTRY_PASSWORD to an account of it"
                      if self._session.auth is None else
                      "REGISTRY_USERNAME and REGISTRY_PASSWORD are refused: check them")
            raise RegistryUnreachable(
                f"The registry {self.registry} asks for credentials (401 on /v2/): {advice}.",
                registry=self.registry, detail=response.text[:500],
            )
        if response.status_code == 404:
            raise RegistryUnreachable(
                f"{self._session.base}/v2/ is not a Docker registry (404): check REGISTRY.",
                registry=self.registry,
            )
        _raise_for_status(response, self.registry)

    def round_trip_blob(self, name: str) -> bool:
        """Upload a small unique blob to ``name`` and delete it again.

        Raises when the upload is refused; returns False when the registry does
        not allow deletes (the blob then stays until its garbage collection)."""
        data = json.dumps({"slipway": "doctor", "nonce": uuid.uuid4().hex}).encode()
        digest = self._put_blob(name, data)
        response = self._session.request("DELETE", f"/v2/{name}/blobs/{digest}",
                                         scope=_delete(name))
        if response.status_code == 405:
            return False
        if response.status_code != 404:
            _raise_for_status(response, self.registry)
        return True

    # -- the HTTP steps ----------------------------------------------------------------

    def _manifest_bytes(self, name: str, reference: str) -> tuple[bytes, str, str] | None:
        response = self._session.get(f"/v2/{name}/manifests/{reference}", scope=_pull(name),
                                     headers={"Accept": MANIFEST_TYPES})
        if response.status_code == 404:
            return None
        _raise_for_status(response, self.registry)
        body = response.content
        digest = response.headers.get("Docker-Content-Digest") or _digest(body)
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        return body, media_type, digest

    def _put_manifest(self, name: str, tag: str, body: bytes, media_type: str) -> str:
        response = self._session.request("PUT", f"/v2/{name}/manifests/{tag}",
                                         scope=_push(name), data=body,
                                         headers={"Content-Type": media_type})
        _raise_for_status(response, self.registry)
        return response.headers.get("Docker-Content-Digest") or _digest(body)

    def _put_blob(self, name: str, data: bytes) -> str:
        """Upload ``data`` as one blob (monolithic upload); return its digest."""
        digest = _digest(data)
        exists = self._session.request("HEAD", f"/v2/{name}/blobs/{digest}", scope=_pull(name))
        if exists.status_code == 200:
            return digest
        started = self._session.request("POST", f"/v2/{name}/blobs/uploads/", scope=_push(name))
        _raise_for_status(started, self.registry)
        location = started.headers.get("Location", "")
        if location.startswith("/"):
            location = self._session.base + location
        response = self._session.request(
            "PUT", location, scope=_push(name), data=data, params={"digest": digest},
            headers={"Content-Type": "application/octet-stream"},
        )
        _raise_for_status(response, self.registry)
        return digest


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _pull(name: str) -> str:
    return f"repository:{name}:pull"


def _push(name: str) -> str:
    return f"repository:{name}:pull,push"


def _delete(name: str) -> str:
    return f"repository:{name}:pull,push,delete"


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
    """Requests against one registry, answering auth challenges as they come."""

    def __init__(self, registry: str, username: str | None, password: str | None):
        self.registry = registry
        self.base = registry_url(registry)
        self.auth = (username, password or "") if username else None
        self.http = requests.Session()
        self.http.headers["User-Agent"] = "slipway-builder"
        self.token: str | None = None
        self.token_scope: str | None = None

    def get(self, path: str, *, scope: str, headers: dict | None = None) -> requests.Response:
        return self.request("GET", path, scope=scope, headers=headers)

    def request(self, method: str, path: str, *, scope: str, headers: dict | None = None,
                data: bytes | None = None, params: dict | None = None) -> requests.Response:
        url = path if path.startswith("http") else self.base + path
        response = self._send(method, url, headers, data, params)
        if response.status_code == 401 and self._answer_challenge(response, scope):
            response = self._send(method, url, headers, data, params)
        return response

    def _send(self, method: str, url: str, headers: dict | None, data: bytes | None,
              params: dict | None) -> requests.Response:
        headers = dict(headers or {})
        auth = None
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        else:
            auth = self.auth
        waits = patience.delays()
        while True:
            try:
                return self.http.request(method, url, headers=headers, auth=auth, data=data,
                                         params=params, timeout=TIMEOUT, allow_redirects=False)
            except requests.RequestException as exc:
                wait = next(waits, None) if _safe_to_retry(method, exc) else None
                if wait is None:
                    raise RegistryUnreachable(
                        f"The registry {self.registry} does not answer at {self.base} "
                        f"({type(exc).__name__}); check that it runs and that REGISTRY names "
                        f"it as host:port.",
                        registry=self.registry, detail=str(exc),
                    ) from exc
                log.warning("the registry %s does not answer (%s); trying again in %.2f s",
                            self.registry, type(exc).__name__, wait)
                time.sleep(wait)

    def _answer_challenge(self, response: requests.Response, scope: str) -> bool:
        """Fetch a bearer token when the registry asks for one; True when there is one."""
        challenge = response.headers.get("WWW-Authenticate", "")
        if not challenge.lower().startswith("bearer "):
            return False
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.pop("realm", None)
        # A token of a narrower scope (pull) is traded for one of the scope asked now (push).
        if not realm or (self.token and self.token_scope == scope):
            return False
        params["scope"] = params.get("scope") or scope
        if self.token:
            params["scope"] = scope
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
        self.token_scope = scope
        return bool(self.token)


def _safe_to_retry(method: str, exc: requests.RequestException) -> bool:
    """Whether sending again cannot do a thing twice: a read, or a request never sent."""
    if not isinstance(exc, requests.ConnectionError):
        return False
    if method in ("GET", "HEAD"):
        return True
    reason = getattr(exc.args[0] if exc.args else None, "reason", None)
    return isinstance(reason, urllib3.exceptions.NewConnectionError)
