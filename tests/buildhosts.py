"""Several build hosts on one machine, for the tests of Slipway on several machines.

    with service_address() as address:           # 10.213.9.N on an interface of its own
        with build_host(address, registry="10.213.9.N:PORT") as host:
            host.docker_host                     # unix:///run/slw-XXXXXX.sock
            host.popen([...], env=...)           # a process inside the host's namespace
            host.cut(); host.reconnect()         # `ip link set ... down | up`

A build host is a network namespace (tests/netns.py: a veth pair to this host)
with a Docker engine of its own (own data root, exec root, pid file and socket,
`--bridge=none`, never Docker's bridge) that has the base image loaded. Servers
the hosts must reach (PostgreSQL, the registry, the fake GitHub) listen on the
*service address*: one address on an interface of this host that holds only it, which every
namespace routes to through its own veth link. One address for all hosts means
one `REGISTRY` for every worker, so every worker names an image the same way;
cutting a host's link cuts it off from all of them at once.

Needs root. Everything is removed on exit, even when the body raises; the
engines' data roots are kept in the test state folder (as the main engine's
are), so the base image is loaded once, not on every run.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import random
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.netns import NetnsHost, _addresses_in_use, _ip, other_machine

SERVICE_POOL = ipaddress.ip_network("10.213.9.0/24")
STATE = Path(os.environ.get("SLIPWAY_TEST_STATE", "/var/tmp/slipway-test-env")) / "hosts"
BASE_IMAGE = "python:3.11-slim"
API_VERSION = os.environ.get("DOCKER_API_VERSION", "1.41")


@contextlib.contextmanager
def service_address() -> Iterator[str]:
    """A free address of SERVICE_POOL on an interface of its own; removed on exit."""
    used = {str(address.ip) for address in _addresses_in_use()}
    candidates = [str(a) for a in SERVICE_POOL.hosts() if str(a) not in used]
    address = random.choice(candidates)
    interface = f"slwsvc{uuid.uuid4().hex[:6]}"
    # A Linux bridge with no port stands for a dummy interface (this kernel has
    # no dummy driver): it only holds the address. Not Docker's bridge.
    _ip("link", "add", interface, "type", "bridge")
    try:
        _ip("addr", "add", f"{address}/32", "dev", interface)
        _ip("link", "set", interface, "up")
        yield address
    finally:
        subprocess.run(["ip", "link", "del", interface], capture_output=True, timeout=30)


@dataclass
class BuildHost:
    """One build host: its namespace, its engine, the address it reaches services at."""

    name: str
    netns: NetnsHost
    docker_host: str
    dockerd: subprocess.Popen
    log_path: Path

    def popen(self, argv: Sequence[str], *, env: dict[str, str], **options) -> subprocess.Popen:
        """Start a process inside this host's namespace (its own session, for killpg)."""
        return subprocess.Popen([*_enter(self.netns), *argv], env=env,
                                start_new_session=True, **options)

    def docker(self, *args: str, **options) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this host's engine."""
        return subprocess.run(["docker", "-H", self.docker_host, *args], capture_output=True,
                              text=True, env={**os.environ, "DOCKER_API_VERSION": API_VERSION},
                              **options)

    def cut(self) -> None:
        """Take this host off the network (`ip link set ... down` on its link)."""
        _ip("link", "set", self.netns.host_interface, "down")

    def reconnect(self) -> None:
        """Bring its link back up."""
        _ip("link", "set", self.netns.host_interface, "up")


def _enter(netns: NetnsHost) -> list[str]:
    """The command prefix that runs a program in the namespace's network only.

    Not `ip netns exec`: it also remounts /sys, which hides the cgroup
    hierarchy that dockerd needs."""
    return ["nsenter", f"--net=/run/netns/{netns.namespace}", "--"]


