"""POST /webhook answers as DESIGN.md's table says and only enqueues."""

from __future__ import annotations

import json
import threading

import pytest

from github_app import create_app
from github_app.config import Config
from github_app.jobs import JobState
from tests.payloads import load_event, merged_pull_request, to_body, webhook_headers

SECRET = "it's a secret to everybody"


@pytest.fixture
def app(data_dir):
    config = Config(
        app_id="12345", webhook_secret=SECRET, webhook_secret_previous="old secret",
        data_dir=data_dir, allowed_owners=("Codertocat",),
    )
    return create_app(config)


@pytest.fixture
def client(app):
    return app.test_client()


def post(client, event, payload, *, secret=SECRET, delivery_id=None, headers=None):
    body = to_body(payload)
    sent = webhook_headers(event, body, secret, delivery_id=delivery_id)
    sent.update(headers or {})
    return client.post("/webhook", data=body, headers=sent)


def store_of(app):
    return app.extensions["slipway"].store


def test_merged_pull_request_is_accepted_and_queued(app, client):
    """A merge into develop answers 202 with the job id, and the job waits in the store."""
    response = post(client, "pull_request", merged_pull_request(labels=["version:1.2.3"]))
    assert response.status_code == 202
    job = store_of(app).get_job(response.json["job"])
    assert job.state == JobState.QUEUED
    assert job.request["labels"] == ["version:1.2.3"]
    assert job.repository == "Codertocat/Hello-World"


def test_bad_signature_is_401_and_records_nothing(app, client):
    """A delivery signed with another secret is refused before anything is parsed or stored."""
    response = post(client, "pull_request", merged_pull_request(), secret="wrong")
    assert response.status_code == 401
    assert store_of(app).queue_depth() == 0


def test_missing_signature_is_401(client):
    """A delivery without X-Hub-Signature-256 is refused."""
    response = post(client, "pull_request", merged_pull_request(), secret=None)
    assert response.status_code == 401


def test_previous_secret_is_accepted_during_rotation(client):
    """While the secret is rotated, deliveries signed with the previous one still build."""
    response = post(client, "pull_request", merged_pull_request(), secret="old secret")
    assert response.status_code == 202


def test_redelivery_is_a_duplicate_not_a_second_build(app, client):
    """The same X-GitHub-Delivery twice answers 200 duplicate with the first job's id."""
    payload = merged_pull_request(labels=["version:1.2.3"])
    first = post(client, "pull_request", payload, delivery_id="d-1")
    second = post(client, "pull_request", payload, delivery_id="d-1")
    assert first.status_code == 202
    assert second.status_code == 200
    assert second.json == {"duplicate": first.json["job"]}
    assert store_of(app).queue_depth() == 1


