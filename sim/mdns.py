"""Simulated link-local mDNS (zeroconf `_peerpxe._udp.local.`), as the discovery actor sees it.

Timing follows python-zeroconf with a running `ServiceBrowser`:
- a node that starts announces itself; every live node of the same subnet that can reach it
  gets `PeerDiscovered(member, wire_version)` after ~1.2 s (announcement, response
  aggregation and the browser's handler, distributed-numbers.md §1.3);
- the new node's own browser queries on start and learns each live subnet member after
  0.03-0.13 s (responses to a fresh query are sent after a 20-120 ms random delay, RFC 6762
  §6);
- a clean stop sends goodbye packets (TTL 0): live subnet members get `PeerLost` after
  0.01-0.05 s;
- a crash sends nothing: TTL expiry (120 s, RFC 6762 §10) is far too slow to matter, which
  is why discovery runs its own failure detector.

A record carries the node's current member info, capabilities included (the agent updates
its TXT record when it gains one). Multicast does not cross partitions: a member on another
side hears nothing. Jitter comes
from `random.Random(f"mdns:{seed}")`; members are visited in the order they were announced.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Final

from actors.codec import WIRE_VERSION
from actors.core import ActorName, MemberInfo, NodeId, PeerDiscovered, PeerLost

if TYPE_CHECKING:
    from sim.host import SimNode
    from sim.world import World

ANNOUNCE_SEEN_S: Final = 1.1
ANNOUNCE_JITTER_S: Final = 0.2
QUERY_ANSWER_S: Final = 0.03
QUERY_JITTER_S: Final = 0.1
GOODBYE_S: Final = 0.01
GOODBYE_JITTER_S: Final = 0.04


class Mdns:
    """Per-subnet registry of announced, live nodes, and the events they cause."""

    def __init__(self, world: World, seed: int | str) -> None:
        self._world = world
        self._rng = random.Random(f"mdns:{seed}")
        self._live: dict[str, dict[NodeId, SimNode]] = {}

    def node_started(self, node: SimNode) -> None:
        """`node` registered its service: it and its subnet's live members learn of each other."""
        live = self._live.setdefault(node.info.subnet, {})
        assert node.node_id not in live
        rng = self._rng
        reachable = self._world.network.reachable
        announced = PeerDiscovered(advertised(node), WIRE_VERSION)
        discovery = ActorName.DISCOVERY
        for other in live.values():
            if not reachable(node.address, other.address):
                continue
            other.deliver(discovery, announced, ANNOUNCE_SEEN_S + ANNOUNCE_JITTER_S * rng.random())
            answer = PeerDiscovered(advertised(other), WIRE_VERSION)
            node.deliver(discovery, answer, QUERY_ANSWER_S + QUERY_JITTER_S * rng.random())
        live[node.node_id] = node

    def node_gone(self, node: SimNode, clean: bool) -> None:
        """`node` went down; only a clean stop tells anyone (goodbye packets)."""
        live = self._live.get(node.info.subnet, {})
        if live.pop(node.node_id, None) is None or not clean:
            return
        lost = PeerLost(node.node_id)
        reachable = self._world.network.reachable
        for other in live.values():
            if reachable(node.address, other.address):
                other.deliver(
                    ActorName.DISCOVERY, lost, GOODBYE_S + GOODBYE_JITTER_S * self._rng.random()
                )

    def live_members(self, subnet: str) -> list[SimNode]:
        """Announced, live nodes of `subnet`, in announcement order."""
        return list(self._live.get(subnet, {}).values())


def advertised(node: SimNode) -> MemberInfo:
    """What `node`'s service record says: its discovery's current view of itself (the
    capabilities it gained since it started included), else its configured info."""
    info = getattr(node.actors.get(ActorName.DISCOVERY), "self_info", None)
    return info if isinstance(info, MemberInfo) else node.info
