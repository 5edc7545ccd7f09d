"""From the merge webhook to the completed check run: prebuilt, rebuilt, and plain docker.

Three ways to publish `microservice/` once a pull request is merged, each timed
from the signed `pull_request` `closed` webhook (the real example payload, over
HTTP to the app) until the fake GitHub has received the check run's final PATCH:

(a) prebuilt: the pull request was built and staged before the merge (`opened`),
    and the merge commit's tree is the head's, so Slipway publishes the staged
    image under the version without building (a new config blob and manifest);
(b) rebuilt, warm: the same, but the merge commit changes a file (README.md,
    which the service's .dockerignore leaves out), so the trees differ and
    Slipway builds the merge; every step comes from the build cache of the
    pre-merge build, and the layers are already in the registry;
(c) plain docker, warm: what a CI that builds on merge runs, `docker build
    --network host --build-arg SERVICE_VERSION=... --build-arg SERVICE_REVISION=<merge>`
    + `docker push`, of the same files from a folder on disk. Its cache is warm
    from earlier builds (the dependencies' layers, pushed already), but, as at
    a real merge, it has not seen the pull request's change before.

Every run's pull request changes `app.py` (a comment with a new id): that is
the change being released. Slipway has built it before the merge; plain docker
meets it at the merge. The fully cached case (the very same files built twice)
is printed too, for the record.

Runs interleave (a, b, c, then c, b, a, ...) so no side always gets the warmer
disk. The last line is the result; the target is prebuilt/plain <= 0.3 and
prebuilt <= 1.0 s on this machine.

    bash scripts/test-env      # engine, registry, base image, test fixtures
    DOCKER_API_VERSION=1.41 python3 bench/publish_latency.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from builder.registry import Registry, list_tags  # noqa: E402
from tests.fake_github import start_fake_github  # noqa: E402
from tests.slipway_harness import Harness  # noqa: E402

PREFIX = "bench-publish"


def context_files(context: Path) -> dict[str, bytes]:
    """The service's files as a repository would hold them (caches left out)."""
    return {str(path.relative_to(context)): path.read_bytes()
            for path in sorted(context.rglob("*"))
            if path.is_file() and "__pycache__" not in path.parts
            and ".pytest_cache" not in path.parts}


def with_change(files: dict[str, bytes]) -> dict[str, bytes]:
    """The pull request's change: app.py with one more line."""
    changed = dict(files)
    changed["app.py"] = files["app.py"] + f"# change {uuid.uuid4().hex}\n".encode()
    return changed


def wait_for(predicate, timeout: float, what: str):
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.005)
    raise SystemExit(f"timed out waiting for {what}")


def time_slipway(harness: Harness, files: dict[str, bytes], *, change_tree: bool,
                 names: list[str]) -> float:
    """Open a pull request, let it build and stage, merge it; seconds from merge to check."""
    name = f"{PREFIX}-{uuid.uuid4().hex[:8]}"
    names.append(name)
    merge_files = {"README.md": b"changed by the merge\n"} if change_tree else None
    repo = harness.repository(files, name=name, merge_files=merge_files)
    harness.deliver("pull_request", repo.pull_request("opened", labels=["version:1.0.0"]))

    def staged():
        runs = harness.final_check_runs(repo)
        return runs if runs and runs[0]["status"] == "completed" else None

    before = {run["id"] for run in wait_for(staged, 900, "the pre-merge build")}
    if harness.final_check_runs(repo)[0]["conclusion"] != "success":
        raise SystemExit(f"the pre-merge build failed: {harness.final_check_runs(repo)[0]}")

    def published():
        return [run for run in harness.final_check_runs(repo)
                if run["id"] not in before and run["status"] == "completed"]

    started = time.perf_counter()
    harness.deliver("pull_request", repo.merged(labels=["version:1.0.0"], number=12))
    run = wait_for(published, 900, "the merge's check run")[0]
    elapsed = time.perf_counter() - started
    if run["conclusion"] != "success":
        raise SystemExit(f"the merge failed: {run['output']['summary']}")
    prebuilt = "Published from the pre-merge build" in run["output"]["summary"]
    if prebuilt == change_tree:
        raise SystemExit(f"expected {'a build' if change_tree else 'no build'} at the merge")
    return elapsed


