"""From webhook to completed check run, against plain `docker build` + `docker push`.

Slipway's side is the whole flow: a signed `pull_request` webhook (the real
example payload) over HTTP to the app, the worker waking up, the installation
token, the check run and status, the source tarball from the (fake) GitHub,
the version, the build, the push, and the completed check run, timed until
the fake GitHub has received that last PATCH. The CLI's side is `docker build
--network host` + `docker push` of the same files from a folder on disk.

Both are cold: every repetition puts a fresh `LABEL` right after `FROM`, so no
step below it can come from the build cache, on either side, and the image
name is new so every layer is uploaded. Runs alternate (Slipway, CLI, CLI,
Slipway, ...) so neither always gets the warmer disk. Target: ratio <= 1.15.

    bash scripts/test-env      # engine, registry, base image, test fixtures
    DOCKER_API_VERSION=1.41 python3 bench/e2e_overhead.py [--repeat 5] [--context microservice]
"""

from __future__ import annotations

import argparse
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

from tests.fake_github import start_fake_github  # noqa: E402
from tests.slipway_harness import Harness  # noqa: E402


def context_files(context: Path, run_id: str) -> dict[str, bytes]:
    """The context's files, with a LABEL after FROM that invalidates every cached step."""
    files = {}
    for path in sorted(context.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and ".pytest_cache" not in path.parts:
            files[str(path.relative_to(context))] = path.read_bytes()
    lines = files["Dockerfile"].decode().splitlines()
    at = next(i for i, line in enumerate(lines) if line.upper().startswith("FROM")) + 1
    lines.insert(at, f"LABEL bench.run={run_id}")
    files["Dockerfile"] = ("\n".join(lines) + "\n").encode()
    return files


def time_slipway(harness: Harness, files: dict[str, bytes], timeout: float = 600) -> float:
    repo = harness.repository(files)
    payload = repo.merged(labels=["version:1.0.0"])
    started = time.perf_counter()
    answer = harness.deliver("pull_request", payload)
    answer.raise_for_status()
    while time.perf_counter() - started < timeout:
        runs = harness.final_check_runs(repo)
        if runs and runs[0].get("status") == "completed":
            elapsed = time.perf_counter() - started
            if runs[0]["conclusion"] != "success":
                raise SystemExit(f"Slipway's build failed: {runs[0]['output']['summary']}")
            return elapsed
        time.sleep(0.02)
    raise SystemExit("Slipway did not complete the check run in time")


def time_cli(files: dict[str, bytes], registry: str, network: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            target = Path(tmp) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        tag = f"{registry}/bench-cli-{uuid.uuid4().hex[:8]}:1.0.0"
        started = time.perf_counter()
        subprocess.run(["docker", "build", "--network", network, "-q", "-t", tag, tmp],
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["docker", "push", "-q", tag], check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--context", type=Path, default=ROOT / "microservice")
    parser.add_argument("--registry", default=os.environ.get("TEST_REGISTRY_ADDR",
                                                             "127.0.0.1:5000"))
    parser.add_argument("--network", default="host")
    args = parser.parse_args()
    os.environ.setdefault("DOCKER_API_VERSION", "1.41")

    fake = start_fake_github()
    data_dir = Path(tempfile.mkdtemp(prefix="slipway-bench-"))
    harness = Harness(fake, args.registry, data_dir, threads=1)
    worker = harness.worker()
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    samples: dict[str, list[float]] = {"slipway": [], "cli": []}
    try:
        for i in range(args.repeat):
            order = ("slipway", "cli") if i % 2 == 0 else ("cli", "slipway")
            for side in order:
                files = context_files(args.context, uuid.uuid4().hex)
                if side == "slipway":
                    seconds = time_slipway(harness, files)
                else:
                    seconds = time_cli(files, args.registry, args.network)
                samples[side].append(seconds)
                print(f"run {i + 1} {side:8s} {seconds:7.2f} s", flush=True)
    finally:
        worker.stop()
        harness.close()
        fake.stop()
    slipway, cli = statistics.median(samples["slipway"]), statistics.median(samples["cli"])
    print(f"\nmedian webhook -> completed check run: {slipway:.2f} s")
    print(f"median docker build + docker push:     {cli:.2f} s")
    print(f"ratio Slipway / CLI (cold): {slipway / cli:.3f}  (target <= 1.15)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
