"""Discovery actor: who is in the cluster, and who is alive (SWIM with Lifeguard).

Theory of operation
-------------------
Members come from three sources: mDNS sightings on the link (`PeerDiscovered`, which carry the
TXT fields), configured seeds across routers (contacted with `Sync` at start), and gossip.
mDNS is discovery only: its TTLs are far too slow to notice a crash, so failures are found by
SWIM probing (Das et al., DSN 2002):

- every protocol period (`probe_interval_s`) this peer pings the next member of a shuffled
  round-robin list (every member is probed within one pass; first detection in ~1.58 periods
  on average, independent of group size);
- no `Ack` within `probe_timeout_s` → `PingReq` to `indirect_probes` random members, which
  probe the target for us, relay its `Ack`, or answer `Nack` (Lifeguard) when it stays silent;
- no `Ack` by the end of the period → the target becomes SUSPECT with a Lifeguard timeout: it
  starts at `suspicion_timeout_s_max` and shrinks toward `_min` as independent members report
  the same suspicion, so real crashes (seen by many) are declared fast and a peer that only
  looks dead to one slow observer has time to refute;
- a SUSPECT member that hears of its suspicion refutes it by raising its incarnation;
- when the timeout expires the member is DEAD. A clean shutdown announces LEFT.

Every state change is an update `(node, incarnation, state)` gossiped by piggybacking on
probes and by `Gossip` messages to `gossip_fanout` members every `gossip_interval_s`, each
update sent `retransmit_mult * ceil(log10(n + 1))` times. Update precedence (SWIM §4.2):
higher incarnation wins; at equal incarnation DEAD/LEFT > SUSPECT > ALIVE.

Local health (Lifeguard LHA): a score in `[0, health_score_max]` rises when this peer's own
probes fail without the expected `Nack`s or when it must refute a suspicion about itself, and
falls with each successful probe; probe interval and timeout are multiplied by `score + 1`, so
a peer that is itself slow accuses others less eagerly.

Per-peer message load is constant in the group size: one probe (two messages) per period, plus
bounded gossip while updates are pending, plus push-pull `Sync` whose interval grows with the
number of datagrams a full state takes.

Every change of a member's state, or of what it advertises (capabilities), is told to the
election and replication actors of this peer as `MemberChanged`. When this peer's own
capabilities change (`CapabilitiesChanged`, told by election once the package is verified),
it raises its incarnation and gossips its new record, as for a refutation (SWIM §4.2): the
higher incarnation makes every member take the new record.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from typing import ClassVar, Final

from actors.core import (
    ActorName,
    Address,
    BootPolicyChanged,
    CancelTimer,
    CapabilitiesChanged,
    ChunkFetchFailed,
    ChunkRefused,
    ChunksHeld,
    ChunkStored,
    Command,
    CountMetric,
    DhcpPacketReceived,
    EligibilityChanged,
    Event,
    LeadershipChanged,
    Log,
    LogLevel,
    ManifestAccepted,
    ManifestFetched,
    ManifestFetchFailed,
    MemberChanged,
    MemberInfo,
    MemberState,
    MessageReceived,
    NodeId,
    PackageComplete,
    PeerDiscovered,
    PeerLost,
    PolicyFetchFailed,
    PolicyInstalled,
    SeedOffered,
    SendFailed,
    SendMessage,
    ServePermission,
    StartTimer,
    Tell,
    TimerFired,
    WanSourcesChanged,
)
from actors.gossip import BroadcastQueue, retransmit_limit, suspicion_timeout_s
from actors.messages import Ack, Gossip, MemberUpdate, Message, Nack, Ping, PingReq, Sync

UPDATES_PER_MESSAGE_MAX: Final = 7
"""Piggybacked updates per datagram: 7 x 160 B worst case fits the envelope's body budget."""
SYNC_MEMBERS_PER_MESSAGE_MAX: Final = 7
PENDING_SIGHTINGS_MAX: Final = 4096
"""mDNS sightings awaiting authenticated contact; more are ignored until some resolve."""
MEMBER_LISTENERS: Final = (ActorName.ELECTION, ActorName.REPLICATION, ActorName.BOOT)
"""Actors of this peer that are told every `MemberChanged`."""

