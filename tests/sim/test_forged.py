"""A node without the cluster key is never admitted, and its datagrams count as bad_mac."""

from __future__ import annotations

import random

import pytest

from actors.core import Actor, ActorName, Address, MemberInfo
from actors.discovery import Discovery
from sim.run import Simulation
from sim.scenario import load
from tests.sim.helpers import SCENARIOS

pytestmark = pytest.mark.sim

FORGED_ID = "s1-a-666"


def _forged_simulation(seed: int) -> Simulation:
    scenario = load(SCENARIOS / "default.toml").with_duration(30.0)
    simulation = Simulation(scenario, seed)
    world = simulation.world
    targets = tuple(node.address for node in list(world.members.values())[:8])

    def build(info: MemberInfo, rng: random.Random, life: int) -> list[Actor]:
        return [Discovery(self_info=info, rng=rng, seeds=targets)]

    info = MemberInfo(FORGED_ID, "s1", "10.1.1.0/24", Address("10.1.1.250", 7946), 99)
    forged = world.add_node(info, build, cluster_key=b"not the cluster key at all")
    simulation.at(5.0, lambda: world.start(forged, announce=False))
    return simulation


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_forged_node_is_never_admitted(seed: int) -> None:
    """The forger contacts real members directly; all drop it, nobody lists it."""
    simulation = _forged_simulation(seed)
    result = simulation.run()
    assert result.violation_count == 0, [str(v) for v in result.violations]
    assert result.dropped.get("bad_mac", 0) >= 8
    for node in simulation.world.members.values():
        discovery = node.actors.get(ActorName.DISCOVERY)
        if isinstance(discovery, Discovery):
            assert discovery.state_of(FORGED_ID) is None, node.node_id
    assert FORGED_ID not in simulation.world.members


def test_forged_node_announced_by_mdns_is_never_admitted() -> None:
    """A forger that also publishes an mDNS record must still never enter a member table."""
    simulation = _forged_simulation(1)
    world = simulation.world
    forged = world.nodes[FORGED_ID]
    simulation.at(6.0, lambda: world.mdns.node_started(forged))
    result = simulation.run()
    assert result.violation_count == 0, [str(v) for v in result.violations[:3]]
