"""Simulated network between node addresses: latency, loss, duplication, partitions, slow nodes.

Theory of operation
-------------------
Every node has a `Port`: its address, site, subnet, the partition *side* it is on and, when
it is a slow node, the extra delay with which it handles each incoming message (Lifeguard's
slow-node experiment: a node that is alive but late). `Network.plan(source, target)` decides
the fate of one datagram and returns the delays after which copies arrive:

- `()` when the datagram is lost or the two ports are on different sides of a partition;
- `(delay_s,)` normally;
- `(delay_s, other_delay_s)` when the network duplicates it (each copy has its own latency,
  so the copies, and datagrams in general, may be reordered).

Latency is drawn per datagram from the link class's distribution: `lan` inside a site, `wan`
between sites. All draws come from one `random.Random(f"net:{seed}")`, in send order, so a run
is reproducible. Counters: datagrams and bytes sent, lost, partitioned, duplicated.

Simulated PXE clients get ports too (`attach`); their DHCP datagrams cross the same link model
through `plan_dhcp`, which is counted apart (`dhcp_sent`, `dhcp_lost`, ...) so that the peers'
message load stays what it was.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Final, Literal

from actors.core import Address, Counters

LatencyKind = Literal["lognormal", "uniform"]


@dataclass(frozen=True, slots=True)
class LatencySpec:
    """A one-way latency distribution.

    `lognormal`: median `median_s`, shape `sigma` (heavy right tail, typical of queues).
    `uniform`: `base_s` plus a uniform jitter in `[0, jitter_s)`.
    """

    kind: LatencyKind = "lognormal"
    median_s: float = 0.0003
    sigma: float = 0.5
    base_s: float = 0.0002
    jitter_s: float = 0.0002

    def __post_init__(self) -> None:
        assert self.kind in ("lognormal", "uniform")
        assert self.median_s > 0
        assert self.sigma >= 0
        assert self.base_s >= 0
        assert self.jitter_s >= 0


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    """Fault model of the whole network (probabilities are per datagram)."""

    lan: LatencySpec = LatencySpec()
    wan: LatencySpec = LatencySpec(kind="uniform", base_s=0.02, jitter_s=0.01)
    loss: float = 0.0
    duplicate: float = 0.0

    def __post_init__(self) -> None:
        assert 0.0 <= self.loss < 1.0
        assert 0.0 <= self.duplicate < 1.0


@dataclass(slots=True)
class Port:
    """One node's attachment to the network."""

    address: Address
    site: str
    subnet: str
    side: int = 0
    slow_delay_s: float = 0.0


MAIN_SIDE: Final = 0
"""The side every port is on when there is no partition."""


@dataclass(slots=True)
class Network:
    """Decides, per datagram, whether and when it arrives."""

    spec: NetworkSpec
    seed: int | str
    counters: Counters = field(default_factory=Counters)
    ports: dict[Address, Port] = field(default_factory=dict)
    _rng: random.Random = field(init=False)
    _next_side: int = field(init=False, default=1)

    def __post_init__(self) -> None:
        self._rng = random.Random(f"net:{self.seed}")

    def attach(self, address: Address, site: str, subnet: str) -> Port:
        """Give `address` a port (idempotent: a restarted node keeps its port)."""
        port = self.ports.get(address)
        if port is None:
            port = Port(address=address, site=site, subnet=subnet)
            self.ports[address] = port
        return port

    def plan(self, source: Port, target: Port, size_bytes: int) -> tuple[float, ...]:
        """Delays (seconds) after which copies of one datagram reach `target`; () if none."""
        counters = self.counters
        counters.add("sent")
        counters.add("sent_bytes", size_bytes)
        if source.side != target.side:
            counters.add("partitioned")
            return ()
        return self._arrivals(source, target, "lost", "duplicated")

    def plan_dhcp(self, source: Port, target: Port) -> tuple[float, ...]:
        """`plan` for a DHCP datagram between a PXE client and a peer (counted apart)."""
        counters = self.counters
        counters.add("dhcp_sent")
        if source.side != target.side:
            counters.add("dhcp_partitioned")
            return ()
        return self._arrivals(source, target, "dhcp_lost", "dhcp_duplicated")

    def _arrivals(
        self, source: Port, target: Port, lost: str, duplicated: str
    ) -> tuple[float, ...]:
        """Loss, latency and duplication of one datagram between two connected ports."""
        rng = self._rng
        if rng.random() < self.spec.loss:
            self.counters.add(lost)
            return ()
        latency = self.spec.lan if source.site == target.site else self.spec.wan
        first = _draw(rng, latency) + target.slow_delay_s
        if self.spec.duplicate and rng.random() < self.spec.duplicate:
            self.counters.add(duplicated)
            return (first, _draw(rng, latency) + target.slow_delay_s)
        return (first,)

    def partition(self, addresses: list[Address]) -> int:
        """Cut `addresses` off from everyone else (a new side of their own); return the side."""
        side = self._next_side
        self._next_side += 1
        for address in addresses:
            self.ports[address].side = side
        return side

    def move(self, addresses: list[Address], side: int) -> None:
        """Put `addresses` on an existing `side` (MAIN_SIDE: back on the main network)."""
        assert 0 <= side < self._next_side
        for address in addresses:
            self.ports[address].side = side

    def heal(self) -> None:
        """Remove every partition."""
        for port in self.ports.values():
            port.side = MAIN_SIDE

    def reachable(self, first: Address, second: Address) -> bool:
        """Whether datagrams can currently flow between two attached addresses."""
        return self.ports[first].side == self.ports[second].side

    def set_slow(self, address: Address, delay_s: float) -> None:
        """Make the node at `address` handle each incoming message `delay_s` late (0: normal)."""
        assert delay_s >= 0
        self.ports[address].slow_delay_s = delay_s


def _draw(rng: random.Random, latency: LatencySpec) -> float:
    if latency.kind == "lognormal":
        return latency.median_s * math.exp(latency.sigma * rng.gauss(0.0, 1.0))
    return latency.base_s + latency.jitter_s * rng.random()
