"""Discovery (SWIM + Lifeguard) driven by events and times alone, on an in-memory network."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from actors.core import (
    ActorName,
    Address,
    CapabilitiesChanged,
    Command,
    CountMetric,
    EligibilityChanged,
    Event,
    MemberChanged,
    MemberInfo,
    MemberState,
    MessageReceived,
    PeerDiscovered,
    SendMessage,
    StartTimer,
    Tell,
    TimerFired,
)
from actors.discovery import MEMBER_LISTENERS, Discovery, DiscoveryKnobs
from actors.election import RESPONDER_CAPABILITY, Election
from actors.gossip import BroadcastQueue, retransmit_limit, suspicion_timeout_s
from actors.messages import Ack, Gossip, MemberUpdate, Ping
from tests.unit.cluster import Cluster


def _seeded_cluster(count: int, seed: int = 1) -> Cluster:
    cluster = Cluster()
    first = cluster.add("n00", seed=seed)
    for index in range(1, count):
        cluster.add(f"n{index:02d}", seeds=(first.self_info.address,), seed=seed)
    cluster.run_until(10.0)
    return cluster


def _states_about(cluster: Cluster, node_id: str) -> dict[str, MemberState | None]:
    return {
        name: node.actor.state_of(node_id)
        for name, node in sorted(cluster.nodes.items())
        if node.up and name != node_id
    }


def test_seeded_peers_all_learn_each_other_alive() -> None:
    """Joining through one seed, every peer ends up knowing every other as ALIVE."""
    cluster = _seeded_cluster(8)
    for node_id in cluster.nodes:
        assert set(_states_about(cluster, node_id).values()) == {MemberState.ALIVE}


def test_crashed_peer_is_declared_dead_by_everyone_within_the_bound() -> None:
    """A silent crash is detected by every live peer within 15 s (SWIM + suspicion)."""
    cluster = _seeded_cluster(10)
    crash_s = cluster.now_s
    cluster.crash("n05")
    detected_s = None
    for step in range(1, 151):
        cluster.run_until(crash_s + step * 0.1)
        if set(_states_about(cluster, "n05").values()) == {MemberState.DEAD}:
            detected_s = cluster.now_s - crash_s
            break
    assert detected_s is not None
    assert detected_s <= 15.0


def test_healthy_peers_stay_alive_for_a_long_quiet_run() -> None:
    """No false suspicion turns into a death on a perfect network."""
    cluster = _seeded_cluster(12)
    cluster.run_until(300.0)
    for node in cluster.nodes.values():
        assert all(view.state is MemberState.ALIVE for view in node.actor.members())
        assert node.counters.get("discovery.probe_failed") == 0


def test_briefly_cut_peer_refutes_suspicion_and_stays_alive() -> None:
    """A peer unreachable for less than a suspicion timeout refutes and is never dead."""
    cluster = _seeded_cluster(6)
    victim = "n03"
    for other in cluster.nodes:
        if other != victim:
            cluster.cut.add(frozenset((victim, other)))
    cluster.run_until(cluster.now_s + 1.5)
    cluster.cut.clear()
    cluster.run_until(cluster.now_s + 30.0)
    assert set(_states_about(cluster, victim).values()) == {MemberState.ALIVE}
    deaths = [
        changed
        for node in cluster.nodes.values()
        for changed in node.told
        if changed.member.node_id == victim and changed.state is MemberState.DEAD
    ]
    assert deaths == []


def test_clean_leave_is_seen_as_left_not_dead() -> None:
    """A peer that leaves cleanly is LEFT everywhere."""
    cluster = _seeded_cluster(5)
    cluster.stop_cleanly("n02")
    cluster.run_until(cluster.now_s + 5.0)
    assert set(_states_about(cluster, "n02").values()) == {MemberState.LEFT}


def test_restarted_peer_rejoins_with_a_higher_incarnation() -> None:
    """A crashed peer that comes back refutes its death and is ALIVE again everywhere."""
    cluster = _seeded_cluster(6)
    cluster.crash("n04")
    cluster.run_until(cluster.now_s + 30.0)
    assert set(_states_about(cluster, "n04").values()) == {MemberState.DEAD}
    seed_address = cluster.address_of("n00")
    restarted = cluster.add("n04", seeds=(seed_address,), seed=2)
    cluster.run_until(cluster.now_s + 20.0)
    assert set(_states_about(cluster, "n04").values()) == {MemberState.ALIVE}
    assert restarted.incarnation >= 1


def test_partitioned_halves_declare_each_other_dead_and_heal_by_rediscovery() -> None:
    """After a partition heals, mDNS sightings bring both halves back to ALIVE."""
    cluster = _seeded_cluster(6)
    left, right = ["n00", "n01", "n02"], ["n03", "n04", "n05"]
    for a in left:
        for b in right:
            cluster.cut.add(frozenset((a, b)))
    cluster.run_until(cluster.now_s + 40.0)
    assert set(_states_about(cluster, "n04").values()) >= {MemberState.DEAD}
    cluster.cut.clear()
    for a in left + right:  # the link comes back: mDNS announces everyone again
        for b in left + right:
            if a != b:
                info = cluster.nodes[b].actor.self_info
                cluster.inject(a, PeerDiscovered(info, wire_version=1))
    cluster.run_until(cluster.now_s + 30.0)
    for node_id in cluster.nodes:
        assert set(_states_about(cluster, node_id).values()) == {MemberState.ALIVE}


def test_healed_partition_reconnects_without_any_mdns_help() -> None:
    """Members declared dead during a partition come back by reconnect probes alone."""
    cluster = _seeded_cluster(6)
    left, right = ["n00", "n01", "n02"], ["n03", "n04", "n05"]
    for a in left:
        for b in right:
            cluster.cut.add(frozenset((a, b)))
    cluster.run_until(cluster.now_s + 40.0)
    assert set(_states_about(cluster, "n00").values()) >= {MemberState.DEAD}
    cluster.cut.clear()
    cluster.run_until(cluster.now_s + 40.0)
    for node_id in cluster.nodes:
        assert set(_states_about(cluster, node_id).values()) == {MemberState.ALIVE}


def test_mdns_sighting_is_admitted_only_after_authenticated_contact() -> None:
    """An mDNS record alone admits nobody; a message through the envelope from it does."""
    actor = Discovery(_info("a"), random.Random(1))
    actor.start(0.0)
    commands = actor.handle(PeerDiscovered(_info("b"), wire_version=1), 0.1)
    assert actor.state_of("b") is None
    assert any(isinstance(c, SendMessage) and c.address == _info("b").address for c in commands)
    actor.handle(MessageReceived("b", _info("b").address, Ack(seq=999)), 0.2)
    assert actor.state_of("b") is MemberState.ALIVE


def test_forged_mdns_sighting_without_the_key_is_never_admitted() -> None:
    """A peer that only publishes mDNS records (no cluster key) never becomes a member."""
    cluster = _seeded_cluster(3)
    forged = MemberInfo(
        node_id="intruder", site="s1", subnet="10.0.0.0/24", address=Address("10.9.9.9", 7946)
    )
    for node_id in list(cluster.nodes):
        cluster.inject(node_id, PeerDiscovered(forged, wire_version=1))
    cluster.run_until(cluster.now_s + 30.0)
    assert all(node.actor.state_of("intruder") is None for node in cluster.nodes.values())


def test_other_sites_are_ignored() -> None:
    """Membership is per site: another site's sighting is counted and ignored."""
    actor = Discovery(_info("a"), random.Random(1))
    actor.start(0.0)
    commands = actor.handle(PeerDiscovered(_info("c", site="other"), wire_version=1), 0.2)
    assert actor.state_of("c") is None
    assert CountMetric("discovery.other_site") in commands