def _engine_answers(docker_host: str) -> bool:
    result = subprocess.run(["docker", "-H", docker_host, "version", "--format",
                             "{{.Server.Version}}"], capture_output=True, timeout=10,
                            env={**os.environ, "DOCKER_API_VERSION": API_VERSION})
    return result.returncode == 0


@contextlib.contextmanager
def _data_root() -> Iterator[Path]:
    """A data root no other engine uses now, reusing an idle one (its image is loaded)."""
    STATE.mkdir(parents=True, exist_ok=True)
    for slot in range(16):
        root = STATE / f"engine-{slot}"
        root.mkdir(exist_ok=True)
        handle = open(root / "lock", "a")  # noqa: SIM115 - held while the engine runs
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        try:
            yield root
        finally:
            handle.close()
        return
    raise RuntimeError(f"every engine data root under {STATE} is in use")


@contextlib.contextmanager
def build_host(service: str, *, registry: str, image: str = BASE_IMAGE) -> Iterator[BuildHost]:
    """A namespace with its own dockerd that reaches `service` and pushes to `registry`."""
    with other_machine() as netns, _data_root() as root:
        _ip("-n", netns.namespace, "route", "add", f"{service}/32", "via", netns.host_address)
        name = f"slw-{netns.namespace.removeprefix('slipway-')}"
        docker_host = f"unix:///run/{name}.sock"
        log_path = root / "dockerd.log"
        with open(log_path, "ab") as log:
            dockerd = subprocess.Popen(
                [*_enter(netns), "dockerd",
                 "--data-root", str(root / "data"), "--exec-root", f"/run/{name}",
                 "--pidfile", f"/run/{name}.pid", "-H", docker_host,
                 "--bridge=none", "--iptables=false", "--ip-masq=false", "--ip6tables=false",
                 # The registry is not on 127.0.0.0/8, the range Docker trusts without TLS.
                 "--insecure-registry", registry],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 60
            while not _engine_answers(docker_host):
                if dockerd.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"dockerd of {name} did not start; see {log_path}")
                time.sleep(0.5)
            host = BuildHost(name, netns, docker_host, dockerd, log_path)
            if host.docker("image", "inspect", image).returncode != 0:
                _load_image(image, docker_host)
            yield host
        finally:
            _stop(dockerd)
            for leftover in (f"/run/{name}.sock", f"/run/{name}.pid"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)


def _load_image(image: str, docker_host: str) -> None:
    """`docker save IMAGE | docker -H HOST load`: nothing can be pulled here."""
    env = {**os.environ, "DOCKER_API_VERSION": API_VERSION}
    save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE, env=env)
    load = subprocess.run(["docker", "-H", docker_host, "load", "-q"], stdin=save.stdout,
                          capture_output=True, text=True, env=env, timeout=300)
    save.stdout.close()
    save.wait(timeout=60)
    if save.returncode != 0 or load.returncode != 0:
        raise RuntimeError(f"could not load {image} into {docker_host}: {load.stderr.strip()}")


def _stop(process: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL the process group it leads; only what the test started."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@contextlib.contextmanager
def registry_server(address: str, folder: Path, port: int = 0,
                    storage: Path | None = None) -> Iterator[str]:
    """A registry (distribution, the code of registry:2) on `address`; yields HOST:PORT.

    ``storage`` kept from run to run holds the base image's layers already, so the
    hosts' first pushes do not each send 80 MB again (a minute on this machine)."""
    port = port or _free_port(address)
    config = folder / "registry.yml"
    storage = storage or folder / "data"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: {address}:{port}\n"
    )
    with open(folder / "registry.log", "ab") as log:
        process = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_port(address, port, process, what="the registry")
        yield f"{address}:{port}"
    finally:
        _stop(process)


def _free_port(address: str) -> int:
    import socket

    with socket.socket() as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


def _wait_for_port(address: str, port: int, process: subprocess.Popen, *, what: str,
                   timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((address, port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start on {address}:{port}") from None
            time.sleep(0.1)
