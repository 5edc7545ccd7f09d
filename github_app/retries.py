"""When to try a GitHub call again, and after how long.

Pure: `RetryPolicy.next_delay` reads a status code, response headers and a
`now` it is given; only `RetryPolicy.sleep` (injectable) touches the clock.

What is retried (https://docs.github.com/en/rest/using-the-rest-api/best-practices-for-using-the-rest-api#handle-rate-limit-errors-appropriately):

- rate limits: 403 or 429 with `Retry-After` (seconds), or with
  `x-ratelimit-remaining: 0` and `x-ratelimit-reset` (epoch seconds): wait
  exactly as long as GitHub asks; a 429 without either header waits a minute,
  as the docs say for secondary rate limits. A 403 without them is a
  permission error and is not retried.
- 5xx and transport failures (status None): exponential backoff with jitter.

Non-idempotent requests (creating a check run) are retried only when GitHub
cannot have acted on them: a rate limit, 502/503/504 (the proxy in front of
the API answered), or a connection that was never made. A 502 can still hide
a request that reached the API, so a rare duplicate check run is possible;
we accept that over a build that reports nothing.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

RETRYABLE_GATEWAY_STATUSES = frozenset({502, 503, 504})
SECONDARY_RATE_LIMIT_WAIT = 60.0


def rate_limit_wait(status: int | None, headers: Mapping[str, str], now: float) -> float | None:
    """Seconds GitHub asks us to wait before the next call, or None when this is no rate limit."""
    if status not in (403, 429):
        return None
    headers = {key.lower(): value for key, value in headers.items()}
    retry_after = _number(headers.get("retry-after"))
    if retry_after is not None:
        return max(retry_after, 0.0)
    reset = _number(headers.get("x-ratelimit-reset"))
    if headers.get("x-ratelimit-remaining", "").strip() == "0" and reset is not None:
        return max(reset - now, 0.0)
    if status == 429:
        return SECONDARY_RATE_LIMIT_WAIT
    return None


def is_infrastructure_failure(status: int | None, headers: Mapping[str, str]) -> bool:
    """True for failures that are GitHub's or the network's, not the request's."""
    return status is None or status >= 500 or rate_limit_wait(status, headers, 0.0) is not None


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry: `max_attempts` calls in all, at most
    `max_total_wait` seconds spent sleeping between them."""

    max_attempts: int = 5
    base_delay: float = 1.0
    max_total_wait: float = 120.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    jitter: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def next_delay(
        self,
        attempt: int,
        status: int | None,
        headers: Mapping[str, str],
        now: float,
        *,
        waited: float = 0.0,
        idempotent: bool = True,
    ) -> float | None:
        """Seconds to sleep before attempt `attempt + 1`, or None to give up.

        `attempt` counts the calls made so far (1 after the first failure),
        `status` is None when no response came back, `waited` is the time
        already slept for this call. For a non-idempotent request pass
        `idempotent=False`, except for a connection that was never made.
        """
        if attempt >= self.max_attempts:
            return None
        delay = rate_limit_wait(status, headers, now)
        if delay is None:
            if not self._may_retry(status, idempotent):
                return None
            delay = self.backoff(attempt)
        if waited + delay > self.max_total_wait:
            return None
        return delay

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with "equal jitter": between half and all of base * 2**(n-1)."""
        ceiling = self.base_delay * 2 ** (attempt - 1)
        return ceiling / 2 + self.jitter() * ceiling / 2

    @staticmethod
    def _may_retry(status: int | None, idempotent: bool) -> bool:
        if status is None:
            return idempotent
        if idempotent:
            return status >= 500
        return status in RETRYABLE_GATEWAY_STATUSES


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
