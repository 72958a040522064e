"""Simulator speed: N peers running discovery, against raw SimPy measured in the same run.

    .venv/bin/python bench/sim_speed.py --peers 1000 [--sim-s 10] [--warmup-s 8] [--warm-start]
        [--json]

Peers sit in subnets of at most 256 (one site, 1% loss, no faults). The join storm (every
peer sights every subnet member by mDNS and pulls a full view) runs first, for `--warmup-s`
simulated seconds, and is reported apart; then `--sim-s` simulated seconds of steady state
are timed, up to the moment the simulated clock stops (the end-of-run checks are not in it).

`--warm-start` skips the join storm: every peer starts with its subnet's member list
pre-loaded (`Discovery(known_members=...)`, as an agent restoring its last list from disk:
ALIVE at incarnation 0, not gossiped) and the output says `"warm_start": true`. mDNS still
announces everyone, but sightings of known members cost no contact.

Figures:
- realtime_factor: simulated seconds per wall second in the steady window;
- events_per_s: actor events delivered (messages, timers, tells, mDNS) per wall second;
- raw_simpy_events_per_s: a plain SimPy loop in the same process, one chain of
  `env.timeout(...)` with a callback per peer, each callback scheduling the next timeout;
- raw_ratio = events_per_s / raw_simpy_events_per_s;
- rss_bytes_per_peer: growth of the peak RSS while building and warming up, per peer.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import random

import simpy

from actors.core import Actor, MemberInfo
from actors.discovery import Discovery, DiscoveryKnobs
from sim.host import ActorBuilder
from sim.network import LatencySpec, NetworkSpec
from sim.run import Simulation
from sim.scenario import Scenario, SubnetSpec

SUBNET_PEERS_MAX = 256


def scenario_for(peers: int, duration_s: float) -> Scenario:
    """`peers` peers in equal subnets of at most 256, one site, 1% loss, no faults."""
    count = math.ceil(peers / SUBNET_PEERS_MAX)
    subnets = tuple(
        SubnetSpec(
            name=f"n{index}",
            cidr=f"10.{index // 128}.{(index % 128) * 2}.0/23",
            site="s1",
            peers=peers // count + (1 if index < peers % count else 0),
            weight=50,
        )
        for index in range(count)
    )
    return Scenario(
        path="<bench>",
        name=f"bench-{peers}",
        duration_s=duration_s,
        seed=1,
        start_spread_s=3.0,
        seed_nodes=(),
        network=NetworkSpec(lan=LatencySpec(), loss=0.01),
        slow_fraction=0.0,
        slow_delay_s=0.0,
        knobs=DiscoveryKnobs(),
        subnets=subnets,
        events=(),
    )


def warm_builder(knobs: DiscoveryKnobs, known: dict[str, tuple[MemberInfo, ...]]) -> ActorBuilder:
    """Discovery actors whose first life starts knowing `known[subnet]` (filled in later)."""

    def build(info: MemberInfo, rng: random.Random, life: int) -> list[Actor]:
        restored = known[info.subnet] if life == 1 else ()
        return [Discovery(info, rng, knobs, known_members=restored)]

    return build


def raw_simpy_events_per_s(chains: int, events: int) -> float:
    """Events per second of plain SimPy: `chains` timeout chains with one callback each."""
    env = simpy.Environment()
    done = [0]

    def tick(event: simpy.Event) -> None:
        done[0] += 1
        env.timeout(1.0 + (done[0] % 7) * 0.01).callbacks.append(tick)

    for index in range(chains):
        env.timeout(index / chains).callbacks.append(tick)
    started = time.perf_counter()
    while done[0] < events:
        env.step()
    return done[0] / (time.perf_counter() - started)


def measure(peers: int, sim_s: float, warmup_s: float, warm_start: bool) -> dict[str, Any]:
    """Run the benchmark once and return its figures."""
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    scenario = scenario_for(peers, warmup_s + sim_s)
    known: dict[str, tuple[MemberInfo, ...]] = {}
    build = warm_builder(scenario.knobs, known) if warm_start else None
    simulation = Simulation(scenario, seed=1, build=build)
    world = simulation.world
    by_subnet: dict[str, list[MemberInfo]] = {}
    for node in world.members.values():
        by_subnet.setdefault(node.info.subnet, []).append(node.info)
    known.update((subnet, tuple(infos)) for subnet, infos in by_subnet.items())
    marks: dict[str, float] = {}

    def mark() -> None:
        marks["wall"] = time.perf_counter()
        marks["events"] = world.events

    simulation.at(warmup_s, mark)
    started = time.perf_counter()
    result = simulation.run()
    finished = simulation.run_finished_wall_s
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    window_wall_s = finished - marks["wall"]
    window_events = result.events - int(marks["events"])
    events_per_s = window_events / window_wall_s
    raw = raw_simpy_events_per_s(min(peers, 10_000), max(window_events, 100_000))
    return {
        "peers": peers,
        "sim_s": sim_s,
        "warmup_s": warmup_s,
        "warm_start": warm_start,
        "warmup_wall_s": round(marks["wall"] - started, 3),
        "window_wall_s": round(window_wall_s, 3),
        "realtime_factor": round(sim_s / window_wall_s, 3),
        "events_per_s": round(events_per_s),
        "events_per_peer_per_s": round(window_events / peers / sim_s, 3),
        "raw_simpy_events_per_s": round(raw),
        "raw_ratio": round(events_per_s / raw, 3),
        "messages_per_peer_per_s": round(result.messages_per_peer_per_s, 3),
        "rss_bytes_per_peer": round((rss_after - rss_before) / peers),
        "violations": result.violation_count,
    }


def main() -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--sim-s", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=8.0)
    parser.add_argument(
        "--warm-start",
        action="store_true",
        help="pre-load every peer with its subnet's members (no join storm)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = measure(args.peers, args.sim_s, args.warmup_s, args.warm_start)
    if args.json:
        print(json.dumps(figures, sort_keys=True))
    else:
        for name, value in figures.items():
            print(f"{name:>24}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
