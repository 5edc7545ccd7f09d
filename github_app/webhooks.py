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
        action = payload.get("action")
        installation = payload.get("installation")
        repository = payload.get("repository")
        return cls(
            id=delivery_id,
            event=event,
            action=action if isinstance(action, str) else None,
            payload=payload,
            installation_id=_int_or_none(installation.get("id"))
            if isinstance(installation, dict)
            else None,
            repository=repository.get("full_name") if isinstance(repository, dict) else None,
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


# --- deciding -------------------------------------------------------------------------------


class BuildKind(enum.StrEnum):
    MERGE = "merge"
    RERUN_CHECK_RUN = "rerun_check_run"
    RERUN_CHECK_SUITE = "rerun_check_suite"
    PRE_MERGE = "pre_merge"  # an open pull request: build its head, stage it as pr-<number>
    CLOSED = "closed"  # closed without a merge: remove its staging tags


# Pull request actions that (re)build or re-preview the head before the merge.
PRE_MERGE_ACTIONS = ("opened", "reopened", "synchronize", "edited", "labeled", "unlabeled")
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


def decide(
    delivery: Delivery, *, target_branch: str, app_id: int | str | None
) -> BuildRequest | Ignored | Ping:
    """Decide from the payload alone: build (merge or re-run), ignore with a reason, or ping."""
    payload = delivery.payload
    if delivery.event == "ping":
        return Ping(zen=payload.get("zen"), hook_id=_int_or_none(payload.get("hook_id")))
    if delivery.event == "pull_request":
        return _decide_pull_request(delivery, target_branch)
    if delivery.event in ("check_run", "check_suite"):
        return _decide_rerun(delivery, app_id)
    return Ignored(f"event {delivery.event} is not built")


def _decide_pull_request(delivery: Delivery, target_branch: str) -> BuildRequest | Ignored:
    pr = delivery.payload.get("pull_request")
    if delivery.action in PRE_MERGE_ACTIONS:
        return _decide_pre_merge(delivery, target_branch)
    if delivery.action != "closed":
        return Ignored(
            f"pull_request {delivery.action} is not built: only merged pull requests are"
        )
    if not isinstance(pr, dict):
        return Ignored("pull_request closed without a pull_request object")
    if pr.get("merged") is not True:
        return _decide_closed(delivery, target_branch)
    base_ref = (pr.get("base") or {}).get("ref")
    if base_ref != target_branch:
        return Ignored(f"merged into {base_ref}, not {target_branch}")
    where = _where(delivery)
    if isinstance(where, Ignored):
        return where
    merge_commit_sha = pr.get("merge_commit_sha")
    head_sha = (pr.get("head") or {}).get("sha")
    if not merge_commit_sha or not head_sha:
        return Ignored("merged pull request without merge_commit_sha or head sha")
    return BuildRequest(
        kind=BuildKind.MERGE,
        merge_commit_sha=merge_commit_sha,
        head_sha=head_sha,
        pr_number=_int_or_none(pr.get("number")),
        pr_title=pr.get("title") or "",
        labels=_label_names(pr),
        base_ref=base_ref,
        action=delivery.action,
        head_owner=_head_owner(pr),
        **where,
    )


def _decide_pre_merge(delivery: Delivery, target_branch: str) -> BuildRequest | Ignored:
    """An open pull request into the target branch: build (or re-preview) its head."""
    action = delivery.action
    pr = delivery.payload.get("pull_request")
    if not isinstance(pr, dict):
        return Ignored(f"pull_request {action} without a pull_request object")
    base_ref = (pr.get("base") or {}).get("ref")
    if base_ref != target_branch:
        return Ignored(f"pull request into {base_ref}, not {target_branch}: not built "
                       "before the merge")
    if pr.get("state") != "open":
        return Ignored(f"pull_request {action} on a closed pull request")
    if action in ("labeled", "unlabeled"):
        name = ((delivery.payload.get("label") or {}).get("name") or "").strip().lower()
        if not name.startswith(_VERSION_LABEL_PREFIXES) and name != BUILD_LABEL:
            return Ignored(f"label {name or '(none)'} changes neither the version nor the build")
    if action == "edited":
        changes = delivery.payload.get("changes") or {}
        if "title" not in changes and "base" not in changes:
            return Ignored("pull_request edited: neither its title nor its base changed")
    where = _where(delivery)
    if isinstance(where, Ignored):
        return where
    head_sha = (pr.get("head") or {}).get("sha")
    if not head_sha:
        return Ignored(f"pull_request {action} without a head sha")
    return BuildRequest(
        kind=BuildKind.PRE_MERGE,
        head_sha=head_sha,
        pr_number=_int_or_none(pr.get("number")),
        pr_title=pr.get("title") or "",
        labels=_label_names(pr),
        base_ref=base_ref,
        action=action,
        head_owner=_head_owner(pr),
        **where,
    )


def _decide_closed(delivery: Delivery, target_branch: str) -> BuildRequest | Ignored:
    """Closed without a merge: its staging tags go; nothing is built."""
    pr = delivery.payload["pull_request"]
    base_ref = (pr.get("base") or {}).get("ref")
    if base_ref != target_branch:
        return Ignored("pull_request closed without merge")
    where = _where(delivery)
    if isinstance(where, Ignored):
        return where
    return BuildRequest(
        kind=BuildKind.CLOSED,
        head_sha=(pr.get("head") or {}).get("sha") or "",
        pr_number=_int_or_none(pr.get("number")),
        pr_title=pr.get("title") or "",
        base_ref=base_ref,
        action="closed",
        head_owner=_head_owner(pr),
        **where,
    )


def _label_names(pr: dict) -> tuple[str, ...]:
    return tuple(
        label["name"]
        for label in pr.get("labels") or ()
        if isinstance(label, dict) and isinstance(label.get("name"), str)
    )


def _head_owner(pr: dict) -> str | None:
    repo = (pr.get("head") or {}).get("repo")
    if not isinstance(repo, dict):
        return None  # the fork was deleted
    return (repo.get("owner") or {}).get("login")


def _decide_rerun(delivery: Delivery, app_id: int | str | None) -> BuildRequest | Ignored:
    event = delivery.event
    if delivery.action != "rerequested":
        return Ignored(f"{event} {delivery.action} is not built: only rerequested is")
    item = delivery.payload.get(event)
    if not isinstance(item, dict):
        return Ignored(f"{event} rerequested without a {event} object")
    owner_app = _int_or_none((item.get("app") or {}).get("id"))
    if app_id is None or owner_app is None or str(owner_app) != str(app_id):
        return Ignored(
            f"{event} rerequested belongs to another app (id {owner_app}), not this one "
            f"(id {app_id})"
        )
    where = _where(delivery)
    if isinstance(where, Ignored):
        return where
    head_sha = item.get("head_sha")
    if not head_sha:
        return Ignored(f"{event} rerequested without head_sha")
    if event == "check_run":
        suite = item.get("check_suite") or {}
        pulls = item.get("pull_requests") or suite.get("pull_requests") or ()
        return BuildRequest(
            kind=BuildKind.RERUN_CHECK_RUN,
            head_sha=head_sha,
            check_run_id=_int_or_none(item.get("id")),
            check_run_name=item.get("name"),
            external_id=item.get("external_id") or None,
            check_suite_id=_int_or_none(suite.get("id")),
            pr_number=_first_pull_number(pulls),
            **where,
        )
    return BuildRequest(
        kind=BuildKind.RERUN_CHECK_SUITE,
        head_sha=head_sha,
        check_suite_id=_int_or_none(item.get("id")),
        pr_number=_first_pull_number(item.get("pull_requests") or ()),
        **where,
    )


def _where(delivery: Delivery) -> dict[str, Any] | Ignored:
    """The fields every BuildRequest shares: delivery, installation, repository, sender."""
    payload = delivery.payload
    repository = payload.get("repository")
    if not isinstance(repository, dict):
        return Ignored(f"{delivery.event} {delivery.action} without a repository")
    if delivery.installation_id is None:
        return Ignored(
            f"{delivery.event} {delivery.action} without an installation: it did not come "
            "from an installed GitHub App"
        )
    owner = (repository.get("owner") or {}).get("login")
    name = repository.get("name")
    if not owner or not name:
        owner, _, name = (repository.get("full_name") or "/").partition("/")
    return {
        "delivery_id": delivery.id,
        "installation_id": delivery.installation_id,
        "owner": owner,
        "repo": name,
        "clone_url": repository.get("clone_url"),
        "html_url": repository.get("html_url"),
        "sender": (payload.get("sender") or {}).get("login"),
    }


def _first_pull_number(pulls: Sequence[Any]) -> int | None:
    for pull in pulls:
        if isinstance(pull, dict) and _int_or_none(pull.get("number")) is not None:
            return pull["number"]
    return None
