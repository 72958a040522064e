"""`peerpxe replay TRACE --scenario S`: replay a failure trace onto a scenario's topology."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

HELP = "Replay a failure trace (AVT, FTA or JSONL) onto a scenario's topology and report."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's arguments."""
    parser.add_argument("trace", help="trace file: .avt, .tsv/.fta (FTA event table), .jsonl")
    parser.add_argument("--scenario", required=True, help="scenario whose topology to use")
    parser.add_argument(
        "--format",
        choices=("avt", "fta", "jsonl"),
        default=None,
        help="trace format (default: from the file name)",
    )
    parser.add_argument(
        "--mapping",
        choices=("identity", "round-robin", "random"),
        default="round-robin",
        help="trace nodes onto peers: by name, in turn, or shuffled by seed",
    )
    parser.add_argument(
        "--down",
        choices=("crash", "stop"),
        default="crash",
        help="what a trace 'down' does to a peer (default: crash)",
    )
    parser.add_argument(
        "--cut",
        default=None,
        metavar="START,END",
        help="replay only [START, END) seconds of the trace, shifted to 0",
    )
    parser.add_argument(
        "--loop-s",
        type=float,
        default=None,
        metavar="PERIOD",
        help="repeat the (cut) trace every PERIOD seconds",
    )
    parser.add_argument(
        "--allow-fold",
        action="store_true",
        help="map more trace nodes than peers by folding them round-robin",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed (default: the scenario's)")
    parser.add_argument("--duration-s", type=float, default=None, help="simulated duration")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    """Load, replay, report. Exit 0 when every invariant held, 1 on violations, 2 on bad input."""
    from peerpxe.sim_command import report
    from sim.run import Simulation
    from sim.scenario import ScenarioError, load
    from sim.traces import TraceError
    from sim.workload import ReplaySpec

    try:
        scenario = load(args.scenario)
        cut_start_s, cut_end_s = _cut(args.cut)
        spec = ReplaySpec(
            trace=_path(args.trace),
            format=args.format or _guess_format(args.trace),
            mapping=args.mapping,
            down=args.down,
            cut_start_s=cut_start_s,
            cut_end_s=cut_end_s,
            loop_period_s=args.loop_s,
            allow_fold=args.allow_fold,
        )
        scenario = dataclasses.replace(scenario, replay=spec)
        if args.duration_s is not None:
            if args.duration_s <= 0:
                raise ValueError("--duration-s must be positive")
            scenario = scenario.with_duration(args.duration_s)
        simulation = Simulation(scenario, args.seed)
    except (ScenarioError, TraceError, ValueError, OSError) as error:
        sys.stderr.write(f"peerpxe replay: {error}\n")
        return 2
    result = simulation.run()
    if args.json:
        sys.stdout.write(json.dumps(result.to_json(), sort_keys=True) + "\n")
    else:
        sys.stdout.write(f"replaying {args.trace} ({spec.format}, {spec.mapping} mapping)\n")
        sys.stdout.write(report(result))
    return 0 if result.violation_count == 0 else 1


def _path(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"no such trace file: {text}")
    return path


def _guess_format(name: str) -> str:
    suffix = name.rsplit(".", 1)[-1]
    formats = {"avt": "avt", "tsv": "fta", "fta": "fta", "jsonl": "jsonl"}
    if suffix not in formats:
        raise ValueError(f"cannot tell the format of {name!r} from its name: give --format")
    return formats[suffix]


def _cut(text: str | None) -> tuple[float | None, float | None]:
    if text is None:
        return None, None
    start, sep, end = text.partition(",")
    try:
        if not sep:
            raise ValueError
        return float(start), float(end)
    except ValueError:
        raise ValueError(f"--cut expects START,END in seconds, got {text!r}") from None