def test_leaving_peer_does_not_refute_its_own_departure() -> None:
    """After leave(), news of our LEFT state is not refuted and probing stops."""
    actor = Discovery(_info("a"), random.Random(1))
    actor.start(0.0)
    actor.handle(PeerDiscovered(_info("b"), wire_version=1), 0.0)
    actor.handle(MessageReceived("b", _info("b").address, Ack(seq=1)), 0.0)
    assert actor.state_of("b") is MemberState.ALIVE
    actor.leave(1.0)
    left = MemberUpdate(
        node_id="a", incarnation=0, state="left", site="s1", subnet="x", host="h", port=1
    )
    commands = actor.handle(MessageReceived("b", _info("b").address, Gossip(updates=(left,))), 1.1)
    assert actor.incarnation == 0
    assert CountMetric("discovery.refuted") not in commands
    assert actor.handle(TimerFired("probe"), 2.0) == []


def test_ping_is_acked_and_misdirected_ping_is_counted() -> None:
    """A ping for us gets an Ack with the same seq; one for another node is counted, unanswered."""
    actor = Discovery(_info("a"), random.Random(1))
    actor.start(0.0)
    sender = Address("10.0.0.9", 7946)
    replies = actor.handle(MessageReceived("b", sender, Ping(seq=42, target="a")), 1.0)
    acks = [c.message for c in replies if isinstance(c, SendMessage) and c.address == sender]
    assert [ack.seq for ack in acks if isinstance(ack, Ack)] == [42]
    wrong = actor.handle(MessageReceived("b", sender, Ping(seq=43, target="zz")), 1.0)
    assert wrong == [CountMetric("discovery.misdirected_ping")]


