"""A tiny stand-in membership actor used to test the sim host independently of Discovery.

Every second it pings the next known member (round robin, sorted by node id) and declares a
member DEAD after two probes in a row went unanswered; any message from a member makes it
ALIVE again. It tells `MemberChanged` to the election actor like the real discovery does.
"""

from __future__ import annotations

import random
from typing import ClassVar

from actors.core import (
    ActorName,
    Address,
    Command,
    Event,
    MemberChanged,
    MemberInfo,
    MemberState,
    MessageReceived,
    PeerDiscovered,
    PeerLost,
    SendMessage,
    StartTimer,
    Tell,
    TimerFired,
)
from actors.discovery import MemberView
from actors.messages import Ack, Ping

PROBE = "probe"


class PingActor:
    """Round-robin prober: the smallest actor that exercises timers, sends and tells."""

    NAME: ClassVar[ActorName] = ActorName.DISCOVERY

    def __init__(self, self_info: MemberInfo, rng: random.Random, interval_s: float = 1.0) -> None:
        self.self_info = self_info
        self._rng = rng
        self._interval_s = interval_s
        self._members: dict[str, MemberInfo] = {}
        self._states: dict[str, MemberState] = {}
        self._misses: dict[str, int] = {}
        self._pending: tuple[int, str] | None = None
        self._seq = 0
        self._cursor = 0

    def start(self, now_s: float) -> list[Command]:
        return [StartTimer(PROBE, now_s + self._rng.uniform(0, self._interval_s))]

    def handle(self, event: Event, now_s: float) -> list[Command]:
        if isinstance(event, PeerDiscovered):
            return self._heard(event.member)
        if isinstance(event, PeerLost) and event.node_id in self._members:
            return self._change(event.node_id, MemberState.LEFT)
        if isinstance(event, MessageReceived):
            return self._on_message(event)
        if isinstance(event, TimerFired):
            return self._on_probe(now_s)
        return []

    def members(self) -> list[MemberView]:
        return [
            MemberView(self._members[node_id], self._states[node_id], 0)
            for node_id in sorted(self._members)
        ]

    def state_of(self, node_id: str) -> MemberState | None:
        return self._states.get(node_id)

    def _on_message(self, event: MessageReceived) -> list[Command]:
        commands: list[Command] = []
        message = event.message
        if isinstance(message, Ping):
            commands.append(SendMessage(event.address, Ack(seq=message.seq)))
        elif isinstance(message, Ack) and self._pending == (message.seq, event.source):
            self._pending = None
        member = self._members.get(event.source)
        if member is not None:
            self._misses[event.source] = 0
            if self._states[event.source] is not MemberState.ALIVE:
                commands += self._change(event.source, MemberState.ALIVE)
        return commands

    def _on_probe(self, now_s: float) -> list[Command]:
        commands: list[Command] = [StartTimer(PROBE, now_s + self._interval_s)]
        if self._pending is not None:
            target = self._pending[1]
            self._misses[target] = self._misses.get(target, 0) + 1
            if self._misses[target] >= 2 and self._states[target] is MemberState.ALIVE:
                commands += self._change(target, MemberState.DEAD)
            self._pending = None
        alive = sorted(n for n, s in self._states.items() if s is MemberState.ALIVE)
        if alive:
            target = alive[self._cursor % len(alive)]
            self._cursor += 1
            self._seq += 1
            self._pending = (self._seq, target)
            address: Address = self._members[target].address
            commands.append(SendMessage(address, Ping(seq=self._seq, target=target)))
        return commands

    def _heard(self, member: MemberInfo) -> list[Command]:
        self._members[member.node_id] = member
        if self._states.get(member.node_id) is MemberState.ALIVE:
            return []
        return self._change(member.node_id, MemberState.ALIVE)

    def _change(self, node_id: str, state: MemberState) -> list[Command]:
        self._states[node_id] = state
        change = MemberChanged(self._members[node_id], state, 0)
        return [Tell(ActorName.ELECTION, change)]
