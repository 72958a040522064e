"""Election driven by events and times alone: membership fed directly, messages via the codec."""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

import pytest

from actors import codec
from actors.core import (
    Address,
    CancelTimer,
    Command,
    CountMetric,
    EligibilityChanged,
    Event,
    LeadershipChanged,
    Log,
    MemberChanged,
    MemberInfo,
    MemberState,
    MessageReceived,
    SendMessage,
    ServePermission,
    StartTimer,
    Tell,
    TimerFired,
)
from actors.election import (
    DOWNLOADER_CAPABILITY,
    RESPONDER_CAPABILITY,
    Election,
    ElectionKnobs,
    Role,
    ScopeElection,
)
from actors.messages import Claim, Lease

SUBNET = "10.0.0.0/24"
SCOPE = f"subnet:{SUBNET}"


@dataclass
class _Node:
    actor: Election
    info: MemberInfo
    up: bool = True
    generations: dict[str, int] = field(default_factory=dict)
    leadership: list[tuple[float, LeadershipChanged]] = field(default_factory=list)


class ElectionLab:
    """Election actors on an in-memory network; membership is what the test says."""

    def __init__(self, latency_s: float = 0.001) -> None:
        self.now_s = 0.0
        self.latency_s = latency_s
        self.nodes: dict[str, _Node] = {}
        self.by_address: dict[Address, str] = {}
        self.cut: set[frozenset[str]] = set()
        self.loss = 0.0
        self.rng = random.Random(7)
        self._heap: list[tuple[float, int, str, Event, int]] = []
        self._seq = 0
        self.max_leaders_same_term = 0

    def add(self, node_id: str, weight: int, *, eligible: bool = True) -> None:
        address = Address(f"10.0.0.{len(self.nodes) + 1}", 7947)
        caps = (RESPONDER_CAPABILITY, DOWNLOADER_CAPABILITY) if eligible else ()
        info = MemberInfo(node_id, "s1", SUBNET, address, weight, caps)
        actor = Election(info, random.Random(node_id), responder_eligible=eligible)
        self.nodes[node_id] = _Node(actor=actor, info=info)
        self.by_address[address] = node_id

    def start_all(self) -> None:
        for node_id in self.nodes:
            self.start(node_id, [other for other in self.nodes if other != node_id])

    def start(self, node_id: str, known: list[str]) -> None:
        """Start `node_id` knowing `known` as ALIVE members."""
        node = self.nodes[node_id]
        self._execute(node_id, node.actor.start(self.now_s))
        for other_id in known:
            event = MemberChanged(self.nodes[other_id].info, MemberState.ALIVE, 0)
            self._execute(node_id, node.actor.handle(event, self.now_s))

    def crash(self, node_id: str, *, detected_after_s: float | None = None) -> None:
        """Stop a node; discovery reports it dead to the others after `detected_after_s`."""
        self.nodes[node_id].up = False
        if detected_after_s is not None:
            dead = MemberChanged(self.nodes[node_id].info, MemberState.DEAD, 0)
            for other in self.nodes:
                if other != node_id:
                    self._push(self.now_s + detected_after_s, other, dead)

    def leaders(self) -> list[str]:
        return [
            node_id
            for node_id, node in sorted(self.nodes.items())
            if node.up and node.actor.responder.role is Role.LEADER
        ]

    def run_until(self, until_s: float) -> None:
        while self._heap and self._heap[0][0] <= until_s:
            time_s, _, node_id, event, generation = heapq.heappop(self._heap)
            self.now_s = time_s
            node = self.nodes[node_id]
            if isinstance(event, TimerFired):
                if node.generations.get(event.name) != generation:
                    continue
                del node.generations[event.name]
            if node.up:
                self._execute(node_id, node.actor.handle(event, self.now_s))
            self._check_terms()
        self.now_s = until_s

    def _check_terms(self) -> None:
        terms: dict[tuple[int, str], int] = {}
        for node in self.nodes.values():
            scope = node.actor.responder
            if node.up and scope.role is Role.LEADER:
                terms[scope.ballot] = terms.get(scope.ballot, 0) + 1
        self.max_leaders_same_term = max([self.max_leaders_same_term, *terms.values()])

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
                    self._seq += 1
                    node.generations[name] = self._seq
                    self._push(max(deadline_s, self.now_s), node_id, TimerFired(name), self._seq)
                case CancelTimer(name):
                    node.generations.pop(name, None)
                case Tell(_, LeadershipChanged() as changed):
                    node.leadership.append((self.now_s, changed))
                case Tell() | Log() | CountMetric():
                    pass

    def _send(self, source: str, address: Address, payload: bytes) -> None:
        target = self.by_address.get(address)
        if target is None or frozenset((source, target)) in self.cut:
            return
        if self.rng.random() < self.loss:
            return
        event = MessageReceived(source, self.nodes[source].info.address, codec.decode(payload))
        self._push(self.now_s + self.latency_s, target, event)


