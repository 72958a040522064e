"""SWIM's promise: messages per peer per second do not grow with the subnet (32 -> 256)."""

from __future__ import annotations

import dataclasses

import pytest

from sim.run import Simulation
from sim.scenario import load
from tests.sim.helpers import SCENARIOS

pytestmark = pytest.mark.sim

WINDOW_S = (40.0, 55.0)
"""Measured after the join storm and its gossip retransmissions have settled."""


def _steady_load(peers: int) -> tuple[float, int]:
    base = load(SCENARIOS / "membership-256.toml")
    subnet = dataclasses.replace(base.subnets[0], peers=peers)
    scenario = dataclasses.replace(
        base, subnets=(subnet,), events=(), slow_fraction=0.0, duration_s=WINDOW_S[1]
    )
    simulation = Simulation(scenario, 5)
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
