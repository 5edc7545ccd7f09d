"""A build that prints a lot does not make the builder hold it in memory."""

from __future__ import annotations

import tracemalloc

import pytest
from builder_helpers import BASE, make_context

from builder import build_artifact

pytestmark = pytest.mark.docker

MB = 1024 * 1024


def test_memory_stays_bounded_while_a_build_prints_64_mb(registry, published, unique_name,
                                                         tmp_path):
    """64 MB of build output (48 MB in lines, a 16 MB single line) cost the builder < 8 MB."""
    context = make_context(
        tmp_path / "ctx",
        BASE + "RUN head -c 48000000 /dev/zero | tr '\\0' x | fold -w 199 "
               "&& head -c 16000000 /dev/zero | tr '\\0' y && echo && echo done-printing\n",
    )
    published.add(unique_name, "1")
    seen = {"lines": 0, "chars": 0, "longest": 0}

    def count(line: str) -> None:
        seen["lines"] += 1
        seen["chars"] += len(line)
        seen["longest"] = max(seen["longest"], len(line))

    tracemalloc.start()
    try:
        result = build_artifact(unique_name, "1", context=str(context),
                                registry=registry.address, network="host", on_log=count)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert seen["lines"] > 48_000_000 // 200, "every line reached on_log"
    assert seen["chars"] > 48_000_000
    print(f"tracemalloc peak {peak / MB:.2f} MB, log {seen['chars'] / MB:.0f} MB")
    assert peak < 8 * MB, f"peak {peak / MB:.1f} MB for 64 MB of log"
    assert seen["longest"] < 17 * 1024, "the 16 MB line was cut"
    assert len(result.log_tail) <= 64 * 1024 + 1
    assert "done-printing" in result.log_tail, "the tail is the end of the log"
