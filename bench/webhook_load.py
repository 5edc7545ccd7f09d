"""Webhook load: Slipway's `POST /webhook`, served as production serves it, against Probot.

Issue 3, item 8, first measurement. One run starts the servers on free loopback
ports, sends the same signed `pull_request` `closed` webhook (the real example
of npm package `@octokit/webhooks-examples`, changed to `merged: true` into
`develop` so that Slipway takes its enqueue path) with `wrk` at each
concurrency, interleaving the servers, and prints throughput, p50/p99 latency,
non-2xx answers and the CPU that the server and the load generator used.
Every request carries a unique `X-GitHub-Delivery` id, so Slipway never
answers "duplicate".

Slipway runs exactly as production starts it, `python -m github_app serve
--host 127.0.0.1` (Granian, WSGI), with three settings: `WORKER_THREADS=0`
(no build worker: GitHub is unreachable here, so it would only churn through
failing jobs; in production the builds run in it), `LOG_LEVEL=WARNING` (to
match Probot's `LOG_LEVEL=warn`: neither writes a line per delivery), and for
the same-CPU row `WEB_WORKERS=1`. Rows:

    slipway-1cpu   WEB_WORKERS=1, pinned with taskset to the CPU of probot-1cpu
                   (same CPU budget: one node process against one Python process)
    slipway-serve  production defaults (WEB_WORKERS unset = 1 process), unpinned
    probot-1cpu    `probot run` of bench/probot/index.js, one node process, pinned

wrk runs pinned to another CPU. Both Slipway rows are compared with
probot-1cpu: "same CPU" for slipway-1cpu, "production defaults" for
slipway-serve (Probot runs as one node process in production too; Slipway then
uses more than one CPU, which the req/CPU-s column shows).

    python bench/webhook_load.py [--duration 10] [--rounds 2] [--concurrency 16 64]

Needs `wrk` (apt-get install -y wrk), node 20 and npm; installs bench/probot's
node_modules with `npm ci` when they are missing. See bench/README.md.

Item 8's second measurement, webhook to completed check run against plain
`docker build` + `docker push`, is bench/e2e_overhead.py (it needs the engine
and the registry).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PROBOT_DIR = BENCH / "probot"
EXAMPLES = ROOT / "tests/node_modules/@octokit/webhooks-examples/api.github.com/index.json"
SECRET = "slipway-bench-secret"
TARGET_BRANCH = "develop"
# Any call to GitHub goes to a closed loopback port and fails at once: neither
# server may reach api.github.com, and neither should try while acknowledging.
NOWHERE = "127.0.0.1:9"
# Slipway's LOG_LEVEL for each Probot LOG_LEVEL that --log-level offers.
SLIPWAY_LOG_LEVEL = {"warn": "WARNING", "info": "INFO"}
# Processes that the benchmark started, stopped by pid on every exit path.
_started: list[subprocess.Popen] = []


# -- the payload ---------------------------------------------------------------------------------


def load_payload() -> bytes:
    """The real `pull_request` `closed` example, merged into the target branch, compact JSON."""
    if not EXAMPLES.exists():
        sys.exit(f"{EXAMPLES} is missing: run `npm ci --prefix tests` first")
    events = json.loads(EXAMPLES.read_text())
    pull_request = next(e for e in events if e["name"] == "pull_request")
    closed = next(x for x in pull_request["examples"] if x["action"] == "closed")
    payload = copy.deepcopy(closed)
    payload["pull_request"]["merged"] = True
    payload["pull_request"]["base"]["ref"] = TARGET_BRANCH
    return json.dumps(payload, separators=(",", ":")).encode()


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def delivery_headers(body: bytes, delivery_id: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/bench",
        "X-GitHub-Event": "pull_request",
        "X-GitHub-Delivery": delivery_id,
        "X-Hub-Signature-256": sign(body),
    }


# -- processes -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv: list[str], *, env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    out = log.open("wb")
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    _started.append(proc)
    return proc


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM by pid, SIGKILL after 10 s (Granian stops its worker processes on SIGTERM)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    with contextlib.suppress(ValueError):
        _started.remove(proc)


def wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}; its log:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # it answers: a 404/405 is fine
        except OSError:
            time.sleep(0.2)
    sys.exit(f"no answer from {url} after {timeout:.0f} s; log:\n{log.read_text()[-3000:]}")


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) that pid and its live descendants used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        child, parent = int(entry.name), int(fields[1])
        children.setdefault(parent, []).append(child)
        stats[child] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += stats.get(current, 0.0)
        todo.extend(children.get(current, []))
    return total


@dataclasses.dataclass
class Server:
    name: str  # the row label
    kind: str  # slipway | probot
    url: str  # the webhook URL
    proc: subprocess.Popen
    describe: str  # how it runs, for the table's legend


def pin(cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus] if cpus else []


def start_slipway(name: str, workdir: Path, key_pem: Path, *, web_workers: int | None,
                  cpus: str | None, log_level: str) -> Server:
    """`python -m github_app serve`, as production starts it, on a fresh DATA_DIR.

    web_workers None leaves WEB_WORKERS unset (the production default)."""
    data_dir = workdir / f"{name}-data"
    data_dir.mkdir()
    port = free_port()
    # Nothing of this shell's Slipway settings leaks in: unset means the default.
    env = {k: v for k, v in os.environ.items()
           if k not in ("WEB_WORKERS", "WEB_THREADS", "WORKER_THREADS", "LOG_LEVEL", "HOST")}
    env.update({
        "GITHUB_APP_ID": "1",
        "GITHUB_PRIVATE_KEY_PATH": str(key_pem),
        "GITHUB_WEBHOOK_SECRET": SECRET,
        "GITHUB_API_URL": f"http://{NOWHERE}",
        "TARGET_BRANCH": TARGET_BRANCH,
        # The example's repository owner: the delivery passes the owner check and is queued.
        "ALLOWED_OWNERS": "Codertocat",
        "REGISTRY": NOWHERE,
        "PUBLIC_URL": f"http://127.0.0.1:{port}",
        "DATA_DIR": str(data_dir),
        "PORT": str(port),
        # No build worker: with GitHub unreachable it would only fail jobs.
        "WORKER_THREADS": "0",
        "LOG_LEVEL": log_level,
        "PYTHONUNBUFFERED": "1",
    })
    settings = ["WORKER_THREADS=0", f"LOG_LEVEL={log_level}"]
    if web_workers is not None:
        env["WEB_WORKERS"] = str(web_workers)
        settings.insert(0, f"WEB_WORKERS={web_workers}")
    else:
        settings.insert(0, "WEB_WORKERS unset (1)")
    argv = [*pin(cpus), sys.executable, "-m", "github_app", "serve", "--host", "127.0.0.1"]
    log = workdir / f"{name}.log"
    proc = start(argv, env=env, cwd=ROOT, log=log)
    wait_until_up(f"http://127.0.0.1:{port}/webhook", proc, log)  # GET: 405 once up
    cpu_note = f"taskset -c {cpus}" if cpus else "all CPUs"
    describe = f"python -m github_app serve, {', '.join(settings)} ({cpu_note})"
    return Server(name, "slipway", f"http://127.0.0.1:{port}/webhook", proc, describe)


def ensure_probot_installed() -> None:
    if (PROBOT_DIR / "node_modules/probot/package.json").exists():
        return
    print("installing bench/probot/node_modules (npm ci) ...", flush=True)
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--prefix", str(PROBOT_DIR)],
                   check=True, timeout=600)


def start_probot(name: str, workdir: Path, key_pem: Path, *, cpus: str | None,
                 log_level: str) -> Server:
    port = free_port()
    env = {
        **os.environ,
        "APP_ID": "1",
        "PRIVATE_KEY": key_pem.read_text(),
        "WEBHOOK_SECRET": SECRET,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "NODE_ENV": "production",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": log_level,
        # An Enterprise host on a closed loopback port instead of api.github.com.
        "GHE_HOST": NOWHERE,
        "GHE_PROTOCOL": "http",
    }
    argv = [*pin(cpus), "node", "node_modules/probot/bin/probot.js", "run", "./index.js"]
    log = workdir / f"{name}.log"
    proc = start(argv, env=env, cwd=PROBOT_DIR, log=log)
    wait_until_up(f"http://127.0.0.1:{port}/ping", proc, log)
    cpu_note = f"taskset -c {cpus}" if cpus else "all CPUs"
    describe = f"probot run (1 node process, LOG_LEVEL={log_level}, {cpu_note})"
    return Server(name, "probot", f"http://127.0.0.1:{port}/api/github/webhooks", proc, describe)


def check_acknowledges(server: Server, body: bytes) -> str:
    """One request by hand before the load: Slipway must take the build path, Probot answer 2xx."""
    delivery = "00000000-0000-4000-8000-" + secrets.token_hex(6)
    request = urllib.request.Request(server.url, data=body, method="POST",
                                     headers=delivery_headers(body, delivery))
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, answer = response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        status, answer = exc.code, exc.read().decode(errors="replace")
    if server.kind == "slipway" and (status != 202 or '"job"' not in answer):
        sys.exit(f"{server.name}: expected 202 {{\"job\": id}} (the enqueue path), got {status} "
                 f"{answer[:300]}")
    if server.kind == "probot" and not 200 <= status < 300:
        sys.exit(f"{server.name}: expected 2xx, got {status} {answer[:300]}")
    return f"{status} {answer.strip()[:60]}"


# -- load generator: wrk with a Lua script -------------------------------------------------------

# One body and one signature for every request (the signature covers the body
# only); a unique, UUID-shaped X-GitHub-Delivery per request: run id, wrk
# thread and a per-thread counter. Statuses are counted per thread and merged
# in done(), which prints one JSON line.
WRK_LUA = r"""
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  local f = assert(io.open(args[1], "rb"))
  body = f:read("*a")
  f:close()
  run = args[2]
  headers = {
    ["Content-Type"] = "application/json",
    ["User-Agent"] = "GitHub-Hookshot/bench",
    ["X-GitHub-Event"] = "pull_request",
    ["X-Hub-Signature-256"] = args[3],
  }
  counter = 0
  statuses = {}
