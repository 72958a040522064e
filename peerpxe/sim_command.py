"""`peerpxe sim SCENARIO [--seed N] [--json] [--duration-s X] [--out DIR]`: run a scenario.

`--out DIR` writes a report (`report.json`, `report.md`, PNG plots; `sim.report`). On a
terminal, a long run shows a progress bar on stderr (`SimProgress`): it is fed by a callback
every `1 / PROGRESS_TICKS` of the simulated duration that only reads the clock, so it changes
neither the trace digest nor any figure.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.console import Console
    from rich.progress import Progress, TaskID

    from sim.report import ReportFiles
    from sim.run import SimResult, Simulation

PROGRESS_TICKS: Final = 200
"""Progress callbacks per run (each one is one cheap event on the simulated clock)."""
PROGRESS_AFTER_WALL_S: Final = 0.5
"""The bar waits this long before judging whether the run is long."""
PROGRESS_EXPECTED_WALL_S_MIN: Final = 3.0
"""A run expected to take less wall time than this never shows a bar."""
PROGRESS_REFRESH_WALL_S: Final = 0.1
GIT_TIMEOUT_S: Final = 10.0
GIT_COMMIT_RULE: Final = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
UNKNOWN: Final = "unknown"

HELP = "Run a churn scenario in the deterministic simulator and report membership figures."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's arguments."""
    parser.add_argument("scenario", help="scenario file (TOML), e.g. scenarios/default.toml")
    parser.add_argument("--seed", type=int, default=None, help="seed (default: the scenario's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--duration-s", type=float, default=None, help="override the simulated duration"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="write report.json, report.md and PNG plots into DIR (created if missing)",
    )


def run(args: argparse.Namespace) -> int:
    """Load, run, report (and write the `--out` report).

    Exit 0 when every invariant held, 1 on violations, 2 on bad input or an unwritable `--out`.
    """
    # Heavy imports stay inside run(), so `peerpxe --help` stays fast (see peerpxe/cli.py).
    from sim.run import Simulation
    from sim.scenario import ScenarioError, load
    from sim.traces import TraceError

    try:
        scenario = load(args.scenario)
        if args.duration_s is not None:
            if args.duration_s <= 0:
                sys.stderr.write("peerpxe sim: --duration-s must be positive\n")
                return 2
            scenario = scenario.with_duration(args.duration_s)
        # A [replay] trace is read and mapped onto the topology here: its errors are input.
        simulation = Simulation(scenario, args.seed)
    except (ScenarioError, TraceError, OSError) as error:
        sys.stderr.write(f"peerpxe sim: {error}\n")
        return 2
    result = _run_with_progress(simulation)
    files = None
    if args.out is not None:
        try:
            files = _write_report(args.out, simulation, result, args.scenario)
        except OSError as error:
            sys.stderr.write(f"peerpxe sim: cannot write the report into {args.out}: {error}\n")
    report_path = None if files is None else files.markdown_path
    if args.json:
        data = result.to_json()
        if report_path is not None:
            data["report"] = str(report_path)
        sys.stdout.write(json.dumps(data, sort_keys=True) + "\n")
    else:
        sys.stdout.write(report(result, report_path))
    if args.out is not None and files is None:
        return 2
    return 0 if result.violation_count == 0 else 1


def report(result: SimResult, report_path: Path | None = None) -> str:
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
        *_replication_lines(result),
        f"  dropped {_counts(result.dropped)}",
        f"  invariant violations {result.violation_count}",
    ]
    lines += [f"    {violation}" for violation in result.violations[:10]]
    lines.append(f"  digest {result.digest}")
    if report_path is not None:
        lines.append(f"report: {report_path}")
    return "\n".join(lines) + "\n"


def every_simulated(
    simulation: Simulation, interval_s: float, tick: Callable[[float], None]
) -> None:
    """Call `tick(now_s)` every `interval_s` simulated seconds while `simulation` runs.

    The callbacks sit on the simulated clock like any scheduled action but touch nothing of
    the world: no trace record, no random draw, no message, so the run stays the same.
    """
    assert interval_s > 0

    def fire() -> None:
        now_s = simulation.world.env.now
        tick(now_s)
        simulation.at(now_s + interval_s, fire)

    simulation.at(interval_s, fire)


