"""Enqueue latency of the job store: p50/p99 for 2000 deliveries (not a timed test).

    python bench/enqueue.py [--deliveries 2000] [--data-dir DIR]

The webhook handler calls enqueue() before it answers, and GitHub gives up
after 10 s, so this should stay in the low milliseconds (the aim is < 5 ms).
Each run uses a fresh store in a temporary directory unless --data-dir is given.
A tenth of the deliveries are redeliveries, which take the duplicate path.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from github_app.jobs import JobStore

REQUEST = {
    "installation_id": 12345,
    "pr_number": 42,
    "title": "Release 1.4.0",
    "labels": ["semver:minor"],
    "head_sha": "a" * 40,
    "merge_sha": "b" * 40,
}


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run(data_dir: Path, deliveries: int) -> None:
    store = JobStore.from_data_dir(data_dir)
    ids = [str(uuid.uuid4()) for _ in range(deliveries)]
    new, duplicate = [], []
    for n, delivery_id in enumerate(ids):
        if n % 10 == 9:  # a redelivery of an earlier one
            delivery_id = ids[n // 2]
        started = time.perf_counter()
        result = store.enqueue(
            delivery_id, repository=f"octo/repo{n % 20}", kind="merge", request=REQUEST
        )
        elapsed = (time.perf_counter() - started) * 1000
        (new if result.created else duplicate).append(elapsed)
    store.close()
    everything = new + duplicate
    print(f"{deliveries} enqueues into {store.path}")
    for name, samples in (("all", everything), ("new", new), ("duplicate", duplicate)):
        print(
            f"  {name:<9} n={len(samples):<5} p50={percentile(samples, 0.50):.3f} ms"
            f"  p99={percentile(samples, 0.99):.3f} ms  max={max(samples):.3f} ms"
            f"  mean={statistics.fmean(samples):.3f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=2000)
    parser.add_argument("--data-dir", type=Path)
    args = parser.parse_args()
    if args.data_dir:
        run(args.data_dir, args.deliveries)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            run(Path(tmp), args.deliveries)


if __name__ == "__main__":
    main()
