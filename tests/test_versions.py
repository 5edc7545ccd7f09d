"""resolve_version: label, then title, then bump on the highest registry tag; else instructions."""

from __future__ import annotations

import pytest

from github_app.errors import InvalidVersion, VersionNotFound
from github_app.versions import DOCKER_TAG, VersionSource, highest_release, resolve_version


def test_a_version_label_wins():
    """`version:1.2.3` is used even when the title and a bump label say otherwise."""
    version = resolve_version(["bug", "version:1.2.3", "semver:major"], "Release 9.9.9", ["5.0.0"])
    assert (version.text, version.tag, version.source) == ("1.2.3", "1.2.3", VersionSource.LABEL)
    assert version.explanation == "from label version:1.2.3"


def test_a_version_label_may_have_a_leading_v():
    """`version:v1.2.3` publishes 1.2.3."""
    assert resolve_version(["version:v1.2.3"], "", []).text == "1.2.3"


def test_conflicting_version_labels_take_the_first_and_say_so():
    """Two version labels: the first in label order wins and the explanation names the other."""
    version = resolve_version(["version:2.0.0", "version:1.0.0"], "", [])
    assert version.text == "2.0.0"
    assert "first version label wins" in version.explanation
    assert "version:1.0.0" in version.explanation


@pytest.mark.parametrize("label", ["version:banana", "version:1.2", "version:", "version:01.2.3"])
def test_an_invalid_version_label_is_refused_quoting_it(label):
    """A version label that is not SemVer raises InvalidVersion quoting the label."""
    with pytest.raises(InvalidVersion) as info:
        resolve_version([label], "Release 1.0.0", [])
    assert f"`{label}`" in str(info.value)
    assert "version:1.4.0" in str(info.value)
    assert info.value.value == label


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("Release 1.4.0", "1.4.0"),
        ("[v1.4.0] add orders endpoint", "1.4.0"),
        ("Release 2.0.0-rc.1", "2.0.0-rc.1"),
        ("Release 2.0.0-alpha.1+exp.sha.5114f85.", "2.0.0-alpha.1+exp.sha.5114f85"),
        ("orders: 0.1.0 (first cut)", "0.1.0"),
        ("release-1.2.3", "1.2.3"),
    ],
)
def test_a_version_in_the_title(title, expected):
    """A SemVer in the title is used when no version label is present."""
    version = resolve_version(["enhancement"], title, ["9.0.0"])
    assert version.text == expected
    assert version.source is VersionSource.TITLE
    assert "title" in version.explanation


@pytest.mark.parametrize(
    "title",
    ["Bump python3.11.2 image", "Upgrade to 1.2", "Support 1.2.3.4 addresses", "Fix 1.2.3-01"],
)
def test_numbers_that_are_not_versions_are_not_taken_from_the_title(title):
    """Dotted numbers glued to words, with two or four parts, or invalid SemVer are not versions."""
    with pytest.raises(VersionNotFound):
        resolve_version([], title, [])


def test_the_title_wins_over_a_bump_label():
    """Rule 2 (title) comes before rule 3 (bump)."""
    version = resolve_version(["semver:major"], "Release 1.4.0", ["3.0.0"])
    assert (version.text, version.source) == ("1.4.0", VersionSource.TITLE)


@pytest.mark.parametrize(
    ("bump", "expected"), [("major", "2.0.0"), ("minor", "1.4.0"), ("patch", "1.3.1")]
)
def test_a_bump_applies_to_the_highest_semver_tag(bump, expected):
    """semver:X bumps the highest SemVer tag; `latest` and non-SemVer tags are ignored."""
    tags = ["latest", "1.2.9", "1.3.0", "1.10", "v1.1.0", "main-abc123"]
    version = resolve_version([f"semver:{bump}"], "Add orders endpoint", tags)
    assert (version.text, version.source) == (expected, VersionSource.BUMP)
    assert version.explanation == f"semver:{bump} on 1.3.0 (highest tag in the registry)"


def test_semver_order_is_numeric_not_lexical():
    """1.10.0 is higher than 1.9.0."""
    assert resolve_version(["semver:patch"], "", ["1.9.0", "1.10.0"]).text == "1.10.1"


def test_a_bump_without_tags_starts_from_zero():
    """No version in the registry yet: the bump is applied to 0.0.0 and says so."""
    version = resolve_version(["semver:minor"], "", [])
    assert version.text == "0.1.0"
    assert version.explanation.startswith("semver:minor on 0.0.0")


def test_prerelease_tags_are_not_a_bump_base():
    """A bump continues from the highest release: 2.0.0-rc.1 does not make a patch 2.0.1."""
    version = resolve_version(["semver:patch"], "", ["1.3.0", "2.0.0-rc.1"])
    assert version.text == "1.3.1"
    assert highest_release(["2.0.0-rc.1"]) is None


def test_conflicting_bump_labels_take_the_first_and_say_so():
    """Two bump labels: the first in label order wins, and the explanation says so."""
    version = resolve_version(["semver:patch", "semver:major"], "", ["1.0.0"])
    assert version.text == "1.0.1"
    assert "semver:major" in version.explanation


def test_an_unknown_bump_is_refused():
    """`semver:huge` raises InvalidVersion listing the three bumps."""
    with pytest.raises(InvalidVersion) as info:
        resolve_version(["semver:huge"], "", [])
    assert "semver:major" in str(info.value) and "`semver:huge`" in str(info.value)


def test_no_version_explains_how_to_give_one():
    """Without label, title version or bump: the sentence from DESIGN.md."""
    with pytest.raises(VersionNotFound) as info:
        resolve_version(["bug"], "Update the README with new information.", ["1.0.0"])
    assert str(info.value) == (
        "No version found. Add a label like `version:1.4.0`, put `1.4.0` in the title, "
        "or add `semver:patch`."
    )


def test_build_metadata_is_published_with_a_dash():
    """1.2.3+build.5 is tagged 1.2.3-build.5 and the explanation says why."""
    version = resolve_version(["version:1.2.3+build.5"], "", [])
    assert version.text == "1.2.3+build.5"
    assert version.tag == "1.2.3-build.5"
    assert (
        "build metadata `+build.5` is published as `-build.5`: Docker tags cannot hold `+`"
        in version.explanation
    )


def test_every_tag_is_a_valid_docker_tag():
    """Tags are valid Docker tags, and an over-long version is refused, not truncated."""
    assert DOCKER_TAG.fullmatch(resolve_version([], "Release 1.0.0-rc.1+b.2", []).tag)
    with pytest.raises(InvalidVersion):
        resolve_version(["version:1.0.0-" + "a" * 130], "", [])


def test_a_rerun_keeps_the_version_a_bump_already_published():
    """A semver:* bump is applied once per merge; a label or title version always counts."""
    from github_app.versions import rerun_version

    bump = resolve_version(["semver:patch"], "", ["0.0.1"])
    assert bump.tag == "0.0.2"
    kept = rerun_version(bump, "0.0.1")
    assert kept.tag == "0.0.1" and "already published" in kept.explanation
    assert rerun_version(bump, None) is bump
    label = resolve_version(["version:2.0.0"], "", ["0.0.1"])
    assert rerun_version(label, "0.0.1") is label
    title = resolve_version([], "Release 3.0.0", [])
    assert rerun_version(title, "0.0.1") is title
