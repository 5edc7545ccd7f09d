"""Which missed deliveries the sweep asks GitHub to send again (pure: no server, no store)."""

from __future__ import annotations

import copy
import time
from datetime import UTC, datetime

import pytest
from openapi_validation import load_spec

from github_app import redelivery, webhooks
from github_app.redelivery import (
    PENDING_EXPIRY,
    Attempt,
    Requested,
    Summary,
    group_by_guid,
    next_cursor,
    parse_page,
    reaches_back_to,
)
from tests import payloads

NOW = 1_780_000_000.0
CUTOFF = NOW - 24 * 3600
GUID = "0b989ba4-242f-11e5-81e1-c7b6966d2516"


def item(**changes) -> dict:
    """The first delivery of GitHub's own example of the delivery log, with `changes`."""
    example = copy.deepcopy(load_spec()["components"]["examples"]["hook-delivery-items"])
    base = example["value"][0]
    base.update(event="pull_request", action="closed",
                delivered_at=_iso(changes.pop("at", NOW - 60)))
    base.update(changes)
    return base


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def attempts(*items: dict) -> list[Attempt]:
    read, problems = parse_page(list(items))
    assert problems == []
    return read


def plan(*items: dict, seen=(), requested=None, now=NOW):
    return redelivery.plan(group_by_guid(attempts(*items)), cutoff=CUTOFF, now=now,
                           seen=set(seen), requested=requested or {},
                           acts_on=webhooks.acts_on)


def guids(histories) -> list[str]:
    return [h.guid for h in histories]


def test_githubs_example_items_are_read():
    example = load_spec()["components"]["examples"]["hook-delivery-items"]["value"]
    read, problems = parse_page(example)
    assert problems == []
    assert [(a.id, a.redelivery, a.status_code, a.event) for a in read] == [
        (12345678, False, 200, "issues"), (123456789, True, 200, "issues")]
    assert read[0].delivered_at == datetime(2019, 6, 3, 0, 57, 16, tzinfo=UTC).timestamp()


def test_only_a_2xx_answer_is_a_success():
    """0 (could not connect), 3xx (GitHub does not follow), 4xx and 5xx are all failures."""
    codes = {code: Attempt.from_json(item(status_code=code)).succeeded
             for code in (0, 200, 202, 204, 301, 401, 503)}
    assert codes == {0: False, 200: True, 202: True, 204: True, 301: False, 401: False,
                     503: False}


def test_a_malformed_item_is_reported_and_the_rest_still_read():
    read, problems = parse_page([item(id=1), {"id": "x"}, item(id=2, delivered_at="soon"),
                                 "text", item(id=3)])
    assert [a.id for a in read] == [1, 3]
    assert len(problems) == 3
    assert parse_page({"message": "Not Found"})[1] != []


def test_the_next_cursor_comes_from_the_link_header():
    link = ('<https://api.github.com/app/hook/deliveries?per_page=100&cursor=v1_12077215967>; '
            'rel="next"')
    assert next_cursor(link) == "v1_12077215967"
    both = ('<https://api.github.com/app/hook/deliveries?cursor=v1_2&per_page=2>; rel="prev", '
            '<https://api.github.com/app/hook/deliveries?cursor=v1_9&per_page=2>; rel="next"')
    assert next_cursor(both) == "v1_9"
    assert next_cursor('<https://api.github.com/app/hook/deliveries?cursor=v1_2>; rel="prev"') \
        is None
    assert next_cursor(None) is None and next_cursor("") is None


def test_a_page_reaches_back_to_the_window_when_it_holds_an_older_delivery():
    inside = attempts(item(id=5, at=NOW - 60), item(id=4, at=CUTOFF + 1))
    assert not reaches_back_to(inside, CUTOFF)
    assert reaches_back_to([*inside, *attempts(item(id=3, at=CUTOFF - 1))], CUTOFF)


def test_attempts_of_one_guid_make_one_history_newest_first():
    histories = group_by_guid(attempts(
        item(id=1, guid="a", status_code=0), item(id=3, guid="b"),
        item(id=2, guid="a", status_code=202, redelivery=True)))
    assert guids(histories) == ["b", "a"]
    assert [a.id for a in histories[1].attempts] == [2, 1]
    assert not histories[1].failed


def test_a_delivery_that_could_not_connect_is_asked_for():
    """status_code 0: GitHub could not reach Slipway; the delivery is redelivered."""
    result = plan(item(id=1, guid=GUID, status_code=0, status="failed to connect to host"))
    assert guids(result.failed) == guids(result.ask) == [GUID]


def test_a_503_and_then_a_failed_redelivery_is_asked_for():
    result = plan(item(id=1, guid=GUID, status_code=503),
                  item(id=2, guid=GUID, status_code=0, redelivery=True))
    assert guids(result.ask) == [GUID]


def test_a_delivery_that_succeeded_once_is_never_asked_for():
    result = plan(item(id=1, guid=GUID, status_code=0),
                  item(id=2, guid=GUID, status_code=202, redelivery=True),
                  item(id=3, guid="other", status_code=200))
    assert result.failed == () and result.ask == ()


def test_a_guid_in_the_store_is_not_asked_for_whatever_the_log_says():
    """Slipway recorded the delivery (its answer was slow or lost): it is not sent again."""
    result = plan(item(id=1, guid=GUID, status_code=0), seen={GUID})
    assert guids(result.received) == [GUID] and result.ask == ()


