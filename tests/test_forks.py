"""The fork rule: whose head is built before the merge (pure)."""

from __future__ import annotations

from github_app.forks import approves_head, trusted_head
from github_app.webhooks import BuildKind, BuildRequest


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


def request(action, labels, label=None):
    return BuildRequest(kind=BuildKind.PRE_MERGE, delivery_id="d", installation_id=1,
                        owner="octo-org", repo="svc", clone_url=None, html_url=None,
                        head_sha="a" * 40, sender="maintainer", action=action,
                        labels=tuple(labels), label=label)


def test_adding_the_build_label_approves_that_head_only():
    """`slipway:build` (any case) being added approves the head; its presence later does not."""
    assert approves_head(request("labeled", ["bug", "Slipway:Build"], label="Slipway:Build"))
    assert not approves_head(request("synchronize", ["slipway:build"]))
    assert not approves_head(request("labeled", ["slipway:build", "version:1.0.0"],
                                     label="version:1.0.0"))
    assert not approves_head(request("labeled", ["slipway"], label="slipway"))
