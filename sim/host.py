"""SimNode: the very same actor objects as in production, hosted on the SimPy clock.

Theory of operation
-------------------
A `SimNode` is one peer: its `MemberInfo`, a network `Port`, a `WireSecurity` (one per
process life; its replay epoch is the node's start count, so it is deterministic) and the
actors built for the current life. Lives: `start` -> running -> `crash` (silent) or `stop`
(clean, as the real agent stops: actors' `resign()` runs first, so the election hands over at
once, then their `leave()`) -> `start` again (a restart: new actor objects, new epoch, a
fresh random stream).

The node turns commands into scheduled callbacks and scheduled callbacks into events:

- `SendMessage`: seal with `WireSecurity`, ask the network when copies arrive, schedule one
  delivery per copy. The bytes travel; on arrival the receiver opens them with its own
  `WireSecurity`. `DecodeError` and `AuthenticationError` are dropped and counted by reason,
  never raised. A datagram reaching a node that is down is dropped (`node_down`). An opened
  message goes to the actor `actors.routing.MESSAGE_ROUTES` names (the table the real host
  uses); a type without a route is dropped as `unrouted`, one for an actor this node does not
  host as `no_actor`.
- `StartTimer`/`CancelTimer`: timers are keyed by (actor, name); each arm gets a fresh
  generation number, so a fire whose generation is no longer current (re-armed, cancelled,
  or from an earlier life) is ignored.
- `Tell`: delivered at the same simulated time to the named actor of this node when hosted,
  else ignored. `MemberChanged` and `LeadershipChanged` tells are reported to the world first
  (checkers, metrics), hosted or not, once per event object (an actor tells one object to
  several siblings).
- DHCP: a simulated PXE client's datagram arrives by `receive_dhcp` and becomes
  `DhcpPacketReceived` for the boot actor; `SendDhcpReply` is handed to the world, which
  carries the reply to the simulated clients (`sim.boot_clients`).
- `FetchChunk`: handed to the world's chunk service (`sim.replication_host`), which models
  the transfer and answers with `ChunkStored`, `ChunkRefused` or `ChunkFetchFailed`;
  `FetchManifest` likewise (answered with `ManifestFetched` or `ManifestFetchFailed`), and
  `FetchPolicy` (the sim publishes no policy: `PolicyFetchFailed` "not_held").
- `Log`: handed to the world's optional log sink. `CountMetric`: per-node counters.

Performance: nothing here is a SimPy process. Every delivery is a `Scheduled` object that
duck-types a triggered `simpy.Event` (`callbacks`, `_ok`) and is pushed on the environment's
heap with `env.schedule`; its single callback is a bound method built once per node. That is
SimPy's own cost per event, about 20x cheaper than a process plus a `Store` per message.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, cast

from simpy.events import NORMAL

from actors.core import (
    Actor,
    ActorName,
    Address,
    CancelTimer,
    Command,
    Counters,
    CountMetric,
    DhcpPacketReceived,
    Event,
    FetchChunk,
    FetchManifest,
    FetchPolicy,
    LeadershipChanged,
    Log,
    MemberChanged,
    MemberInfo,
    MessageReceived,
    SendDhcpReply,
    SendMessage,
    StartTimer,
    Tell,
    TimerFired,
)
from actors.envelope import WireSecurity
from actors.errors import AuthenticationError, DecodeError
from actors.routing import MESSAGE_ROUTES

if TYPE_CHECKING:
    import simpy

    from sim.network import Port
    from sim.world import World

ActorBuilder = Callable[[MemberInfo, random.Random, int], list[Actor]]
"""Builds the actors of one life of a node: (member info, node rng, life number)."""

NORMAL_PRIORITY: Final = NORMAL


class Scheduled:
    """A callback on the SimPy heap: duck-types a triggered, successful `simpy.Event`."""

    __slots__ = ("callbacks", "first", "life", "second", "third")
    _ok = True  # read by Environment.step after the callbacks ran

    def __init__(
        self,
        callbacks: tuple[Callable[[Scheduled], None], ...],
        life: int,
        first: Any,
        second: Any,
        third: Any = None,
    ) -> None:
        self.callbacks = callbacks
        self.life = life
        self.first = first
        self.second = second
        self.third = third


def schedule(env: simpy.Environment, item: Scheduled, delay_s: float) -> None:
    """Push `item` on the environment's heap, `delay_s` from now (ties keep insertion order)."""
    env.schedule(cast("simpy.Event", item), NORMAL_PRIORITY, delay_s)


