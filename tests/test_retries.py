"""RetryPolicy.next_delay: which GitHub failures are retried, and after how long. Pure."""

from __future__ import annotations

import pytest

from github_app.retries import RetryPolicy, is_infrastructure_failure, rate_limit_wait

NOW = 1_700_000_000.0


def policy(**kwargs) -> RetryPolicy:
    kwargs.setdefault("jitter", lambda: 0.5)
    return RetryPolicy(**kwargs)


def test_retry_after_is_honoured_exactly():
    """A 403 with Retry-After waits exactly as long as GitHub asks."""
    assert policy().next_delay(1, 403, {"Retry-After": "30"}, NOW) == 30.0


def test_429_retry_after_header_is_case_insensitive():
    """Header names are matched case-insensitively, as HTTP says."""
    assert policy().next_delay(1, 429, {"retry-after": "7"}, NOW) == 7.0


def test_exhausted_primary_rate_limit_waits_until_reset():
    """x-ratelimit-remaining: 0 waits until x-ratelimit-reset (epoch seconds)."""
    headers = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(NOW) + 42)}
    assert policy().next_delay(1, 403, headers, NOW) == 42.0


def test_reset_in_the_past_retries_at_once():
    """A reset time already passed means no wait at all."""
    headers = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW) - 5)}
    assert policy().next_delay(1, 403, headers, NOW) == 0.0


def test_plain_403_is_a_permission_error_and_not_retried():
    """A 403 with requests left and no Retry-After is not a rate limit."""
    headers = {"x-ratelimit-remaining": "4999", "x-ratelimit-reset": str(int(NOW) + 42)}
    assert policy().next_delay(1, 403, headers, NOW) is None
    assert not is_infrastructure_failure(403, headers)


def test_429_without_headers_waits_a_minute():
    """GitHub's docs: a secondary rate limit without headers waits at least one minute."""
    assert rate_limit_wait(429, {}, NOW) == 60.0


def test_rate_limit_beyond_the_cap_gives_up_at_once():
    """A Retry-After of an hour fails now instead of sleeping for an hour."""
    assert policy(max_total_wait=120).next_delay(1, 403, {"Retry-After": "3600"}, NOW) is None


def test_total_wait_counts_earlier_sleeps():
    """The cap bounds the sum of all sleeps of one call."""
    p = policy(max_total_wait=120)
    assert p.next_delay(2, 429, {"Retry-After": "30"}, NOW, waited=90) == 30.0
    assert p.next_delay(2, 429, {"Retry-After": "31"}, NOW, waited=90) is None


@pytest.mark.parametrize("status", [500, 502, 503, 504, None])
def test_server_errors_and_no_answer_back_off_exponentially(status):
    """5xx and transport failures back off: base * 2**(n-1), with jitter."""
    p = policy(base_delay=1.0, jitter=lambda: 1.0)
    assert [p.next_delay(n, status, {}, NOW) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]


def test_jitter_stays_between_half_and_all_of_the_backoff():
    """Equal jitter: never less than half the backoff, never more than all of it."""
    assert policy(base_delay=2.0, jitter=lambda: 0.0).next_delay(3, 503, {}, NOW) == 4.0
    assert policy(base_delay=2.0, jitter=lambda: 1.0).next_delay(3, 503, {}, NOW) == 8.0


def test_attempts_are_bounded():
    """After max_attempts calls the policy gives up."""
    p = policy(max_attempts=3)
    assert p.next_delay(2, 500, {}, NOW) is not None
    assert p.next_delay(3, 500, {}, NOW) is None
    assert p.next_delay(3, 429, {"Retry-After": "1"}, NOW) is None


@pytest.mark.parametrize("status", [400, 401, 404, 409, 422])
def test_request_errors_are_not_retried(status):
    """A request GitHub refused will be refused again."""
    assert policy().next_delay(1, status, {}, NOW) is None
    assert not is_infrastructure_failure(status, {})


def test_non_idempotent_requests_retry_only_where_github_did_not_act():
    """A create is retried on 502/503/504, rate limits and refused connections, not on 500."""
    p = policy()
    assert p.next_delay(1, 500, {}, NOW, idempotent=False) is None
    assert p.next_delay(1, None, {}, NOW, idempotent=False) is None
    for status in (502, 503, 504):
        assert p.next_delay(1, status, {}, NOW, idempotent=False) is not None
    assert p.next_delay(1, 403, {"Retry-After": "3"}, NOW, idempotent=False) == 3.0


def test_infrastructure_failures():
    """5xx, no answer and rate limits are GitHub's or the network's fault."""
    assert is_infrastructure_failure(None, {})
    assert is_infrastructure_failure(502, {})
    assert is_infrastructure_failure(403, {"Retry-After": "3"})


def test_malformed_retry_after_falls_back_to_other_headers():
    """An HTTP-date or garbage Retry-After does not crash the policy."""
    assert rate_limit_wait(403, {"Retry-After": "soon"}, NOW) is None
    assert rate_limit_wait(429, {"Retry-After": "soon"}, NOW) == 60.0
