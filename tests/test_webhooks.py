"""Webhook deliveries: signature first, then headers and body, then the build decision.

Every payload is one of GitHub's own examples (tests/payloads.py)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from payloads import (
    PRE_MERGE_ACTIONS,
    load_event,
    merged_pull_request,
    pull_request_event,
    set_path,
    sign,
    to_body,
    webhook_headers,
)

from github_app.errors import WebhookRejected
from github_app.webhooks import (
    BuildKind,
    BuildRequest,
    Delivery,
    Ignored,
    Ping,
    decide,
    installing_account,
)

SECRET = "s3cret"
OUR_APP = 2  # the app id of the check_run examples


def deliver(payload: dict, event: str, *, secret: str = SECRET, secrets=(SECRET,)) -> Delivery:
    body = to_body(payload)
    return Delivery.from_http(webhook_headers(event, body, secret), body, secrets=secrets)


def rejected(headers: dict, body: bytes, secrets=(SECRET,)) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as info:
        Delivery.from_http(headers, body, secrets=secrets)
    return info.value


def decide_for(payload: dict, event: str, *, target_branch="develop", app_id=OUR_APP):
    return decide(deliver(payload, event), target_branch=target_branch, app_id=app_id)


# --- signature, headers, body ------------------------------------------------------------------


def test_a_signed_delivery_is_parsed():
    """A correctly signed pull_request delivery yields its id, event, action and repository."""
    payload = load_event("pull_request", "closed")
    body = to_body(payload)
    headers = webhook_headers("pull_request", body, SECRET, delivery_id="72d3162e-cc78-11e3")
    delivery = Delivery.from_http(headers, body, secrets=[SECRET])
    assert delivery.id == "72d3162e-cc78-11e3"
    assert delivery.event == "pull_request"
    assert delivery.action == "closed"
    assert delivery.installation_id == payload["installation"]["id"]
    assert delivery.repository == "Codertocat/Hello-World"
    assert delivery.payload == payload


def test_header_names_are_case_insensitive():
    """Proxies and WSGI servers change header case; the delivery is still accepted."""
    body = to_body(load_event("ping"))
    headers = {name.lower(): value for name, value in webhook_headers("ping", body, SECRET).items()}
    assert Delivery.from_http(headers, body, secrets=[SECRET]).event == "ping"
    headers = {name.upper(): value for name, value in headers.items()}
    assert Delivery.from_http(headers, body, secrets=[SECRET]).event == "ping"


def test_previous_secret_is_accepted_during_rotation():
    """A delivery signed with the previous secret passes while both are configured."""
    delivery = deliver(load_event("ping"), "ping", secret="old", secrets=[SECRET, "old"])
    assert delivery.event == "ping"


def test_wrong_signature_is_401():
    """A body signed with another secret is rejected 401 with the likely cause."""
    body = to_body(load_event("ping"))
    error = rejected(webhook_headers("ping", body, "another-secret"), body)
    assert error.status == 401
    assert "does not match" in str(error)


def test_a_tampered_body_is_401():
    """A body changed after signing fails the signature check."""
    body = to_body(load_event("ping"))
    headers = webhook_headers("ping", body, SECRET)
    assert rejected(headers, body.replace(b"Codertocat", b"Mallory")).status == 401


def test_missing_signature_is_401():
    """No X-Hub-Signature-256 header: 401 saying which header is missing."""
    body = to_body(load_event("ping"))
    error = rejected(webhook_headers("ping", body, None), body)
    assert error.status == 401
    assert "X-Hub-Signature-256" in str(error)


@pytest.mark.parametrize("signature", ["sha1=abc", "sha256=xyz", "sha256=", "garbage"])
def test_malformed_signature_is_401(signature):
    """A signature header not of the form sha256=<hex> is a wrong signature."""
    body = to_body(load_event("ping"))
    headers = webhook_headers("ping", body, SECRET)
    headers["X-Hub-Signature-256"] = signature
    assert rejected(headers, body).status == 401


def test_an_empty_secret_never_verifies():
    """An empty configured secret would make signatures forgeable; nothing is accepted."""
    body = to_body(load_event("ping"))
    assert rejected(webhook_headers("ping", body, ""), body, secrets=[""]).status == 401


def test_signature_is_checked_before_the_body_is_parsed():
    """An unsigned body that is not even JSON is a 401, not a 400: nothing is read unverified."""
    assert rejected({"X-GitHub-Event": "ping"}, b"{not json").status == 401


@pytest.mark.parametrize(
    ("header", "value", "words"),
    [
        ("X-GitHub-Event", None, "X-GitHub-Event header is missing"),
        ("X-GitHub-Event", "Pull Request!", "X-GitHub-Event header is malformed"),
        ("X-GitHub-Delivery", None, "X-GitHub-Delivery header is missing"),
        ("X-GitHub-Delivery", "<script>", "X-GitHub-Delivery header is malformed"),
    ],
)
def test_malformed_headers_are_400(header, value, words):
    """A signed delivery without a usable event or delivery id header is a 400 that names it."""
    body = to_body(load_event("ping"))
    headers = webhook_headers("ping", body, SECRET)
    if value is None:
        del headers[header]
    else:
        headers[header] = value
    error = rejected(headers, body)
    assert error.status == 400
    assert words in str(error)


@pytest.mark.parametrize("body", [b"payload=%7B%7D", b"[1, 2]", b"\xff\xfe", b""])
def test_a_body_that_is_not_a_json_object_is_400(body):
    """A signed body that is not a JSON object is a 400."""
    error = rejected(webhook_headers("pull_request", body, SECRET), body)
    assert error.status == 400


# --- deciding ----------------------------------------------------------------------------------


def test_a_pull_request_merged_into_develop_is_built():
    """pull_request closed + merged into the target branch becomes a merge BuildRequest."""
    payload = merged_pull_request(["version:1.4.0", "bug"], title="Release 1.4.0")
    decision = decide_for(payload, "pull_request")
    pr = payload["pull_request"]
    assert isinstance(decision, BuildRequest)
    assert decision.kind is BuildKind.MERGE
    assert decision.installation_id == payload["installation"]["id"]
    assert (decision.owner, decision.repo) == ("Codertocat", "Hello-World")
    assert decision.repository == "Codertocat/Hello-World"
    assert decision.clone_url == payload["repository"]["clone_url"]
    assert decision.html_url == payload["repository"]["html_url"]
    assert decision.pr_number == pr["number"]
    assert decision.pr_title == "Release 1.4.0"
    assert decision.labels == ("version:1.4.0", "bug")
    assert decision.head_sha == pr["head"]["sha"]
    assert decision.merge_commit_sha == pr["merge_commit_sha"]
    assert decision.sender == payload["sender"]["login"]
    assert decision.base_ref == "develop"


def test_a_build_request_is_json_ready():
    """The web layer stores dataclasses.asdict(request) as JSON in the job store."""
    decision = decide_for(merged_pull_request(["semver:patch"]), "pull_request")
    data = json.loads(json.dumps(dataclasses.asdict(decision)))
    assert data["kind"] == "merge"
    assert data["labels"] == ["semver:patch"]


def test_target_branch_is_configurable():
    """With TARGET_BRANCH=main a merge into main is built."""
    payload = merged_pull_request(base_ref="main")
    assert isinstance(decide_for(payload, "pull_request", target_branch="main"), BuildRequest)


def test_closed_without_merge_is_ignored():
    """The real closed example (not merged, into master) is ignored with that reason."""
    decision = decide_for(load_event("pull_request", "closed"), "pull_request")
    assert decision == Ignored("pull_request closed without merge")


def test_merged_into_another_branch_is_ignored():
    """A merge into main while the target is develop is ignored, naming both branches."""
    decision = decide_for(merged_pull_request(base_ref="main"), "pull_request")
    assert decision == Ignored("merged into main, not develop")


@pytest.mark.parametrize("action", PRE_MERGE_ACTIONS)
def test_an_open_pull_request_into_the_target_branch_builds_its_head(action):
    """opened, reopened, synchronize, edited (title), labeled and unlabeled (a version
    label) into develop ask for a pre-merge build of the head, with its labels and title."""
    payload = pull_request_event(action, labels=["semver:minor"], title="Add orders",
                                 head_sha="c" * 40, label="semver:minor")
    decision = decide_for(payload, "pull_request")
    assert isinstance(decision, BuildRequest)
    assert decision.kind == BuildKind.PRE_MERGE
    assert (decision.head_sha, decision.merge_commit_sha) == ("c" * 40, None)
    assert (decision.pr_number, decision.pr_title) == (2, "Add orders")
    assert decision.labels == ("semver:minor",)
    assert decision.action == action
    assert decision.head_owner == "Codertocat"


@pytest.mark.parametrize("action", ["opened", "labeled", "reopened"])
def test_a_pull_request_into_another_branch_is_not_built_before_the_merge(action):
    """The real examples target master: with TARGET_BRANCH=develop they build nothing."""
    decision = decide_for(load_event("pull_request", action), "pull_request")
    assert decision == Ignored("pull request into master, not develop: not built before "
                               "the merge")


def test_a_label_that_cannot_change_the_version_is_ignored():
    """Labelling `bug` changes neither the version nor the build: nothing to do."""
    payload = pull_request_event("labeled", labels=["bug"], label="bug")
    assert decide_for(payload, "pull_request") == Ignored(
        "label bug changes neither the version nor the build")
    built = pull_request_event("labeled", labels=["slipway:build"], label="slipway:build")
    assert decide_for(built, "pull_request").kind == BuildKind.PRE_MERGE


def test_an_edit_of_the_body_alone_is_ignored():
    """Only a new title (or base) can change what the merge publishes."""
    payload = pull_request_event("edited", changes={"body": {"from": "old"}})
    assert isinstance(decide_for(payload, "pull_request"), Ignored)


def test_a_fork_pull_request_carries_the_forks_owner():
    """The head repository's owner is what the fork rule looks at; a deleted fork has none."""
    payload = pull_request_event("opened")
    payload["pull_request"]["head"]["repo"]["owner"]["login"] = "stranger"
    assert decide_for(payload, "pull_request").head_owner == "stranger"
    payload["pull_request"]["head"]["repo"] = None
    assert decide_for(payload, "pull_request").head_owner is None


