"""Webhook deliveries: verify, parse, and decide whether to build.

Pure: no network, disk, clock or Flask globals. `Delivery.from_http` takes a
header mapping and the raw body bytes, checks the signature before it reads
anything else, and returns a `Delivery`; `decide` turns it into a
`BuildRequest`, an `Ignored` with a human reason, or a `Ping`.
https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from github_app.errors import WebhookRejected

SIGNATURE_HEADER = "X-Hub-Signature-256"
EVENT_HEADER = "X-GitHub-Event"
DELIVERY_HEADER = "X-GitHub-Delivery"

_SIGNATURE = re.compile(r"sha256=([0-9a-fA-F]{64})")
_EVENT = re.compile(r"[a-z_]{1,64}")
# GitHub sends a GUID; GitHub Enterprise Server and test tools send other plain ids.
_DELIVERY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


@dataclass(frozen=True)
class Delivery:
    """One verified webhook delivery."""

    id: str
    event: str
    action: str | None
    payload: dict[str, Any] = field(repr=False)
    installation_id: int | None
    repository: str | None  # "owner/name"

    @classmethod
    def from_http(
        cls, headers: Mapping[str, str], body: bytes, *, secrets: Sequence[str]
    ) -> Delivery:
        """Verify the signature of `body` against any of `secrets`, then parse the delivery.

        Raises `WebhookRejected` 401 for a missing or wrong signature, 400 for
        malformed headers or a body that is not a JSON object.
        """
        lowered = {name.lower(): value for name, value in headers.items()}
        verify_signature(body, lowered.get(SIGNATURE_HEADER.lower()), secrets)
        event = (lowered.get(EVENT_HEADER.lower()) or "").strip()
        if not event:
            raise WebhookRejected(400, f"The {EVENT_HEADER} header is missing.")
        if not _EVENT.fullmatch(event):
            raise WebhookRejected(400, f"The {EVENT_HEADER} header is malformed: {event[:64]!r}.")
        delivery_id = (lowered.get(DELIVERY_HEADER.lower()) or "").strip()
        if not delivery_id:
            raise WebhookRejected(400, f"The {DELIVERY_HEADER} header is missing.")
        if not _DELIVERY_ID.fullmatch(delivery_id):
            raise WebhookRejected(
                400, f"The {DELIVERY_HEADER} header is malformed: {delivery_id[:64]!r}."
            )
        payload = _parse_body(body)
        action = _field(payload, "action", str)
        installation_id = _field(payload, "installation.id", int)
        repository = _field(payload, "repository.full_name", str)
        return cls(
            id=delivery_id,
            event=event,
            action=action,
            payload=payload,
            installation_id=installation_id,
            repository=repository,
        )


def verify_signature(body: bytes, signature: str | None, secrets: Sequence[str]) -> None:
    """Raise `WebhookRejected(401)` unless `signature` is the HMAC-SHA256 of `body`."""
    # An empty key is an HMAC anyone can compute, so it never counts as a secret.
    keys = [secret.encode() for secret in secrets if secret]
    if not keys:
        raise WebhookRejected(
            401, "No webhook secret is configured, so no delivery can be verified: "
            "set GITHUB_WEBHOOK_SECRET."
        )
    if not signature:
        raise WebhookRejected(
            401, f"The {SIGNATURE_HEADER} header is missing: set the webhook secret in the "
            "App's settings to the value of GITHUB_WEBHOOK_SECRET."
        )
    match = _SIGNATURE.fullmatch(signature.strip())
    if match is None:
        raise WebhookRejected(401, f"The {SIGNATURE_HEADER} header is not sha256=<64 hex digits>.")
    given = match.group(1).lower()
    # Compare with every key (no early exit) in constant time per key.
    matches = [
        hmac.compare_digest(hmac.new(key, body, hashlib.sha256).hexdigest(), given) for key in keys
    ]
    if not any(matches):
        raise WebhookRejected(
            401, f"The {SIGNATURE_HEADER} signature does not match: the App's webhook secret "
            "and GITHUB_WEBHOOK_SECRET differ."
        )


def _parse_body(body: bytes) -> dict[str, Any]:
    try:
        # orjson: the payload is ~25 KB and parsing it was a tenth of the handler's CPU.
        payload = orjson.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise WebhookRejected(
            400, "The body is not JSON: set the webhook's content type to application/json."
        ) from None
    if not isinstance(payload, dict):
        raise WebhookRejected(400, "The body is JSON but not an object, as GitHub sends.")
    return payload


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


_KINDS = {str: "a string", int: "a whole number", bool: "true or false", dict: "an object",
          list: "an array"}


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, float):
        return "a number with a fraction"
    return _KINDS.get(type(value), type(value).__name__)


def _field(node: Any, path: str, kind: type, *, required: bool = False, where: str = "") -> Any:
    """The value at `path` ("a.b.c") of `node`, checked to be a `kind`; None when absent or null.

    A signed body of the wrong shape must be a 400 that says what is wrong, never a
    crash: a value of another type anywhere on the path raises `WebhookRejected(400)`,
    and so does an absent or null value when `required`.
    """
    value = node
    walked = where
    for part in path.split("."):
        if value is None:
            break
        if not isinstance(value, dict):
            raise _malformed(f"{walked} must be an object, not {_describe(value)}")
        walked = f"{walked}.{part}" if walked else part
        value = value.get(part)
    if value is None:
        if required:
            raise _malformed(f"{where + '.' if where else ''}{path} is missing")
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _malformed(f"{walked} must be {_KINDS[kind]}, not {_describe(value)}")
    return value


def _items(node: Any, path: str, kind: type, *, where: str = "") -> list:
    """The array at `path` (empty when absent), each item checked to be a `kind`."""
    items = _field(node, path, list, where=where) or []
    for index, item in enumerate(items):
        if not isinstance(item, kind) or (kind is int and isinstance(item, bool)):
            raise _malformed(f"{where + '.' if where else ''}{path}[{index}] must be "
                             f"{_KINDS[kind]}, not {_describe(item)}")
    return items


def _malformed(what: str) -> WebhookRejected:
    return WebhookRejected(400, f"The body is not shaped like GitHub's payload: {what}.")


# --- deciding -------------------------------------------------------------------------------


class BuildKind(enum.StrEnum):
    MERGE = "merge"
    RERUN_CHECK_RUN = "rerun_check_run"
    RERUN_CHECK_SUITE = "rerun_check_suite"
    PRE_MERGE = "pre_merge"  # an open pull request: build its head, stage it as pr-<number>
    CLOSED = "closed"  # closed without a merge: remove its staging tags


# Pull request actions that (re)build or re-preview the head before the merge.
PRE_MERGE_ACTIONS = ("opened", "reopened", "synchronize", "edited", "labeled", "unlabeled")
# Not GitHub's: the action of the pre-merge jobs Slipway queues itself after a release, so
# that open pull requests' checks say what merging publishes now (a bump moved on).
REFRESH = "refresh"
# A label whose coming or going may change what the merge publishes.
BUILD_LABEL = "slipway:build"
_VERSION_LABEL_PREFIXES = ("version:", "semver:")


@dataclass(frozen=True)
class BuildRequest:
    """What the worker needs to build, taken from the payload alone (no API call).

    A merge carries the pull request; a re-run carries the check run or suite, and
    the worker finds the original build by `external_id` or `head_sha`.
    """

    kind: BuildKind
    delivery_id: str
    installation_id: int
    owner: str
    repo: str
    clone_url: str | None
    html_url: str | None
    head_sha: str
    sender: str | None
    merge_commit_sha: str | None = None
    pr_number: int | None = None
    pr_title: str | None = None
    labels: tuple[str, ...] = ()
    base_ref: str | None = None
    check_run_id: int | None = None
    check_run_name: str | None = None
    external_id: str | None = None
    check_suite_id: int | None = None
    action: str | None = None
    head_owner: str | None = None  # owner of the head repository (a fork's owner); None: gone
    label: str | None = None  # the label added or removed (`labeled`, `unlabeled`)
    # repository.private of the payload; None (unknown) is treated as private.
    private: bool | None = None

    @property
    def repository(self) -> str:
        """"owner/repo"."""
        return f"{self.owner}/{self.repo}"


@dataclass(frozen=True)
class Ignored:
    """A delivery that builds nothing, and why (shown in the webhook's answer)."""

    reason: str


@dataclass(frozen=True)
class Ping:
    """GitHub's `ping`, sent when the webhook is created."""

    zen: str | None
    hook_id: int | None


Decision = BuildRequest | Ignored | Ping

# The events and actions Slipway builds for: `decide` below, and the builds before the merge
# of DESIGN.md ("Pull requests before the merge"). The redelivery sweep asks GitHub to send
# again only deliveries of these; keep it in step with `decide`.
ACTED_ON: Mapping[str, frozenset[str]] = {
    "pull_request": frozenset(
        {"closed", "opened", "reopened", "synchronize", "edited", "labeled", "unlabeled"}
    ),
    "check_run": frozenset({"rerequested"}),
    "check_suite": frozenset({"rerequested"}),
}


def acts_on(event: str, action: str | None) -> bool:
    """True when a delivery of `event` with `action` may build something."""
    return action in ACTED_ON.get(event, ())


def decide(
    delivery: Delivery, *, target_branch: str, app_id: int | str | None
) -> BuildRequest | Ignored | Ping:
    """Decide from the payload alone: build (merge or re-run), ignore with a reason, or ping.

    Raises `WebhookRejected(400)` naming the field when the payload is not shaped
    as GitHub sends it (a field of the wrong type, or a required one missing).
    """
    payload = delivery.payload
    if delivery.event == "ping":
        return Ping(zen=_field(payload, "zen", str), hook_id=_field(payload, "hook_id", int))
    if delivery.event == "pull_request":
        return _decide_pull_request(delivery, target_branch)
    if delivery.event in ("check_run", "check_suite"):
        return _decide_rerun(delivery, app_id)
    return Ignored(f"event {delivery.event} is not built")


# The installation events that give the App an account's repositories.
_INSTALLING = {"installation": ("created", "new_permissions_accepted", "unsuspend"),
               "installation_repositories": ("added",)}


def installing_account(delivery: Delivery) -> str | None:
    """The account an `installation` (created...) or `installation_repositories` (added)
    delivery installs the App on; None for every other delivery."""
    if delivery.action not in _INSTALLING.get(delivery.event, ()):
        return None
    return _field(delivery.payload, "installation.account.login", str, required=True)


def _decide_pull_request(delivery: Delivery, target_branch: str) -> BuildRequest | Ignored:
    if delivery.action in PRE_MERGE_ACTIONS:
        return _decide_pre_merge(delivery, target_branch)
    if delivery.action != "closed":
        return Ignored(
            f"pull_request {delivery.action} is not built: only merged pull requests are"
        )
    pr = _field(delivery.payload, "pull_request", dict, required=True)
    if _field(pr, "merged", bool, where="pull_request") is not True:
        return _decide_closed(delivery, pr, target_branch)
    base_ref = _field(pr, "base.ref", str, required=True, where="pull_request")
    if base_ref != target_branch:
        return Ignored(f"merged into {base_ref}, not {target_branch}")
    where = _where(delivery)
    if isinstance(where, Ignored):
        return where
    merge_commit_sha = _field(pr, "merge_commit_sha", str, where="pull_request")
    head_sha = _field(pr, "head.sha", str, where="pull_request")
    number, title, labels, head_owner = _pull_request_fields(pr)
    if not merge_commit_sha or not head_sha:
        return Ignored("merged pull request without merge_commit_sha or head sha")
    return BuildRequest(
        kind=BuildKind.MERGE,
        merge_commit_sha=merge_commit_sha,
        head_sha=head_sha,
        pr_number=number,
        pr_title=title,
        labels=labels,
        base_ref=base_ref,
        action=delivery.action,
        head_owner=head_owner,
        **where,
    )


def _decide_pre_merge(delivery: Delivery, target_branch: str) -> BuildRequest | Ignored:
    """An open pull request into the target branch: build (or re-preview) its head."""
    action = delivery.action
    payload = delivery.payload
    pr = _field(payload, "pull_request", dict, required=True)
    base_ref = _field(pr, "base.ref", str, required=True, where="pull_request")
    if base_ref != target_branch:
        return Ignored(f"pull request into {base_ref}, not {target_branch}: not built "
                       "before the merge")
    if _field(pr, "state", str, where="pull_request") != "open":
        return Ignored(f"pull_request {action} on a closed pull request")
    if action in ("labeled", "unlabeled"):
        name = (_field(payload, "label.name", str) or "").strip().lower()
        if not name.startswith(_VERSION_LABEL_PREFIXES) and name != BUILD_LABEL:
            return Ignored(f"label {name or '(none)'} changes neither the version nor the build")
    if action == "edited":
        changes = _field(payload, "changes", dict) or {}
        if "title" not in changes and "base" not in changes:
            return Ignored("pull_request edited: neither its title nor its base changed")
    where = _where(delivery)
    if isinstance(where, Ignored):
        return where
    head_sha = _field(pr, "head.sha", str, where="pull_request")
    number, title, labels, head_owner = _pull_request_fields(pr)
    if not head_sha:
        return Ignored(f"pull_request {action} without a head sha")
    return BuildRequest(
        kind=BuildKind.PRE_MERGE,
        head_sha=head_sha,
        label=((delivery.payload.get("label") or {}).get("name")
               if action in ("labeled", "unlabeled") else None),
        pr_number=number,
        pr_title=title,
        labels=labels,
        base_ref=base_ref,
        action=action,
        head_owner=head_owner,
        **where,
    )


def _decide_closed(delivery: Delivery, pr: dict, target_branch: str) -> BuildRequest | Ignored:
    """Closed without a merge: its staging tags go; nothing is built."""
    base_ref = _field(pr, "base.ref", str, required=True, where="pull_request")
    if base_ref != target_branch:
        return Ignored("pull_request closed without merge")
    where = _where(delivery)
    if isinstance(where, Ignored):
        return where
    number, title, _, head_owner = _pull_request_fields(pr)
    return BuildRequest(
        kind=BuildKind.CLOSED,
        head_sha=_field(pr, "head.sha", str, where="pull_request") or "",
        pr_number=number,
        pr_title=title,
        base_ref=base_ref,
        action="closed",
        head_owner=head_owner,
        **where,
    )


def _pull_request_fields(pr: dict) -> tuple[int | None, str, tuple[str, ...], str | None]:
    """Number, title, label names and the head repository's owner (None: the fork is gone)."""
    labels = tuple(
        _field(label, "name", str, required=True, where=f"pull_request.labels[{index}]")
        for index, label in enumerate(_items(pr, "labels", dict, where="pull_request"))
    )
    return (
        _field(pr, "number", int, where="pull_request"),
        _field(pr, "title", str, where="pull_request") or "",
        labels,
        _field(pr, "head.repo.owner.login", str, where="pull_request"),
    )


def _decide_rerun(delivery: Delivery, app_id: int | str | None) -> BuildRequest | Ignored:
    event = delivery.event
    if delivery.action != "rerequested":
        return Ignored(f"{event} {delivery.action} is not built: only rerequested is")
    item = _field(delivery.payload, event, dict, required=True)
    owner_app = _field(item, "app.id", int, where=event)
    if app_id is None or owner_app is None or str(owner_app) != str(app_id):
        return Ignored(
            f"{event} rerequested belongs to another app (id {owner_app}), not this one "
            f"(id {app_id})"
        )
    where = _where(delivery)
    if isinstance(where, Ignored):
        return where
    head_sha = _field(item, "head_sha", str, where=event)
    pulls = _pull_numbers(item, "pull_requests", where=event)
    item_id = _field(item, "id", int, where=event)
    if event == "check_run":
        name = _field(item, "name", str, where=event)
        external_id = _field(item, "external_id", str, where=event)
        suite_id = _field(item, "check_suite.id", int, where=event)
        pulls = pulls or _pull_numbers(item, "check_suite.pull_requests", where=event)
    if not head_sha:
        return Ignored(f"{event} rerequested without head_sha")
    if event == "check_run":
        return BuildRequest(
            kind=BuildKind.RERUN_CHECK_RUN,
            head_sha=head_sha,
            check_run_id=item_id,
            check_run_name=name,
            external_id=external_id or None,
            check_suite_id=suite_id,
            pr_number=pulls[0] if pulls else None,
            **where,
        )
    return BuildRequest(
        kind=BuildKind.RERUN_CHECK_SUITE,
        head_sha=head_sha,
        check_suite_id=item_id,
        pr_number=pulls[0] if pulls else None,
        **where,
    )


def _where(delivery: Delivery) -> dict[str, Any] | Ignored:
    """The fields every BuildRequest shares: delivery, installation, repository, sender."""
    payload = delivery.payload
    repository = _field(payload, "repository", dict)
    if repository is None:
        return Ignored(f"{delivery.event} {delivery.action} without a repository")
    if delivery.installation_id is None:
        return Ignored(
            f"{delivery.event} {delivery.action} without an installation: it did not come "
            "from an installed GitHub App"
        )
    owner = _field(repository, "owner.login", str, where="repository")
    name = _field(repository, "name", str, where="repository")
    if not owner or not name:
        owner, _, name = (delivery.repository or "/").partition("/")
    if not owner or not name:
        raise _malformed("repository.owner.login and repository.name are missing")
    return {
        "delivery_id": delivery.id,
        "installation_id": delivery.installation_id,
        "owner": owner,
        "repo": name,
        "clone_url": _field(repository, "clone_url", str, where="repository"),
        "html_url": _field(repository, "html_url", str, where="repository"),
        "sender": _field(payload, "sender.login", str),
        # Unknown counts as private: its pages are then shown only to readers.
        "private": _field(repository, "private", bool, where="repository"),
    }


def _pull_numbers(node: Any, path: str, *, where: str) -> list[int]:
    """The numbers of the pull requests listed at `path` (items without one are skipped)."""
    pulls = _items(node, path, dict, where=where)
    numbers = []
    for index, pull in enumerate(pulls):
        number = _field(pull, "number", int, where=f"{where}.{path}[{index}]")
        if number is not None:
            numbers.append(number)
    return numbers

