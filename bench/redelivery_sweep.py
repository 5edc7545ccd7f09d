"""The redelivery sweep over a busy App's delivery log: what it reads, asks and costs.

The fake GitHub (tests/fake_github.py) holds three days of an App's deliveries, RATE an
hour, one in a hundred failed (status 0 or 503); a receiver at the webhook URL answers
202. For REDELIVER_WINDOW 24 h and 72 h, one sweep, then a second one:

    window  deliveries  pages  GitHub calls  asked  sweep s   | 2nd: pages  asked  s

Targets: pages read = the pages the window needs (deliveries in the window / 100, plus
the one page that crosses its edge), nothing past them; every failed delivery of the
window asked for once; the second sweep asks for nothing.

    python bench/redelivery_sweep.py [--rate 100]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fake_github import FakeGitHub  # noqa: E402
from stub_endpoint import StubEndpoint  # noqa: E402

from github_app.config import Config  # noqa: E402
from github_app.github import GitHubApp  # noqa: E402
from github_app.jobs import JobStore  # noqa: E402
from github_app.sweep import Sweeper  # noqa: E402
from tests.payloads import merged_pull_request  # noqa: E402


def fill(fake: FakeGitHub, rate: int, now: float) -> tuple[int, dict[int, int]]:
    """Three days of deliveries, oldest first; failed ones per window (hours)."""
    total = 72 * rate
    failed_within = {24: 0, 72: 0}
    payload = merged_pull_request()
    for i in range(total):
        # A minute inside the window's edge: the sweep starts within it, so the edge cannot
        # move past a failed delivery between filling and sweeping.
        at = now - (total - i) * 3600 / rate + 60
        failed = i % 100 == 0
        fake.deliveries.record("pull_request", payload,
                               status_code=(0 if i % 200 == 0 else 503) if failed else 202,
                               delivered_at=at)
        for hours in failed_within:
            if failed and at >= now - hours * 3600:
                failed_within[hours] += 1
    return total, failed_within


def sweep_once(sweeper: Sweeper, fake: FakeGitHub):
    before = len(fake.requests)
    started = time.perf_counter()
    summary = sweeper.sweep_if_due(due_before=time.time())
    seconds = time.perf_counter() - started
    calls = fake.requests[before:]
    return summary, seconds, len(calls)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=100, help="deliveries an hour")
    args = parser.parse_args()
    ok = True
    print(f"{'window':>6}  {'in window':>9}  {'pages':>5}  {'calls':>5}  {'asked':>5}  "
          f"{'sweep s':>7}  | 2nd: {'pages':>5}  {'asked':>5}  {'s':>5}  target")
    for window in (24, 72):
        fake = FakeGitHub().start()
        try:
            with StubEndpoint(status=202) as receiver:
                fake.webhook_url, fake.webhook_secret = receiver.url + "/webhook", "bench"
                now = time.time()
                _, failed_within = fill(fake, args.rate, now)
                store = JobStore(Path(tempfile.mkdtemp()) / "slipway.sqlite3")
                config = Config(app_id=str(fake.app_id), private_key=fake.private_key_pem,
                                webhook_secret="bench", api_url=fake.url,
                                redeliver_window=window)
                sweeper = Sweeper(config, store,
                                  GitHubApp(fake.url, fake.app_id, fake.private_key_pem))
                first, seconds, calls = sweep_once(sweeper, fake)
                fake.deliveries.wait_for_redeliveries(60)
                second, seconds2, _ = sweep_once(sweeper, fake)
        finally:
            fake.stop()
        in_window = window * args.rate
        needed = min(math.ceil(in_window / 100) + 1, math.ceil(72 * args.rate / 100))
        holds = (first.pages <= needed and len(first.asked) == failed_within[window]
                 and second.asked == [] and not first.errors and not second.errors)
        ok &= holds
        print(f"{window:>5}h  {in_window:>9}  {first.pages:>5}  {calls:>5}  "
              f"{len(first.asked):>5}  {seconds:>7.2f}  |      {second.pages:>5}  "
              f"{len(second.asked):>5}  {seconds2:>5.2f}  "
              f"{'ok' if holds else 'MISSED'} (pages <= {needed}, asked "
              f"{failed_within[window]})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
