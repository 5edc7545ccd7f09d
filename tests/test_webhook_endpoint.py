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
        data_dir=data_dir,
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
