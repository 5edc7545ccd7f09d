"""Deliveries missed while Slipway was down: which ones to ask GitHub to send again.

Pure: no network, disk, clock or Flask. The sweep (`github_app/sweep.py`) reads the App's
delivery log page by page (`GET /app/hook/deliveries`, newest first), hands the items here,
and asks for what `plan` decides (`POST /app/hook/deliveries/{id}/attempts`).
https://docs.github.com/en/webhooks/using-webhooks/handling-failed-webhook-deliveries

The rules (DESIGN.md, "Deliveries missed while Slipway was down"):

- Every attempt of one event shares its `guid`: the first delivery and each redelivery.
- A delivery failed when every attempt got a status outside 2xx. `0` means GitHub could not
  connect (Slipway down, cut off) and the `status=failure` filter leaves it out, so the log
  is read unfiltered. A 3xx is a failure too: GitHub does not follow redirects.
- Only events Slipway acts on are asked for (`webhooks.acts_on`).
- A guid the store has seen reached Slipway: never asked for, whatever the log says.
- A guid asked for earlier is pending until the log shows an attempt newer than the request
  (ids grow with time, so no clock is compared with GitHub's). While pending it is not asked
  again; a request GitHub never carried out lapses after `PENDING_EXPIRY` seconds, and one
  whose redelivery failed too is asked again after a delay that grows (`retry_delay`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

# GitHub carries out a redelivery within seconds; a request with no attempt after this long
# was lost on the way and may be asked again.
PENDING_EXPIRY = 15 * 60
# A redelivery that failed too is asked again after 5 min, then 15, 45, ... at most 6 h.
RETRY_BASE = 5 * 60
RETRY_MAX = 6 * 3600
# GitHub's largest page: the fewest calls for one window.
PAGE_SIZE = 100

_LINK = re.compile(r'<([^>]*)>\s*;\s*rel="?([^";]+)"?')


class MalformedDelivery(ValueError):
    """An item of the delivery log lacks a field the sweep needs, or has it in another shape."""


@dataclass(frozen=True)
class Attempt:
    """One attempt to deliver one event, as the delivery log lists it."""

    id: int
    guid: str
    delivered_at: float  # unix seconds
    redelivery: bool
    status_code: int
    status: str
    event: str
    action: str | None
    installation_id: int | None
    repository_id: int | None

    @property
    def succeeded(self) -> bool:
        return 200 <= self.status_code < 300

    @classmethod
    def from_json(cls, item: object) -> Attempt:
        """An item of `GET /app/hook/deliveries` ("Simple webhook delivery")."""
        if not isinstance(item, Mapping):
            raise MalformedDelivery(f"a delivery is an object, not {type(item).__name__}")
        try:
            return cls(
                id=_integer(item["id"], "id"),
                guid=_text(item["guid"], "guid"),
                delivered_at=_timestamp(item["delivered_at"]),
                redelivery=bool(item.get("redelivery")),
                status_code=_integer(item["status_code"], "status_code"),
                status=str(item.get("status") or ""),
                event=_text(item["event"], "event"),
                action=item.get("action") if isinstance(item.get("action"), str) else None,
                installation_id=_optional_integer(item.get("installation_id")),
                repository_id=_optional_integer(item.get("repository_id")),
            )
        except KeyError as missing:
            raise MalformedDelivery(f"a delivery without {missing.args[0]!r}") from None


def parse_page(items: object) -> tuple[list[Attempt], list[str]]:
    """The attempts of one page, and a sentence for each item that could not be read."""
    if not isinstance(items, list):
        return [], [f"the delivery log answered {type(items).__name__}, not a list"]
    attempts, problems = [], []
    for item in items:
        try:
            attempts.append(Attempt.from_json(item))
        except MalformedDelivery as problem:
            problems.append(str(problem))
    return attempts, problems


def next_cursor(link_header: str | None) -> str | None:
    """The `cursor` of the `rel="next"` page in a `Link` header, or None on the last page.

    Only the cursor is taken: the next URL is built on the configured API root, so the
    App's JWT never follows a link to another host.
    """
    for url, rel in _LINK.findall(link_header or ""):
        if "next" in rel.split():
            values = parse_qs(urlsplit(url).query).get("cursor")
            return values[0] if values else None
    return None


def reaches_back_to(page: Sequence[Attempt], cutoff: float) -> bool:
    """True when `page` holds an attempt older than `cutoff`: later pages are all older."""
    return any(attempt.delivered_at < cutoff for attempt in page)


@dataclass(frozen=True)
class History:
    """Every attempt read of one event (one guid), newest first."""

    guid: str
    attempts: tuple[Attempt, ...]

    @property
    def newest(self) -> Attempt:
        return self.attempts[0]

    @property
    def failed(self) -> bool:
        """No attempt reached Slipway with a 2xx answer."""
        return not any(attempt.succeeded for attempt in self.attempts)

    def attempted_after(self, attempt_id: int) -> bool:
        return any(attempt.id > attempt_id for attempt in self.attempts)


def group_by_guid(attempts: Iterable[Attempt]) -> list[History]:
    """One history per guid, the most recently attempted first."""
    by_guid: dict[str, list[Attempt]] = {}
    for attempt in attempts:
        by_guid.setdefault(attempt.guid, []).append(attempt)
    histories = [History(guid, tuple(sorted(group, key=lambda a: -a.id)))
                 for guid, group in by_guid.items()]
    return sorted(histories, key=lambda h: -h.newest.id)


@dataclass(frozen=True)
class Requested:
    """A redelivery asked for earlier, as the store keeps it."""

    guid: str
    delivery_id: int  # the attempt GitHub was asked to deliver again
    after_id: int  # the newest attempt of the guid when it was asked
    requested_at: float
    times: int = 1

    def pending(self, history: History, now: float) -> bool:
        """True while this request still stands: not to be asked again yet.

        Until GitHub makes an attempt after it, a request is pending (it lapses after
        `PENDING_EXPIRY`). When that attempt failed too (Slipway still cannot take it),
        it is asked again after `retry_delay(times)`, so a delivery that keeps failing
        is asked for less and less often, never in a loop.
        """
        waited = now - self.requested_at
        if not history.attempted_after(self.after_id):
            return waited < PENDING_EXPIRY
        return waited < retry_delay(self.times)


def retry_delay(times: int) -> float:
    """Seconds before asking again for a delivery whose `times` redeliveries all failed."""
    return min(RETRY_BASE * 3 ** (max(times, 1) - 1), RETRY_MAX)


@dataclass(frozen=True)
class Plan:
    """What one sweep found among the deliveries of the window, and what to ask for."""

    failed: tuple[History, ...] = ()  # events Slipway acts on, every attempt failed
    ask: tuple[History, ...] = ()  # ... of those, to redeliver now
    pending: tuple[History, ...] = ()  # ... asked earlier, GitHub has not tried again yet
    received: tuple[History, ...] = ()  # ... failed in the log, yet in the store


def plan(
    histories: Iterable[History],
    *,
    cutoff: float,
    now: float,
    seen: Container[str],
    requested: Mapping[str, Requested],
    acts_on: Callable[[str, str | None], bool],
) -> Plan:
    """Sort the failed deliveries of the window into ask now, pending, already received.

    `seen`: guids the store holds; `requested`: earlier requests by guid; `acts_on(event,
    action)`: whether Slipway builds anything for that event.
    """
    failed, ask, pending, received = [], [], [], []
    for history in histories:
        newest = history.newest
        if newest.delivered_at < cutoff or not history.failed:
            continue
        if not acts_on(newest.event, newest.action):
            continue
        failed.append(history)
        earlier = requested.get(history.guid)
        if history.guid in seen:
            received.append(history)
        elif earlier is not None and earlier.pending(history, now):
            pending.append(history)
        else:
            ask.append(history)
    return Plan(tuple(failed), tuple(ask), tuple(pending), tuple(received))


@dataclass
class Summary:
    """One sweep, as logged, stored for `doctor` and counted in /metrics."""

    started_at: float
    window_hours: float
    finished_at: float | None = None
    pages: int = 0
    read: int = 0  # attempts read
    failed: int = 0  # failed deliveries of acted-on events in the window
    asked: list[str] = field(default_factory=list)  # guids GitHub accepted to redeliver
    pending: int = 0
    received: int = 0
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping) -> Summary:
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in data.items() if key in known})

    def describe(self) -> str:
        """One line: what the sweep read, found and asked for."""
        window = f"{self.window_hours:g} h"
        found = (f"{self.failed} failed deliveries in the last {window}"
                 if self.failed != 1 else f"1 failed delivery in the last {window}")
        parts = [f"read {self.read} deliveries on {self.pages} page(s)", found]
        if self.failed:
            parts.append(f"{len(self.asked)} redelivery(ies) asked for, {self.pending} "
                         f"pending, {self.received} already received")
        if self.errors:
            parts.append(f"{len(self.errors)} error(s): {self.errors[0]}")
        return "; ".join(parts)


def _integer(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedDelivery(f"a delivery's {name} is not a whole number: {value!r}")
    return value


def _optional_integer(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: object, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise MalformedDelivery(f"a delivery's {name} is not a string: {value!r}")
    return value


def _timestamp(value: object) -> float:
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise MalformedDelivery(f"a delivery's delivered_at is not a time: {value!r}") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def report_last_sweep(summary: Summary | None, *, now: float, interval: float) -> tuple[bool, str]:
    """Whether the sweeps are healthy, and one line on the last one (for `doctor`)."""
    if summary is None or summary.finished_at is None:
        return False, ("no sweep of the App's delivery log has run yet: `serve` sweeps at "
                       "start-up, so start Slipway (python -m github_app serve)")
    ago = _ago(now - summary.finished_at)
    line = f"last sweep {ago}: {summary.describe()}"
    if summary.errors:
        return False, (f"{line}. Slipway sweeps again every {interval:g} s; if this persists, "
                       "check that GitHub accepts the App (see app above)")
    # A few missed intervals: no process sweeps (all stopped, or stuck on the lease).
    if now - summary.finished_at > 3 * interval + 60:
        return False, (f"{line}; none since, although one is due every {interval:g} s: no "
                       "Slipway process is sweeping; start `serve` or check its log")
    return True, line


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 0):.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"