_PROBE_TIMER: Final = "probe"
_PROBE_TIMEOUT_TIMER: Final = "probe_timeout"
_GOSSIP_TIMER: Final = "gossip"
_PUSH_PULL_TIMER: Final = "push_pull"
_REAP_TIMER: Final = "reap"
_RECONNECT_TIMER: Final = "reconnect"
_SUSPICION_PREFIX: Final = "suspect:"
_RELAY_PREFIX: Final = "relay:"
_REACHABLE: Final = (MemberState.ALIVE, MemberState.SUSPECT)
_PRECEDENCE: Final = {
    MemberState.ALIVE: 0,
    MemberState.SUSPECT: 1,
    MemberState.DEAD: 2,
    MemberState.LEFT: 2,
}
_STATE_OF: Final = {state.value: state for state in MemberState}
"""Wire text -> state; a dict lookup, where `MemberState(text)` costs an exception on junk."""
_CHANGED_TEXT: Final = {state: f"member {state.value}" for state in MemberState}
"""Log text of a member change, built once (the node and incarnation go in the fields)."""
_CHANGED_LEVEL: Final = {
    state: LogLevel.INFO if state is MemberState.ALIVE else LogLevel.WARNING
    for state in MemberState
}


@dataclass(frozen=True, slots=True)
class DiscoveryKnobs:
    """Timing and fan-out of membership (memberlist's LAN profile, tuned for PXE deadlines)."""

    probe_interval_s: float = 1.0
    probe_timeout_s: float = 0.5
    indirect_probes: int = 3
    gossip_interval_s: float = 0.2
    gossip_fanout: int = 3
    retransmit_mult: int = 4
    suspicion_timeout_s_min: float = 2.0
    suspicion_timeout_s_max: float = 12.0
    push_pull_interval_s: float = 30.0
    reconnect_interval_s: float = 10.0
    dead_member_reap_s: float = 120.0
    suspicion_confirmations: int = 2
    health_score_max: int = 7
    join_sync_max: int = 3

    def __post_init__(self) -> None:
        """Knobs come from config files and sweeps: refuse bad ones with a reason."""
        checks = (
            (
                0 < self.probe_timeout_s < self.probe_interval_s,
                f"need 0 < probe_timeout_s ({self.probe_timeout_s}) < probe_interval_s "
                f"({self.probe_interval_s})",
            ),
            (
                0 < self.suspicion_timeout_s_min <= self.suspicion_timeout_s_max,
                f"need 0 < suspicion_timeout_s_min ({self.suspicion_timeout_s_min}) <= "
                f"suspicion_timeout_s_max ({self.suspicion_timeout_s_max})",
            ),
            (
                self.indirect_probes >= 0,
                f"indirect_probes must be >= 0, got {self.indirect_probes}",
            ),
            (self.gossip_fanout >= 1, f"gossip_fanout must be >= 1, got {self.gossip_fanout}"),
            (
                self.gossip_interval_s > 0,
                f"gossip_interval_s must be > 0, got {self.gossip_interval_s}",
            ),
            (
                self.push_pull_interval_s > 0,
                f"push_pull_interval_s must be > 0, got {self.push_pull_interval_s}",
            ),
        )
        for ok, problem in checks:
            if not ok:
                raise ValueError(problem)


@dataclass(frozen=True, slots=True)
class MemberView:
    """One row of the member table as reported to hosts and status pages."""

    member: MemberInfo
    state: MemberState
    incarnation: int


@dataclass(slots=True)
class _Member:
    info: MemberInfo
    state: MemberState
    incarnation: int
    changed_s: float
    suspicion_start_s: float = 0.0
    confirmations: dict[NodeId, None] = field(default_factory=dict)
    record: MemberUpdate | None = None
    """This member's gossip record without a reporter, built on first use after a change."""


@dataclass(slots=True)
class _Probe:
    seq: int
    target: NodeId
    acked: bool = False
    helpers: int = 0
    nacks: int = 0


@dataclass(frozen=True, slots=True)
class _Relay:
    requester: Address
    requester_seq: int


