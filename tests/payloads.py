"""Real webhook payloads from GitHub's own examples (npm `@octokit/webhooks-examples`).

    load_event("pull_request", "closed")                       # deep copy of the first example
    load_event("pull_request", "closed", pull_request__merged=True)   # `__` walks into the payload
    merged_pull_request(labels=["version:1.4.0"], title="Release 1.4.0")
    pull_request_event("synchronize", head_sha=sha, labels=["semver:minor"])   # before the merge
    body = to_body(payload); headers = webhook_headers("pull_request", body, secret)

Never hand-write a payload: change the few fields a scenario needs in a real one.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import hmac
import json
import uuid
from pathlib import Path
from typing import Any

EXAMPLES = (
    Path(__file__).parent / "node_modules/@octokit/webhooks-examples/api.github.com/index.json"
)


@functools.cache
def _examples() -> dict[str, list[dict]]:
    return {entry["name"]: entry["examples"] for entry in json.loads(EXAMPLES.read_text())}


def load_event(event: str, action: str | None = None, **changes: Any) -> dict:
    """A deep copy of the first real example of `event` (with `action`), with `changes` applied.

    A change's key walks into the payload with `__`: `pull_request__base__ref="develop"`.
    Every key but the last must exist, so a typo fails loudly.
    """
    examples = _examples()[event]
    for example in examples:
        if action is None or example.get("action") == action:
            payload = copy.deepcopy(example)
            break
    else:
        actions = sorted({str(e.get("action")) for e in examples})
        raise LookupError(f"no example of {event} {action}; the examples have {actions}")
    for key, value in changes.items():
        set_path(payload, key.split("__"), value)
    return payload


def set_path(payload: dict, path: list[str], value: Any) -> None:
    """Set payload[path[0]][path[1]]... = value; the parents must exist."""
    node = payload
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = copy.deepcopy(value)


def label_objects(names: list[str] | tuple[str, ...], template: dict | None = None) -> list[dict]:
    """Label objects made from a real label of the examples, one per name, in order."""
    if template is None:
        template = load_event("pull_request", "closed")["pull_request"]["labels"][0]
    made = []
    for index, name in enumerate(names):
        label = copy.deepcopy(template)
        label.update(id=template["id"] + index + 1, name=name, default=False)
        label["url"] = template["url"].rsplit("/", 1)[0] + "/" + name
        made.append(label)
    return made


def merged_pull_request(
    labels: list[str] | tuple[str, ...] = (),
    title: str | None = None,
    base_ref: str = "develop",
    *,
    merged: bool = True,
    merge_commit_sha: str | None = None,
) -> dict:
    """The real `pull_request` `closed` example, merged into `base_ref` with these labels."""
    payload = load_event("pull_request", "closed")
    pr = payload["pull_request"]
    template = pr["labels"][0]
    pr["labels"] = label_objects(labels, template)
    if title is not None:
        pr["title"] = title
    pr["base"]["ref"] = base_ref
    pr["merged"] = merged
    if merged:
        pr["merged_at"] = pr["closed_at"]
        pr["merged_by"] = copy.deepcopy(payload["sender"])
    if merge_commit_sha is not None:
        pr["merge_commit_sha"] = merge_commit_sha
    return payload


# The actions that build before the merge. The examples hold each of them but `edited`,
# which is the `opened` example with GitHub's `changes` object (webhooks-types'
# PullRequestEditedEvent: `changes.title.from`, `changes.body.from`).
PRE_MERGE_ACTIONS = ("opened", "reopened", "synchronize", "edited", "labeled", "unlabeled")


def pull_request_event(
    action: str,
    *,
    labels: list[str] | tuple[str, ...] = (),
    title: str | None = None,
    base_ref: str = "develop",
    head_sha: str | None = None,
    label: str | None = None,
    changes: dict | None = None,
    before: str | None = None,
) -> dict:
    """A real `pull_request` example of an open pull request, with `action`.

    `label` is the label added (`labeled`) or removed (`unlabeled`); `changes` is
    what `edited` changed (default: the title); `before` the head a `synchronize`
    replaced.
    """
    if action not in PRE_MERGE_ACTIONS:
        raise LookupError(f"{action} is not an action before the merge: {PRE_MERGE_ACTIONS}")
    example = "opened" if action == "edited" else action
    # The first example of the action sent to an App (with `installation`), as Slipway gets.
    payload = copy.deepcopy(next(e for e in _examples()["pull_request"]
                                 if e.get("action") == example and "installation" in e))
    payload["action"] = action
    pr = payload["pull_request"]
    template = load_event("pull_request", "closed")["pull_request"]["labels"][0]
    old_title = pr["title"]
    if title is not None:
        pr["title"] = title
    pr["labels"] = label_objects(labels, template)
    pr["base"]["ref"] = base_ref
    pr.update(state="open", merged=False, merged_at=None, closed_at=None, merged_by=None)
    if head_sha is not None:
        pr["head"]["sha"] = head_sha
    if action in ("labeled", "unlabeled"):
        payload["label"] = label_objects([label or "bug"], template)[0]
    if action == "edited":
        payload["changes"] = changes if changes is not None else {"title": {"from": old_title}}
    if action == "synchronize":
        payload["before"] = before or "0" * 40
        payload["after"] = pr["head"]["sha"]
    return payload


def to_body(payload: dict) -> bytes:
    """The payload as GitHub sends it: compact JSON bytes."""
    return json.dumps(payload, separators=(",", ":")).encode()


def sign(body: bytes, secret: str) -> str:
    """The `X-Hub-Signature-256` header GitHub sends for `body` signed with `secret`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_headers(
    event: str, body: bytes, secret: str | None, *, delivery_id: str | None = None
) -> dict[str, str]:
    """The headers of a real delivery (without a signature when `secret` is None)."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/044aadd",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery_id or str(uuid.uuid4()),
        "X-GitHub-Hook-ID": "292430182",
        "X-GitHub-Hook-Installation-Target-Type": "integration",
        "X-GitHub-Hook-Installation-Target-ID": "79929171",
    }
    if secret is not None:
        headers["X-Hub-Signature-256"] = sign(body, secret)
    return headers