def test_closed_without_merge_into_the_target_branch_removes_its_staging_tag():
    """An unmerged pull request into develop is a `closed` job: its staging tags go."""
    decision = decide_for(merged_pull_request(merged=False), "pull_request")
    assert decision.kind == BuildKind.CLOSED
    assert decision.pr_number == 2


@pytest.mark.parametrize(
    ("event", "action"),
    [("push", None), ("installation", "created"), ("issues", "opened"), ("release", "published")],
)
def test_other_events_are_ignored(event, action):
    """Events other than pull_request, check_run, check_suite and ping are not built."""
    decision = decide_for(load_event(event, action), event)
    assert decision == Ignored(f"event {event} is not built")


def test_ping_answers_ping():
    """GitHub's ping (sent when the webhook is created) is a Ping with its zen."""
    payload = load_event("ping")
    decision = decide_for(payload, "ping")
    assert decision == Ping(zen=payload["zen"], hook_id=payload["hook_id"])


def test_check_run_rerequested_for_our_app_is_rebuilt():
    """"Re-run" on our check run carries its id, name and external id to find the build."""
    payload = load_event("check_run", "rerequested", check_run__external_id="build-17")
    decision = decide_for(payload, "check_run")
    run = payload["check_run"]
    assert isinstance(decision, BuildRequest)
    assert decision.kind is BuildKind.RERUN_CHECK_RUN
    assert decision.check_run_id == run["id"]
    assert decision.check_run_name == run["name"]
    assert decision.external_id == "build-17"
    assert decision.check_suite_id == run["check_suite"]["id"]
    assert decision.head_sha == run["head_sha"]
    assert decision.installation_id == payload["installation"]["id"]
    assert decision.merge_commit_sha is None


