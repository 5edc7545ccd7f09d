"""Which floating tags (`X.Y`, `X`, `latest`) a published release moves, by DESIGN.md's rule.

Publishing `X.Y.Z` moves `X.Y` only when it is the highest release of line
`X.Y`, `X` only when it is the highest release of major `X`, and `latest` only
when it is the highest release of all. A pre-release, a release of an older
line and a rebuild of an old version move nothing that a newer release holds.
Only SemVer tags count as releases: staging tags (`pr-12`) and the floating
tags themselves never do.

Pure: no network, disk, clock or Flask globals.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import semver

from github_app.versions import parse_tag

KINDS = ("major", "minor", "latest")
STAGING_PREFIX = "pr-"


def staging_tag(pr_number: int) -> str:
    """The tag a pull request's pre-merge image is staged under: `pr-12`."""
    return f"{STAGING_PREFIX}{pr_number}"


def tags_to_move(version: str, existing_tags: Iterable[str], kinds: Sequence[str]) -> list[str]:
    """The floating tags that publishing `version` moves, in the order of `kinds`.

    `existing_tags` are the tags the registry holds for the image (with or
    without `version` itself); `kinds` is FLOATING_TAGS (`major`, `minor`, `latest`).
    """
    published = parse_tag(version)
    if published is None or published.prerelease:
        return []
    releases = [v for v in map(parse_tag, existing_tags) if v is not None and not v.prerelease]
    moved = []
    for kind in kinds:
        line = [v for v in releases if _same_line(v, published, kind)]
        if all(_core(published) >= _core(v) for v in line):
            moved.append(_floating_name(published, kind))
    return moved


def _same_line(candidate: semver.Version, published: semver.Version, kind: str) -> bool:
    if kind == "minor":
        return (candidate.major, candidate.minor) == (published.major, published.minor)
    if kind == "major":
        return candidate.major == published.major
    return True


def _core(version: semver.Version) -> tuple[int, int, int]:
    # Build metadata does not order releases (semver.org §10): 1.2.3+b.5 is 1.2.3.
    return (version.major, version.minor, version.patch)


def _floating_name(version: semver.Version, kind: str) -> str:
    if kind == "minor":
        return f"{version.major}.{version.minor}"
    if kind == "major":
        return str(version.major)
    return "latest"
