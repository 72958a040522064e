"""SWIM's promise: messages per peer per second do not grow with the subnet (32 -> 256).

Every peer starts with its subnet's member list pre-loaded (`Discovery(known_members=...)`,
as an agent restoring its last list from disk), so the run is steady state from the start
and the join storm, which `test_scenarios` covers, is not paid for again here.
"""

from __future__ import annotations

import dataclasses

import pytest

from actors.core import ActorName
from actors.discovery import Discovery
from sim.run import Simulation
from sim.scenario import load
from tests.sim.helpers import SCENARIOS, warm_discovery_builder

pytestmark = pytest.mark.sim

WINDOW_S = (10.0, 25.0)
"""Measured once every peer's own join announcement has been gossiped out."""


def _steady_load(peers: int) -> tuple[float, int]:
    base = load(SCENARIOS / "membership-256.toml")
    subnet = dataclasses.replace(base.subnets[0], peers=peers)
    scenario = dataclasses.replace(
        base, subnets=(subnet,), events=(), slow_fraction=0.0, duration_s=WINDOW_S[1]
    )
    build, fill = warm_discovery_builder(scenario)
    simulation = Simulation(scenario, 5, build)
    fill(simulation)
    sent_at_start: list[int] = []
    counters = simulation.world.network.counters
    simulation.at(WINDOW_S[0], lambda: sent_at_start.append(counters.get("sent")))
    result = simulation.run()
    per_peer_per_s = (result.messages - sent_at_start[0]) / peers / (WINDOW_S[1] - WINDOW_S[0])
    return per_peer_per_s, result.violation_count


def test_per_peer_load_is_flat_from_32_to_256() -> None:
    """Steady-state load at 256 peers is within 50% of the load at 32 peers."""
    small, small_violations = _steady_load(32)
    large, large_violations = _steady_load(256)
    assert small_violations == large_violations == 0
    assert 0.5 < small < 10, small
    assert large / small < 1.5, (small, large)


def test_warm_start_knows_everyone_without_a_join_storm() -> None:
    """Pre-loaded peers list every subnet member alive and send no Sync to get there."""
    base = load(SCENARIOS / "membership-256.toml")
    subnet = dataclasses.replace(base.subnets[0], peers=16)
    scenario = dataclasses.replace(
        base,
        subnets=(subnet,),
        events=(),
        slow_fraction=0.0,
        duration_s=5.0,
        start_spread_s=0.0,  # a member pre-loaded before it booted is suspected meanwhile
    )
    build, fill = warm_discovery_builder(scenario)
    simulation = Simulation(scenario, 3, build, keep_trace=True)
    fill(simulation)
    result = simulation.run()
    assert result.violation_count == 0
    for node in simulation.world.members.values():
        discovery = node.actors[ActorName.DISCOVERY]
        assert isinstance(discovery, Discovery)
        views = discovery.members()
        assert len(views) == 15
        assert all(view.state == "alive" for view in views)
    records = simulation.world.trace.records
    assert records is not None
    assert not [record for record in records if record.endswith(" sync\n")]