class SimProgress:
    """A rich progress bar of simulated time, shown only once the run looks long."""

    def __init__(
        self,
        duration_s: float,
        console: Console,
        clock: Callable[[], float] = time.perf_counter,
        after_wall_s: float = PROGRESS_AFTER_WALL_S,
        expected_wall_s_min: float = PROGRESS_EXPECTED_WALL_S_MIN,
    ) -> None:
        assert duration_s > 0
        self._duration_s = duration_s
        self._console = console
        self._clock = clock
        self._after_wall_s = after_wall_s
        self._expected_wall_s_min = expected_wall_s_min
        self._started_wall_s = clock()
        self._refreshed_wall_s = -float("inf")
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def is_shown(self) -> bool:
        """Whether the bar has been shown."""
        return self._bar is not None

    def tick(self, now_s: float) -> None:
        """The simulated clock reached `now_s`."""
        now_wall_s = self._clock()
        if self._bar is None and not self._looks_long(now_s, now_wall_s):
            return
        if now_wall_s - self._refreshed_wall_s < PROGRESS_REFRESH_WALL_S:
            return
        self._refreshed_wall_s = now_wall_s
        bar, task = self._started()
        bar.update(task, completed=min(now_s, self._duration_s), refresh=True)

    def close(self) -> None:
        """Complete and remove the bar, if it was shown."""
        if self._bar is None or self._task is None:
            return
        self._bar.update(self._task, completed=self._duration_s, refresh=True)
        self._bar.stop()

    def _looks_long(self, now_s: float, now_wall_s: float) -> bool:
        elapsed_wall_s = now_wall_s - self._started_wall_s
        if elapsed_wall_s < self._after_wall_s or now_s <= 0:
            return False
        expected_wall_s = elapsed_wall_s * self._duration_s / now_s
        return expected_wall_s >= self._expected_wall_s_min

    def _started(self) -> tuple[Progress, TaskID]:
        if self._bar is None or self._task is None:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("simulating"),
                BarColumn(),
                TextColumn("{task.completed:.0f}/{task.total:.0f} simulated s"),
                TimeRemainingColumn(),
                console=self._console,
                auto_refresh=False,
                transient=True,
            )
            self._task = self._bar.add_task("simulating", total=self._duration_s)
            self._bar.start()
        return self._bar, self._task


def git_commit() -> str:
    """`git rev-parse HEAD` of the checkout this code runs from, or "unknown"."""
    git = shutil.which("git")
    if git is None:
        return UNKNOWN
    try:
        completed = subprocess.run(  # noqa: S603 - fixed arguments, no shell
            [git, "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    commit = completed.stdout.strip()
    if completed.returncode != 0 or not GIT_COMMIT_RULE.fullmatch(commit):
        return UNKNOWN
    return commit


def _run_with_progress(simulation: Simulation) -> SimResult:
    """Run `simulation`, with a progress bar on stderr when stderr is a terminal."""
    if not sys.stderr.isatty():
        return simulation.run()
    from rich.console import Console

    duration_s = simulation.scenario.duration_s
    progress = SimProgress(duration_s, Console(stderr=True))
    every_simulated(simulation, duration_s / PROGRESS_TICKS, progress.tick)
    try:
        return simulation.run()
    finally:
        progress.close()


def _write_report(
    out_dir: Path, simulation: Simulation, result: SimResult, scenario_path: str
) -> ReportFiles:
    from sim.report import write_report

    return write_report(
        out_dir, simulation, result, scenario_path=scenario_path, git_commit=git_commit()
    )


def _ratio(result: SimResult) -> str:
    if result.wall_time_s <= 0:
        return "inf"
    return f"{result.sim_time_s / result.wall_time_s:.0f}"


def _replication_lines(result: SimResult) -> list[str]:
    """The replication figures, when the scenario replicates a package."""
    if not result.wan_bytes_by_site:
        return []
    ratio = result.wan_bytes_ratio_max
    offload = result.origin_offload
    utilisation = result.lan_utilisation
    return [
        f"  replication: WAN bytes / package max {'n/a' if ratio is None else f'{ratio:.4f}'}"
        f" (by site {_counts(result.wan_bytes_by_site)}), WAN cap exceeded "
        f"{result.wan_cap_exceeded} times; origin offload "
        f"{'n/a' if offload is None else f'{offload:.4f}'}; site replication p50 "
        f"{_seconds(result.replication_s_p50)}, p99 {_seconds(result.replication_s_p99)} "
        f"(unfinished {result.replication_unfinished}); corrupt chunks refused "
        f"{result.corrupt_chunks_refused}, accepted {result.corrupt_chunks_accepted}; LAN "
        f"utilisation {'n/a' if utilisation is None else f'{utilisation:.2f}'}",
    ]


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def _counts(counts: dict[str, int]) -> str:
    if not counts:
        return "none"
    return ", ".join(f"{name} {counts[name]}" for name in sorted(counts))