def test_concurrent_redeliveries_build_once(app):
    """Sixteen simultaneous deliveries of one id create exactly one job."""
    payload = merged_pull_request(labels=["version:1.2.3"])
    answers = []

    def deliver():
        answers.append(post(app.test_client(), "pull_request", payload, delivery_id="d-race"))

    threads = [threading.Thread(target=deliver) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(a.status_code for a in answers) == [200] * 15 + [202]
    assert store_of(app).queue_depth() == 1


@pytest.mark.parametrize(
    ("event", "payload", "reason"),
    [
        ("pull_request", merged_pull_request(merged=False, base_ref="main"), "without merg"),
        ("pull_request", merged_pull_request(base_ref="main"), "main"),
        ("pull_request", load_event("pull_request", "opened"), "not built before the merge"),
        ("push", load_event("push"), "push"),
        ("issues", load_event("issues", "opened"), "issues"),
    ],
)
def test_events_that_do_not_build_are_ignored_with_a_reason(app, client, event, payload, reason):
    """Unmerged, other-branch and other events answer 202 ignored and queue nothing."""
    response = post(client, event, payload)
    assert response.status_code == 202
    assert reason in response.json["ignored"]
    assert store_of(app).queue_depth() == 0


def test_ping_answers_200(client):
    """GitHub's ping, sent when the webhook is created, gets a 200."""
    response = post(client, "ping", load_event("ping"))
    assert response.status_code == 200


def test_malformed_body_is_400(client):
    """A signed body that is not JSON is a 400 that says so."""
    body = b"{not json"
    response = client.post("/webhook", data=body,
                           headers=webhook_headers("pull_request", body, SECRET))
    assert response.status_code == 400
    assert "JSON" in response.json["error"]


def test_missing_event_header_is_400(client):
    """A delivery without X-GitHub-Event is a 400."""
    body = to_body(merged_pull_request())
    headers = webhook_headers("pull_request", body, SECRET)
    del headers["X-GitHub-Event"]
    assert client.post("/webhook", data=body, headers=headers).status_code == 400


def test_payload_over_25_mib_is_413(client):
    """A body larger than GitHub ever sends is refused with 413 before it is read."""
    body = b"{" + b" " * (25 * 1024 * 1024) + b"}"
    response = client.post("/webhook", data=body,
                           headers=webhook_headers("pull_request", b"{}", SECRET))
    assert response.status_code == 413
    assert json.loads(response.data)["error"]


# --- whose installations are built ---------------------------------------------------------------


def test_an_account_outside_allowed_owners_is_ignored_and_queues_nothing(app, client):
    """A merge in another account's repository answers 202 ignored, naming the account."""
    payload = merged_pull_request(labels=["version:1.2.3"])
    payload["repository"]["owner"]["login"] = "mallory"
    payload["repository"]["full_name"] = "mallory/Hello-World"
    response = post(client, "pull_request", payload)
    assert response.status_code == 202
    assert response.json == {"ignored": "account mallory is not in ALLOWED_OWNERS: its "
                                        "repositories are not built"}
    assert store_of(app).queue_depth() == 0


def test_a_rerun_in_another_account_is_ignored_too(app, client):
    """"Re-run" from an account that is not allowed builds nothing either."""
    payload = load_event("check_run", "rerequested", check_run__app__id=12345)
    payload["repository"]["owner"]["login"] = "mallory"
    response = post(client, "check_run", payload)
    assert response.status_code == 202 and "mallory" in response.json["ignored"]
    assert store_of(app).queue_depth() == 0


def test_installing_on_an_account_that_is_not_allowed_is_a_warning(client, caplog):
    """The installation event of an account outside ALLOWED_OWNERS is logged, naming it."""
    payload = load_event("installation", "created")
    payload["installation"]["account"]["login"] = "mallory"
    with caplog.at_level("WARNING", logger="github_app.views"):
        response = post(client, "installation", payload)
    assert response.status_code == 202
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "mallory" in warnings[0] and "ALLOWED_OWNERS" in warnings[0]


def test_installing_on_an_allowed_account_is_no_warning(client, caplog):
    """An installation on an allowed account is business as usual."""
    payload = load_event("installation", "created")
    payload["installation"]["account"]["login"] = "codertocat"
    with caplog.at_level("WARNING", logger="github_app.views"):
        post(client, "installation", payload)
    assert [r for r in caplog.records if r.levelname == "WARNING"] == []


def app_of(fake_github, data_dir, **config):
    return create_app(Config(
        app_id=str(fake_github.app_id), private_key=fake_github.private_key_pem,
        webhook_secret=SECRET, api_url=fake_github.url, data_dir=data_dir, **config))


def owned_by(owner: str) -> dict:
    payload = merged_pull_request(labels=["version:1.2.3"])
    payload["repository"]["owner"]["login"] = owner
    payload["repository"]["full_name"] = f"{owner}/Hello-World"
    return payload


def test_by_default_only_the_app_owner_is_built_and_get_app_is_asked_once(fake_github, data_dir):
    """Without ALLOWED_OWNERS the App's owner (GET /app, once) is the only account built."""
    app = app_of(fake_github, data_dir)
    assert app.extensions["slipway"].owners.wait(10)
    client = app.test_client()
    answers = [post(client, "pull_request", owned_by(owner))
               for owner in ["octocat", "mallory", "OctoCat"] * 20]
    assert [a.status_code for a in answers[:3]] == [202, 202, 202]
    assert "job" in answers[0].json and "job" in answers[2].json
    assert "does not own this App" in answers[1].json["ignored"]
    assert store_of(app).queue_depth() == 40
    assert [(r.method, r.path, r.auth) for r in fake_github.requests] == [("GET", "/app", "jwt")]


def test_until_github_names_the_app_owner_deliveries_are_503(fake_github, data_dir):
    """GitHub down at start: a merge is answered 503 (GitHub can redeliver it), ping still 200."""
    fake_github.fail_next("GET", r"^/app$", 502, times=100)
    app = app_of(fake_github, data_dir)
    client = app.test_client()
    response = post(client, "pull_request", owned_by("octocat"))
    assert response.status_code == 503
    assert "ALLOWED_OWNERS" in response.json["error"]
    assert post(client, "ping", load_event("ping")).status_code == 200
    assert store_of(app).queue_depth() == 0
    fake_github.reset()
    assert app.extensions["slipway"].owners.wait(15)
    assert post(client, "pull_request", owned_by("octocat")).status_code == 202


def test_a_star_builds_any_account_without_asking_github(fake_github, data_dir):
    """ALLOWED_OWNERS=* needs no GET /app."""
    app = app_of(fake_github, data_dir, allowed_owners=("*",))
    assert post(app.test_client(), "pull_request", owned_by("anyone")).status_code == 202
    assert fake_github.requests == []