def test_garbage_member_state_is_counted_not_raised() -> None:
    """An update with an unknown state string is dropped and counted."""
    actor = Discovery(_info("a"), random.Random(1))
    actor.start(0.0)
    bad = MemberUpdate(
        node_id="b", incarnation=0, state="zombie", site="s1", subnet="x", host="h", port=1
    )
    commands = actor.handle(
        MessageReceived("b", Address("h", 1), Ping(seq=1, target="a", updates=(bad,))), 1.0
    )
    assert CountMetric("discovery.bad_update") in commands
    assert actor.state_of("b") is None


def test_idle_peer_arms_no_gossip_timer() -> None:
    """Once its join announcement is spread, the gossip timer stays off (constant idle cost)."""
    actor = Discovery(_info("a"), random.Random(1))
    actor.start(0.0)
    actor.handle(PeerDiscovered(_info("b"), wire_version=1), 0.0)
    actor.handle(MessageReceived("b", _info("b").address, Ack(seq=1)), 0.0)
    rearmed = []
    for step in range(10):
        commands = actor.handle(TimerFired("gossip"), step * 0.2)
        rearmed.append(any(isinstance(c, StartTimer) and c.name == "gossip" for c in commands))
    assert rearmed[0]
    assert not rearmed[-1]


@pytest.mark.parametrize(
    ("confirmations", "expected_s"), [(0, 12.0), (1, 12.0 - 10.0 * 0.6309), (2, 2.0), (5, 2.0)]
)
def test_suspicion_timeout_shrinks_with_confirmations(
    confirmations: int, expected_s: float
) -> None:
    """Lifeguard: max with no confirmation, min once the expected number confirm."""
    assert suspicion_timeout_s(2.0, 12.0, confirmations, 2) == pytest.approx(expected_s, rel=1e-3)


def test_broadcast_queue_sends_each_update_a_bounded_number_of_times() -> None:
    """An update leaves the queue after `limit` sends; newer news replaces older."""
    queue = BroadcastQueue()
    update = MemberUpdate(
        node_id="b", incarnation=0, state="alive", site="s", subnet="x", host="h", port=1
    )
    queue.push(update)
    queue.push(
        MemberUpdate(
            node_id="b", incarnation=1, state="alive", site="s", subnet="x", host="h", port=1
        )
    )
    sent = [queue.take(7, limit=3) for _ in range(5)]
    assert [len(batch) for batch in sent] == [1, 1, 1, 0, 0]
    assert sent[0][0].incarnation == 1
    assert retransmit_limit(4, 9) == 4
    assert retransmit_limit(4, 100) == 12


def test_knobs_reject_inconsistent_values() -> None:
    """A probe timeout longer than the probe interval is refused with the reason."""
    with pytest.raises(ValueError, match=r"probe_timeout_s \(2.0\) < probe_interval_s"):
        DiscoveryKnobs(probe_interval_s=1.0, probe_timeout_s=2.0)


def _info(node_id: str, site: str = "s1") -> MemberInfo:
    return MemberInfo(
        node_id=node_id, site=site, subnet="10.0.0.0/24", address=Address(f"h-{node_id}", 7946)
    )


# --------------------------------------------------------------------------- capabilities


def _capabilities_seen(cluster: Cluster, node_id: str) -> dict[str, tuple[str, ...]]:
    """What every other live peer's member table says `node_id` advertises."""
    seen: dict[str, tuple[str, ...]] = {}
    for name, node in sorted(cluster.nodes.items()):
        if name == node_id or not node.up:
            continue
        for view in node.actor.members():
            if view.member.node_id == node_id:
                seen[name] = view.member.capabilities
    return seen


def test_new_capabilities_are_gossiped_under_a_higher_incarnation() -> None:
    """`CapabilitiesChanged` raises our incarnation; every peer takes the new record and tells
    its actors (`MemberChanged`, still ALIVE) although the state did not change."""
    cluster = _seeded_cluster(8)
    node = cluster.nodes["n03"]
    before = node.actor.incarnation
    cluster.inject("n03", CapabilitiesChanged(("responder",)))
    assert node.actor.incarnation == before + 1
    assert node.actor.self_info.capabilities == ("responder",)
    for other in cluster.nodes.values():
        other.told.clear()
    cluster.run_until(cluster.now_s + 40.0)  # gossip, and push-pull for any it missed
    assert set(_capabilities_seen(cluster, "n03").values()) == {("responder",)}
    for name, other in cluster.nodes.items():
        if name == "n03":
            continue
        news = [c for c in other.told if c.member.node_id == "n03"]
        assert len(news) == len(MEMBER_LISTENERS), name  # one announcement, to each actor
        assert {(c.state, c.member.capabilities, c.incarnation) for c in news} == {
            (MemberState.ALIVE, ("responder",), before + 1)
        }, name


