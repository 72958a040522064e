"""A tiny in-memory host for unit tests: actors joined by a deterministic event heap.

No threads, sockets or SimPy: a heap of `(time_s, seq, node, event)`; `SendMessage` is encoded
with the real codec and decoded on arrival (so unit tests exercise the wire format), delivered
after `latency_s` unless the link is cut. Timers are heap entries with a generation number.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from actors import codec
from actors.core import (
    Address,
    CancelTimer,
    Command,
    Counters,
    CountMetric,
    Event,
    Log,
    MemberChanged,
    MemberInfo,
    MessageReceived,
    SendMessage,
    StartTimer,
    Tell,
    TimerFired,
)
from actors.discovery import Discovery, DiscoveryKnobs


@dataclass
class Node:
    """One simulated peer in the unit-test cluster."""

    actor: Discovery
    up: bool = True
    timer_generation: dict[str, int] = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)
    told: list[MemberChanged] = field(default_factory=list)


class Cluster:
    """Discovery actors on a perfect (or deliberately cut) in-memory network."""

    def __init__(self, latency_s: float = 0.002) -> None:
        self.now_s = 0.0
        self.latency_s = latency_s
        self.nodes: dict[str, Node] = {}
        self.by_address: dict[Address, str] = {}
        self.cut: set[frozenset[str]] = set()
        self.delivered = 0
        self._heap: list[tuple[float, int, str, Event | None, int]] = []
        self._seq = 0

    def add(
        self,
        node_id: str,
        *,
        site: str = "s1",
        subnet: str = "10.0.0.0/24",
        knobs: DiscoveryKnobs | None = None,
        seeds: tuple[Address, ...] = (),
        seed: int = 1,
    ) -> Discovery:
        """Create (or re-create, for a restart) a node and start it at the current time."""
        address = Address(f"10.0.0.{len(self.by_address) + 1}", 7946)
        for known, name in self.by_address.items():
            if name == node_id:
                address = known
        info = MemberInfo(node_id=node_id, site=site, subnet=subnet, address=address, weight=50)
        actor = Discovery(
            info,
            random.Random(f"{seed}:{node_id}:{self.now_s}"),
            knobs or DiscoveryKnobs(),
            seeds,
        )
        self.nodes[node_id] = Node(actor=actor)
        self.by_address[address] = node_id
        self._execute(node_id, actor.start(self.now_s))
        return actor

    def address_of(self, node_id: str) -> Address:
        """The message address of `node_id`."""
        return self.nodes[node_id].actor.self_info.address

    def crash(self, node_id: str) -> None:
        """Stop a node silently: no more deliveries or timers."""
        self.nodes[node_id].up = False

    def stop_cleanly(self, node_id: str) -> None:
        """Announce LEFT, then stop the node."""
        self._execute(node_id, self.nodes[node_id].actor.leave(self.now_s))
        self.nodes[node_id].up = False

    def inject(self, node_id: str, event: Event) -> None:
        """Deliver `event` to `node_id` now."""
        self._deliver(node_id, event)

    def run_until(self, until_s: float) -> None:
        """Process every event scheduled up to `until_s`."""
        while self._heap and self._heap[0][0] <= until_s:
            time_s, _, node_id, event, generation = heapq.heappop(self._heap)
            self.now_s = time_s
            node = self.nodes[node_id]
            if isinstance(event, TimerFired):
                if node.timer_generation.get(event.name) != generation:
                    continue
                del node.timer_generation[event.name]
            assert event is not None
            self._deliver(node_id, event)
        self.now_s = until_s

    def _deliver(self, node_id: str, event: Event) -> None:
        node = self.nodes[node_id]
        if not node.up:
            return
        self.delivered += 1
        self._execute(node_id, node.actor.handle(event, self.now_s))

    def _push(self, time_s: float, node_id: str, event: Event, generation: int = 0) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (time_s, self._seq, node_id, event, generation))

    def _execute(self, node_id: str, commands: list[Command]) -> None:
        node = self.nodes[node_id]
        for command in commands:
            match command:
                case SendMessage(address, message):
                    self._send(node_id, address, codec.encode(message))
                case StartTimer(name, deadline_s):
                    generation = node.timer_generation.get(name, 0) + 1 + self._seq
                    node.timer_generation[name] = generation
                    self._push(max(deadline_s, self.now_s), node_id, TimerFired(name), generation)
                case CancelTimer(name):
                    node.timer_generation.pop(name, None)
                case Tell(_, MemberChanged() as changed):
                    node.told.append(changed)
                case CountMetric(name, amount):
                    node.counters.add(name, amount)
                case Tell() | Log():
                    pass

    def _send(self, source: str, address: Address, payload: bytes) -> None:
        target = self.by_address.get(address)
        if target is None or frozenset((source, target)) in self.cut:
            return
        message = codec.decode(payload)
        source_address = self.address_of(source)
        self._push(
            self.now_s + self.latency_s, target, MessageReceived(source, source_address, message)
        )
