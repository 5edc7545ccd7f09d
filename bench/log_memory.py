"""Does a build that prints 1 GB make the builder use 1 GB? It should not.

Builds a tiny image whose RUN step prints SIZE megabytes (lines of 199
characters, then one 16 MB line without a newline) through build_artifact,
counting the lines on_log receives, and prints the process's peak RSS growth
(and, with --trace, the tracemalloc peak, which slows the run down) against
the size of the log.

Run it with the engine and the registry up (``bash scripts/test-env``)::

    python3 bench/log_memory.py                 # 1024 MB of log
    python3 bench/log_memory.py --size-mb 64 --trace

The image and its registry tag are removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402

from builder import build_artifact  # noqa: E402

MB = 1024 * 1024


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="log size in MB (1024)")
    parser.add_argument("--registry", default="127.0.0.1:5000")
    parser.add_argument("--network", default="host")
    parser.add_argument("--trace", action="store_true", help="also measure with tracemalloc")
    args = parser.parse_args(argv)

    lines_bytes = max(args.size_mb - 16, 1) * MB
    dockerfile = (
        "FROM python:3.11-slim\n"
        f"RUN head -c {lines_bytes} /dev/zero | tr '\\0' x | fold -w 199 "
        f"&& head -c {16 * MB} /dev/zero | tr '\\0' y && echo\n"
    )
    name, version = f"bench-log-{uuid.uuid4().hex[:8]}", "1"
    seen = {"lines": 0, "chars": 0, "longest": 0}

    def count(line: str) -> None:
        seen["lines"] += 1
        seen["chars"] += len(line) + 1
        seen["longest"] = max(seen["longest"], len(line))

    with tempfile.TemporaryDirectory(prefix="slipway-logbench-") as context:
        Path(context, "Dockerfile").write_text(dockerfile)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if args.trace:
            tracemalloc.start()
        started = time.perf_counter()
        try:
            result = build_artifact(name, version, context=context, registry=args.registry,
                                    network=args.network, on_log=count)
        finally:
            seconds = time.perf_counter() - started
            traced_peak = tracemalloc.get_traced_memory()[1] if args.trace else None
            tracemalloc.stop()
            cleanup(args.registry, name, version)
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    print(f"build printed:    {args.size_mb:10d} MB")
    print(f"on_log received:  {seen['chars'] / MB:10.1f} MB in {seen['lines']} lines "
          f"({seen['chars'] / MB / seconds:.0f} MB/s, {seconds:.1f} s)")
    print(f"longest line:     {seen['longest']:10d} characters (the 16 MB line, cut)")
    print(f"log tail kept:    {len(result.log_tail) / 1024:10.1f} KiB")
    print(f"peak RSS growth:  {(rss_after - rss_before) / MB:10.1f} MB "
          f"(peak RSS {rss_after / MB:.1f} MB)")
    if traced_peak is not None:
        print(f"tracemalloc peak: {traced_peak / MB:10.1f} MB")
    return 0


def cleanup(registry: str, name: str, version: str) -> None:
    client = docker.from_env(version="auto")
    with contextlib.suppress(docker.errors.DockerException):
        client.images.remove(f"{registry}/{name}:{version}", force=True)
    base = f"http://{registry}/v2/{name}/manifests"
    head = requests.head(f"{base}/{version}", timeout=10, headers={
        "Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    if head.ok:
        requests.delete(f"{base}/{head.headers['Docker-Content-Digest']}", timeout=10)


if __name__ == "__main__":
    sys.exit(main())
