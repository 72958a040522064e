"""Election actor: one PXE responder per subnet and one WAN downloader per site.

Theory of operation
-------------------
Each *scope* (`subnet:<cidr>` for the responder, `site:<name>` for the WAN downloader) runs
the same state machine, `ScopeElection`. Candidates are the ALIVE members of the scope that
are eligible (weight > 0 and the scope's capability: `responder` needs the verified boot
package and policy consent, `downloader` the site role), ranked by weight (higher first), then
node id (deterministic tie-break). Membership comes from the discovery actor (`MemberChanged`).

Terms are ballots (Paxos): `(round, leader)`, ordered by round, then leader id. A leader
carries its ballot in every message, a fencing epoch: whoever sees a higher ballot from a live
leader steps down at once. Ballots, not bare rounds, because a subnet split in two must keep
a responder on each side (a majority quorum would leave one side unable to boot), and both
sides may pick the same round; two leaders can then never share a term, and on heal the
lower ballot yields.

States: FOLLOWER, CANDIDATE, LEADER.

- LEADER: sends `Lease(term, leader, interval)` every `heartbeat_interval_s` to its ranked
  standbys (the next `standby_count` candidates), answers any claim or lower ballot with
  its lease, yields to a higher ballot, to a claim from a better-weighted candidate
  (preemption) and on resignation (ineligible, stopping: `Resign`).
- FOLLOWER: remembers the lease. When it lapses (`lease_timeout_s` after the last heartbeat),
  when the leader is declared dead or resigns, or when no leader is known at start, the
  candidate ranked `i`-th among live candidates claims after `(i - 1) * claim_stagger_s`;
  candidates ranked below `standby_count + 1` only claim when they are first.
  A better-weighted candidate that has been alive for `preempt_after_s` claims too.
- CANDIDATE: sends `Claim(round, candidate)` with `round = highest round seen + 1` to the
  top candidates and waits `claim_wait_s`. A valid lease or a better claim aborts; otherwise
  it becomes LEADER and announces at once.

Failover budget (PXE firmware retries DISCOVER after 4 s; iPXE waits 2 s for a proxy offer):
lease timeout 1.5 s + claim wait 0.3 s ≈ 2 s from the last heartbeat to the new leader's
first answer, by the client's first retry.

Every change of leadership of this peer is told to the boot and replication actors as
`LeadershipChanged`. When this peer gains or loses a capability (`EligibilityChanged`, from
replication once the package is verified), the capabilities it advertises are told to
discovery (`CapabilitiesChanged`), which gossips them: the other peers' elections then count
it as a candidate.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar, Final

from actors.core import (
    ActorName,
    BootPolicyChanged,
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
from actors.messages import Claim, Lease, Message, Resign

RESPONDER_CAPABILITY: Final = "responder"
"""Capability of a peer that holds the verified boot package and may answer PXE clients."""
DOWNLOADER_CAPABILITY: Final = "downloader"
"""Capability of a peer that may fetch packages across the WAN for its site."""
LEADERSHIP_LISTENERS: Final = (ActorName.BOOT, ActorName.REPLICATION)

Ballot = tuple[int, str]
"""(round, leader id): the term of a leadership, totally ordered."""
NO_BALLOT: Final[Ballot] = (0, "")


class Role(StrEnum):
    """Where this peer stands in one scope."""

    #: follows a leader (or knows none yet)
    FOLLOWER = "follower"
    #: has claimed a ballot and waits for objections
    CANDIDATE = "candidate"
    #: holds the scope; answers (responder) or downloads (downloader)
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class ElectionKnobs:
    """Timing of leadership; defaults meet the PXE retry deadline (see module docstring)."""

    heartbeat_interval_s: float = 0.5
    lease_timeout_s: float = 1.5
    claim_wait_s: float = 0.3
    claim_stagger_s: float = 0.6
    standby_count: int = 2
    startup_grace_s: float = 2.0
    preempt_after_s: float = 30.0

    def __post_init__(self) -> None:
        """Knobs come from config files and sweeps: refuse bad ones with a reason."""
        if not 0 < self.heartbeat_interval_s < self.lease_timeout_s:
            raise ValueError(
                f"need 0 < heartbeat_interval_s ({self.heartbeat_interval_s}) < "
                f"lease_timeout_s ({self.lease_timeout_s})"
            )
        if not self.claim_wait_s > 0:
            raise ValueError(f"claim_wait_s must be > 0, got {self.claim_wait_s}")
        if self.standby_count < 1:
            raise ValueError(f"standby_count must be >= 1, got {self.standby_count}")


RankKey = tuple[int, NodeId]
"""(-weight, node id): candidates sort best first by it."""


@dataclass(slots=True)
class _Candidate:
    info: MemberInfo
    alive_since_s: float


def _rank_key(info: MemberInfo) -> RankKey:
    return (-info.weight, info.node_id)


@dataclass(slots=True)
class ScopeElection:
    """The election state machine of one scope (see the module docstring)."""

    scope: str
    capability: str
    self_info: MemberInfo
    eligible: bool
    knobs: ElectionKnobs
    role: Role = Role.FOLLOWER
    ballot: Ballot = NO_BALLOT
    """The ballot of the leadership we follow, claim or hold."""
    round_seen: int = 0
    lease_until_s: float = 0.0
    heard_s: float = -1.0
    """When a live leader was last heard from directly (its own heartbeat)."""
    started_s: float = 0.0
    candidates: dict[NodeId, _Candidate] = field(default_factory=dict)
    ranking: list[RankKey] = field(default_factory=list)
    """The rank keys of `candidates`, sorted (best first): kept in step by `on_member`, so
    ranking never sorts the whole scope (a site of 2,000 candidates changes often)."""
    ballot_before_claim: NodeId = ""
    confirmed: bool = False
    """The ballot we follow was announced by its leader (a lease), not only claimed."""
    told_rank: int = 0

    @property
    def leader(self) -> NodeId:
        """The leader we follow or are (empty when unknown)."""
        return self.ballot[1] if self.role is not Role.CANDIDATE else ""

    def timer(self, what: str) -> str:
        """The name of this scope's timer `what`."""
        return f"{self.scope}:{what}"

    # ------------------------------------------------------------------ inputs

    def start(self, now_s: float) -> list[Command]:
        """Wait for discovery to settle, then elect."""
        self.started_s = now_s
        return [StartTimer(self.timer("check"), now_s + self.knobs.startup_grace_s)]

    def on_member(self, info: MemberInfo, state: MemberState, now_s: float) -> list[Command]:
        """Track candidates; a dead or departed leader triggers succession at once."""
        if state is MemberState.ALIVE and self._is_candidate(info):
            known = self._withdraw(info.node_id)
            since_s = known.alive_since_s if known is not None else now_s
            self.candidates[info.node_id] = _Candidate(info=info, alive_since_s=since_s)
            bisect.insort(self.ranking, _rank_key(info))
            return []
        self._withdraw(info.node_id)
        if info.node_id == self.leader and self.role is Role.FOLLOWER:
            self.lease_until_s = now_s  # the lease holder is gone: no need to wait it out
            return self._schedule_check(now_s)
        return []

    def on_lease(self, lease: Lease, source: NodeId, now_s: float) -> list[Command]:
        """A leadership is current: follow a better ballot, correct a worse one."""
        incoming: Ballot = (lease.term, lease.leader)
        self.round_seen = max(self.round_seen, lease.term)
        if lease.leader == source:
            self.heard_s = now_s
        if self.role is Role.LEADER:
            if incoming < self.ballot:
                return self._relay_lease_to(lease.leader)  # a stale leader: show it our term
            if incoming == self.ballot:
                return []
            if self._outranks_node(lease.leader):
                return self._reassert(now_s, lease.leader)  # a lighter leader won a race
            return self._step_down(incoming, now_s, "stepped down: higher term")
        if self.role is Role.CANDIDATE and self._outranks_node(lease.leader):
            return []  # our claim will make that lighter leader yield
        if self.confirmed and incoming < self.ballot and self._lease_valid(now_s):
            return self._relay_lease_to(lease.leader)  # relay the newer term to the stale one
        return self._follow(incoming, now_s, confirmed=True)

    def on_claim(self, claim: Claim, now_s: float) -> list[Command]:
        """Someone intends to lead: object with our lease, yield, or let it proceed."""
        incoming: Ballot = (claim.term, claim.candidate)
        self.round_seen = max(self.round_seen, claim.term)
        claimant = self.candidates.get(claim.candidate)
        if claimant is None:
            return [CountMetric(f"election.{self.capability}.claim_from_non_candidate")]
        if self.role is Role.LEADER:
            if claimant.info.weight > self.self_info.weight:
                # Hand over: the resignation lets the claimant lead without waiting out its
                # claim window, so PXE clients see neither a gap nor two answers.
                resign = Resign(scope=self.scope, term=self.ballot[0], leader=self.ballot[1])
                commands = self._step_down(incoming, now_s, "preempted by a better candidate")
                commands.append(SendMessage(claimant.info.address, resign))
                return commands
            return self._relay_lease_to(claim.candidate)
        if self.role is Role.CANDIDATE:
            if self._outranks(claimant.info, self.self_info):
                return self._follow(incoming, now_s, confirmed=False)
            return []
        if self._leader_fresh(now_s) and not self._outweighs_leader(claimant.info):
            return self._relay_lease_to(claim.candidate)  # our leader lives: object
        # Provisionally: give the claimant a lease's time to lead before anyone else claims.
        return self._follow(incoming, now_s, confirmed=False)

    def on_resign(self, resign: Resign, now_s: float) -> list[Command]:
        """The leader stepped down cleanly: succession starts without waiting for the lease."""
        if self.role is Role.CANDIDATE and resign.leader == self.ballot_before_claim:
            return self._on_claim_end(now_s)  # the leader we preempt handed over
        if (resign.term, resign.leader) == self.ballot and self.role is Role.FOLLOWER:
            self.lease_until_s = now_s
            return self._schedule_check(now_s)
        return []

    def on_timer(self, what: str, now_s: float) -> list[Command]:
        """Heartbeat, lease check or claim end."""
        if what == "heartbeat":
            return self._on_heartbeat(now_s)
        if what == "check":
            return self._on_check(now_s)
        if what == "claim":
            return self._on_claim_end(now_s)
        raise AssertionError(f"unknown election timer {what!r}")

    def set_eligible(self, eligible: bool, now_s: float) -> list[Command]:
        """Our own eligibility changed (package verified or lost, policy)."""
        self.eligible = eligible
        if not eligible and self.role is not Role.FOLLOWER:
            return self._resign(now_s, "no longer eligible")
        return self._schedule_check(now_s)

    def resign(self, now_s: float) -> list[Command]:
        """Step down cleanly (for example before shutdown)."""
        self.eligible = False
        if self.role is Role.FOLLOWER:
            return []
        return self._resign(now_s, "stopping")

    # ------------------------------------------------------------------ timers

    def _on_heartbeat(self, now_s: float) -> list[Command]:
        if self.role is not Role.LEADER:
            return []
        commands: list[Command] = [
            StartTimer(self.timer("heartbeat"), now_s + self.knobs.heartbeat_interval_s)
        ]
        for standby in self._standbys():
            commands.extend(self._relay_lease_to(standby.info.node_id))
        return commands

    def _on_check(self, now_s: float) -> list[Command]:
        if self.role is not Role.FOLLOWER or not self.eligible:
            return []
        if self._lease_valid(now_s):
            if self._should_preempt(now_s):
                return self._claim(now_s)
            return [StartTimer(self.timer("check"), self.lease_until_s)]
        position = self._position()
        if position > self.knobs.standby_count or position < 1:
            return []  # not a standby: better candidates are alive; membership re-checks
        due_s = self.lease_until_s + (position - 1) * self.knobs.claim_stagger_s
        if now_s + 1e-9 < due_s:
            return [StartTimer(self.timer("check"), due_s)]
        return self._claim(now_s)

    def _on_claim_end(self, now_s: float) -> list[Command]:
        if self.role is not Role.CANDIDATE:
            return []
        self.role = Role.LEADER
        commands = self._announce(now_s, "elected")
        commands.append(StartTimer(self.timer("heartbeat"), now_s))
        return commands

    # ------------------------------------------------------------------ transitions

    def _claim(self, now_s: float) -> list[Command]:
        self.ballot_before_claim = self.ballot[1]
        self.round_seen += 1
        self.role = Role.CANDIDATE
        self.ballot = (self.round_seen, self.self_info.node_id)
        claim = Claim(scope=self.scope, term=self.round_seen, candidate=self.self_info.node_id)
        recipients = self._ranked(self.knobs.standby_count + 1)
        leader = self.candidates.get(self.ballot_before_claim)
        if leader is not None:
            recipients.append(leader)  # a live leader may object or yield (preemption)
        commands: list[Command] = [
            SendMessage(candidate.info.address, claim) for candidate in recipients
        ]
        commands.append(StartTimer(self.timer("claim"), now_s + self.knobs.claim_wait_s))
        commands.append(CountMetric(f"election.{self.capability}.claims"))
        return commands

    def _reassert(self, now_s: float, rival: NodeId) -> list[Command]:
        """Keep leading under a fresh ballot above the rival's; its lease makes it yield."""
        self.round_seen += 1
        self.ballot = (self.round_seen, self.self_info.node_id)
        commands = self._relay_lease_to(rival)
        commands.append(StartTimer(self.timer("heartbeat"), now_s))
        commands.extend(self._announce(now_s, "re-asserted over a lighter leader"))
        return commands

    def _follow(self, ballot: Ballot, now_s: float, *, confirmed: bool) -> list[Command]:
        was_leading = self.role is Role.LEADER
        self.role = Role.FOLLOWER
        self.ballot = ballot
        self.confirmed = confirmed
        self.lease_until_s = now_s + self.knobs.lease_timeout_s
        commands = self._schedule_check(now_s)
        if was_leading:
            commands.extend(self._announce(now_s, "stepped down: higher term"))
        return commands

    def _step_down(self, ballot: Ballot, now_s: float, reason: str) -> list[Command]:
        self.role = Role.FOLLOWER
        self.ballot = ballot
        self.confirmed = False
        self.lease_until_s = now_s + self.knobs.lease_timeout_s
        commands = self._announce(now_s, reason)
        commands.extend(self._schedule_check(now_s))
        return commands

    def _resign(self, now_s: float, reason: str) -> list[Command]:
        was_leading = self.role is Role.LEADER
        resign = Resign(scope=self.scope, term=self.ballot[0], leader=self.self_info.node_id)
        commands: list[Command] = []
        if was_leading:
            commands = [SendMessage(c.info.address, resign) for c in self._standbys()]
        self.role = Role.FOLLOWER
        self.confirmed = False  # the ballot stays, for the log line and ordering
        self.lease_until_s = now_s
        if was_leading:
            commands.extend(self._announce(now_s, reason))
        return commands

    def standby_changes(self) -> list[Command]:
        """Tell the listeners when our place in the line of succession changed."""
        rank = self.standby_rank()
        if rank == self.told_rank or self.role is Role.LEADER:
            return []
        self.told_rank = rank
        return [Tell(listener, self._standing()) for listener in LEADERSHIP_LISTENERS]

    def standby_rank(self) -> int:
        """1-based place in the line of succession; 0 when leading or not a standby."""
        if self.role is Role.LEADER:
            return 0
        position = self._position()
        return position if 0 < position <= self.knobs.standby_count else 0

    def _standing(self) -> LeadershipChanged:
        return LeadershipChanged(
            scope=self.scope,
            capability=self.capability,
            leading=self.role is Role.LEADER,
            term=self.ballot[0],
            leader=self.ballot[1],
            standby_rank=self.standby_rank(),
        )

    def _announce(self, now_s: float, reason: str) -> list[Command]:
        leading = self.role is Role.LEADER
        self.told_rank = self.standby_rank()
        event = self._standing()
        fields = (("scope", self.scope), ("term", self.ballot[0]), ("at_s", now_s))
        level = LogLevel.INFO if leading else LogLevel.WARNING
        commands: list[Command] = [Tell(listener, event) for listener in LEADERSHIP_LISTENERS]
        commands.append(Log(level, f"{self.capability} {reason}", fields))
        return commands

    # ------------------------------------------------------------------ helpers

    def _schedule_check(self, now_s: float) -> list[Command]:
        return [StartTimer(self.timer("check"), now_s)]

    def _lease_valid(self, now_s: float) -> bool:
        return bool(self.ballot[1]) and now_s < self.lease_until_s

    def _is_candidate(self, info: MemberInfo) -> bool:
        return info.weight > 0 and self.capability in info.capabilities

    def _withdraw(self, node_id: NodeId) -> _Candidate | None:
        """Take `node_id` out of the candidates and the ranking; what it was, if anything."""
        known = self.candidates.pop(node_id, None)
        if known is not None:
            index = bisect.bisect_left(self.ranking, _rank_key(known.info))
            del self.ranking[index]
        return known

    def _ranked(self, count: int) -> list[_Candidate]:
        """The best `count` live candidates other than the current leader, best first."""
        leader = self.leader
        ranked: list[_Candidate] = []
        for _weight, node_id in self.ranking:
            if len(ranked) >= count:
                break
            if node_id != leader:
                ranked.append(self.candidates[node_id])
        return ranked

    def _position(self) -> int:
        """Our 1-based rank among live candidates other than the leader (0 if ineligible)."""
        if not self.eligible or self.self_info.weight <= 0:
            return 0
        own = _rank_key(self.self_info)
        better = bisect.bisect_left(self.ranking, own)  # keys below ours outrank us
        leader = self.candidates.get(self.leader)
        if leader is not None and _rank_key(leader.info) < own:
            better -= 1
        return better + 1

    def _standbys(self) -> list[_Candidate]:
        return self._ranked(self.knobs.standby_count)

    def _leader_fresh(self, now_s: float) -> bool:
        """Heard the leader itself within about one heartbeat: it is demonstrably alive."""
        return (
            self._lease_valid(now_s)
            and now_s - self.heard_s <= self.knobs.heartbeat_interval_s * 1.5
        )

    def _outranks_node(self, node_id: NodeId) -> bool:
        """We rank above `node_id`, a known candidate (unknown peers are not outranked)."""
        other = self.candidates.get(node_id)
        return other is not None and self._outranks(self.self_info, other.info)

    def _outweighs_leader(self, info: MemberInfo) -> bool:
        leader = self.candidates.get(self.ballot[1])
        return leader is None or info.weight > leader.info.weight

    def _should_preempt(self, now_s: float) -> bool:
        leader = self.candidates.get(self.leader)
        if leader is None or leader.info.weight >= self.self_info.weight:
            return False
        return now_s - self.started_s >= self.knobs.preempt_after_s

    def _relay_lease_to(self, node_id: NodeId) -> list[Command]:
        """Tell `node_id` the leadership we hold or follow (any member may relay it)."""
        candidate = self.candidates.get(node_id)
        holds = self.role is Role.LEADER or (self.confirmed and bool(self.ballot[1]))
        if candidate is None or not holds:
            return []
        lease = Lease(
            scope=self.scope,
            term=self.ballot[0],
            leader=self.ballot[1],
            interval_s=self.knobs.heartbeat_interval_s,
        )
        return [SendMessage(candidate.info.address, lease)]

    @staticmethod
    def _outranks(a: MemberInfo, b: MemberInfo) -> bool:
        return _rank_key(a) < _rank_key(b)


