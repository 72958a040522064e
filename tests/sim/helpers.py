"""Shared helpers for the sim tier: scenario paths and small world builders."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from actors.core import Actor, Address, MemberInfo
from sim.host import ActorBuilder
from sim.network import NetworkSpec
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
