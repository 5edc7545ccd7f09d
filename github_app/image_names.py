"""Image names in the registry: IMAGE_NAME applied to a service, and who owns a name.

- `apply_template("{owner}/{service}", service=..., owner=..., repo=...)`: the name
  a service's images get; `{owner}` and `{repo}` are made valid image-name parts
  (lowercased) first, and the result is validated like any image name.
- An image name belongs to the repository that first published it: its tags carry
  that repository's URL as `org.opencontainers.image.source`. `check_owner` reads
  those labels from the registry and raises `ImageNameTaken` (status `failure`,
  nothing pushed) when another repository's service resolves to the same name.

`apply_template` and `same_source` are pure; `check_owner` reads the registry.
"""

from __future__ import annotations

import dataclasses
from urllib.parse import urlsplit

from builder import image_name_for, validate_service_name
from builder import registry as registry_api
from github_app.errors import ImageNameTaken
from github_app.services import Service
from github_app.versions import parse_tag

SOURCE_LABEL = "org.opencontainers.image.source"
# Tags read at most to find the source label (one is enough when Slipway pushed them).
MAX_TAGS_READ = 5


def apply_template(template: str, *, service: str, owner: str, repo: str) -> str:
    """The image name of `service` in repository `owner/repo` under IMAGE_NAME `template`."""
    name = template.format(service=service, owner=image_name_for(owner),
                           repo=image_name_for(repo))
    return validate_service_name(name)


def with_image_names(services: list[Service], template: str, *, owner: str,
                     repo: str) -> list[Service]:
    """The services, each with its registry name (IMAGE_NAME applied)."""
    return [dataclasses.replace(s, image=apply_template(template, service=s.name, owner=owner,
                                                        repo=repo))
            for s in services]


def same_source(label: str | None, html_url: str | None) -> bool:
    """Whether a source label names the repository at `html_url` (case, .git, / aside)."""
    def norm(url: str | None) -> str:
        return (url or "").strip().lower().removesuffix("/").removesuffix(".git")
    return bool(label) and norm(label) == norm(html_url)


def source_owner(label: str) -> str:
    """`owner/repo` of a source URL (the label as given when it is not a URL)."""
    path = urlsplit(label).path.strip("/")
    return path.removesuffix(".git") if path.count("/") == 1 else label


def check_owner(config, image: str, *, html_url: str, repository: str) -> None:
    """Raise ImageNameTaken when `image`'s tags come from another repository's source."""
    credentials = {"username": config.registry_username, "password": config.registry_password}
    tags = registry_api.list_tags(config.registry, image, **credentials)
    for tag in sorted(tags, key=_first_published)[:MAX_TAGS_READ]:
        labels = registry_api.image_labels(config.registry, image, tag, **credentials) or {}
        source = labels.get(SOURCE_LABEL)
        if not source:
            continue  # pushed by hand, without a source: look at another tag
        if not same_source(source, html_url):
            raise ImageNameTaken(image=image, owner=source_owner(source), repository=repository)
        return


def _first_published(tag: str) -> tuple:
    """Release tags first, lowest version first (the likeliest first push), then the rest."""
    version = parse_tag(tag)
    if version is None:
        return (1, tag)
    return (0, version)