@pytest.mark.parametrize("event, action", [("issues", "opened"), ("pull_request", "assigned"),
                                           ("installation", "created"), ("push", None)])
def test_events_slipway_does_not_act_on_are_not_asked_for(event, action):
    assert plan(item(id=1, status_code=0, event=event, action=action)).failed == ()


def test_a_delivery_older_than_the_window_is_left_alone():
    assert plan(item(id=1, status_code=0, at=CUTOFF - 1)).failed == ()


def test_a_pending_request_is_not_asked_again():
    """Asked, and GitHub has made no attempt since: pending, not asked twice."""
    earlier = Requested(GUID, delivery_id=1, after_id=1, requested_at=NOW - 60)
    result = plan(item(id=1, guid=GUID, status_code=0), requested={GUID: earlier})
    assert guids(result.pending) == [GUID] and result.ask == ()


def test_a_request_whose_redelivery_failed_too_is_asked_again():
    earlier = Requested(GUID, delivery_id=1, after_id=1, requested_at=NOW - 301)
    result = plan(item(id=1, guid=GUID, status_code=0),
                  item(id=2, guid=GUID, status_code=503, redelivery=True),
                  requested={GUID: earlier})
    assert guids(result.ask) == [GUID]


def test_a_request_github_never_carried_out_lapses():
    earlier = Requested(GUID, delivery_id=1, after_id=1, requested_at=NOW - PENDING_EXPIRY - 1)
    result = plan(item(id=1, guid=GUID, status_code=0), requested={GUID: earlier})
    assert guids(result.ask) == [GUID]


def test_the_summary_says_what_was_found_and_asked_for_and_survives_json():
    summary = Summary(started_at=NOW, window_hours=24, finished_at=NOW + 2, pages=2, read=130,
                      failed=3, asked=["a", "b"], pending=1)
    line = summary.describe()
    assert "read 130 deliveries on 2 page(s)" in line
    assert "3 failed deliveries in the last 24 h" in line
    assert "2 redelivery(ies) asked for, 1 pending, 0 already received" in line
    assert Summary.from_json(summary.to_json()) == summary
    assert "1 failed delivery in" in Summary(started_at=NOW, window_hours=24, failed=1).describe()


def _all_examples():
    for event, examples in payloads._examples().items():
        for example in examples:
            yield event, example


def test_every_example_that_decide_builds_is_an_event_the_sweep_acts_on():
    """ACTED_ON stays in step with `decide`: a buildable delivery that failed is redelivered."""
    built = set()
    for event, example in _all_examples():
        payload = copy.deepcopy(example)
        payload.setdefault("installation", {"id": 1})
        pr = payload.get("pull_request")
        if isinstance(pr, dict) and isinstance(pr.get("base"), dict):
            pr["base"]["ref"] = "develop"
            pr["merged"] = True
        item_of = payload.get(event)
        app_id = (item_of.get("app") or {}).get("id") if isinstance(item_of, dict) else None
        delivery = webhooks.Delivery(id=str(time.time_ns()), event=event,
                                     action=payload.get("action"), payload=payload,
                                     installation_id=1, repository=None)
        decision = webhooks.decide(delivery, target_branch="develop", app_id=app_id)
        if isinstance(decision, webhooks.BuildRequest):
            built.add((event, payload.get("action")))
            assert webhooks.acts_on(event, payload.get("action")), (event, payload.get("action"))
    assert ("pull_request", "closed") in built and ("check_run", "rerequested") in built


def test_a_redelivery_that_failed_again_waits_longer_each_time():
    """Slipway still down: asked again after 5 min, then 15, 45 ... never more than 6 h."""
    assert [redelivery.retry_delay(n) for n in (1, 2, 3)] == [300, 900, 2700]
    assert redelivery.retry_delay(10) == 6 * 3600
    third = Requested(GUID, delivery_id=2, after_id=2, requested_at=NOW - 1000, times=3)
    failing = (item(id=1, guid=GUID, status_code=0),
               item(id=2, guid=GUID, status_code=0, redelivery=True),
               item(id=3, guid=GUID, status_code=503, redelivery=True))
    assert guids(plan(*failing, requested={GUID: third}).pending) == [GUID]
    assert guids(plan(*failing, requested={GUID: third}, now=NOW + 2000).ask) == [GUID]


def test_the_doctor_line_fails_without_a_sweep_after_an_error_and_when_sweeps_stopped():
    done = Summary(started_at=NOW - 30, window_hours=24, finished_at=NOW - 29, pages=1, read=4)
    assert redelivery.report_last_sweep(done, now=NOW, interval=300) == (
        True, "last sweep 29 s ago: read 4 deliveries on 1 page(s); 0 failed deliveries in "
              "the last 24 h")
    assert not redelivery.report_last_sweep(None, now=NOW, interval=300)[0]
    broken = Summary(started_at=NOW - 30, window_hours=24, finished_at=NOW - 29,
                     errors=["GitHub answered 502"])
    healthy, line = redelivery.report_last_sweep(broken, now=NOW, interval=300)
    assert not healthy and "1 error(s): GitHub answered 502" in line
    healthy, line = redelivery.report_last_sweep(done, now=NOW + 3600, interval=300)
    assert not healthy and "last sweep 60 min ago" in line and "no Slipway process" in line
