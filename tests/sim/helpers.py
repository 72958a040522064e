"""Shared helpers for the sim tier: scenario paths and small world builders."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from actors.core import Actor, Address, MemberInfo
from actors.discovery import Discovery
from sim.host import ActorBuilder
from sim.network import NetworkSpec
from sim.run import Simulation
from sim.scenario import Scenario
from sim.world import World

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = REPO / "scenarios"
KEY = b"k" * 32


def member(index: int, subnet: str = "10.9.0.0/24", site: str = "s1") -> MemberInfo:
    """A member of a test subnet: id `t-<index>`, address 10.9.0.<index+1>:7946."""
    return MemberInfo(f"t-{index:03d}", site, subnet, Address(f"10.9.0.{index + 1}", 7946))


def world(seed: int = 1, network: NetworkSpec | None = None) -> World:
    """An empty world with a perfect network unless told otherwise."""
    return World(seed, network or NetworkSpec(), KEY)


def builder_of(actor_type: Callable[[MemberInfo, random.Random], Actor]) -> ActorBuilder:
    """An ActorBuilder that builds one `actor_type(info, rng)` per life."""

    def build(info: MemberInfo, rng: random.Random, life: int) -> list[Actor]:
        return [actor_type(info, rng)]

    return build


def warm_discovery_builder(
    scenario: Scenario,
) -> tuple[ActorBuilder, Callable[[Simulation], None]]:
    """A Discovery builder whose first lives start knowing their subnet's members.

    Returns the builder and `fill(simulation)`, to call once the simulation has created its
    nodes (the member list is only known then).
    """
    known: dict[str, tuple[MemberInfo, ...]] = {}

    def build(info: MemberInfo, rng: random.Random, life: int) -> list[Actor]:
        restored = known[info.subnet] if life == 1 else ()
        return [Discovery(info, rng, scenario.knobs, known_members=restored)]

    def fill(simulation: Simulation) -> None:
        by_subnet: dict[str, list[MemberInfo]] = {}
        for node in simulation.world.members.values():
            by_subnet.setdefault(node.info.subnet, []).append(node.info)
        known.update((subnet, tuple(infos)) for subnet, infos in by_subnet.items())

    return build, fill
