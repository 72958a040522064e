"""Discovery actor: membership and failure detection (SWIM + Lifeguard). INTERFACE SKELETON."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from actors.core import (
    ActorName,
    Address,
    Command,
    Event,
    MemberInfo,
    MemberState,
    NodeId,
)


@dataclass(frozen=True, slots=True)
class DiscoveryKnobs:
    """Timing and fan-out of membership (defaults follow memberlist's LAN profile)."""

    probe_interval_s: float = 1.0
    probe_timeout_s: float = 0.5
    indirect_probes: int = 3
    gossip_interval_s: float = 0.2
    gossip_fanout: int = 3
    suspicion_timeout_s_min: float = 3.0
    suspicion_timeout_s_max: float = 9.0
    push_pull_interval_s: float = 30.0
    dead_member_reap_s: float = 60.0


@dataclass(frozen=True, slots=True)
class MemberView:
    """One row of the member table as reported to hosts and status pages."""

    member: MemberInfo
    state: MemberState
    incarnation: int


class Discovery:
    """Membership of one peer: who is there, who is alive."""

    NAME: ClassVar[ActorName] = ActorName.DISCOVERY

    def __init__(
        self,
        self_info: MemberInfo,
        rng: random.Random,
        knobs: DiscoveryKnobs = DiscoveryKnobs(),
        seeds: tuple[Address, ...] = (),
    ) -> None:
        self.self_info = self_info
        self._rng = rng
        self.knobs = knobs
        self.seeds = seeds

    def start(self, now_s: float) -> list[Command]:
        """Arm the probe, gossip and push-pull timers and contact the seeds."""
        raise NotImplementedError

    def handle(self, event: Event, now_s: float) -> list[Command]:
        """React to one event; never raises for remote input."""
        raise NotImplementedError

    def leave(self, now_s: float) -> list[Command]:
        """Announce a clean departure (state LEFT) to a few members before shutdown."""
        raise NotImplementedError

    def members(self) -> list[MemberView]:
        """The member table (excluding this peer), sorted by node id."""
        raise NotImplementedError

    def state_of(self, node_id: NodeId) -> MemberState | None:
        """What this peer believes about `node_id`, or None if unknown."""
        raise NotImplementedError