class Discovery:
    """Membership of one peer: who is there, who is alive."""

    NAME: ClassVar[ActorName] = ActorName.DISCOVERY

    def __init__(
        self,
        self_info: MemberInfo,
        rng: random.Random,
        knobs: DiscoveryKnobs = DiscoveryKnobs(),
        seeds: tuple[Address, ...] = (),
        *,
        known_members: tuple[MemberInfo, ...] = (),
    ) -> None:
        """`known_members`: a member list restored from an earlier life (for example from
        disk), taken as ALIVE at incarnation 0 without gossiping it; `start` tells the other
        actors about them. Probing corrects whatever is stale: a gone member is suspected
        and declared dead as usual. Members of other sites and this peer itself are skipped.
        """
        self.self_info = self_info
        self.knobs = knobs
        self.seeds = seeds
        self.incarnation = 0
        self.health_score = 0
        self._rng = rng
        self._members: dict[NodeId, _Member] = {}
        self._live = _IndexedIds()
        self._probe_order: list[NodeId] = []
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._next_seq = 1
        self._broadcasts = BroadcastQueue()
        self._join_syncs_sent = 0
        self._pending: dict[NodeId, MemberInfo] = {}
        self._leaving = False
        self._gossip_armed = False
        self._dead_count = 0
        """Members currently DEAD: the reconnect tick scans the table only when there are any."""
        for info in known_members:
            self._restore(info)

    # ------------------------------------------------------------------ public API

    def start(self, now_s: float) -> list[Command]:
        """Arm the probe, gossip, push-pull and reap timers and contact the seeds."""
        phase_s = self._rng.uniform(0, self.knobs.probe_interval_s)
        commands: list[Command] = [
            StartTimer(_PROBE_TIMER, now_s + phase_s),
            StartTimer(_PUSH_PULL_TIMER, now_s + self._push_pull_delay_s()),
            StartTimer(_REAP_TIMER, now_s + self.knobs.dead_member_reap_s),
            StartTimer(_RECONNECT_TIMER, now_s + self.knobs.reconnect_interval_s),
        ]
        for member in self._members.values():  # restored members: tell, do not gossip
            member.changed_s = now_s
            commands.extend(self._announce(member))
        # Announce ourselves cluster-wide (members on other links learn of us by gossip).
        commands.extend(self._queue_broadcast(self._self_update(MemberState.ALIVE), now_s))
        for seed in self.seeds:
            commands.extend(self._sync_messages(seed, reply=True))
        return commands

    def handle(self, event: Event, now_s: float) -> list[Command]:
        """React to one event; never raises for remote input."""
        match event:
            case MessageReceived(source, address, message):
                return self._on_message(source, address, message, now_s)
            case TimerFired(name):
                return self._on_timer(name, now_s)
            case PeerDiscovered(member, _wire_version):
                return self._on_peer_discovered(member, now_s)
            case PeerLost():
                # A goodbye is a hint only: the LEFT gossip or the probes decide.
                return [CountMetric("discovery.mdns_goodbye")]
            case SendFailed():
                return [CountMetric("discovery.send_failed")]
            case CapabilitiesChanged(capabilities):
                return self._on_capabilities(capabilities, now_s)
            case MemberChanged() | LeadershipChanged() | DhcpPacketReceived():
                return []
            case (
                ManifestAccepted()
                | ChunksHeld()
                | ChunkStored()
                | ChunkRefused()
                | ChunkFetchFailed()
                | PackageComplete()
                | WanSourcesChanged()
                | EligibilityChanged()
                | ManifestFetched()
                | ManifestFetchFailed()
                | SeedOffered()
                | PolicyInstalled()
                | PolicyFetchFailed()
                | BootPolicyChanged()
                | ServePermission()
            ):
                return []  # replication's and election's business

    def leave(self, now_s: float) -> list[Command]:
        """Announce a clean departure (state LEFT) to a few members before shutdown."""
        self._leaving = True
        update = self._self_update(MemberState.LEFT)
        targets = self._random_live_members(self.knobs.gossip_fanout * 2, exclude=())
        commands: list[Command] = [
            SendMessage(member.info.address, Gossip(updates=(update,))) for member in targets
        ]
        commands.append(Log(LogLevel.INFO, "leaving the cluster", (("at_s", now_s),)))
        return commands

    def members(self) -> list[MemberView]:
        """The member table (excluding this peer), sorted by node id."""
        return [
            MemberView(member.info, member.state, member.incarnation)
            for _, member in sorted(self._members.items())
        ]

    def state_of(self, node_id: NodeId) -> MemberState | None:
        """What this peer believes about `node_id`, or None if unknown."""
        member = self._members.get(node_id)
        return None if member is None else member.state

    def _on_capabilities(self, capabilities: tuple[str, ...], now_s: float) -> list[Command]:
        """Advertise new capabilities under a higher incarnation, which supersedes our old
        record everywhere (a refutation's mechanism, SWIM §4.2)."""
        if capabilities == self.self_info.capabilities or self._leaving:
            return []
        self.self_info = replace(self.self_info, capabilities=capabilities)
        self.incarnation += 1
        commands = self._queue_broadcast(self._self_update(MemberState.ALIVE), now_s)
        commands.append(CountMetric("discovery.capabilities_changed"))
        return commands

    # ------------------------------------------------------------------ messages

    def _on_message(
        self, source: NodeId, address: Address, message: Message, now_s: float
    ) -> list[Command]:
        pending = self._pending.pop(source, None)
        if pending is not None and source not in self._members:
            # Authenticated contact from a peer we had only seen on mDNS: admit it.
            admitted = self._add_member(pending, MemberState.ALIVE, 0, now_s)
            return admitted + self._on_message(source, address, message, now_s)
        match message:
            case Ping():
                return self._on_ping(address, message, now_s)
            case Ack():
                return self._on_ack(message, now_s)
            case PingReq():
                return self._on_ping_req(address, message, now_s)
            case Nack():
                return self._on_nack(message)
            case Gossip():
                return self._merge_all(message.updates, now_s)
            case Sync():
                return self._on_sync(address, message, now_s)
        return [CountMetric("discovery.unexpected_message")]

    def _on_ping(self, address: Address, ping: Ping, now_s: float) -> list[Command]:
        if ping.target != self.self_info.node_id:
            return [CountMetric("discovery.misdirected_ping")]
        commands = self._merge_all(ping.updates, now_s)
        commands.append(SendMessage(address, Ack(seq=ping.seq, updates=self._piggyback())))
        return commands

    def _on_ack(self, ack: Ack, now_s: float) -> list[Command]:
        commands = self._merge_all(ack.updates, now_s)
        relay = self._relays.pop(ack.seq, None)
        if relay is not None:
            commands.append(CancelTimer(f"{_RELAY_PREFIX}{ack.seq}"))
            commands.append(SendMessage(relay.requester, Ack(seq=relay.requester_seq)))
        elif self._probe is not None and self._probe.seq == ack.seq and not self._probe.acked:
            self._probe.acked = True
            self.health_score = max(0, self.health_score - 1)
            commands.append(CancelTimer(_PROBE_TIMEOUT_TIMER))
        return commands

    def _on_ping_req(self, address: Address, request: PingReq, now_s: float) -> list[Command]:
        commands = self._merge_all(request.updates, now_s)
        seq = self._take_seq()
        self._relays[seq] = _Relay(requester=address, requester_seq=request.seq)
        target = Address(request.target_host, request.target_port)
        commands.append(SendMessage(target, Ping(seq=seq, target=request.target)))
        deadline_s = now_s + self._probe_timeout_s()
        commands.append(StartTimer(f"{_RELAY_PREFIX}{seq}", deadline_s))
        return commands

    def _on_nack(self, nack: Nack) -> list[Command]:
        if self._probe is not None and self._probe.seq == nack.seq:
            self._probe.nacks += 1
        return []

    def _on_sync(self, address: Address, sync: Sync, now_s: float) -> list[Command]:
        commands = self._merge_all(sync.members, now_s)
        if sync.reply:
            commands.extend(self._sync_messages(address, reply=False))
        return commands

    def _on_peer_discovered(self, info: MemberInfo, now_s: float) -> list[Command]:
        if info.node_id == self.self_info.node_id:
            return []
        if info.site != self.self_info.site:
            return [CountMetric("discovery.other_site")]
        known = self._members.get(info.node_id)
        commands: list[Command] = [CountMetric("discovery.mdns_sighting")]
        if known is None:
            # An mDNS record is unauthenticated: anyone on the link can publish one. Admit the
            # peer only once it speaks to us through the envelope (it holds the cluster key).
            commands.extend(self._hold_pending(info))
        if known is None and self._join_syncs_sent < self.knobs.join_sync_max:
            # Joining: pull the full view from the first few neighbours we see.
            self._join_syncs_sent += 1
            commands.extend(self._sync_messages(info.address, reply=True))
        elif known is None:
            commands.append(
                SendMessage(info.address, Ping(seq=self._take_seq(), target=info.node_id))
            )
        elif known.state in (MemberState.DEAD, MemberState.LEFT):
            # A dead member announces itself again (restart): tell it what we believe so
            # it refutes with a higher incarnation.
            commands.extend(self._sync_messages(info.address, reply=True))
        return commands

    # ------------------------------------------------------------------ timers

    def _on_timer(self, name: str, now_s: float) -> list[Command]:
        if name == _PROBE_TIMER:
            return self._on_probe_tick(now_s)
        if name == _PROBE_TIMEOUT_TIMER:
            return self._on_probe_timeout()
        if name == _GOSSIP_TIMER:
            return self._on_gossip_tick(now_s)
        if name == _PUSH_PULL_TIMER:
            return self._on_push_pull_tick(now_s)
        if name == _REAP_TIMER:
            return self._on_reap_tick(now_s)
        if name == _RECONNECT_TIMER:
            return self._on_reconnect_tick(now_s)
        if name.startswith(_SUSPICION_PREFIX):
            return self._on_suspicion_timeout(name.removeprefix(_SUSPICION_PREFIX), now_s)
        if name.startswith(_RELAY_PREFIX):
            return self._on_relay_timeout(int(name.removeprefix(_RELAY_PREFIX)))
        raise AssertionError(f"unknown timer {name!r}")

    def _on_probe_tick(self, now_s: float) -> list[Command]:
        if self._leaving:
            return []
        commands = self._finish_probe(now_s)
        interval_s = self.knobs.probe_interval_s * (self.health_score + 1)
        commands.append(StartTimer(_PROBE_TIMER, now_s + interval_s))
        target = self._next_probe_target()
        if target is None:
            return commands
        self._probe = _Probe(seq=self._take_seq(), target=target.info.node_id)
        updates = self._piggyback()
        if target.state is MemberState.SUSPECT:
            # Lifeguard's buddy system: tell a suspect first, so it can refute in time.
            suspicion = self._update_for(target, MemberState.SUSPECT, self.self_info.node_id)
            updates = (suspicion, *updates[: UPDATES_PER_MESSAGE_MAX - 1])
        ping = Ping(seq=self._probe.seq, target=target.info.node_id, updates=updates)
        commands.append(SendMessage(target.info.address, ping))
        commands.append(StartTimer(_PROBE_TIMEOUT_TIMER, now_s + self._probe_timeout_s()))
        return commands

    def _on_probe_timeout(self) -> list[Command]:
        probe = self._probe
        if probe is None or probe.acked:
            return []
        target = self._members.get(probe.target)
        if target is None:
            return []
        helpers = self._random_live_members(
            self.knobs.indirect_probes, exclude=(probe.target,), alive_only=True
        )
        probe.helpers = len(helpers)
        request = PingReq(
            seq=probe.seq,
            target=probe.target,
            target_host=target.info.address.host,
            target_port=target.info.address.port,
            updates=self._piggyback(),
        )
        commands: list[Command] = [SendMessage(helper.info.address, request) for helper in helpers]
        commands.append(CountMetric("discovery.indirect_probe"))
        return commands

    def _finish_probe(self, now_s: float) -> list[Command]:
        probe, self._probe = self._probe, None
        if probe is None or probe.acked:
            return []
        if probe.nacks < probe.helpers:
            # Helpers' nacks went missing too: perhaps we are the slow one (Lifeguard LHA).
            self.health_score = min(self.knobs.health_score_max, self.health_score + 1)
        target = self._members.get(probe.target)
        if target is None or target.state not in (MemberState.ALIVE, MemberState.SUSPECT):
            return []
        # Suspect it, or, if already suspected, add our independent confirmation.
        update = self._update_for(target, MemberState.SUSPECT, self.self_info.node_id)
        return [CountMetric("discovery.probe_failed"), *self._merge(update, now_s)]

    def _on_gossip_tick(self, now_s: float) -> list[Command]:
        self._gossip_armed = False
        commands: list[Command] = []
        for member in self._random_live_members(self.knobs.gossip_fanout, exclude=()):
            updates = self._piggyback()
            if not updates:
                break
            commands.append(SendMessage(member.info.address, Gossip(updates=updates)))
        if self._broadcasts:
            commands.extend(self._arm_gossip(now_s))
        return commands

    def _queue_broadcast(self, update: MemberUpdate, now_s: float) -> list[Command]:
        self._broadcasts.push(update)
        return self._arm_gossip(now_s)

    def _arm_gossip(self, now_s: float) -> list[Command]:
        # The gossip timer runs only while updates wait: an idle peer costs nothing here.
        if self._gossip_armed:
            return []
        self._gossip_armed = True
        return [StartTimer(_GOSSIP_TIMER, now_s + self.knobs.gossip_interval_s)]

    def _on_push_pull_tick(self, now_s: float) -> list[Command]:
        commands: list[Command] = [StartTimer(_PUSH_PULL_TIMER, now_s + self._push_pull_delay_s())]
        partner = self._random_live_members(1, exclude=())
        if partner:
            commands.extend(self._sync_messages(partner[0].info.address, reply=True))
        elif self.seeds:
            commands.extend(self._sync_messages(self._rng.choice(self.seeds), reply=True))
        return commands

    def _on_reconnect_tick(self, now_s: float) -> list[Command]:
        # Serf-style reconnect: a member declared dead may only have been cut off (a healed
        # partition). Show one of them what we believe; if it is alive it refutes, and its
        # reply brings it back everywhere through gossip.
        commands: list[Command] = [
            StartTimer(_RECONNECT_TIMER, now_s + self.knobs.reconnect_interval_s)
        ]
        if not self._dead_count:
            return commands
        dead = [m for m in self._members.values() if m.state is MemberState.DEAD]
        member = self._rng.choice(dead)
        records = (self._self_update(MemberState.ALIVE), _record_of(member))
        commands.append(SendMessage(member.info.address, Sync(members=records, reply=True)))
        return commands

    def _on_reap_tick(self, now_s: float) -> list[Command]:
        horizon_s = now_s - self.knobs.dead_member_reap_s
        gone = [
            node_id
            for node_id, member in self._members.items()
            if member.state in (MemberState.DEAD, MemberState.LEFT)
            and member.changed_s <= horizon_s
        ]
        for node_id in gone:
            if self._members.pop(node_id).state is MemberState.DEAD:
                self._dead_count -= 1
            self._live.discard(node_id)
        next_s = now_s + self.knobs.dead_member_reap_s / 4
        return [StartTimer(_REAP_TIMER, next_s), CountMetric("discovery.reaped", len(gone))]

    def _on_suspicion_timeout(self, node_id: NodeId, now_s: float) -> list[Command]:
        member = self._members.get(node_id)
        if member is None or member.state is not MemberState.SUSPECT:
            return []
        deadline_s = member.suspicion_start_s + self._suspicion_timeout_s(member)
        if now_s + 1e-9 < deadline_s:
            return [StartTimer(f"{_SUSPICION_PREFIX}{node_id}", deadline_s)]
        update = self._update_for(member, MemberState.DEAD, self.self_info.node_id)
        return self._merge(update, now_s)

    def _on_relay_timeout(self, seq: int) -> list[Command]:
        relay = self._relays.pop(seq, None)
        if relay is None:
            return []
        return [SendMessage(relay.requester, Nack(seq=relay.requester_seq))]

    # ------------------------------------------------------------------ merging updates

    def _merge_all(self, updates: tuple[MemberUpdate, ...], now_s: float) -> list[Command]:
        commands: list[Command] = []
        for update in updates:
            commands.extend(self._merge(update, now_s))
        return commands

    def _merge(self, update: MemberUpdate, now_s: float) -> list[Command]:
        state = _STATE_OF.get(update.state)
        if state is None:
            return [CountMetric("discovery.bad_update")]
        if update.node_id == self.self_info.node_id:
            return self._about_self(state, update.incarnation, now_s)
        member = self._members.get(update.node_id)
        if member is None:
            if state is not MemberState.ALIVE:
                return []  # never learn a member from news of its death (memberlist does same)
            if update.site != self.self_info.site:
                return [CountMetric("discovery.other_site")]
            commands = self._add_member(_info_of(update), state, update.incarnation, now_s)
            commands.extend(self._queue_broadcast(update, now_s))  # spread the news on
            return commands
        if state is MemberState.SUSPECT and member.state is MemberState.SUSPECT:
            return self._confirm_suspicion(member, update, now_s)
        if not _supersedes(state, update.incarnation, member):
            return []
        return self._change(member, _info_of(update), state, update, now_s)

    def _about_self(self, state: MemberState, incarnation: int, now_s: float) -> list[Command]:
        if state is MemberState.ALIVE or incarnation < self.incarnation or self._leaving:
            return []  # nothing to refute (or we are leaving: our LEFT must stand)
        # Refute (SWIM §4.2): a suspicion or death notice about us, at our incarnation or
        # above, is answered by a higher incarnation that overrides it everywhere.
        self.incarnation = incarnation + 1
        self.health_score = min(self.knobs.health_score_max, self.health_score + 1)
        commands = self._queue_broadcast(self._self_update(MemberState.ALIVE), now_s)
        commands.append(CountMetric("discovery.refuted"))
        return commands

    def _add_member(
        self, info: MemberInfo, state: MemberState, incarnation: int, now_s: float
    ) -> list[Command]:
        member = _Member(info=info, state=state, incarnation=incarnation, changed_s=now_s)
        self._pending.pop(info.node_id, None)
        self._members[info.node_id] = member
        self._live.add(info.node_id)
        position = self._rng.randint(0, len(self._probe_order))
        self._probe_order.insert(position, info.node_id)
        return self._announce(member)

    def _change(
        self,
        member: _Member,
        info: MemberInfo,
        state: MemberState,
        update: MemberUpdate,
        now_s: float,
    ) -> list[Command]:
        previous = member.state
        advertised = info != member.info
        member.info = info
        member.state = state
        self._dead_count += (state is MemberState.DEAD) - (previous is MemberState.DEAD)
        if state in _REACHABLE:
            self._live.add(info.node_id)
        else:
            self._live.discard(info.node_id)
        member.incarnation = update.incarnation
        member.changed_s = now_s
        member.record = None
        member.confirmations = {}
        commands: list[Command] = []
        if previous is MemberState.SUSPECT:
            commands.append(CancelTimer(f"{_SUSPICION_PREFIX}{info.node_id}"))
        if state is MemberState.SUSPECT:
            commands.extend(self._start_suspicion(member, update.reporter, now_s))
        commands.extend(self._queue_broadcast(update, now_s))
        if state is not previous or advertised:
            commands.extend(self._announce(member))
        return commands

    def _start_suspicion(self, member: _Member, reporter: str, now_s: float) -> list[Command]:
        member.suspicion_start_s = now_s
        member.confirmations[reporter or self.self_info.node_id] = None
        deadline_s = now_s + self._suspicion_timeout_s(member)
        return [StartTimer(f"{_SUSPICION_PREFIX}{member.info.node_id}", deadline_s)]

    def _confirm_suspicion(
        self, member: _Member, update: MemberUpdate, now_s: float
    ) -> list[Command]:
        if update.incarnation != member.incarnation or not update.reporter:
            return []
        if update.reporter in member.confirmations:
            return []
        member.confirmations[update.reporter] = None
        commands = self._queue_broadcast(update, now_s)  # pass the confirmation on
        deadline_s = member.suspicion_start_s + self._suspicion_timeout_s(member)
        name = f"{_SUSPICION_PREFIX}{member.info.node_id}"
        commands.append(StartTimer(name, max(now_s, deadline_s)))
        return commands

    def _announce(self, member: _Member) -> list[Command]:
        state = member.state
        event = MemberChanged(member.info, state, member.incarnation)
        fields = (("node", member.info.node_id), ("incarnation", member.incarnation))
        commands: list[Command] = [Tell(listener, event) for listener in MEMBER_LISTENERS]
        commands.append(Log(_CHANGED_LEVEL[state], _CHANGED_TEXT[state], fields))
        return commands

    # ------------------------------------------------------------------ helpers

    def _restore(self, info: MemberInfo) -> None:
        node_id = info.node_id
        if node_id == self.self_info.node_id or node_id in self._members:
            return
        if info.site != self.self_info.site:
            return
        self._members[node_id] = _Member(info, MemberState.ALIVE, 0, changed_s=0.0)
        self._live.add(node_id)
        self._probe_order.insert(self._rng.randint(0, len(self._probe_order)), node_id)

    def _hold_pending(self, info: MemberInfo) -> list[Command]:
        if len(self._pending) >= PENDING_SIGHTINGS_MAX:
            return [CountMetric("discovery.pending_full")]
        self._pending[info.node_id] = info
        return []

    def _take_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def _probe_timeout_s(self) -> float:
        return self.knobs.probe_timeout_s * (self.health_score + 1)

    def _suspicion_timeout_s(self, member: _Member) -> float:
        # Confirmations beyond the first reporter; too small a group to expect any means the
        # minimum at once (memberlist: k = 0 when n - 2 < k).
        expected = self.knobs.suspicion_confirmations
        if len(self._members) - 1 < expected:
            expected = 0
        return suspicion_timeout_s(
            self.knobs.suspicion_timeout_s_min,
            self.knobs.suspicion_timeout_s_max,
            len(member.confirmations) - 1,
            expected,
        )

    def _push_pull_delay_s(self) -> float:
        # Keep the push-pull datagram rate per peer flat as the table grows.
        datagrams = max(1, math.ceil(len(self._members) / SYNC_MEMBERS_PER_MESSAGE_MAX))
        base_s = self.knobs.push_pull_interval_s * datagrams
        return base_s * self._rng.uniform(0.75, 1.25)

    def _next_probe_target(self) -> _Member | None:
        # Randomised round robin (SWIM §4.3): walk a shuffled list; reshuffle each pass.
        for _ in range(2):
            while self._probe_order:
                node_id = self._probe_order.pop()
                member = self._members.get(node_id)
                if member is not None and member.state in (
                    MemberState.ALIVE,
                    MemberState.SUSPECT,
                ):
                    return member
            self._probe_order = [
                node_id
                for node_id, member in self._members.items()
                if member.state in (MemberState.ALIVE, MemberState.SUSPECT)
            ]
            self._rng.shuffle(self._probe_order)
        return None

    def _random_live_members(
        self, count: int, exclude: tuple[NodeId, ...], *, alive_only: bool = False
    ) -> list[_Member]:
        """Up to `count` random ALIVE or SUSPECT members (SUSPECT ones also need gossip)."""
        spare = len(exclude) + (count if alive_only else 0)
        chosen = self._live.sample(self._rng, count + spare)
        members = [
            self._members[node_id]
            for node_id in chosen
            if node_id not in exclude
            and (not alive_only or self._members[node_id].state is MemberState.ALIVE)
        ]
        return members[:count]

    def _piggyback(self) -> tuple[MemberUpdate, ...]:
        limit = retransmit_limit(self.knobs.retransmit_mult, len(self._members) + 1)
        return self._broadcasts.take(UPDATES_PER_MESSAGE_MAX, limit)

    def _sync_messages(self, address: Address, *, reply: bool) -> list[Command]:
        records = [self._self_update(MemberState.ALIVE)]
        records.extend(map(_record_of, self._members.values()))
        commands: list[Command] = []
        for start in range(0, len(records), SYNC_MEMBERS_PER_MESSAGE_MAX):
            chunk = tuple(records[start : start + SYNC_MEMBERS_PER_MESSAGE_MAX])
            commands.append(SendMessage(address, Sync(members=chunk, reply=reply)))
            reply = False  # one reply request is enough
        return commands

    def _self_update(self, state: MemberState) -> MemberUpdate:
        info = self.self_info
        return _update(info, state, self.incarnation, "")

    def _update_for(self, member: _Member, state: MemberState, reporter: str) -> MemberUpdate:
        return _update(member.info, state, member.incarnation, reporter)


