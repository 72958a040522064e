"""Replication in the simulator: one boot package reaching every peer of a site, against raw
SimPy measured in the same run.

    .venv/bin/python bench/replication.py [--peers 200 --peers 2000] [--seed 1]
        [--size-mib N] [--candidates K] [--warm-start | --cold-start] [--json]

The scenario is `scenarios/replication-site.toml` with its first site's peer count replaced
by `--peers N` (repeat `--peers` for several runs; default 200 and 2000): N peers in site
`s1`, in subnets of at most 250 (`10.10.K.0/24`, the first peer of each is a discovery seed
when there are several), plus the file's 50-peer branch site `s2` behind its own WAN link.
The origin publishes one package at 10 s: 512 MiB at 200 peers, as in the file, but 128 MiB
by default above 1,000 peers (`LARGE_SITE_SIZE_MIB`): a 512 MiB package across 2,000 peers
takes this simulator many minutes of wall time on a 2-core machine, so the large
run moves a quarter of the bytes (same chunk size, same rates; the target scales with the
size). `--size-mib` sets the size of every run. The run stops as soon as every running peer
of every site holds the package (checked every 0.5 simulated seconds), or at publish +
3 x target (at least 60 s), whichever comes first.

Large sites (above 1,000 peers) need two more shortcuts by default, or the run would not
end in ten minutes here, long before the package is even published:
- `--candidates 4`: only the last 4 peers of each subnet have weight 60 (stand for PXE
  responder and for the site's WAN downloader); the others have weight 0 (never stand) and
  otherwise run everything: discovery, election, boot, replication, serving chunks. (The
  election actor once sorted all candidates of a scope on every membership change, O(N^2
  log N) to join a site where all 2,000 peers stand; it now keeps its ranking sorted as
  members change, `actors/election.py` `ScopeElection.ranking`, but a site of 2,000
  candidates is not what a real site looks like either.)
- `--warm-start`: every peer starts with its site's member list pre-loaded
  (`Discovery(known_members=...)`, as an agent restoring its last list from disk, and as
  `bench/sim_speed.py --warm-start`), so there is no join storm (1,000 peers: 68 s of wall
  time for the first 3 simulated seconds); the package is published at 10 s as usual.
`--candidates 0` (all, the default up to 1,000 peers) and `--cold-start` turn them off.

Figures, simulated (the SimPy clock and the transfer model, `sim/transfer_model.py`; not a
network measurement):
- wan_bytes_ratio_max: WAN bytes / package size, worst site (target <= 1.02);
- origin_offload: 1 - origin bytes / bytes that completed packages hold (target >= 0.99);
- replication_s_p50 / _p99: publish -> every running peer of a site holds the package, over
  sites (two here); replication_s_site: the same for the N-peer site;
- target_s = 1.5 x package size / per-peer LAN cap (100 Mbit/s), and p99_over_target
  (<= 1.0 meets the target);
- wan_cap_exceeded (1 s windows over the downloader's cap; target 0),
  corrupt_chunks_accepted (target 0), lan_utilisation, chunk_transfers,
  chunk_fetch_failures, replication_unfinished, violations.

Figures, measured (wall clock, this process):
- wall_s: the simulated run (setup and end-of-run checks excluded), realtime_factor =
  simulated seconds / wall_s;
- events_per_s: actor events delivered per wall second; raw_simpy_events_per_s: plain SimPy
  in the same process right after the run (`bench/sim_speed.py`'s timeout chains, one per
  peer); raw_ratio = events_per_s / raw_simpy_events_per_s, the figure to compare across
  machines and loads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import random

from simpy.core import StopSimulation

from actors.core import Actor, MemberInfo
from actors.discovery import Discovery
from bench.sim_speed import raw_simpy_events_per_s
from sim.host import ActorBuilder
from sim.run import Simulation, peer_builder
from sim.scenario import MIB, Scenario, load

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "replication-site.toml"
SUBNET_PEERS_MAX = 250
LARGE_SITE_PEERS = 1000
"""Above this many peers the default package is `LARGE_SITE_SIZE_MIB`."""
LARGE_SITE_SIZE_MIB = 128
LARGE_SITE_CANDIDATES = 4
"""Above `LARGE_SITE_PEERS`: peers per subnet that stand for responder and downloader."""
CANDIDATE_WEIGHT = 60
CHECK_INTERVAL_S = 0.5
STOP_AFTER_TARGETS = 3.0
STOP_AFTER_S_MIN = 60.0
"""The run ends at publish + this many targets (at least `STOP_AFTER_S_MIN`) if replication
has not finished by then."""
DEFAULT_PEERS = (200, 2000)


def default_size_mib(peers: int) -> int:
    """The package size a run of `peers` peers uses unless `--size-mib` says otherwise."""
    return LARGE_SITE_SIZE_MIB if peers > LARGE_SITE_PEERS else 512


def scenario_for(peers: int, size_mib: int, seed: int, candidates: int = 0) -> Scenario:
    """`scenarios/replication-site.toml` with `peers` peers in its first site, one package of
    `size_mib` MiB, and a duration long enough to see a miss of up to 3x the target;
    `candidates` > 0: only that many peers per subnet (the last ones) have weight > 0."""
    base = load(SCENARIO)
    first, *others = base.subnets
    count = math.ceil(peers / SUBNET_PEERS_MAX)
    if count == 1:
        subnets = [dataclasses.replace(first, peers=peers)]
    else:
        subnets = [
            dataclasses.replace(
                first,
                name=f"{first.name}{index}",
                cidr=f"10.10.{index}.0/24",
                peers=peers // count + (1 if index < peers % count else 0),
            )
            for index in range(count)
        ]
    if candidates > 0:
        subnets = [
            dataclasses.replace(
                subnet,
                weights=tuple(
                    CANDIDATE_WEIGHT if index >= subnet.peers - candidates else 0
                    for index in range(subnet.peers)
                ),
            )
            for subnet in subnets
        ]
    seeds = tuple(subnet.node_ids()[0] for subnet in subnets) if count > 1 else ()
    replication = base.replication
    assert replication is not None, "the scenario does not replicate"
    assert replication.publishes, "the scenario publishes nothing"
    publish = dataclasses.replace(replication.publishes[0], size_bytes=size_mib * MIB)
    replication = dataclasses.replace(replication, publishes=(publish,))
    target = target_s(size_mib, replication.lan_bytes_per_s)
    duration_s = publish.at_s + max(STOP_AFTER_TARGETS * target, STOP_AFTER_S_MIN)
    return dataclasses.replace(
        base,
        name=f"{base.name}-{peers}",
        seed=seed,
        duration_s=duration_s,
        seed_nodes=base.seed_nodes + seeds,
        subnets=(*subnets, *others),
        replication=replication,
    )


def target_s(size_mib: int, lan_bytes_per_s: float) -> float:
    """1.5 x package size / per-peer LAN cap."""
    return 1.5 * size_mib * MIB / lan_bytes_per_s


def warm_builder(scenario: Scenario, known: dict[str, tuple[MemberInfo, ...]]) -> ActorBuilder:
    """What `peerpxe agent` runs (`sim.run.peer_builder`), except that each peer's first life
    starts knowing `known[site]` (filled in once the nodes exist)."""
    peers = peer_builder(scenario, ())

    def build(info: MemberInfo, rng: random.Random, life: int) -> list[Actor]:
        actors = peers(info, rng, life)
        if life == 1:
            first = actors[0]
            assert isinstance(first, Discovery)
            actors[0] = Discovery(
                self_info=first.self_info,
                rng=rng,
                knobs=scenario.knobs,
                known_members=known[info.site],
            )
        return actors

    return build


def measure(
    peers: int, size_mib: int, seed: int, *, candidates: int = 0, warm_start: bool = False
) -> dict[str, Any]:
    """Run the scenario once and return its figures."""
    scenario = scenario_for(peers, size_mib, seed, candidates)
    replication = scenario.replication
    assert replication is not None
    publish_at_s = replication.publishes[0].at_s
    known: dict[str, tuple[MemberInfo, ...]] = {}
    build = warm_builder(scenario, known) if warm_start else None
    simulation = Simulation(scenario, seed=seed, build=build)
    host = simulation.replication
    assert host is not None
    members = list(simulation.world.members.values())
    for site in scenario.sites():
        known[site] = tuple(node.info for node in members if node.info.site == site)

    def check() -> None:
        if all(host.holds_current(node.node_id) for node in members if node.running):
            raise StopSimulation(None)
        simulation.at(simulation.world.env.now + CHECK_INTERVAL_S, check)

    simulation.at(publish_at_s + CHECK_INTERVAL_S, check)
    result = simulation.run()
    wall_s = result.wall_time_s
    raw = raw_simpy_events_per_s(min(len(members), 10_000), max(result.events, 100_000))
    events_per_s = result.events / wall_s
    target = target_s(size_mib, replication.lan_bytes_per_s)
    p99 = result.replication_s_p99
    first_site = scenario.subnets[0].site
    simulated = {
        "wan_bytes_ratio_max": result.wan_bytes_ratio_max,
        "origin_offload": result.origin_offload,
        "replication_s_p50": _round(result.replication_s_p50),
        "replication_s_p99": _round(p99),
        "replication_s_site": _round(result.replication_s_by_site.get(first_site)),
        "target_s": round(target, 2),
        "p99_over_target": None if p99 is None else round(p99 / target, 3),
        "wan_cap_exceeded": result.wan_cap_exceeded,
        "corrupt_chunks_accepted": result.corrupt_chunks_accepted,
        "lan_utilisation": _round(result.lan_utilisation, 3),
        "chunk_transfers": result.chunk_transfers,
        "chunk_fetch_failures": result.chunk_fetch_failures,
        "replication_unfinished": result.replication_unfinished,
        "violations": result.violation_count,
        "sim_s": round(result.sim_time_s, 2),
    }
    measured = {
        "wall_s": round(wall_s, 2),
        "realtime_factor": round(result.sim_time_s / wall_s, 3),
        "events": result.events,
        "events_per_s": round(events_per_s),
        "raw_simpy_events_per_s": round(raw),
        "raw_ratio": round(events_per_s / raw, 4),
    }
    return {
        "peers": peers,
        "peers_total": len(members),
        "size_mib": size_mib,
        "seed": seed,
        "candidates_per_subnet": candidates or "all",
        "warm_start": warm_start,
        "simulated": simulated,
        "measured": measured,
    }


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def main() -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument(
        "--peers",
        type=int,
        action="append",
        help="peers in the first site (repeatable; default: 200 and 2000)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--size-mib",
        type=int,
        default=None,
        help=f"package size (default: 512, or {LARGE_SITE_SIZE_MIB} above "
        f"{LARGE_SITE_PEERS} peers)",
    )
    parser.add_argument(
        "--candidates",
        type=int,
        default=None,
        help=f"peers per subnet with weight > 0; 0: all (default: all, or "
        f"{LARGE_SITE_CANDIDATES} above {LARGE_SITE_PEERS} peers)",
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--warm-start",
        action="store_true",
        help=f"peers start knowing their site's members (default above {LARGE_SITE_PEERS})",
    )
    start.add_argument("--cold-start", action="store_true", help="no warm start, at any size")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    runs = []
    for peers in args.peers or DEFAULT_PEERS:
        if peers < 1:
            parser.error(f"--peers must be >= 1, got {peers}")
        large = peers > LARGE_SITE_PEERS
        size_mib = args.size_mib if args.size_mib is not None else default_size_mib(peers)
        candidates = args.candidates
        if candidates is None:
            candidates = LARGE_SITE_CANDIDATES if large else 0
        warm_start = args.warm_start or (large and not args.cold_start)
        started = time.perf_counter()
        figures = measure(peers, size_mib, args.seed, candidates=candidates, warm_start=warm_start)
        figures["measured"]["process_s"] = round(time.perf_counter() - started, 2)
        runs.append(figures)
        if not args.json:
            _print(figures, args.size_mib is None)
    if args.json:
        print(json.dumps(runs, sort_keys=True))
    return 0


def _print(figures: dict[str, Any], default_size: bool) -> None:
    peers = figures["peers"]
    note = ""
    if default_size and peers > LARGE_SITE_PEERS:
        note = f" (default for > {LARGE_SITE_PEERS} peers: a 512 MiB run would take too long)"
    print(
        f"== {peers} peers in site s1 ({figures['peers_total']} in all), "
        f"{figures['size_mib']} MiB{note}, seed {figures['seed']}, "
        f"candidates per subnet: {figures['candidates_per_subnet']}, "
        f"warm start: {figures['warm_start']}"
    )
    for name, value in figures["simulated"].items():
        print(f"{name:>24}: {value}  (simulated)")
    for name, value in figures["measured"].items():
        print(f"{name:>24}: {value}  (measured, wall clock)")


if __name__ == "__main__":
    sys.exit(main())
