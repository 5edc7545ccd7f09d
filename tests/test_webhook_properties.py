"""Property: whatever a signed body holds, POST /webhook never answers 5xx and never queues a
job it cannot run. Real payloads from GitHub's examples, with any part replaced by any JSON."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from github_app import create_app
from github_app.config import Config
from github_app.webhooks import BuildRequest
from github_app.worker import request_from_job
from tests.payloads import load_event, merged_pull_request, pull_request_event, webhook_headers

SECRET = "property secret"
APP_ID = 12345


def _buildable(event: str) -> dict:
    if event == "pull_request":
        return merged_pull_request(labels=["version:1.2.3", "semver:patch"])
    payload = load_event(event, "rerequested")
    payload[event]["app"]["id"] = APP_ID
    return payload


EXAMPLES = {
    "pull_request": _buildable("pull_request"),
    "pull_request labeled": pull_request_event("labeled", labels=["version:1.2.3"],
                                               label="version:1.2.3"),
    "pull_request edited": pull_request_event("edited", title="Release 1.2.3",
                                              changes={"title": {"from": "x"}}),
    "check_run": _buildable("check_run"),
    "check_suite": _buildable("check_suite"),
    "ping": load_event("ping"),
    "installation": load_event("installation", "created"),
    "installation_repositories": load_event("installation_repositories", "added"),
}


def _paths(node, prefix=()):
    """Every path into the payload, containers included."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


PATHS = {example: list(_paths(payload)) for example, payload in EXAMPLES.items()}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=8,
)


@st.composite
def mutated(draw):
    """A real payload of a random event with 1-3 of its parts replaced (or deleted)."""
    example = draw(st.sampled_from(sorted(EXAMPLES)))
    payload = copy.deepcopy(EXAMPLES[example])
    event = example.split()[0]
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS[example]))
        if not path:
            return event, draw(json_values)
        parent = payload
        try:
            for part in path[:-1]:
                parent = parent[part]
            if draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = draw(json_values)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change replaced a parent: the path is gone
    return event, payload


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    return create_app(Config(app_id=str(APP_ID), webhook_secret=SECRET, data_dir=data_dir,
                             allowed_owners=("*",)))


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=mutated())
def test_any_signed_body_is_answered_without_5xx_and_queues_only_runnable_jobs(app, case):
    """Wrong types anywhere, arrays, null: 400 with a reason, or a job the worker can read."""
    event, payload = case
    body = json.dumps(payload).encode()
    response = app.test_client().post("/webhook", data=body,
                                      headers=webhook_headers(event, body, SECRET))
    assert response.status_code in (200, 202, 400), response.data
    answer = response.get_json()
    if response.status_code == 400:
        assert answer["error"]
    if not isinstance(payload, dict):
        assert response.status_code == 400
    if response.status_code == 202 and "job" in answer:
        job = app.extensions["slipway"].store.get_job(answer["job"])
        request = request_from_job(job)
        assert isinstance(request, BuildRequest)
        for name in ("owner", "repo", "head_sha"):
            assert isinstance(getattr(request, name), str) and getattr(request, name)
        assert isinstance(request.installation_id, int)
        assert all(isinstance(label, str) for label in request.labels)
        assert request.private in (True, False, None)


@pytest.mark.parametrize("body", [b"[]", b"null", b"[{\"action\": \"closed\"}]", b"7", b"\"x\""])
def test_json_that_is_not_an_object_is_400(app, body):
    """A JSON array, null or a scalar, correctly signed, is a 400 that says so."""
    response = app.test_client().post("/webhook", data=body,
                                      headers=webhook_headers("pull_request", body, SECRET))
    assert response.status_code == 400
    assert "not an object" in response.get_json()["error"]