class Election:
    """The election actor of one peer: a responder scope and a downloader scope."""

    NAME: ClassVar[ActorName] = ActorName.ELECTION

    def __init__(
        self,
        self_info: MemberInfo,
        rng: random.Random,
        knobs: ElectionKnobs = ElectionKnobs(),
        *,
        responder_eligible: bool = False,
        downloader_eligible: bool = False,
        never: tuple[str, ...] = (),
    ) -> None:
        self.self_info = self_info
        self._rng = rng
        self._never = never
        self._serve_allowed = True
        """The signed policy lets this peer serve PXE (`ServePermission`)."""
        self._holds_responder = responder_eligible
        """What replication last said of the package (`EligibilityChanged`)."""
        """Capabilities this peer never takes on whatever it holds (`[boot] enabled = false`
        means never the responder): `EligibilityChanged` for them is counted and ignored."""
        self._advertised = self_info.capabilities
        """What discovery advertises for us; changes with our eligibility."""
        self.scopes: dict[str, ScopeElection] = {}
        for scope, capability, eligible in (
            (f"subnet:{self_info.subnet}", RESPONDER_CAPABILITY, responder_eligible),
            (f"site:{self_info.site}", DOWNLOADER_CAPABILITY, downloader_eligible),
        ):
            self.scopes[scope] = ScopeElection(
                scope=scope,
                capability=capability,
                self_info=self_info,
                eligible=eligible and self_info.weight > 0,
                knobs=knobs,
            )

    @property
    def responder(self) -> ScopeElection:
        """The subnet responder election."""
        return self.scopes[f"subnet:{self.self_info.subnet}"]

    @property
    def downloader(self) -> ScopeElection:
        """The site WAN-downloader election."""
        return self.scopes[f"site:{self.self_info.site}"]

    def start(self, now_s: float) -> list[Command]:
        """Start every scope."""
        return [command for scope in self.scopes.values() for command in scope.start(now_s)]

    def handle(self, event: Event, now_s: float) -> list[Command]:
        """React to membership, election messages and timers; never raises for remote input."""
        commands = self._dispatch(event, now_s)
        for scope in self.scopes.values():
            commands.extend(scope.standby_changes())
        return commands

    def _dispatch(self, event: Event, now_s: float) -> list[Command]:
        match event:
            case MemberChanged(member, state, _incarnation):
                return self._for_scopes_of(member, lambda s: s.on_member(member, state, now_s))
            case MessageReceived(source, _address, message):
                return self._on_message(source, message, now_s)
            case TimerFired(name):
                scope, _, what = name.rpartition(":")
                return self.scopes[scope].on_timer(what, now_s)
            case EligibilityChanged(capability, eligible):
                return self._on_eligibility(capability, eligible, now_s)
            case ServePermission(allowed):
                return self._on_serve_permission(allowed, now_s)
            case (
                PeerDiscovered()
                | PeerLost()
                | SendFailed()
                | LeadershipChanged()
                | DhcpPacketReceived()
                | ManifestAccepted()
                | ChunksHeld()
                | ChunkStored()
                | ChunkRefused()
                | ChunkFetchFailed()
                | PackageComplete()
                | WanSourcesChanged()
                | CapabilitiesChanged()
                | ManifestFetched()
                | ManifestFetchFailed()
                | SeedOffered()
                | PolicyInstalled()
                | PolicyFetchFailed()
                | BootPolicyChanged()
            ):
                return []

    def resign(self, now_s: float) -> list[Command]:
        """Step down everywhere before a clean shutdown."""
        return [command for scope in self.scopes.values() for command in scope.resign(now_s)]

    def _on_eligibility(self, capability: str, eligible: bool, now_s: float) -> list[Command]:
        """Our own eligibility for `capability` changed (replication verified the package)."""
        scopes = [scope for scope in self.scopes.values() if scope.capability == capability]
        if not scopes:
            return [CountMetric("election.unknown_capability")]
        if capability in self._never:
            return [CountMetric("election.eligibility_not_allowed")]
        if capability == RESPONDER_CAPABILITY:
            self._holds_responder = eligible
            eligible = eligible and self._serve_allowed
        allowed = eligible and self.self_info.weight > 0  # weight 0 means never (as at start)
        commands = [command for scope in scopes for command in scope.set_eligible(allowed, now_s)]
        commands.extend(self._advertise(capability, eligible))
        return commands

    def _on_serve_permission(self, allowed: bool, now_s: float) -> list[Command]:
        """The policy lets this peer serve PXE or not: the responder scope follows."""
        if allowed == self._serve_allowed:
            return []
        self._serve_allowed = allowed
        commands: list[Command] = [
            Log(LogLevel.INFO, "policy: may serve PXE" if allowed else "policy: may not serve PXE")
        ]
        if RESPONDER_CAPABILITY in self._never:
            return commands
        eligible = self._holds_responder and allowed
        weighted = eligible and self.self_info.weight > 0
        commands.extend(self.responder.set_eligible(weighted, now_s))
        commands.extend(self._advertise(RESPONDER_CAPABILITY, eligible))
        return commands

    def _advertise(self, capability: str, held: bool) -> list[Command]:
        """Tell discovery what we now advertise, if `capability` came or went."""
        advertised = tuple(c for c in self._advertised if c != capability)
        if held:
            advertised += (capability,)
        if sorted(advertised) == sorted(self._advertised):
            return []
        self._advertised = advertised
        return [Tell(ActorName.DISCOVERY, CapabilitiesChanged(advertised))]

    def _on_message(self, source: NodeId, message: Message, now_s: float) -> list[Command]:
        scope_name = getattr(message, "scope", None)
        scope = self.scopes.get(scope_name) if isinstance(scope_name, str) else None
        if scope is None:
            return [CountMetric("election.foreign_scope")]
        match message:
            case Lease():
                return scope.on_lease(message, source, now_s)
            case Claim():
                return scope.on_claim(message, now_s)
            case Resign():
                return scope.on_resign(message, now_s)
        return [CountMetric("election.unexpected_message")]

    def _for_scopes_of(
        self, member: MemberInfo, apply: Callable[[ScopeElection], list[Command]]
    ) -> list[Command]:
        commands: list[Command] = []
        if member.subnet == self.self_info.subnet:
            commands.extend(apply(self.responder))
        if member.site == self.self_info.site:
            commands.extend(apply(self.downloader))
        return commands
