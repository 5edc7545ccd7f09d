"""A second machine for tests: a network namespace joined to this host by a veth pair.

    with other_machine() as host:       # ip netns add slipway-<random>, veth, addresses
        host.run(["python3", "-c", ...])   # runs inside the namespace
        host.host_address              # this host's end of the link, e.g. 10.213.7.1

The namespace has only `lo` and its end of the veth pair (a /30), so from inside it
127.0.0.1 is its own loopback: whatever it reaches of this host, it reaches through
the veth address. Everything is removed on exit, even when the body raises.
Needs root (CAP_NET_ADMIN); `NamespacesUnavailable` says when it is refused.
"""

from __future__ import annotations

import contextlib
import ipaddress
import random
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

# A private /24 that this machine does not route anywhere; each test host takes
# a free /30 of it, so parallel runs and leftovers of killed runs do not clash.
POOL = ipaddress.ip_network("10.213.7.0/24")


class NamespacesUnavailable(RuntimeError):
    """`ip netns add` was refused here (no root or no CAP_NET_ADMIN)."""


@dataclass(frozen=True)
class NetnsHost:
    """A namespace reachable from this host at `peer_address`, and reaching it at `host_address`."""

    namespace: str
    host_interface: str
    host_address: str
    peer_address: str

    def run(self, argv: Sequence[str], *, timeout: float = 60, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace and return its captured output."""
        return subprocess.run(
            ["ip", "netns", "exec", self.namespace, *argv],
            capture_output=True, text=True, timeout=timeout, check=check,
        )


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise subprocess.CalledProcessError(
            result.returncode, ["ip", *args], result.stdout, result.stderr
        )


def _addresses_in_use() -> list[ipaddress.IPv4Interface]:
    output = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    return [ipaddress.ip_interface(line.split()[3]) for line in output.splitlines()]


def free_subnet() -> ipaddress.IPv4Network:
    """A /30 of POOL that no interface of this host has an address in."""
    used = _addresses_in_use()
    subnets = list(POOL.subnets(new_prefix=30))
    # Start at a random one: two runs choosing at once rarely pick the same.
    start = random.randrange(len(subnets))
    for subnet in subnets[start:] + subnets[:start]:
        if not any(address.network.overlaps(subnet) for address in used):
            return subnet
    raise RuntimeError(f"every /30 of {POOL} is in use: remove stale slipway-* veth pairs")


@contextlib.contextmanager
def other_machine() -> Iterator[NetnsHost]:
    """Create a namespace and veth pair, yield the NetnsHost, then remove both."""
    suffix = uuid.uuid4().hex[:6]
    namespace = f"slipway-{suffix}"
    # Interface names are limited to 15 characters.
    host_interface, peer_interface = f"slw{suffix}h", f"slw{suffix}p"

    added = subprocess.run(
        ["ip", "netns", "add", namespace], capture_output=True, text=True, timeout=30
    )
    if added.returncode != 0:
        raise NamespacesUnavailable(
            f"`ip netns add {namespace}` was refused: {added.stderr.strip()}"
        )
    try:
        subnet = free_subnet()
        host_ip, peer_ip = list(subnet.hosts())
        _ip("link", "add", host_interface, "type", "veth", "peer", "name", peer_interface)
        _ip("link", "set", peer_interface, "netns", namespace)
        _ip("addr", "add", f"{host_ip}/{subnet.prefixlen}", "dev", host_interface)
        _ip("link", "set", host_interface, "up")
        _ip("-n", namespace, "addr", "add", f"{peer_ip}/{subnet.prefixlen}", "dev", peer_interface)
        _ip("-n", namespace, "link", "set", peer_interface, "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        yield NetnsHost(namespace, host_interface, str(host_ip), str(peer_ip))
    finally:
        remove(namespace, host_interface)


def remove(namespace: str, host_interface: str) -> None:
    """Delete the namespace and the veth pair; what is already gone is fine."""
    # Deleting the namespace destroys its veth end, which takes the host end
    # with it; delete the host end too in case the peer never moved in.
    subprocess.run(["ip", "link", "del", host_interface], capture_output=True, timeout=30)
    subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)
