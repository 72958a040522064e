"""Small stand-in actors that satisfy `actors.core.Actor`, for testing the real host alone."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import ClassVar

from actors.core import (
    ActorName,
    Address,
    Command,
    CountMetric,
    Event,
    Log,
    LogLevel,
    MessageReceived,
    SendFailed,
    SendMessage,
    StartTimer,
    Tell,
    TimerFired,
)
from actors.messages import Ack, Ping


@dataclass
class PingPong:
    """Pings `target` every `interval_s`, answers pings with acks, remembers what it saw."""

    NAME: ClassVar[ActorName] = ActorName.DISCOVERY

    node_id: str
    target: Address | None = None
    interval_s: float = 0.05
    seq: int = 0
    acks: list[tuple[str, int]] = field(default_factory=list)
    pings: list[tuple[str, Address]] = field(default_factory=list)
    failures: list[SendFailed] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    changed: threading.Event = field(default_factory=threading.Event)

    def start(self, now_s: float) -> list[Command]:
        return [StartTimer("tick", now_s + self.interval_s)]

    def handle(self, event: Event, now_s: float) -> list[Command]:
        self.events.append(event)
        commands = self._react(event, now_s)
        self.changed.set()
        return commands

    def _react(self, event: Event, now_s: float) -> list[Command]:
        match event:
            case TimerFired(name="tick"):
                return self._tick(now_s)
            case MessageReceived(source=source, address=address, message=Ping(seq=seq)):
                self.pings.append((source, address))
                return [SendMessage(address, Ack(seq=seq)), CountMetric("standin.pings")]
            case MessageReceived(source=source, message=Ack(seq=seq)):
                self.acks.append((source, seq))
                return [Log(LogLevel.INFO, "ack received", (("from", source), ("seq", seq)))]
            case SendFailed():
                self.failures.append(event)
        return []

    def _tick(self, now_s: float) -> list[Command]:
        commands: list[Command] = [StartTimer("tick", now_s + self.interval_s)]
        if self.target is not None:
            self.seq += 1
            commands.append(SendMessage(self.target, Ping(seq=self.seq, target="peer")))
        return commands


@dataclass
class Recorder:
    """Records every event; `script` maps an event type name to commands to return."""

    NAME: ClassVar[ActorName] = ActorName.ELECTION

    start_commands: list[Command] = field(default_factory=list)
    script: dict[str, list[Command]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    changed: threading.Event = field(default_factory=threading.Event)

    def start(self, now_s: float) -> list[Command]:
        return list(self.start_commands)

    def handle(self, event: Event, now_s: float) -> list[Command]:
        self.events.append(event)
        self.changed.set()
        key = event.name if isinstance(event, TimerFired) else type(event).__name__
        return list(self.script.get(key, []))


def tell_command(target: ActorName, event: Event) -> Command:
    """A `Tell` command (helper keeps test lines short)."""
    return Tell(target, event)