def _update(info: MemberInfo, state: MemberState, incarnation: int, reporter: str) -> MemberUpdate:
    return MemberUpdate(
        node_id=info.node_id,
        incarnation=incarnation,
        state=state.value,
        site=info.site,
        subnet=info.subnet,
        host=info.address.host,
        port=info.address.port,
        weight=info.weight,
        capabilities=info.capabilities,
        reporter=reporter,
    )


def _record_of(member: _Member) -> MemberUpdate:
    """`member`'s current record as gossiped without a reporter (cached until it changes)."""
    record = member.record
    if record is None:
        record = member.record = _update(member.info, member.state, member.incarnation, "")
    return record


def _info_of(update: MemberUpdate) -> MemberInfo:
    return MemberInfo(
        node_id=update.node_id,
        site=update.site,
        subnet=update.subnet,
        address=Address(update.host, update.port),
        weight=update.weight,
        capabilities=update.capabilities,
    )


def _supersedes(state: MemberState, incarnation: int, member: _Member) -> bool:
    """SWIM precedence: higher incarnation wins; at equal, DEAD/LEFT > SUSPECT > ALIVE."""
    if incarnation != member.incarnation:
        return incarnation > member.incarnation
    return _PRECEDENCE[state] > _PRECEDENCE[member.state]


class _IndexedIds:
    """An insertion-ordered id set with O(1) add, discard and uniform sampling."""

    def __init__(self) -> None:
        self._ids: list[NodeId] = []
        self._index: dict[NodeId, int] = {}

    def add(self, node_id: NodeId) -> None:
        if node_id not in self._index:
            self._index[node_id] = len(self._ids)
            self._ids.append(node_id)

    def discard(self, node_id: NodeId) -> None:
        position = self._index.pop(node_id, None)
        if position is None:
            return
        last = self._ids.pop()
        if last != node_id:
            self._ids[position] = last
            self._index[last] = position

    def sample(self, rng: random.Random, count: int) -> list[NodeId]:
        if len(self._ids) <= count:
            return list(self._ids)
        return [self._ids[i] for i in rng.sample(range(len(self._ids)), count)]