def test_check_run_rerequested_from_another_app_is_ignored():
    """Another app's check run is not ours to re-run."""
    decision = decide_for(load_event("check_run", "rerequested"), "check_run", app_id=99)
    assert isinstance(decision, Ignored)
    assert decision.reason == (
        "check_run rerequested belongs to another app (id 2), not this one (id 99)"
    )


def test_check_run_created_is_ignored():
    """Check run events other than rerequested are ignored (our own creations among them)."""
    decision = decide_for(load_event("check_run", "created"), "check_run")
    assert decision == Ignored("check_run created is not built: only rerequested is")


def test_check_suite_rerequested_is_rebuilt():
    """"Re-run all checks" carries the suite id and head sha."""
    payload = load_event("check_suite", "rerequested")
    app_id = payload["check_suite"]["app"]["id"]
    decision = decide_for(payload, "check_suite", app_id=str(app_id))
    suite = payload["check_suite"]
    assert isinstance(decision, BuildRequest)
    assert decision.kind is BuildKind.RERUN_CHECK_SUITE
    assert decision.check_suite_id == suite["id"]
    assert decision.head_sha == suite["head_sha"]
    assert decision.pr_number == suite["pull_requests"][0]["number"]


def test_check_suite_rerequested_of_another_app_is_ignored():
    """A suite that another app owns is ignored."""
    decision = decide_for(load_event("check_suite", "rerequested"), "check_suite", app_id=1)
    assert isinstance(decision, Ignored)


def test_delivery_without_installation_is_ignored():
    """A merged pull request from a repository webhook (no installation) cannot be built."""
    payload = merged_pull_request()
    del payload["installation"]
    decision = decide_for(payload, "pull_request")
    assert isinstance(decision, Ignored)
    assert "installation" in decision.reason


def test_sign_matches_githubs_documented_example():
    """tests/payloads.sign reproduces the example of GitHub's validation docs."""
    # https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries#testing-the-webhook-payload-validation
    assert sign(b"Hello, World!", "It's a Secret to Everybody") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )


