"""The fork rule: whose head is built before the merge (pure)."""

from __future__ import annotations

from github_app.forks import maintainer_allows, trusted_head


def test_by_default_only_the_base_owners_own_branches_are_trusted():
    """ALLOWED_OWNERS unset: a head from the base owner is built, a fork's is not."""
    assert trusted_head("octo-org", "Octo-Org", None)
    assert not trusted_head("stranger", "octo-org", None)


def test_allowed_owners_lists_the_trusted_accounts():
    """ALLOWED_OWNERS=octo-org,partner: both are trusted, anyone else is not."""
    assert trusted_head("Partner", "octo-org", ("octo-org", "partner"))
    assert not trusted_head("stranger", "octo-org", ("octo-org", "partner"))


def test_any_installation_does_not_mean_any_fork():
    """ALLOWED_OWNERS=*: any account may install, but only the base owner's heads are built."""
    assert trusted_head("octo-org", "octo-org", ("*",))
    assert not trusted_head("stranger", "octo-org", ("*",))


def test_a_deleted_fork_is_never_trusted():
    """A head repository that no longer exists has no owner to trust."""
    assert not trusted_head(None, "octo-org", ("octo-org",))


def test_the_build_label_is_a_maintainers_go_ahead():
    """`slipway:build` (any case) lifts the rule for one pull request."""
    assert maintainer_allows(["bug", "Slipway:Build"])
    assert not maintainer_allows(["bug", "slipway"])
