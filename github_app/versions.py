"""The version of a merged pull request, by DESIGN.md's rules; first match wins.

1. a label `version:X.Y.Z` (leading `v` allowed);
2. a semantic version in the title (`Release 1.4.0`, `[v1.4.0] add orders endpoint`);
3. a label `semver:major|minor|patch`, applied to the highest release tag the
   registry holds for the service (none: to 0.0.0).

Pure: no network, disk, clock or Flask globals. SemVer parsing and bumping is
the `semver` package's; https://semver.org is the grammar.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import semver

from github_app.errors import InvalidVersion, VersionNotFound

VERSION_LABEL = "version:"
BUMP_LABEL = "semver:"
BUMPS = ("major", "minor", "patch")

# https://docs.docker.com/reference/cli/docker/image/tag/#description
DOCKER_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")

_NUMBER = r"(?:0|[1-9]\d*)"
_PRE_ID = r"(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)"
_BUILD_ID = r"[0-9A-Za-z-]+"
_SEMVER = (
    rf"{_NUMBER}\.{_NUMBER}\.{_NUMBER}"
    rf"(?:-{_PRE_ID}(?:\.{_PRE_ID})*)?"
    rf"(?:\+{_BUILD_ID}(?:\.{_BUILD_ID})*)?"
)
# A version standing on its own in a title: not glued to a word or to more digits,
# so "python3.11.2", "1.2.3.4" and "abc1.2.3" are not versions.
_TITLE_VERSION = re.compile(rf"(?<![0-9A-Za-z.])[vV]?({_SEMVER})(?![0-9A-Za-z+-]|\.[0-9A-Za-z])")


class VersionSource(enum.StrEnum):
    LABEL = "label"
    TITLE = "title"
    BUMP = "bump"


@dataclass(frozen=True)
class Version:
    """A resolved version: its SemVer text, the Docker tag it is published as, and why."""

    text: str
    tag: str
    source: VersionSource
    explanation: str
    # In a few words, for a one-line preview: "`semver:minor` over 1.3.2".
    reason: str = ""


def resolve_version(
    labels: Sequence[str], title: str, existing_tags: Iterable[str]
) -> Version:
    """The version of a pull request; raise `VersionNotFound` or `InvalidVersion`."""
    labels = [label.strip() for label in labels]
    version_labels = [label for label in labels if _has_prefix(label, VERSION_LABEL)]
    if version_labels:
        return _from_version_label(version_labels)
    match = _TITLE_VERSION.search(title or "")
    if match:
        return _make(match.group(1), VersionSource.TITLE, f"from the title: {title.strip()!r}",
                     reason="from the title")
    bump_labels = [label for label in labels if _has_prefix(label, BUMP_LABEL)]
    if bump_labels:
        return _from_bump_label(bump_labels, existing_tags)
    raise VersionNotFound()


def parse_tag(tag: str) -> semver.Version | None:
    """The SemVer a registry tag stands for (`1.2.3`, `v1.2.3`), or None (`latest`, `1.2`)."""
    text = tag[1:] if tag[:1] in ("v", "V") else tag
    try:
        return semver.Version.parse(text)
    except (ValueError, TypeError):
        return None


def highest_release(tags: Iterable[str]) -> semver.Version | None:
    """The highest release (no prerelease part) among SemVer tags; other tags are ignored."""
    # Prereleases (1.4.0-rc.1) are ignored: a bump continues from what was released.
    releases = [v for v in map(parse_tag, tags) if v is not None and not v.prerelease]
    return max(releases, default=None)


def docker_tag(text: str) -> str:
    """The Docker tag of a SemVer: `+` is not allowed in tags, so it is written as `-`."""
    tag = text.replace("+", "-")
    if not DOCKER_TAG.fullmatch(tag):
        raise InvalidVersion(
            f"Version {text} cannot be a Docker tag: a tag holds at most 128 characters "
            "among letters, digits, `_`, `.` and `-`. Choose a shorter version.",
            value=text,
        )
    return tag


def _has_prefix(label: str, prefix: str) -> bool:
    return label[: len(prefix)].lower() == prefix


def _from_version_label(version_labels: list[str]) -> Version:
    chosen = version_labels[0]
    value = chosen[len(VERSION_LABEL):].strip()
    text = value[1:] if value[:1] in ("v", "V") else value
    if not semver.Version.is_valid(text):
        raise InvalidVersion(
            f"The label `{chosen}` does not hold a semantic version: name it like "
            "`version:1.4.0` (MAJOR.MINOR.PATCH, optionally `-rc.1` or `+build.5`).",
            value=chosen,
        )
    explanation = f"from label {chosen}"
    others = [label for label in version_labels[1:] if label != chosen]
    if others:
        ignored = ", ".join(others)
        explanation += f" (the first version label wins; also labelled {ignored}, ignored)"
    return _make(text, VersionSource.LABEL, explanation, reason=f"`{chosen}`")


def _from_bump_label(bump_labels: list[str], existing_tags: Iterable[str]) -> Version:
    chosen = bump_labels[0]
    part = chosen[len(BUMP_LABEL):].strip().lower()
    if part not in BUMPS:
        raise InvalidVersion(
            f"The label `{chosen}` is not a version bump: use `semver:major`, "
            "`semver:minor` or `semver:patch`.",
            value=chosen,
        )
    base = highest_release(existing_tags)
    if base is None:
        base_text = "0.0.0 (the registry holds no version of this service yet)"
        reason = f"`semver:{part}`, first release"
        base = semver.Version(0, 0, 0)
    else:
        base_text = f"{base} (highest tag in the registry)"
        reason = f"`semver:{part}` over {base}"
    bumped = base.next_version(part)
    explanation = f"semver:{part} on {base_text}"
    others = [label for label in bump_labels[1:] if label.lower() != chosen.lower()]
    if others:
        explanation += (
            f" (the first bump label wins; also labelled {', '.join(others)}, ignored)"
        )
    return _make(str(bumped), VersionSource.BUMP, explanation, reason=reason)


def _make(text: str, source: VersionSource, explanation: str, *, reason: str = "") -> Version:
    tag = docker_tag(text)
    if "+" in text:
        build = text[text.index("+"):]
        explanation += (
            f"; build metadata `{build}` is published as `-{build[1:]}`: "
            "Docker tags cannot hold `+`"
        )
    return Version(text=text, tag=tag, source=source, explanation=explanation, reason=reason)


def kept_version(tag: str, explanation: str) -> Version:
    """A version decided earlier (stored on the build, or already published), used again."""
    return Version(text=tag, tag=tag, source=VersionSource.LABEL, explanation=explanation,
                   reason="kept")


def rerun_version(current: Version, published: str | None) -> Version:
    """The version a re-run publishes: the pull request's as it is now, except that a
    `semver:*` bump keeps the version this merge already published (never bumps twice)."""
    if published is None or current.source is not VersionSource.BUMP:
        return current
    return kept_version(published, (
        f"{published}, already published for this merge: a `semver:*` bump is applied once "
        f"(now it would give {current.text})"))