# --- payloads of the wrong shape -----------------------------------------------------------------


def shape_error(payload, event: str, **options) -> str:
    with pytest.raises(WebhookRejected) as info:
        decide(deliver(payload, event), target_branch="develop", app_id=OUR_APP, **options)
    assert info.value.status == 400
    return str(info.value)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"pull_request__base": "develop"}, "pull_request.base must be an object, not a string"),
        ({"pull_request__base__ref": 7}, "pull_request.base.ref must be a string, not a whole"),
        ({"pull_request__merged": "yes"}, "pull_request.merged must be true or false"),
        ({"pull_request__labels": {"name": "x"}}, "pull_request.labels must be an array"),
        ({"pull_request__labels": ["version:1.2.3"]},
         "pull_request.labels[0] must be an object, not a string"),
        ({"pull_request__head__sha": ["abc"]}, "pull_request.head.sha must be a string, not an"),
        ({"pull_request__number": 1.5}, "pull_request.number must be a whole number, not a number"),
        ({"pull_request__title": None, "repository__owner": "Codertocat"},
         "repository.owner must be an object"),
        ({"repository__private": "false"}, "repository.private must be true or false"),
        ({"installation__id": "1"}, "installation.id must be a whole number"),
        ({"sender": []}, "sender must be an object, not an array"),
    ],
)
def test_a_merge_of_the_wrong_shape_is_400_naming_the_field(change, says):
    """A signed pull_request whose fields have the wrong type is a 400 that names the field."""
    payload = merged_pull_request(["version:1.2.3"])
    for key, value in change.items():
        set_path(payload, key.split("__"), value)
    assert says in shape_error(payload, "pull_request")


def test_a_label_without_a_name_is_400():
    """Each label GitHub sends has a name; one without is a malformed body."""
    payload = merged_pull_request(["version:1.2.3"])
    del payload["pull_request"]["labels"][0]["name"]
    assert "pull_request.labels[0].name is missing" in shape_error(payload, "pull_request")


def test_a_closed_pull_request_without_its_object_is_400():
    """pull_request closed with `pull_request: null` is malformed, not ignored."""
    payload = merged_pull_request()
    payload["pull_request"] = None
    assert "pull_request is missing" in shape_error(payload, "pull_request")


@pytest.mark.parametrize(
    ("event", "change", "says"),
    [
        ("check_run", {"check_run__app": 2}, "check_run.app must be an object"),
        ("check_run", {"check_run__check_suite__id": "5"}, "check_run.check_suite.id must be"),
        ("check_run", {"check_run__pull_requests": [3]}, "check_run.pull_requests[0] must be"),
        ("check_suite", {"check_suite__head_sha": 5}, "check_suite.head_sha must be a string"),
        ("ping", {"hook_id": "x"}, "hook_id must be a whole number"),
    ],
)
def test_reruns_and_pings_of_the_wrong_shape_are_400(event, change, says):
    """Re-run and ping payloads are checked the same way."""
    action = "rerequested" if event != "ping" else None
    payload = load_event(event, action)
    for key, value in change.items():
        set_path(payload, key.split("__"), value)
    if event == "check_suite":
        payload["check_suite"]["app"]["id"] = OUR_APP
    assert says in shape_error(payload, event)


def test_an_action_that_is_not_a_string_is_400():
    """`action` is read for every event: a number there is malformed."""
    payload = merged_pull_request()
    payload["action"] = 3
    error = rejected(webhook_headers("pull_request", to_body(payload), SECRET), to_body(payload))
    assert error.status == 400
    assert "action must be a string" in str(error)


def test_a_merge_records_whether_the_repository_is_private():
    """repository.private travels with the build request (the pages hide private builds)."""
    payload = merged_pull_request()
    payload["repository"]["private"] = True
    assert decide_for(payload, "pull_request").private is True
    payload["repository"]["private"] = False
    assert decide_for(payload, "pull_request").private is False
    del payload["repository"]["private"]
    assert decide_for(payload, "pull_request").private is None


# --- installations -------------------------------------------------------------------------------


def test_an_installation_names_the_account_it_installs_on():
    """installation created and installation_repositories added name the account."""
    created = load_event("installation", "created")
    assert installing_account(deliver(created, "installation")) == (
        created["installation"]["account"]["login"])
    added = load_event("installation_repositories", "added")
    assert installing_account(deliver(added, "installation_repositories")) == (
        added["installation"]["account"]["login"])
    assert installing_account(deliver(load_event("installation", "deleted"),
                                      "installation")) is None
    assert installing_account(deliver(merged_pull_request(), "pull_request")) is None
