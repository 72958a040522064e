"""Simulator speed: N peers running discovery, against raw SimPy measured in the same run.

    .venv/bin/python bench/sim_speed.py --peers 1000 [--sim-s 10] [--warmup-s 8] [--warm-start]
        [--json]

Peers sit in subnets of at most 256 (one site, 1% loss, no faults). The join storm (every
peer sights every subnet member by mDNS and pulls a full view) runs first, for `--warmup-s`
simulated seconds, and is reported apart; then `--sim-s` simulated seconds of steady state
are timed, up to the moment the simulated clock stops (the end-of-run checks are not in it).

`--full` runs what `peerpxe agent` runs on every peer (discovery, election, boot) plus a
churn lab workload: 10% of the peers churn (Weibull up times, shape 0.7, scale 120 s;
Pareto repairs from 20 s), and one PXE machine per 10 peers boots during the timed window.

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
import dataclasses
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
from sim.run import Simulation, discovery_builder, peer_builder
from sim.scenario import BootSpec, Scenario, SubnetSpec
from sim.workload import ChurnSpec

SUBNET_PEERS_MAX = 256


def scenario_for(peers: int, duration_s: float) -> Scenario:
    """`peers` peers in equal subnets of at most 256, one site, 1% loss, no faults."""
    return _scenario(peers, duration_s)


def full_scenario_for(peers: int, duration_s: float, window_start_s: float) -> Scenario:
    """`scenario_for` plus churn of 10% of the peers and PXE boots in the timed window."""
    plain = _scenario(peers, duration_s)
    churn_specs = tuple(
        ChurnSpec(
            model="sessions",
            targets=(f"random:{max(1, subnet.peers // 10)}@{subnet.name}",),
            params={
                "session": {"kind": "weibull", "shape": 0.7, "scale_s": 120.0},
                "down": {"kind": "pareto", "shape": 2.5, "scale_s": 20.0},
                "start_s": window_start_s,
            },
            line=0,
        )
        for subnet in plain.subnets
    )
    boots = tuple(
        BootSpec(
            subnet=subnet.name,
            at_s=window_start_s,
            count=max(1, subnet.peers // 10),
            firmware=("bios", "uefi", "ipxe")[index % 3],
            spread_s=max(0.0, duration_s - window_start_s - 20.0),
            line=0,
        )
        for index, subnet in enumerate(plain.subnets)
    )
    return dataclasses.replace(plain, churn=churn_specs, boots=boots)


def _scenario(peers: int, duration_s: float) -> Scenario:
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


def warm_builder(
    knobs: DiscoveryKnobs, known: dict[str, tuple[MemberInfo, ...]], full: bool, scenario: Scenario
) -> ActorBuilder:
    """Discovery actors (with election and boot when `full`) whose first life starts knowing
    `known[subnet]` (filled in later)."""
    peers = peer_builder(scenario, ())

    def build(info: MemberInfo, rng: random.Random, life: int) -> list[Actor]:
        restored = known[info.subnet] if life == 1 else ()
        discovery = Discovery(info, rng, knobs, known_members=restored)
        if not full:
            return [discovery]
        return [discovery, *peers(info, rng, life)[1:]]

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


def measure(
    peers: int, sim_s: float, warmup_s: float, warm_start: bool, full: bool = False
) -> dict[str, Any]:
    """Run the benchmark once and return its figures."""
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    duration_s = warmup_s + sim_s
    scenario = (
        full_scenario_for(peers, duration_s, warmup_s) if full else scenario_for(peers, duration_s)
    )
    known: dict[str, tuple[MemberInfo, ...]] = {}
    build: ActorBuilder | None
    if warm_start:
        build = warm_builder(scenario.knobs, known, full, scenario)
    else:
        build = None if full else discovery_builder(scenario, ())  # discovery alone, as before
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
        "full": full,
        "boots_attempted": result.boots_attempted,
        "boots_succeeded": result.boots_succeeded,
        "churn_applied": result.churn_applied,
        "failovers": result.failovers,
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
    parser.add_argument(
        "--full",
        action="store_true",
        help="every peer runs discovery, election and boot, with churn and PXE boots",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = measure(args.peers, args.sim_s, args.warmup_s, args.warm_start, args.full)
    if args.json:
        print(json.dumps(figures, sort_keys=True))
    else:
        for name, value in figures.items():
            print(f"{name:>24}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
