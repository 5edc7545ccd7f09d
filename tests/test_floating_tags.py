"""Which floating tags a published release moves (pure rules, no registry)."""

from __future__ import annotations

from github_app.floating_tags import staging_tag, tags_to_move

ALL = ("major", "minor", "latest")


def test_the_highest_release_moves_its_minor_major_and_latest():
    """1.4.0 over 1.3.2 moves 1.4, 1 and latest."""
    assert tags_to_move("1.4.0", ["1.3.2", "1.3", "1", "latest"], ALL) == ["1", "1.4", "latest"]


def test_a_release_of_an_older_line_moves_only_its_own_line():
    """1.3.9 after 1.4.0 moves 1.3 (it is that line's highest), not 1 nor latest."""
    assert tags_to_move("1.3.9", ["1.3.2", "1.4.0", "1.3", "1.4", "1"], ALL) == ["1.3"]


def test_a_prerelease_moves_nothing():
    """2.0.0-rc.1 is not a release: no floating tag follows it."""
    assert tags_to_move("2.0.0-rc.1", ["1.4.0"], ALL) == []


def test_a_new_major_moves_its_own_tags_and_latest():
    """2.0.0 over 1.4.0 and 2.0.0-rc.1 moves 2.0, 2 and latest; 1 stays."""
    assert tags_to_move("2.0.0", ["1.4.0", "1.3.9", "2.0.0-rc.1"], ALL) == ["2", "2.0", "latest"]


def test_a_rebuild_of_an_old_version_moves_nothing():
    """Rebuilding 1.3.2 while 1.3.9 and 2.0.0 exist moves nothing."""
    assert tags_to_move("1.3.2", ["1.3.2", "1.3.9", "2.0.0"], ALL) == []


def test_a_rebuild_of_the_highest_release_keeps_its_tags_on_it():
    """Rebuilding the highest release points its floating tags at the new image."""
    assert tags_to_move("2.0.0", ["2.0.0", "1.4.0"], ALL) == ["2", "2.0", "latest"]


def test_staging_tags_never_count_as_releases():
    """`pr-12` (and the floating tags themselves) are not releases."""
    assert tags_to_move("1.0.1", ["1.0.0", staging_tag(12), "latest", "9", "9.9"], ALL) \
        == ["1", "1.0", "latest"]
    assert tags_to_move(staging_tag(12), ["1.0.0"], ALL) == []


def test_floating_tags_follows_its_configuration():
    """FLOATING_TAGS=latest moves latest only; empty moves nothing."""
    assert tags_to_move("1.4.0", ["1.3.2"], ("latest",)) == ["latest"]
    assert tags_to_move("1.4.0", ["1.3.2"], ()) == []
