"""SimNode hosting: bytes on the wire, timers with generations, tells, drops by reason."""

from __future__ import annotations

import random
from typing import ClassVar

import pytest

from actors.core import (
    ActorName,
    CancelTimer,
    Command,
    CountMetric,
    Event,
    MemberChanged,
    MemberInfo,
    MemberState,
    MessageReceived,
    SendMessage,
    StartTimer,
    TimerFired,
)
from actors.messages import Ping
from sim.network import LatencySpec, NetworkSpec
from tests.sim.helpers import builder_of, member, world
from tests.sim.standin import PingActor

pytestmark = pytest.mark.sim


class TimerActor:
    """Arms `a` at 1 s and `b` at 2 s, re-arms `a` to 3 s, cancels `b`; records fires."""

    NAME: ClassVar[ActorName] = ActorName.DISCOVERY

    def __init__(self, info: MemberInfo, rng: random.Random) -> None:
        self.fired: list[tuple[str, float]] = []

    def start(self, now_s: float) -> list[Command]:
        return [
            StartTimer("a", now_s + 1.0),
            StartTimer("b", now_s + 2.0),
            StartTimer("a", now_s + 3.0),
            CancelTimer("b"),
            StartTimer("c", now_s - 5.0),
        ]

    def handle(self, event: Event, now_s: float) -> list[Command]:
        assert isinstance(event, TimerFired)
        self.fired.append((event.name, now_s))
        return [CountMetric("fired")]


def test_timers_rearm_and_cancel_by_generation() -> None:
    """A re-armed timer fires once at its new deadline; a cancelled one never; past ones now."""
    sim = world()
    node = sim.add_node(member(0), builder_of(TimerActor))
    sim.start(node)
    actor = node.actors[ActorName.DISCOVERY]
    sim.env.run(until=10)
    assert isinstance(actor, TimerActor)
    assert actor.fired == [("c", 0.0), ("a", 3.0)]
    assert node.counters.get("fired") == 2


def test_crash_discards_pending_timers() -> None:
    """Timers of a crashed life never fire, even after a restart."""
    sim = world()
    node = sim.add_node(member(0), builder_of(TimerActor))
    sim.start(node)
    sim.env.run(until=2)
    sim.crash(node)
    sim.env.run(until=2.5)
    sim.start(node)
    actor = node.actors[ActorName.DISCOVERY]
    sim.env.run(until=10)
    assert isinstance(actor, TimerActor)
    assert actor.fired == [("c", 2.5), ("a", 5.5)]


def test_ping_actors_exchange_sealed_bytes() -> None:
    """Two stand-ins find each other by mDNS and probe each other over the byte network."""
    sim = world()
    nodes = [sim.add_node(member(i), builder_of(PingActor)) for i in range(2)]
    for node in nodes:
        sim.start(node)
    sim.env.run(until=10)
    counters = sim.network.counters
    assert counters.get("sent") >= 16
    assert counters.get("sent_bytes") > counters.get("sent") * 50  # envelope + HMAC
    assert sim.dropped.values == {}
    assert sim.events > 16
    for node in nodes:
        actor = node.actors[ActorName.DISCOVERY]
        assert isinstance(actor, PingActor)
        other = "t-001" if node.node_id == "t-000" else "t-000"
        assert actor.state_of(other) is MemberState.ALIVE


def test_crash_is_detected_and_reported_to_listeners() -> None:
    """MemberChanged tells reach the world even though no election actor is hosted."""
    sim = world()
    nodes = [sim.add_node(member(i), builder_of(PingActor)) for i in range(3)]
    seen: list[tuple[str, str, str]] = []

    class Recorder:
        def member_changed(self, now_s: float, observer: object, event: object) -> None:
            assert isinstance(event, MemberChanged)
            seen.append((getattr(observer, "node_id", ""), event.member.node_id, event.state.value))

        def lifecycle(self, now_s: float, node: object, what: str) -> None:
            pass

        def leadership_changed(self, now_s: float, node: object, event: object) -> None:
            pass

    sim.listeners.append(Recorder())
    for node in nodes:
        sim.start(node)
    sim.env.run(until=5)
    sim.crash(nodes[2])
    sim.env.run(until=20)
    assert ("t-000", "t-002", "dead") in seen
    assert ("t-001", "t-002", "dead") in seen
    assert sim.dropped.get("node_down") >= 1


