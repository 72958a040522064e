"""The leadership checker catches what it promises to catch (it can fail), and the
simulated boots report failures where no eligible peer is left."""

from __future__ import annotations

import dataclasses
import random
from typing import ClassVar

import pytest

from actors.core import ActorName, Address, Command, Event, LeadershipChanged, MemberInfo
from actors.election import RESPONDER_CAPABILITY
from sim.checkers import Invariants
from sim.host import SimNode
from sim.leadership import LeadershipWatch
from sim.run import Simulation
from sim.scenario import load
from tests.sim.helpers import KEY, SCENARIOS, builder_of, world

pytestmark = pytest.mark.sim

SUBNET = "10.9.0.0/24"
SCOPE = f"subnet:{SUBNET}"


class Idle:
    """An actor that does nothing (the checker is fed by hand)."""

    NAME: ClassVar[ActorName] = ActorName.BOOT

    def __init__(self, info: MemberInfo, rng: random.Random) -> None:
        del info, rng

    def start(self, now_s: float) -> list[Command]:
        return []

    def handle(self, event: Event, now_s: float) -> list[Command]:
        return []


def _watch(bound_s: float = 30.0) -> tuple[LeadershipWatch, Invariants, list[SimNode]]:
    sim = world()
    nodes = []
    for index in range(3):
        info = MemberInfo(f"t-{index:03d}", "s1", SUBNET, Address(f"10.9.0.{index + 1}", 7946),
                          50, (RESPONDER_CAPABILITY,))  # fmt: skip
        node = sim.add_node(info, builder_of(Idle))
        sim.start(node)
        nodes.append(node)
    invariants = Invariants(sim)
    watch = LeadershipWatch(sim, invariants, lambda node: True, dual_leader_bound_s=bound_s)
    sim.listeners.append(watch)
    return watch, invariants, nodes


def _lead(term: int, leader: str, leading: bool = True) -> LeadershipChanged:
    return LeadershipChanged(SCOPE, RESPONDER_CAPABILITY, leading, term, leader)


def test_leading_under_another_nodes_ballot_is_a_violation() -> None:
    watch, invariants, nodes = _watch()
    watch.leadership_changed(1.0, nodes[0], _lead(1, "t-001"))
    assert invariants.count == 1
    assert "another's ballot" in invariants.violations[0].text


def test_leading_again_under_an_old_term_is_a_violation() -> None:
    watch, invariants, nodes = _watch()
    node = nodes[0]
    watch.leadership_changed(1.0, node, _lead(5, "t-000"))
    watch.leadership_changed(2.0, node, _lead(5, "t-000", leading=False))
    watch.leadership_changed(3.0, node, _lead(4, "t-000"))
    assert invariants.count == 1
    assert "not above" in invariants.violations[0].text


def test_two_reachable_leaders_beyond_the_bound_are_a_violation() -> None:
    watch, invariants, nodes = _watch(bound_s=5.0)
    watch.leadership_changed(1.0, nodes[0], _lead(1, "t-000"))
    watch.leadership_changed(2.0, nodes[1], _lead(1, "t-001"))
    watch.leadership_changed(4.0, nodes[1], _lead(1, "t-001", False))
    assert invariants.count == 0  # a 2 s overlap is within the bound
    watch.leadership_changed(5.0, nodes[2], _lead(2, "t-002"))
    watch.leadership_changed(11.0, nodes[0], _lead(1, "t-000", False))
    assert invariants.count == 1
    assert watch.figures.dual_leader_episodes == 2
    assert watch.figures.dual_leader_s_max == pytest.approx(6.0)


def test_crash_of_the_leader_opens_a_failover_closed_by_the_next_leader() -> None:
    watch, invariants, nodes = _watch()
    sim = nodes[0].world
    watch.leadership_changed(1.0, nodes[0], _lead(1, "t-000"))
    sim.env.run(until=2.0)
    sim.crash(nodes[0])
    sim.env.run(until=3.5)
    watch.leadership_changed(3.5, nodes[1], _lead(2, "t-001"))
    assert watch.figures.failover_s == [pytest.approx(1.5)]
    assert invariants.count == 0


def test_subnet_without_eligible_peers_fails_boots_as_unservable() -> None:
    """Weight 0 everywhere: nobody may lead, nobody answers, every boot fails (unservable)."""
    scenario = load(SCENARIOS / "responder-crash.toml")
    subnets = tuple(
        dataclasses.replace(subnet, weight=0, weights=()) if subnet.name == "b" else subnet
        for subnet in scenario.subnets
    )
    boots = tuple(dataclasses.replace(boot, reboots=0) for boot in scenario.boots)
    result = Simulation(dataclasses.replace(scenario, subnets=subnets, boots=boots), 3).run()
    assert result.violation_count == 0
    failed_b = result.boots_failed_unservable
    assert failed_b == 8  # the 8 iPXE machines of subnet b
    assert result.boots_failed == failed_b
    assert "no proxy offer (iPXE)" in result.boot_failures


def test_boot_figures_are_deterministic() -> None:
    scenario = load(SCENARIOS / "responder-crash.toml")
    first, second = (Simulation(scenario, 9).run() for _ in range(2))
    assert first.digest == second.digest
    assert first.boot_s_p50 == second.boot_s_p50
    assert first.failover_s_p99 == second.failover_s_p99
    assert KEY  # the helpers' cluster key is shared