def _lab(weights: dict[str, int]) -> ElectionLab:
    lab = ElectionLab()
    for node_id, weight in weights.items():
        lab.add(node_id, weight)
    lab.start_all()
    return lab


def test_the_heaviest_candidate_leads_after_startup() -> None:
    """Weight decides; exactly one leader once the startup grace is over."""
    lab = _lab({"a": 50, "b": 80, "c": 50})
    lab.run_until(5.0)
    assert lab.leaders() == ["b"]


def test_equal_weights_break_ties_by_node_id() -> None:
    """Deterministic tie-break: the smallest node id among equals."""
    lab = _lab({"n3": 50, "n1": 50, "n2": 50})
    lab.run_until(5.0)
    assert lab.leaders() == ["n1"]


def test_weight_zero_and_ineligible_peers_never_lead() -> None:
    """Weight 0 means never; a peer without the verified package is not a candidate."""
    lab = ElectionLab()
    lab.add("zero", 0)
    lab.add("nocontent", 90, eligible=False)
    lab.add("ok", 10)
    lab.start_all()
    lab.run_until(5.0)
    assert lab.leaders() == ["ok"]
    lab.crash("ok", detected_after_s=5.0)
    lab.run_until(30.0)
    assert lab.leaders() == []


def test_leader_crash_fails_over_before_the_first_pxe_retry() -> None:
    """A silent leader crash is replaced within 4 s (PXE firmware retries after 4 s)."""
    lab = _lab({"a": 90, "b": 80, "c": 70, "d": 60})
    lab.run_until(5.0)
    crash_s = lab.now_s
    lab.crash("a")  # no discovery help: the lease alone must do it
    for step in range(1, 81):
        lab.run_until(crash_s + step * 0.05)
        if lab.leaders():
            break
    assert lab.leaders() == ["b"]
    assert lab.now_s - crash_s <= 4.0
    assert lab.max_leaders_same_term == 1


def test_standbys_take_over_in_rank_order_when_several_die() -> None:
    """With the first standby dead too, the second takes over, still within the budget."""
    lab = _lab({"a": 90, "b": 80, "c": 70})
    lab.run_until(5.0)
    crash_s = lab.now_s
    lab.crash("a")
    lab.crash("b")
    lab.run_until(crash_s + 4.0)
    assert lab.leaders() == ["c"]


def test_stale_leader_returning_from_a_partition_steps_down() -> None:
    """Both sides elect during a partition (boots must go on); on heal one leader remains."""
    lab = _lab({"a": 90, "b": 80, "c": 70})
    lab.run_until(5.0)
    for other in ("b", "c"):
        lab.cut.add(frozenset(("a", other)))
    a_info = lab.nodes["a"].info
    for node_id in ("b", "c"):  # discovery on the b/c side declares a dead
        lab._push(lab.now_s + 5.0, node_id, MemberChanged(a_info, MemberState.DEAD, 0))
    lab.run_until(20.0)
    assert lab.leaders() == ["a", "b"]
    old_term = lab.nodes["a"].actor.responder.ballot
    lab.cut.clear()
    for node_id in ("b", "c"):
        lab._push(lab.now_s + 1.0, node_id, MemberChanged(a_info, MemberState.ALIVE, 1))
    lab.run_until(60.0)
    assert len(lab.leaders()) == 1
    assert lab.nodes["a"].actor.responder.ballot != old_term
    assert lab.max_leaders_same_term == 1


