"""`peerpxe sim SCENARIO [--seed N] [--json] [--duration-s X]`: run a churn scenario."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sim.run import SimResult

HELP = "Run a churn scenario in the deterministic simulator and report membership figures."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's arguments."""
    parser.add_argument("scenario", help="scenario file (TOML), e.g. scenarios/default.toml")
    parser.add_argument("--seed", type=int, default=None, help="seed (default: the scenario's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--duration-s", type=float, default=None, help="override the simulated duration"
    )


def run(args: argparse.Namespace) -> int:
    """Load, run, report. Exit 0 when every invariant held, 1 on violations, 2 on bad input."""
    # Heavy imports stay inside run(), so `peerpxe --help` stays fast (see peerpxe/cli.py).
    from sim.run import Simulation
    from sim.scenario import ScenarioError, load

    try:
        scenario = load(args.scenario)
    except (ScenarioError, OSError) as error:
        sys.stderr.write(f"peerpxe sim: {error}\n")
        return 2
    if args.duration_s is not None:
        if args.duration_s <= 0:
            sys.stderr.write("peerpxe sim: --duration-s must be positive\n")
            return 2
        scenario = scenario.with_duration(args.duration_s)
    result = Simulation(scenario, args.seed).run()
    if args.json:
        sys.stdout.write(json.dumps(result.to_json(), sort_keys=True) + "\n")
    else:
        sys.stdout.write(report(result))
    return 0 if result.violation_count == 0 else 1


def report(result: SimResult) -> str:
    """A short human report; every figure is labelled as simulated."""
    lines = [
        f"scenario {result.scenario} (simulated), seed {result.seed}",
        f"  peers {result.peers}, simulated {result.sim_time_s:.1f} s "
        f"in {result.wall_time_s:.2f} s wall ({_ratio(result)}x real time)",
        f"  actor events {result.events}, messages {result.messages} "
        f"({result.messages_per_peer_per_s:.2f} per peer per second)",
        f"  crashes {result.crashes}: detected by the whole subnet {result.detected}, "
        f"undetected {result.undetected}; detection p50 {_seconds(result.detect_s_p50)}, "
        f"p99 {_seconds(result.detect_s_p99)}",
        f"  false dead {result.false_dead} (ambiguous {result.dead_ambiguous})",
        f"  responder failovers {result.failovers} (unfinished {result.failovers_unfinished}): "
        f"p50 {_seconds(result.failover_s_p50)}, p99 {_seconds(result.failover_s_p99)}, "
        f"max {_seconds(result.failover_s_max)}; clean handover max "
        f"{_seconds(result.handover_s_max)}; two reachable leaders "
        f"{result.dual_leader_episodes} times, longest {result.dual_leader_s_max:.2f} s",
        f"  PXE boots {result.boots_attempted}: booted {result.boots_succeeded}, failed "
        f"{result.boots_failed} (of which with no eligible peer {result.boots_failed_unservable}),"
        f" unfinished {result.boots_unfinished}, failed attempts {result.boot_attempts_failed}; "
        f"boot time p50 {_seconds(result.boot_s_p50)}, p99 {_seconds(result.boot_s_p99)}",
        f"  DISCOVERs {result.discovers}: with two offers {result.dual_offers} "
        f"(rate {result.dual_offer_rate:.4f}; in steady state {result.steady_dual_offers})",
        f"  dropped {_counts(result.dropped)}",
        f"  invariant violations {result.violation_count}",
    ]
    lines += [f"    {violation}" for violation in result.violations[:10]]
    lines.append(f"  digest {result.digest}")
    return "\n".join(lines) + "\n"


def _ratio(result: SimResult) -> str:
    if result.wall_time_s <= 0:
        return "inf"
    return f"{result.sim_time_s / result.wall_time_s:.0f}"


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def _counts(counts: dict[str, int]) -> str:
    if not counts:
        return "none"
    return ", ".join(f"{name} {counts[name]}" for name in sorted(counts))
