"""How much slower is Slipway's build_artifact than plain `docker build` + `docker push`?

Both build and push the same context to the same registry, side by side, in
alternating order (so neither always gets the warmer disk cache):

* cold: no build cache (``nocache=True`` / ``--no-cache``) and fresh repository
  names, so every step runs and every new layer is uploaded;
* warm: build cache on, one source file changed before each build, so only the
  steps from that file's COPY on run again (the usual "merged a code change").

It prints each sample, the medians and the ratio Slipway/CLI. Target: <= 1.10.

Run it with the engine and the registry up (``bash scripts/test-env``)::

    DOCKER_API_VERSION=1.41 python3 bench/build_overhead.py
    python3 bench/build_overhead.py --repeat 5 --modes warm --context microservice \
        --touch app.py --registry 127.0.0.1:5000 --network host

The context is copied to a temporary directory first (the copy is what gets
changed); every image and registry tag the bench makes is removed at the end.
The microservice's Dockerfile pip installs its requirements, so cold builds
need the package index (network ``host``) and their times include the download.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from builder import build_artifact  # noqa: E402

FALLBACK_CONTEXT = {  # used when microservice/ is not there
    "Dockerfile": "FROM python:3.11-slim\nWORKDIR /app\nCOPY requirements.txt .\n"
                  "RUN pip install --no-cache-dir -r requirements.txt\nCOPY app.py .\n"
                  'CMD ["python", "app.py"]\n',
    "requirements.txt": "itsdangerous==2.2.0\n",
    "app.py": "print('hello')\n",
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--context", default=str(ROOT / "microservice"),
                        help="build context (default: microservice/)")
    parser.add_argument("--touch", default="app.py",
                        help="file in the context changed before each warm build (default: app.py)")
    parser.add_argument("--repeat", type=int, default=3, help="samples per side and mode (3)")
    parser.add_argument("--modes", default="cold,warm", help="cold, warm or cold,warm")
    parser.add_argument("--registry", default=os.environ.get("REGISTRY", "127.0.0.1:5000"))
    parser.add_argument("--network", default="host", help="build network mode (host)")
    return parser.parse_args(argv)


class Bench:
    def __init__(self, args: argparse.Namespace, context: Path):
        self.args = args
        self.context = context
        self.made: list[str] = []  # every REGISTRY/name:tag pushed
        self.stamp = 0
        self.env = {**os.environ, "DOCKER_API_VERSION": os.environ.get("DOCKER_API_VERSION",
                                                                       "1.41")}

    def slipway(self, name: str, version: str, *, nocache: bool) -> float:
        self.made.append(f"{self.args.registry}/{name}:{version}")
        started = time.perf_counter()
        build_artifact(name, version, context=str(self.context), registry=self.args.registry,
                       network=self.args.network, nocache=nocache, on_log=lambda line: None)
        return time.perf_counter() - started

    def cli(self, name: str, version: str, *, nocache: bool) -> float:
        tag = f"{self.args.registry}/{name}:{version}"
        self.made.append(tag)
        build = ["docker", "build", "--network", self.args.network, "-t", tag, str(self.context)]
        if nocache:
            build.insert(2, "--no-cache")
        started = time.perf_counter()
        for command in (build, ["docker", "push", tag]):
            done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  env=self.env, text=True)
            if done.returncode:
                raise SystemExit(f"{' '.join(command)} failed: {done.stderr.strip()}")
        return time.perf_counter() - started

    def change_source(self) -> None:
        self.stamp += 1
        with open(self.context / self.args.touch, "a") as source:
            source.write(f"\n# bench change {self.stamp}\n")

    def run(self, mode: str) -> dict[str, list[float]]:
        run_id = uuid.uuid4().hex[:8]
        times: dict[str, list[float]] = {"slipway": [], "cli": []}
        sides = {"slipway": self.slipway, "cli": self.cli}
        if mode == "warm":  # fill the cache and the registry once, untimed
            for side, build in sides.items():
                build(f"bench-{run_id}-{side}", "prime", nocache=False)
        for rep in range(self.args.repeat):
            order = ["slipway", "cli"] if rep % 2 == 0 else ["cli", "slipway"]
            for side in order:
                if mode == "cold":
                    name = f"bench-{run_id}-{side}-{rep}"  # fresh repository, nothing to reuse
                else:
                    name = f"bench-{run_id}-{side}"
                    self.change_source()
                seconds = sides[side](name, f"{mode}{rep}", nocache=(mode == "cold"))
                times[side].append(seconds)
                print(f"  {mode} #{rep + 1} {side:8s} {seconds:7.2f} s", flush=True)
        return times

    def cleanup(self) -> None:
        if self.made:
            subprocess.run(["docker", "rmi", "-f", *self.made], env=self.env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for reference in self.made:
            name, tag = reference.split("/", 1)[1].rsplit(":", 1)
            base = f"http://{self.args.registry}/v2/{name}/manifests"
            head = requests.head(f"{base}/{tag}", timeout=10, headers={
                "Accept": "application/vnd.docker.distribution.manifest.v2+json"})
            if head.ok:
                requests.delete(f"{base}/{head.headers['Docker-Content-Digest']}", timeout=10)


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="slipway-bench-") as scratch:
        context = Path(scratch) / "context"
        source = Path(args.context)
        if (source / "Dockerfile").exists():
            shutil.copytree(source, context)
        else:
            print(f"{source} has no Dockerfile yet: using a similar temporary context")
            context.mkdir()
            for name, text in FALLBACK_CONTEXT.items():
                (context / name).write_text(text)
        bench = Bench(args, context)
        results = {}
        try:
            for mode in args.modes.split(","):
                print(f"{mode}: {args.repeat} builds per side of {source}", flush=True)
                results[mode] = bench.run(mode)
        finally:
            bench.cleanup()
    print()
    print(f"{'mode':6s} {'slipway (median)':>17s} {'docker CLI (median)':>20s} {'ratio':>7s}")
    for mode, times in results.items():
        ours, theirs = statistics.median(times["slipway"]), statistics.median(times["cli"])
        print(f"{mode:6s} {ours:15.2f} s {theirs:18.2f} s {ours / theirs:7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
