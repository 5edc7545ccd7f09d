"""The fake GitHub keeps the App's delivery log and serves it as GitHub does, over real HTTP."""

from __future__ import annotations

import hashlib
import hmac
import socket
import time

import pytest
import requests
from openapi_validation import response_body_errors
from stub_endpoint import StubEndpoint
from test_fake_github import app_jwt

from tests.payloads import merged_pull_request

SECRET = "delivery log secret"


@pytest.fixture
def fake(fake_github):
    fake_github.webhook_secret = SECRET
    return fake_github


def app_get(fake, path, **params) -> requests.Response:
    return requests.get(f"{fake.url}{path}", params=params, timeout=10,
                        headers={"Authorization": f"Bearer {app_jwt(fake)}"})


def redeliver(fake, delivery_id) -> requests.Response:
    return requests.post(f"{fake.url}/app/hook/deliveries/{delivery_id}/attempts", timeout=10,
                         headers={"Authorization": f"Bearer {app_jwt(fake)}"})


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_delivery_is_signed_and_logged_in_githubs_shape(fake):
    """A sent delivery reaches the URL signed, and the log lists it as OpenAPI describes."""
    with StubEndpoint(status=202) as stub:
        fake.webhook_url = stub.url + "/webhook"
        sent = fake.send_webhook("pull_request", merged_pull_request())
    headers, body = stub.received[0]
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Hub-Signature-256"] == expected
    assert headers["X-Github-Delivery"] == sent.guid
    assert headers["X-Github-Event"] == "pull_request"

    answer = app_get(fake, "/app/hook/deliveries")
    assert answer.status_code == 200
    assert response_body_errors("GET", "/app/hook/deliveries", 200, answer.json()) == []
    [item] = answer.json()
    assert item["guid"] == sent.guid and item["id"] == sent.id
    assert (item["status_code"], item["status"], item["redelivery"]) == (202, "OK", False)
    assert (item["event"], item["action"]) == ("pull_request", "closed")
    payload = merged_pull_request()
    assert item["installation_id"] == payload["installation"]["id"]
    assert item["repository_id"] == payload["repository"]["id"]


def test_nothing_listening_is_logged_as_status_0(fake):
    """A delivery to a Slipway that is down is logged with status_code 0, "failed to connect"."""
    fake.webhook_url = f"http://127.0.0.1:{closed_port()}/webhook"
    sent = fake.send_webhook("pull_request", merged_pull_request())
    [item] = app_get(fake, "/app/hook/deliveries").json()
    assert item["id"] == sent.id
    assert (item["status_code"], item["status"]) == (0, "failed to connect to host")


def test_status_failure_leaves_out_status_0_as_github_does(fake):
    """`status=failure` is 400-599 only: a delivery that could not connect is in neither filter."""
    fake.webhook_url = f"http://127.0.0.1:{closed_port()}/webhook"
    down = fake.send_webhook("pull_request", merged_pull_request())
    with StubEndpoint(status=503) as stub:
        fake.webhook_url = stub.url + "/webhook"
        refused = fake.send_webhook("pull_request", merged_pull_request())
    ok = fake.deliveries.record("ping", {"zen": "Keep it simple."}, status_code=200)

    def ids(status):
        return [item["id"] for item in app_get(fake, "/app/hook/deliveries", status=status).json()]

    assert ids("failure") == [refused.id]
    assert ids("success") == [ok.id]
    assert ids(None) == [ok.id, refused.id, down.id]
    assert app_get(fake, "/app/hook/deliveries", status="failed").status_code == 422


def test_pages_follow_the_link_cursor_newest_first(fake):
    """per_page cuts the log into pages; each Link rel="next" leads on until the oldest."""
    made = [fake.deliveries.record("ping", {"zen": str(i)}, status_code=200).id
            for i in range(7)]
    seen, url, pages = [], f"{fake.url}/app/hook/deliveries?per_page=3", 0
    while url:
        answer = requests.get(url, timeout=10,
                              headers={"Authorization": f"Bearer {app_jwt(fake)}"})
        assert answer.status_code == 200
        seen += [item["id"] for item in answer.json()]
        url = answer.links.get("next", {}).get("url")
        pages += 1
    assert pages == 3
    assert seen == sorted(made, reverse=True)


def test_per_page_is_at_most_100_and_a_made_up_cursor_is_refused(fake):
    for i in range(101):
        fake.deliveries.record("ping", {"zen": str(i)}, status_code=200)
    assert len(app_get(fake, "/app/hook/deliveries", per_page=500).json()) == 100
    assert len(app_get(fake, "/app/hook/deliveries").json()) == 30
    assert app_get(fake, "/app/hook/deliveries", cursor="page2").status_code == 422


def test_deliveries_older_than_three_days_are_gone(fake):
    old = fake.deliveries.record("ping", {}, status_code=0,
                                 delivered_at=time.time() - 3 * 24 * 3600 - 60)
    assert app_get(fake, "/app/hook/deliveries").json() == []
    assert app_get(fake, f"/app/hook/deliveries/{old.id}").status_code == 404
    assert redeliver(fake, old.id).status_code == 404


def test_the_log_needs_the_apps_jwt(fake):
    answer = requests.get(f"{fake.url}/app/hook/deliveries", timeout=10,
                          headers={"Authorization": "token ghs_" + "a" * 36})
    assert answer.status_code == 401
    assert fake.rejections and fake.rejections[-1].path == "/app/hook/deliveries"


def test_one_delivery_carries_its_request_and_response(fake):
    with StubEndpoint(status=503) as stub:
        fake.webhook_url = stub.url + "/webhook"
        sent = fake.send_webhook("pull_request", merged_pull_request())
    answer = app_get(fake, f"/app/hook/deliveries/{sent.id}")
    assert answer.status_code == 200
    body = answer.json()
    assert response_body_errors("GET", f"/app/hook/deliveries/{sent.id}", 200, body) == []
    assert body["status"] == "Invalid HTTP Response: 503"
    assert body["request"]["headers"]["X-GitHub-Delivery"] == sent.guid
    assert body["request"]["payload"]["pull_request"]["merged"] is True
    assert app_get(fake, "/app/hook/deliveries/999").status_code == 404


def test_redelivery_sends_the_same_guid_again_and_logs_the_attempt(fake):
    """POST .../attempts answers 202, then delivers the payload again, signed, same guid."""
    fake.webhook_url = f"http://127.0.0.1:{closed_port()}/webhook"
    first = fake.send_webhook("pull_request", merged_pull_request())
    with StubEndpoint(status=202) as stub:
        fake.webhook_url = stub.url + "/webhook"
        answer = redeliver(fake, first.id)
        assert answer.status_code == 202
        assert response_body_errors(
            "POST", f"/app/hook/deliveries/{first.id}/attempts", 202, answer.json()) == []
        fake.deliveries.wait_for_redeliveries()
    [(headers, body)] = stub.received
    assert headers["X-Github-Delivery"] == first.guid
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Hub-Signature-256"] == expected
    attempts = fake.deliveries.of_guid(first.guid)
    assert [(a.redelivery, a.status_code) for a in attempts] == [(False, 0), (True, 202)]
    newest = app_get(fake, "/app/hook/deliveries").json()[0]
    assert (newest["guid"], newest["redelivery"]) == (first.guid, True)
    assert redeliver(fake, 12345).status_code == 404