class SimNode:
    """One simulated peer hosting actors on the SimPy clock."""

    def __init__(
        self,
        world: World,
        info: MemberInfo,
        port: Port,
        cluster_key: bytes,
        build: ActorBuilder,
    ) -> None:
        self.world = world
        self.info = info
        self.node_id = info.node_id
        self.address: Address = info.address
        self.port = port
        self.running = False
        self.stopping = False
        """True while a clean stop runs the actors' `resign()` and `leave()`."""
        self.life = 0
        self.started_at_s = 0.0
        self.actors: dict[ActorName, Actor] = {}
        self.counters = Counters()
        self._cluster_key = cluster_key
        self._build = build
        self._security = WireSecurity(self.node_id, cluster_key, 0)
        self._timers: dict[ActorName, dict[str, int]] = {}
        self._timer_events: dict[str, TimerFired] = {}
        self._next_generation = 0
        self._last_reported: Event | None = None
        self._datagram_callbacks = (self._on_datagram,)
        self._dhcp_callbacks = (self._on_dhcp,)
        self._timer_callbacks = (self._on_timer,)
        self._event_callbacks = (self._on_event,)

    # ----------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Begin a new life: fresh actors, fresh envelope epoch, start every actor."""
        assert not self.running, f"{self.node_id} already running"
        self.life += 1
        self.running = True
        now_s = self.world.env.now
        self.started_at_s = now_s
        self._security = WireSecurity(self.node_id, self._cluster_key, self.life)
        rng_seed = f"{self.world.seed}:{self.node_id}"
        rng = random.Random(rng_seed if self.life == 1 else f"{rng_seed}:{self.life}")
        actors = self._build(self.info, rng, self.life)
        self.actors = {actor.NAME: actor for actor in actors}
        self._timers = {actor.NAME: {} for actor in actors}
        for actor in actors:
            self._execute(actor, actor.start(now_s))

    def crash(self) -> None:
        """Die silently: pending timers and events of this life are ignored from now on."""
        assert self.running
        self.running = False
        self.actors = {}

    def stop(self) -> None:
        """Leave cleanly: actors `resign()` (hand over leadership), then `leave()`, then the
        node goes down (the order of `peerpxe agent` on SIGTERM)."""
        assert self.running
        now_s = self.world.env.now
        self.stopping = True
        for step in ("resign", "leave"):
            for actor in list(self.actors.values()):
                farewell = getattr(actor, step, None)
                if farewell is not None:
                    self._execute(actor, farewell(now_s))
        self.stopping = False
        self.running = False
        self.actors = {}

    # ----------------------------------------------------------------------- inputs

    def deliver(self, target: ActorName, event: Event, delay_s: float) -> None:
        """Hand `event` to actor `target` after `delay_s`, if this life still runs then."""
        item = Scheduled(self._event_callbacks, self.life, target, event)
        schedule(self.world.env, item, delay_s)

    def receive(self, data: bytes, source: Address, delay_s: float) -> None:
        """A datagram from `source` reaches this node's port after `delay_s`."""
        item = Scheduled(self._datagram_callbacks, 0, data, source)
        schedule(self.world.env, item, delay_s)

    def receive_dhcp(
        self, payload: bytes, source: Address, local_port: int, delay_s: float
    ) -> None:
        """A PXE client's DHCP datagram from `source` reaches UDP `local_port` after `delay_s`."""
        local = Address(self.address.host, local_port)
        item = Scheduled(self._dhcp_callbacks, 0, DhcpPacketReceived(payload, source, local), None)
        schedule(self.world.env, item, delay_s)

    def _on_dhcp(self, item: Scheduled) -> None:
        if not self.running:
            self.world.drop(self, "node_down")
            return
        actor = self.actors.get(ActorName.BOOT)
        if actor is None:
            self.world.drop(self, "no_actor")
            return
        self._handle(actor, item.first)

    def _on_datagram(self, item: Scheduled) -> None:
        world = self.world
        if not self.running:
            world.drop(self, "node_down")
            return
        data: bytes = item.first
        try:
            sender, message = self._security.open(data)
        except AuthenticationError as error:
            world.drop(self, error.reason)
            return
        except DecodeError:
            world.drop(self, "decode")
            return
        world.trace.record(world.env.now, self.node_id, "rx", f"{sender} {message.TAG}")
        route = MESSAGE_ROUTES.get(type(message))
        if route is None:
            world.drop(self, "unrouted")
            return
        actor = self.actors.get(route)
        if actor is None:
            world.drop(self, "no_actor")
            return
        self._handle(actor, MessageReceived(sender, item.second, message))

    def _on_timer(self, item: Scheduled) -> None:
        if item.life != self.life or not self.running:
            return
        actor: Actor = item.first
        name: str = item.second
        generations = self._timers[actor.NAME]
        if generations.get(name) != item.third:
            return
        del generations[name]
        event = self._timer_events.get(name)
        if event is None:
            event = self._timer_events[name] = TimerFired(name)
        self._handle(actor, event)

    def _on_event(self, item: Scheduled) -> None:
        if item.life != self.life or not self.running:
            return
        actor = self.actors.get(item.first)
        if actor is not None:
            self._handle(actor, item.second)

    def _handle(self, actor: Actor, event: Event) -> None:
        self.world.events += 1
        self._execute(actor, actor.handle(event, self.world.env.now))

    # ----------------------------------------------------------------------- commands

    def _execute(self, actor: Actor, commands: list[Command]) -> None:
        for command in commands:
            kind = type(command)
            if kind is SendMessage:
                self._send(cast("SendMessage", command))
            elif kind is StartTimer:
                self._start_timer(actor, cast("StartTimer", command))
            elif kind is Tell:
                self._tell(cast("Tell", command))
            elif kind is CancelTimer:
                self._timers[actor.NAME].pop(cast("CancelTimer", command).name, None)
            elif kind is CountMetric:
                metric = cast("CountMetric", command)
                self.counters.add(metric.name, metric.amount)
            elif kind is SendDhcpReply:
                self.world.dhcp_reply(self, cast("SendDhcpReply", command))
            elif kind is FetchChunk:
                self.world.fetch_chunk(self, cast("FetchChunk", command))
            elif kind is FetchManifest:
                self.world.fetch_manifest(self, cast("FetchManifest", command))
            elif kind is FetchPolicy:
                self.world.fetch_policy(self, cast("FetchPolicy", command))
            else:
                assert kind is Log, f"unknown command {command!r}"
                self.world.log(self, cast("Log", command))

    def _send(self, command: SendMessage) -> None:
        world = self.world
        data = self._security.seal(command.message)
        target = world.by_address.get(command.address)
        if target is None:
            world.network.counters.add("no_route")
            return
        for delay_s in world.network.plan(self.port, target.port, len(data)):
            target.receive(data, self.address, delay_s)

    def _start_timer(self, actor: Actor, command: StartTimer) -> None:
        generation = self._next_generation
        self._next_generation += 1
        self._timers[actor.NAME][command.name] = generation
        env = self.world.env
        item = Scheduled(self._timer_callbacks, self.life, actor, command.name, generation)
        schedule(env, item, max(0.0, command.deadline_s - env.now))

    def _tell(self, command: Tell) -> None:
        event = command.event
        # Discovery and election tell one event object to several actors: report it once.
        if event is not self._last_reported:
            kind = type(event)
            if kind is MemberChanged:
                self._last_reported = event
                self.world.member_changed(self, cast("MemberChanged", event))
            elif kind is LeadershipChanged:
                self._last_reported = event
                self.world.leadership_changed(self, cast("LeadershipChanged", event))
        if command.target in self.actors:
            self.deliver(command.target, event, 0.0)