end

function request()
  counter = counter + 1
  headers["X-GitHub-Delivery"] = string.format("%s-%04x-4000-8000-%012x", run, tid, counter)
  return wrk.format("POST", nil, headers, body)
end

function response(status, hdrs, resp_body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
end

function done(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    local counts = thread:get("statuses")
    for status, n in pairs(counts) do
      merged[status] = (merged[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(merged) do
    table.insert(parts, string.format('"%s":%d', status, n))
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,'
    .. '"max_us":%d,"mean_us":%.1f,"connect":%d,"read":%d,"write":%d,"timeout":%d,'
    .. '"status_errors":%d,"statuses":{%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, e.connect, e.read, e.write, e.timeout,
    e.status, table.concat(parts, ",")))
end
"""


@dataclasses.dataclass
class Measurement:
    server: str
    concurrency: int
    round: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    ok: int  # 2xx answers
    non_2xx: int
    socket_errors: int
    statuses: dict[str, int]
    server_cpu_pct: float  # of one core
    wrk_cpu_pct: float  # of one core


def run_wrk(url: str, *, concurrency: int, seconds: float, body_file: Path, script: Path,
            signature: str, threads: int, cpus: str | None) -> dict:
    """One wrk run; returns the JSON summary that the Lua script's done() prints."""
    run_id = secrets.token_hex(4)
    argv = [*pin(cpus), "wrk", "-t", str(threads), "-c", str(concurrency),
            "-d", f"{seconds:g}s", "--timeout", "10s", "-s", str(script), url,
            "--", str(body_file), run_id, signature]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _started.append(proc)
    try:
        out, err = proc.communicate(timeout=seconds + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _started.remove(proc)
    lines = [line for line in out.decode().splitlines() if line.startswith("WRKJSON ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"wrk failed ({proc.returncode}): {err.decode()[-2000:]}\n{out.decode()[-2000:]}")
    return json.loads(lines[-1][len("WRKJSON "):])


def children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(server: Server, *, concurrency: int, seconds: float, warmup: float, round_no: int,
            body_file: Path, script: Path, signature: str, wrk_threads: int,
            wrk_cpus: str | None) -> Measurement:
    common = dict(concurrency=concurrency, body_file=body_file, script=script,
                  signature=signature, threads=wrk_threads, cpus=wrk_cpus)
    if warmup > 0:
        run_wrk(server.url, seconds=warmup, **common)
    server_before = process_tree_cpu(server.proc.pid)
    wrk_before = children_cpu()
    # wrk is reaped by then, so RUSAGE_CHILDREN holds its CPU time.
    result = run_wrk(server.url, seconds=seconds, **common)
    wrk_cpu = children_cpu() - wrk_before
    server_cpu = process_tree_cpu(server.proc.pid) - server_before
    duration = result["duration_us"] / 1e6
    statuses = result["statuses"]
    ok = sum(n for status, n in statuses.items() if status.startswith("2"))
    if server.kind == "slipway":
        # 200 is Slipway's "duplicate": a unique delivery id must never get it.
        ok -= statuses.get("200", 0)
    errors = sum(result[k] for k in ("connect", "read", "write", "timeout"))
    return Measurement(
        server=server.name, concurrency=concurrency, round=round_no,
        rps=ok / duration, p50_ms=result["p50_us"] / 1e3, p90_ms=result["p90_us"] / 1e3,
        p99_ms=result["p99_us"] / 1e3, max_ms=result["max_us"] / 1e3, ok=ok,
        non_2xx=sum(statuses.values()) - ok, socket_errors=errors, statuses=statuses,
        server_cpu_pct=100 * server_cpu / duration, wrk_cpu_pct=100 * wrk_cpu / duration,
    )


# -- report --------------------------------------------------------------------------------------


def per_cpu_second(m: Measurement) -> float:
    """Requests per second of server CPU: steadier than req/s on a shared machine."""
    return m.rps / (m.server_cpu_pct / 100) if m.server_cpu_pct else float("nan")


def print_rows(rows: list[Measurement]) -> None:
    header = (f"{'server':<15} {'conc':>4} {'round':>5} {'req/s':>8} {'p50 ms':>8} "
              f"{'p99 ms':>8} {'max ms':>8} {'non-2xx':>7} {'sockerr':>7} "
              f"{'srv CPU%':>8} {'req/CPU-s':>9} {'wrk CPU%':>8}")
    print(header)
    print("-" * len(header))
    for m in rows:
        print(f"{m.server:<15} {m.concurrency:>4} {m.round:>5} {m.rps:>8.0f} {m.p50_ms:>8.2f} "
              f"{m.p99_ms:>8.2f} {m.max_ms:>8.1f} {m.non_2xx:>7} {m.socket_errors:>7} "
              f"{m.server_cpu_pct:>8.0f} {per_cpu_second(m):>9.0f} {m.wrk_cpu_pct:>8.0f}")


# What each Slipway row's ratio to probot-1cpu means.
COMPARISON = {
    "slipway-1cpu": "same CPU (1 Slipway web process and 1 node process, both on the pinned CPU)",
    "slipway-serve": "production defaults (Slipway: 1 web process, unpinned; "
                     "Probot: its one node process)",
}


def print_summary(rows: list[Measurement], concurrencies: list[int]) -> None:
    """Medians over the rounds, and Slipway / Probot ratios (target: req/s >= 1, p99 <= 1)."""
    names = list(dict.fromkeys(m.server for m in rows))
    print("\nmedian over rounds")
    print(f"{'server':<15} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
          f"{'req/CPU-s':>9}")
    medians: dict[tuple[str, int], tuple[float, float, float]] = {}
    for c in concurrencies:
        for name in names:
            mine = [m for m in rows if m.server == name and m.concurrency == c]
            if not mine:
                continue
            rps = statistics.median(m.rps for m in mine)
            p50 = statistics.median(m.p50_ms for m in mine)
            p99 = statistics.median(m.p99_ms for m in mine)
            efficiency = statistics.median(per_cpu_second(m) for m in mine)
            medians[name, c] = (rps, p99, efficiency)
            print(f"{name:<15} {c:>4} {rps:>8.0f} {p50:>8.2f} {p99:>8.2f} "
                  f"{sum(m.non_2xx + m.socket_errors for m in mine):>7} {efficiency:>9.0f}")
    probot = next((n for n in names if n.startswith("probot")), None)
    if probot is None:
        return
    print(f"\nratios against {probot} (target: throughput >= 1.00, p99 <= 1.00)")
    for name in names:
        if name == probot:
            continue
        print(f"{name} against {probot}: {COMPARISON.get(name, name)}")
        for c in concurrencies:
            if (name, c) in medians and (probot, c) in medians:
                rps, p99, efficiency = medians[name, c]
                prps, pp99, pefficiency = medians[probot, c]
                verdict = "meets" if rps >= prps and p99 <= pp99 else "MISSES"
                print(f"  {name:<15} c={c:<3} throughput {rps / prps:5.2f}x   "
                      f"p99 {p99 / pp99:5.2f}x   req/CPU-s {efficiency / pefficiency:5.2f}x   "
                      f"{verdict} the target")


# -- main ----------------------------------------------------------------------------------------


def generate_key(path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=10, help="seconds measured per run (10)")
    p.add_argument("--warmup", type=float, default=2, help="seconds of load before each run (2)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds per server (2)")
    p.add_argument("--only", choices=["slipway", "probot"])
    p.add_argument("--server-cpus", default="0",
                   help="CPUs of the fair pair, taskset syntax (0); '' for no pinning")
    p.add_argument("--wrk-cpus", default="1", help="CPUs of wrk (1); '' for no pinning")
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--log-level", choices=list(SLIPWAY_LOG_LEVEL), default="warn",
                   help="Probot's LOG_LEVEL, and Slipway's as its match (warn = WARNING: no line"
                        " per delivery; both default to info in production)")
    p.add_argument("--json", type=Path, help="also write every measurement to this file")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, job store)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not shutil.which("wrk"):
        sys.exit("wrk is missing: apt-get install -y wrk")
    server_cpus = args.server_cpus or None
    wrk_cpus = args.wrk_cpus or None
    body = load_payload()
    workdir = Path(tempfile.mkdtemp(prefix="slipway-bench-"))
    body_file, script, key = workdir / "body.json", workdir / "wrk.lua", workdir / "app-key.pem"
    body_file.write_bytes(body)
    script.write_text(WRK_LUA)
    generate_key(key)

    servers: list[Server] = []
    rows: list[Measurement] = []
    try:
        if args.only != "probot":
            slipway_log_level = SLIPWAY_LOG_LEVEL[args.log_level]
            servers.append(start_slipway("slipway-1cpu", workdir, key, web_workers=1,
                                         cpus=server_cpus, log_level=slipway_log_level))
            servers.append(start_slipway("slipway-serve", workdir, key, web_workers=None,
                                         cpus=None, log_level=slipway_log_level))
        if args.only != "slipway":
            ensure_probot_installed()
            servers.append(start_probot("probot-1cpu", workdir, key, cpus=server_cpus,
                                        log_level=args.log_level))
        print(f"payload: pull_request closed example, merged into {TARGET_BRANCH}, "
              f"{len(body)} bytes")
        print(f"  logging matched: Probot LOG_LEVEL={args.log_level}, Slipway "
              f"LOG_LEVEL={SLIPWAY_LOG_LEVEL[args.log_level]}")
        for s in servers:
            print(f"  {s.name:<13} {s.describe}\n  {'':<13} {s.url} -> "
                  f"{check_acknowledges(s, body)}")
        wrk_note = f"taskset -c {wrk_cpus}" if wrk_cpus else "all CPUs"
        print(f"  wrk -t{args.wrk_threads} ({wrk_note}); {args.warmup:g} s warm-up + "
              f"{args.duration:g} s per run; {os.cpu_count()} CPUs on this machine; "
              f"load average {os.getloadavg()[0]:.1f}\n", flush=True)
        for round_no in range(1, args.rounds + 1):
            for concurrency in args.concurrency:
                for server in servers:
                    m = measure(server, concurrency=concurrency, seconds=args.duration,
                                warmup=args.warmup, round_no=round_no, body_file=body_file,
                                script=script, signature=sign(body), wrk_threads=args.wrk_threads,
                                wrk_cpus=wrk_cpus)
                    rows.append(m)
                    print(f"  {m.server:<13} c={concurrency:<3} round {round_no}: "
                          f"{m.rps:7.0f} req/s  p50 {m.p50_ms:6.2f} ms  p99 {m.p99_ms:7.2f} ms  "
                          f"non-2xx {m.non_2xx}  server CPU {m.server_cpu_pct:.0f}%  "
                          f"wrk CPU {m.wrk_cpu_pct:.0f}%", flush=True)
        print()
        print_rows(rows)
        print_summary(rows, args.concurrency)
        if args.json:
            args.json.write_text(json.dumps([dataclasses.asdict(m) for m in rows], indent=1))
    finally:
        for s in servers:
            stop(s.proc)
        for proc in list(_started):
            stop(proc)
        if args.keep:
            print(f"\nlogs and job stores kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