def test_better_candidate_preempts_only_after_it_has_been_up_a_while() -> None:
    """A heavier peer that joins later takes over after preempt_after_s, not at once."""
    lab = ElectionLab()
    lab.add("light", 10)
    lab.add("heavy", 90)
    lab.start("light", [])
    lab.run_until(5.0)
    assert lab.leaders() == ["light"]
    lab.start("heavy", ["light"])
    heavy = lab.nodes["heavy"]
    lab._push(lab.now_s, "light", MemberChanged(heavy.info, MemberState.ALIVE, 0))
    lab.run_until(lab.now_s + 10.0)
    assert lab.leaders() == ["light"]
    lab.run_until(lab.now_s + 40.0)
    assert lab.leaders() == ["heavy"]
    assert lab.max_leaders_same_term == 1


def test_clean_resignation_hands_over_without_waiting_for_the_lease() -> None:
    """A leader that resigns (stopping, or lost its package) is replaced within a second."""
    lab = _lab({"a": 90, "b": 80})
    lab.run_until(5.0)
    node = lab.nodes["a"]
    lab._execute("a", node.actor.resign(lab.now_s))
    resigned_s = lab.now_s
    lab.run_until(resigned_s + 1.0)
    assert lab.leaders() == ["b"]


@pytest.mark.parametrize("seed", range(30))
def test_one_leader_per_term_under_loss(seed: int) -> None:
    """With 20% loss and a crash, leaders never share a term and one leader remains."""
    lab = _lab({f"n{i}": 50 + (i * 7) % 30 for i in range(6)})
    lab.loss = 0.2
    lab.rng = random.Random(seed)
    lab.run_until(10.0)
    best = lab.leaders()
    assert len(best) == 1
    lab.crash(best[0], detected_after_s=6.0)
    lab.run_until(40.0)
    assert len(lab.leaders()) == 1
    assert lab.max_leaders_same_term == 1


def test_leadership_changes_are_told_to_the_boot_actor() -> None:
    """The boot actor learns when this peer starts leading, with the term."""
    lab = _lab({"a": 90, "b": 10})
    lab.run_until(5.0)
    changes = [change for _, change in lab.nodes["a"].leadership]
    assert changes[-1].leading
    assert changes[-1].scope == SCOPE
    assert changes[-1].term >= 1


def test_claim_from_a_stranger_is_counted_and_ignored() -> None:
    """A claim from a peer that is not a candidate changes nothing."""
    lab = _lab({"a": 90})
    lab.run_until(5.0)
    stranger = Address("10.0.0.99", 7947)
    claim = Claim(scope=SCOPE, term=99, candidate="stranger")
    commands = lab.nodes["a"].actor.handle(MessageReceived("stranger", stranger, claim), 5.0)
    assert any(isinstance(c, CountMetric) for c in commands)
    assert lab.leaders() == ["a"]


def test_lease_for_an_unknown_scope_is_counted() -> None:
    """Messages about another subnet's scope are dropped and counted."""
    lab = _lab({"a": 90})
    lease = Lease(scope="subnet:192.168.9.0/24", term=1, leader="x", interval_s=0.5)
    commands = lab.nodes["a"].actor.handle(MessageReceived("x", Address("h", 1), lease), 1.0)
    assert CountMetric("election.foreign_scope") in commands


def test_knobs_reject_a_lease_shorter_than_the_heartbeat() -> None:
    """A lease that lapses between heartbeats is a configuration bug."""
    with pytest.raises(ValueError, match=r"heartbeat_interval_s \(2.0\) < lease_timeout_s"):
        ElectionKnobs(heartbeat_interval_s=2.0, lease_timeout_s=1.0)