def time_plain(files: dict[str, bytes], registry: str, network: str, name: str,
               release: tuple[str, str] | None = None) -> float:
    """`docker build` + `docker push` of `files` as release (version, revision)."""
    with tempfile.TemporaryDirectory() as tmp:
        for path, data in files.items():
            target = Path(tmp) / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        version, revision = release or new_release()
        tag = f"{registry}/{name}:{version}"
        started = time.perf_counter()
        subprocess.run(["docker", "build", "--network", network, "-q", "-t", tag,
                        "--build-arg", f"SERVICE_VERSION={version}",
                        "--build-arg", f"SERVICE_REVISION={revision}",
                        tmp], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["docker", "push", "-q", tag], check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - started


def new_release() -> tuple[str, str]:
    """A version and a merge commit sha no earlier run used."""
    return f"1.0.{uuid.uuid4().int % 10**6}", uuid.uuid4().hex + uuid.uuid4().hex[:8]


def clean_up(registry: str, names: list[str]) -> None:
    """Remove what this run pushed and tagged (its own image names only)."""
    api = Registry(registry)
    for name in names:
        for tag in list_tags(registry, name):
            with contextlib.suppress(Exception):
                api.delete_tag(name, tag)
        listed = subprocess.run(["docker", "images", "-q", f"{registry}/{name}"],
                                capture_output=True, text=True).stdout.split()
        for image in sorted(set(listed)):
            subprocess.run(["docker", "rmi", "-f", image], capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--context", type=Path, default=ROOT / "microservice")
    parser.add_argument("--registry", default=os.environ.get("TEST_REGISTRY_ADDR",
                                                             "127.0.0.1:5000"))
    parser.add_argument("--network", default="host")
    args = parser.parse_args()
    os.environ.setdefault("DOCKER_API_VERSION", "1.41")

    files = context_files(args.context)
    fake = start_fake_github()
    data_dir = Path(tempfile.mkdtemp(prefix="slipway-bench-"))
    harness = Harness(fake, args.registry, data_dir, threads=1)
    worker = harness.worker()
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    names: list[str] = []
    plain_name = f"{PREFIX}-plain-{uuid.uuid4().hex[:8]}"
    names.append(plain_name)
    samples: dict[str, list[float]] = {"prebuilt": [], "rebuilt": [], "plain": [],
                                       "plain, nothing new": []}
    try:
        print("warming up: one pre-merge build, one merge, one plain build", flush=True)
        time_slipway(harness, with_change(files), change_tree=True, names=names)
        time_plain(with_change(files), args.registry, args.network, plain_name)
        for i in range(args.repeat):
            order = ["prebuilt", "rebuilt", "plain"]
            change = with_change(files)
            for side in order if i % 2 == 0 else reversed(order):
                if side == "plain":
                    release = new_release()
                    seconds = time_plain(change, args.registry, args.network, plain_name,
                                         release)
                    # The very same build again: every step from the cache, every layer there.
                    cached = time_plain(change, args.registry, args.network, plain_name,
                                        release)
                    samples["plain, nothing new"].append(cached)
                else:
                    seconds = time_slipway(harness, change, change_tree=side == "rebuilt",
                                           names=names)
                samples[side].append(seconds)
                print(f"run {i + 1} {side:18s} {seconds:7.3f} s", flush=True)
                if side == "plain":
                    print(f"run {i + 1} {'plain, nothing new':18s} {cached:7.3f} s", flush=True)
    finally:
        worker.stop()
        thread.join(timeout=30)
        harness.close()
        fake.stop()
        clean_up(args.registry, names)
    a, b, c, cached = (statistics.median(samples[side]) for side in samples)
    print(f"\nmedians over {args.repeat} runs (merge webhook -> completed check run); "
          f"targets: prebuilt/plain <= 0.3, prebuilt <= 1.0 s")
    print(f"for the record: plain docker of files it has built before (the fully cached "
          f"case) {cached:.2f} s")
    print(f"publish: prebuilt {a:.2f} s, rebuilt {b:.2f} s, plain docker {c:.2f} s, "
          f"prebuilt/plain {a / c:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