def test_duplicates_are_dropped_as_replays() -> None:
    """A duplicated datagram is opened once; the copy is counted as `replayed`."""
    spec = NetworkSpec(lan=LatencySpec(kind="uniform", base_s=0.001, jitter_s=0.0), duplicate=0.5)
    sim = world(network=spec)
    nodes = [sim.add_node(member(i), builder_of(PingActor)) for i in range(2)]
    for node in nodes:
        sim.start(node)
    sim.env.run(until=30)
    duplicated = sim.network.counters.get("duplicated")
    assert duplicated > 5
    assert sim.dropped.get("replayed") == duplicated


def test_garbage_and_forgeries_are_counted_not_raised() -> None:
    """Bytes that do not open are dropped by reason (decode, bad_mac); nothing raises."""
    sim = world()
    node = sim.add_node(member(0), builder_of(PingActor))
    forger = sim.add_node(member(1), builder_of(PingActor), cluster_key=b"x" * 32)
    sim.start(node)
    sim.start(forger, announce=False)
    node.receive(b"\x93garbage", forger.address, 0.1)
    forger._send(SendMessage(node.address, Ping(seq=1, target=node.node_id)))
    sim.env.run(until=1)
    assert sim.dropped.get("decode") == 1
    assert sim.dropped.get("bad_mac") == 1
    assert "t-001" not in sim.members


def test_loss_drops_datagrams() -> None:
    """With 30% loss about 30% of datagrams never arrive."""
    sim = world(network=NetworkSpec(loss=0.3))
    nodes = [sim.add_node(member(i), builder_of(PingActor)) for i in range(4)]
    for node in nodes:
        sim.start(node)
    sim.env.run(until=100)
    counters = sim.network.counters
    assert 0.2 < counters.get("lost") / counters.get("sent") < 0.4


def test_partition_cuts_and_heal_restores() -> None:
    """Across a partition nothing flows; after heal it flows again."""
    sim = world()
    nodes = [sim.add_node(member(i), builder_of(PingActor)) for i in range(4)]
    for node in nodes:
        sim.start(node)
    sim.env.run(until=5)
    sim.partition(nodes[:1])
    sim.env.run(until=20)
    cut = sim.network.counters.get("partitioned")
    assert cut > 0
    actor = nodes[0].actors[ActorName.DISCOVERY]
    assert isinstance(actor, PingActor)
    assert actor.state_of("t-001") is MemberState.DEAD
    sim.heal()
    nodes[1]._send(SendMessage(nodes[0].address, Ping(seq=99, target="t-000")))
    sim.env.run(until=21)
    assert sim.network.counters.get("partitioned") == cut
    assert actor.state_of("t-001") is MemberState.ALIVE


def test_slow_node_receives_late() -> None:
    """A slow node handles each incoming message `delay_s` late."""
    spec = NetworkSpec(lan=LatencySpec(kind="uniform", base_s=0.001, jitter_s=0.0))
    sim = world(network=spec)
    arrivals: list[float] = []

    class Sink(PingActor):
        def handle(self, event: Event, now_s: float) -> list[Command]:
            if isinstance(event, MessageReceived):
                arrivals.append(now_s)
            return []

    sink = sim.add_node(member(0), builder_of(Sink))
    sender = sim.add_node(member(1), builder_of(PingActor))
    sim.start(sink, announce=False)
    sim.start(sender, announce=False)
    sim.set_slow(sink, 0.5)
    sim.env.run(until=1)
    sender._send(SendMessage(sink.address, Ping(seq=1, target=sink.node_id)))
    sim.env.run(until=3)
    assert arrivals == [pytest.approx(1.501)]