def test_standbys_learn_their_rank_in_the_line_of_succession() -> None:
    """The boot actor of each standby is told its rank (1 = next in line)."""
    lab = _lab({"a": 90, "b": 80, "c": 70, "d": 60})
    lab.run_until(5.0)
    ranks = {
        node_id: [c.standby_rank for _, c in node.leadership if not c.leading][-1:]
        for node_id, node in lab.nodes.items()
    }
    assert ranks["b"] == [1]
    assert ranks["c"] == [2]
    assert ranks["d"] in ([], [0])


def test_a_policy_that_forbids_serving_makes_the_leader_hand_over_and_never_lead() -> None:
    """`ServePermission(False)`: the peer steps down and stays out, whatever it holds; the
    package arriving again (`EligibilityChanged`) does not bring it back; permission does."""
    lab = _lab({"a": 80, "b": 50})
    lab.run_until(5.0)
    assert lab.leaders() == ["a"]
    lab._push(lab.now_s, "a", ServePermission(allowed=False))
    lab.run_until(lab.now_s + 5.0)
    assert lab.leaders() == ["b"]
    lab._push(lab.now_s, "a", EligibilityChanged(RESPONDER_CAPABILITY, eligible=True))
    lab.run_until(lab.now_s + 40.0)
    assert lab.leaders() == ["b"]
    assert not _responder_eligible(lab, "a")
    lab._push(lab.now_s, "a", ServePermission(allowed=True))
    lab.run_until(lab.now_s + 40.0)  # a heavier candidate preempts after preempt_after_s
    assert _responder_eligible(lab, "a")
    assert lab.max_leaders_same_term == 1


def _responder_eligible(lab: ElectionLab, node_id: str) -> bool:
    return lab.nodes[node_id].actor.responder.eligible


def test_a_capability_the_peer_never_takes_is_ignored() -> None:
    info = MemberInfo("a", "s1", SUBNET, Address("10.0.0.1", 7947), 50, ())
    election = Election(info, random.Random(1), never=(RESPONDER_CAPABILITY,))
    commands = election.handle(EligibilityChanged(RESPONDER_CAPABILITY, eligible=True), 0.0)
    assert CountMetric("election.eligibility_not_allowed") in commands
    assert not election.responder.eligible


def _sorted_ranking(scope: ScopeElection) -> list[str]:
    """What the ranking was before it was kept incrementally: sort every candidate but the
    leader by (weight, higher first; node id)."""
    others = [c for node_id, c in scope.candidates.items() if node_id != scope.leader]
    return [c.info.node_id for c in sorted(others, key=lambda c: (-c.info.weight, c.info.node_id))]


@pytest.mark.parametrize("seed", range(20))
def test_the_incremental_ranking_orders_as_a_full_sort_would(seed: int) -> None:
    """Candidates join, change weight, lose the capability and die in random order: the
    standbys, the claim's recipients and our position are those of a full sort each time."""
    rng = random.Random(seed)
    me = MemberInfo("n05", "s1", SUBNET, Address("10.0.0.5", 7947), 3, (RESPONDER_CAPABILITY,))
    election = Election(me, random.Random(seed), responder_eligible=True)
    scope = election.responder
    scope.ballot = (1, "n07")
    for _ in range(300):
        node_id = f"n{rng.randrange(12):02d}"
        caps = (RESPONDER_CAPABILITY,) if rng.random() < 0.8 else ()
        info = MemberInfo(node_id, "s1", SUBNET, Address("10.0.0.9", 7947), rng.randrange(4), caps)
        state = MemberState.ALIVE if rng.random() < 0.75 else MemberState.DEAD
        election.handle(MemberChanged(info, state, 0), 0.0)
        if rng.random() < 0.1:
            scope.role = rng.choice(list(Role))
        expected = _sorted_ranking(scope)
        assert sorted(scope.ranking) == scope.ranking
        assert [node_id for _w, node_id in scope.ranking] == sorted(
            scope.candidates, key=lambda n: (-scope.candidates[n].info.weight, n)
        )
        assert [c.info.node_id for c in scope._ranked(3)] == expected[:3]
        better = [n for n in expected if (-scope.candidates[n].info.weight, n) < (-3, "n05")]
        assert scope._position() == len(better) + 1
