"""Whose code is built before the merge: the fork rule.

A pull request's head runs in a build before anyone merges it, so it is built
only when its repository's owner is trusted: an account of ALLOWED_OWNERS, or,
when ALLOWED_OWNERS is not set (or is `*`, which trusts any installation but not
any fork), the owner of the base repository. A maintainer lifts the rule for one
head by adding the label `slipway:build`: the label stays on the pull request
through later pushes, so it approves the head it was added to, not the commits
pushed after it (add it again to build those). After the merge the code is the
target branch's, and it is built like any other.

Pure: no network, disk, clock or Flask globals.
"""

from __future__ import annotations

from collections.abc import Iterable

from github_app.webhooks import BUILD_LABEL

ANY = "*"


def trusted_head(head_owner: str | None, base_owner: str,
                 allowed_owners: Iterable[str] | None) -> bool:
    """True when the head repository's owner may have its code built before the merge."""
    if not head_owner:
        return False  # the fork is gone: nobody vouches for the head
    owners = [owner.lower() for owner in allowed_owners or ()]
    if not owners or ANY in owners:
        return head_owner.lower() == base_owner.lower()
    return head_owner.lower() in owners


def approves_head(request) -> bool:
    """True for the delivery of a maintainer adding `slipway:build`: build this head."""
    return (request.action == "labeled" and (request.label or "").strip().lower() == BUILD_LABEL
            and any(label.strip().lower() == BUILD_LABEL for label in request.labels))