def test_unchanged_capabilities_change_nothing() -> None:
    """The same capabilities again: no new incarnation, nothing gossiped."""
    discovery = Discovery(_info("a"), random.Random(1))
    discovery.start(0.0)
    assert discovery.handle(CapabilitiesChanged(()), 1.0) == []
    assert discovery.incarnation == 0
    first = discovery.handle(CapabilitiesChanged(("responder",)), 1.0)
    assert CountMetric("discovery.capabilities_changed") in first
    assert discovery.handle(CapabilitiesChanged(("responder",)), 2.0) == []
    assert discovery.incarnation == 1


def test_a_leaving_peer_advertises_nothing_new() -> None:
    """After `leave()` our LEFT record must stand: new capabilities are not gossiped."""
    discovery = Discovery(_info("a"), random.Random(1))
    discovery.start(0.0)
    discovery.leave(1.0)
    assert discovery.handle(CapabilitiesChanged(("responder",)), 2.0) == []
    assert discovery.incarnation == 0


def test_a_record_changed_by_incarnation_alone_is_not_announced_again() -> None:
    """A record that supersedes by incarnation alone (a refutation) announces nothing."""
    discovery = Discovery(_info("a"), random.Random(1))
    discovery.start(0.0)
    update = MemberUpdate(
        node_id="b", incarnation=0, state="alive", site="s1", subnet="10.0.0.0/24",
        host="h-b", port=7946,
    )  # fmt: skip
    address = Address("h-b", 7946)
    added = discovery.handle(MessageReceived("b", address, Gossip(updates=(update,))), 1.0)
    assert any(isinstance(c, Tell) for c in added)
    refuted = replace(update, incarnation=1)
    again = discovery.handle(MessageReceived("b", address, Gossip(updates=(refuted,))), 2.0)
    assert not any(isinstance(c, Tell) for c in again)
    changed = replace(update, incarnation=2, capabilities=("x",))
    told = discovery.handle(MessageReceived("b", address, Gossip(updates=(changed,))), 3.0)
    news = [c.event for c in told if isinstance(c, Tell)]
    assert news
    assert all(isinstance(e, MemberChanged) and e.member.capabilities == ("x",) for e in news)


def test_election_tells_discovery_when_a_capability_comes_or_goes() -> None:
    """Eligibility for `responder` adds it to what discovery advertises, once; losing it
    removes it; a weight-0 peer still advertises what it holds (it just never leads)."""
    info = replace(_info("a"), weight=50, capabilities=("downloader",))
    election = Election(info, random.Random(1))
    election.start(0.0)
    told = _told_discovery(election.handle(EligibilityChanged(RESPONDER_CAPABILITY, True), 1.0))
    assert told == [CapabilitiesChanged(("downloader", RESPONDER_CAPABILITY))]
    assert (
        _told_discovery(election.handle(EligibilityChanged(RESPONDER_CAPABILITY, True), 2.0)) == []
    )
    told = _told_discovery(election.handle(EligibilityChanged(RESPONDER_CAPABILITY, False), 3.0))
    assert told == [CapabilitiesChanged(("downloader",))]
    never = Election(replace(_info("z"), weight=0), random.Random(1))
    told = _told_discovery(never.handle(EligibilityChanged(RESPONDER_CAPABILITY, True), 1.0))
    assert told == [CapabilitiesChanged((RESPONDER_CAPABILITY,))]
    assert never.responder.eligible is False


def test_a_peer_that_becomes_eligible_becomes_a_candidate_elsewhere() -> None:
    """Election -> discovery -> gossip -> the other peers' discovery -> their elections: the
    newly eligible peer is a responder candidate everywhere."""
    cluster = _seeded_cluster(5)
    elections = {
        name: Election(node.actor.self_info, random.Random(name))
        for name, node in cluster.nodes.items()
    }
    for name, node in cluster.nodes.items():
        for change in node.told:
            elections[name].handle(change, cluster.now_s)
        node.told.clear()
    commands = elections["n02"].handle(EligibilityChanged(RESPONDER_CAPABILITY, True), 10.0)
    for event in _told_discovery(commands):
        cluster.inject("n02", event)
    cluster.run_until(cluster.now_s + 40.0)
    for name, node in cluster.nodes.items():
        for change in node.told:
            elections[name].handle(change, cluster.now_s)
        if name != "n02":
            assert "n02" in elections[name].responder.candidates, name


def _told_discovery(commands: list[Command]) -> list[Event]:
    return [c.event for c in commands if isinstance(c, Tell) and c.target is ActorName.DISCOVERY]
