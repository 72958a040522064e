"""`peerpxe sweep SCENARIO --seeds 1-1000 [--set section.knob=v1,v2 ...] [--scheduler ADDRESS]
[--workers N] [--out DIR] [--json]`: run a grid of knob settings times seeds, summarise.

Theory of operation
-------------------
`sim.sweep` does the pure part: it parses seeds and `--set` specs, builds the grid, checks
every grid point against the scenario before anything runs, and aggregates. This module
hosts the runs, which is why it may use processes and sockets (sim/ may not): every run is
`sim.sweep.run_point(scenario_path, settings, seed)`, shipped by reference to

- a local `concurrent.futures.ProcessPoolExecutor` (`--workers`, default `os.cpu_count()`;
  `--workers 1` runs in this process, handy under a debugger), or
- a Dask distributed cluster when `--scheduler ADDRESS` is given (`client.map`, then
  `client.gather`); its workers must import this checkout and read the scenario file at the
  same absolute path.

Whatever ran them, the records are put in (grid point, seed) order before anything is
aggregated, and every run is deterministic, so results are identical across backends and
worker counts (wall time aside, which is kept per run but never aggregated). Output: an
aggregate table of the key figures (rich on a TTY, plain text otherwise), `--json` (one
object), and `--out DIR` with `sweep.json` (every run and the aggregates) and one PNG per
key figure (matplotlib, Agg canvas, no pyplot state) with 95% CI error bars.

Exit status: 0; 1 when any run broke an invariant; 2 on bad input or a missing optional
dependency.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sim.sweep import KnobSpec, RunTask, SweepPlan

HELP = "Sweep knobs times seeds in the simulator; report means with their confidence intervals."

KEY_FIGURES: Final = (
    "failover_s_p99",
    "boot_success_ratio",
    "detect_s_p99",
    "messages_per_peer_per_s",
)
"""Shown in the table and plotted, one PNG each."""

DASK_MISSING: Final = "--scheduler needs Dask: pip install 'dask[distributed]'"
MATPLOTLIB_MISSING: Final = "--out needs matplotlib for its plots: pip install matplotlib"
VIOLATIONS_SHOWN: Final = 10
PLOT_SIZE_IN: Final = (6.4, 4.2)
PLOT_DPI: Final = 100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's arguments."""
    parser.add_argument("scenario", help="scenario file (TOML), e.g. scenarios/default.toml")
    parser.add_argument(
        "--seeds", default="1-20", help="seeds and ranges, e.g. 1-1000,2000 (default: 1-20)"
    )
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="SECTION.KNOB=V1,V2",
        help="sweep a knob over values, e.g. election.lease_timeout_s=1.0,1.5 (repeatable)",
    )
    parser.add_argument(
        "--scheduler", default=None, metavar="ADDRESS", help="run on this Dask scheduler"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="local worker processes (default: CPU count)"
    )
    parser.add_argument("--out", default=None, metavar="DIR", help="write sweep.json and plots")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    """Plan, run, report. Exit 0, 1 when a run broke an invariant, 2 on bad input."""
    from sim.scenario import ScenarioError
    from sim.sweep import SweepError

    try:
        setup = _setup(args)
        records = execute(setup.plan, args.scheduler, setup.workers)
    except (ScenarioError, SweepError, OSError) as error:
        sys.stderr.write(f"peerpxe sweep: {error}\n")
        return 2
    report = build_report(setup.scenario_name, args.scenario, setup.plan, setup.specs, records)
    if args.json:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        _print_table(report)
    if args.out is not None:
        written = write_outputs(Path(args.out), report, records)
        sys.stderr.write(f"peerpxe sweep: wrote {', '.join(str(path) for path in written)}\n")
    return _exit_status(report)


@dataclass(frozen=True, slots=True)
class _Setup:
    plan: SweepPlan
    specs: tuple[KnobSpec, ...]
    scenario_name: str
    workers: int


def _setup(args: argparse.Namespace) -> _Setup:
    """Everything checked before the first run: scenario, seeds, knobs, grid, extras."""
    from sim.scenario import load
    from sim.sweep import SweepError, SweepPlan, build_grid, check_grid, parse_seeds, parse_sets

    scenario = load(args.scenario)
    seeds = parse_seeds(args.seeds)
    specs = parse_sets(args.sets)
    grid = build_grid(specs)
    check_grid(scenario, grid)
    workers = args.workers if args.workers is not None else os.cpu_count() or 1
    if workers < 1:
        raise SweepError(f"--workers: expected a positive integer, got {workers}")
    if args.scheduler is not None:
        _check_scheduler_address(args.scheduler)
    if args.out is not None:
        _figure_class()
    path = str(Path(args.scenario).resolve())
    return _Setup(SweepPlan(path, grid, seeds), specs, scenario.name, workers)


# --------------------------------------------------------------------------- backends


def execute(
    plan: SweepPlan, scheduler: str | None = None, workers: int = 1
) -> list[dict[str, Any]]:
    """Run every (grid point, seed) of `plan`; the records in (grid point, seed) order.

    `scheduler`: a Dask scheduler address; else `workers` local processes (1: in-process).
    """
    from sim.sweep import order_records, run_point

    assert workers >= 1
    tasks = plan.tasks()
    if scheduler is not None:
        records = _run_dask(tasks, scheduler)
    elif workers == 1 or len(tasks) <= 1:
        records = [run_point(*task) for task in tasks]
    else:
        records = _run_pool(tasks, min(workers, len(tasks)))
    assert len(records) == len(tasks)
    return order_records(plan, records)


def _run_pool(tasks: Sequence[RunTask], workers: int) -> list[dict[str, Any]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from sim.sweep import run_point

    # Not fork: forking a process that runs threads (a Dask client, rich) is unsafe.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    paths, settings, seeds = _columns(tasks)
    chunk_size = max(1, min(16, len(tasks) // (workers * 4)))
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(run_point, paths, settings, seeds, chunksize=chunk_size))


def _run_dask(tasks: Sequence[RunTask], address: str) -> list[dict[str, Any]]:
    from sim.sweep import SweepError, run_point

    client_class = _dask_client_class()
    try:
        client = client_class(address, set_as_default=False)
    except OSError as error:
        raise SweepError(f"cannot reach the Dask scheduler at {address}: {error}") from error
    with client:
        futures = client.map(run_point, *_columns(tasks))
        records: list[dict[str, Any]] = client.gather(futures)
    return records


def _check_scheduler_address(address: str) -> None:
    """Refuse a malformed address before `Client` sees it (it then hangs at exit)."""
    from sim.sweep import SweepError

    _dask_client_class()
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address)
        if scheme in ("tcp", "tls"):
            parse_host_port(location)
    except ValueError as error:
        problem = f"expected an address like tcp://10.0.0.5:8786, got {address!r} ({error})"
        raise SweepError(f"--scheduler: {problem}") from error


def _columns(tasks: Sequence[RunTask]) -> tuple[list[Any], list[Any], list[Any]]:
    return (
        [task.scenario_path for task in tasks],
        [task.settings for task in tasks],
        [task.seed for task in tasks],
    )


def _dask_client_class() -> Any:
    """`dask.distributed.Client`, imported only when a scheduler is asked for."""
    from sim.sweep import SweepError

    try:
        from dask.distributed import Client
    except ImportError as error:
        raise SweepError(DASK_MISSING) from error
    return Client


def _figure_class() -> Any:
    """`matplotlib.figure.Figure`, imported only when plots are asked for."""
    from sim.sweep import SweepError

    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise SweepError(MATPLOTLIB_MISSING) from error
    return Figure


# --------------------------------------------------------------------------- report


def build_report(
    scenario_name: str,
    scenario_arg: str,
    plan: SweepPlan,
    specs: Sequence[KnobSpec],
    records: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """The sweep as one JSON-ready object (without the runs themselves)."""
    from sim.sweep import summarise

    violating = [
        {"seed": r["seed"], "settings": r["settings"], "violation_count": r["violation_count"]}
        for r in records
        if r["violation_count"]
    ]
    return {
        "scenario": scenario_name,
        "scenario_path": scenario_arg,
        "seeds": list(plan.seeds),
        "knobs": {spec.knob: list(spec.values) for spec in specs},
        "grid": [dict(settings) for settings in plan.grid],
        "run_count": len(records),
        "violating_runs": violating,
        "aggregates": summarise(plan, records),
    }


def table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The aggregate table: a header and one row per grid point (mean +- 95% CI half)."""
    knobs = list(report["knobs"])
    header = ["#", *knobs, "runs", *KEY_FIGURES, "violating runs"]
    violating: dict[int, int] = {}
    index_of = {tuple(point.items()): index for index, point in enumerate(report["grid"])}
    for run in report["violating_runs"]:
        index = index_of[tuple(run["settings"].items())]
        violating[index] = violating.get(index, 0) + 1
    rows = [
        [
            str(point["point"]),
            *(repr(point["settings"][knob]) for knob in knobs),
            str(point["runs"]),
            *(_cell(point["figures"].get(name), point["runs"]) for name in KEY_FIGURES),
            str(violating.get(point["point"], 0)),
        ]
        for point in report["aggregates"]
    ]
    return header, rows


def plain_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, a rule under the header."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))

    lines = [line(header), line(["-" * width for width in widths])]
    lines += [line(row) for row in rows]
    return "\n".join(text.rstrip() for text in lines) + "\n"


def _title(report: dict[str, Any]) -> str:
    seeds = report["seeds"]
    return (
        f"sweep {report['scenario']} (simulated): {report['run_count']} runs, "
        f"{len(report['grid'])} grid points x {len(seeds)} seeds; mean +- 95% CI of the mean"
    )


def _print_table(report: dict[str, Any]) -> None:
    header, rows = table_rows(report)
    if not sys.stdout.isatty():
        sys.stdout.write(_title(report) + "\n" + plain_table(header, rows))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(*header, title=_title(report))
    for row in rows:
        table.add_row(*row)
    Console(file=sys.stdout).print(table)


def _cell(stats: dict[str, Any] | None, runs: int) -> str:
    if stats is None or stats["mean"] is None:
        return "n/a"
    text = f"{stats['mean']:.4g}"
    if stats["ci95_high"] is not None:
        text += f" +- {stats['ci95_high'] - stats['mean']:.2g}"
    if stats["n"] != runs:
        text += f" (n={stats['n']})"
    return text


def _exit_status(report: dict[str, Any]) -> int:
    from sim.sweep import settings_label

    violating = report["violating_runs"]
    if not violating:
        return 0
    sys.stderr.write(f"peerpxe sweep: {len(violating)} runs broke invariants:\n")
    for run in violating[:VIOLATIONS_SHOWN]:
        label = settings_label(tuple(run["settings"].items()))
        sys.stderr.write(f"  seed {run['seed']} at {label}: {run['violation_count']}\n")
    return 1


# --------------------------------------------------------------------------- files


def write_outputs(
    out_dir: Path, report: dict[str, Any], records: Sequence[dict[str, Any]]
) -> list[Path]:
    """`sweep.json` (the report plus every run) and one PNG per key figure; their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "sweep.json"
    json_path.write_text(json.dumps({**report, "runs": list(records)}, indent=1) + "\n")
    written = [json_path]
    for figure in KEY_FIGURES:
        path = out_dir / f"{figure}.png"
        plot_figure(path, report, figure)
        written.append(path)
    return written


def plot_figure(path: Path, report: dict[str, Any], figure: str) -> None:
    """One PNG: `figure`'s mean per grid point with its 95% CI as error bars."""
    _figure_class()
    from matplotlib import style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    xs, labels, x_label = _x_axis(report)
    points = _plot_points(xs, report["aggregates"], figure)
    with style.context("default"):  # ignore any matplotlibrc: same sweep, same bytes
        canvas = Figure(figsize=PLOT_SIZE_IN, layout="constrained")
        FigureCanvasAgg(canvas)
        axes = canvas.add_subplot()
        if points:
            px, py, errors = zip(*points, strict=True)
            axes.errorbar(px, py, yerr=errors, fmt="o-", capsize=4)
        else:
            axes.text(
                0.5, 0.5, "no run measured this figure", ha="center", transform=axes.transAxes
            )
        if labels is not None:
            axes.set_xticks(xs, labels, fontsize=7)
        axes.set_xlabel(x_label)
        axes.set_ylabel(figure)
        title = f"{report['scenario']} (simulated): mean and 95% CI of the mean"
        axes.set_title(title, fontsize=10)
        canvas.savefig(path, format="png", dpi=PLOT_DPI, metadata={"Software": None})


def _plot_points(
    xs: Sequence[float], aggregates: Sequence[dict[str, Any]], figure: str
) -> list[tuple[float, float, float]]:
    """(x, mean, CI half width) of every grid point where some run measured `figure`."""
    points: list[tuple[float, float, float]] = []
    for x, point in zip(xs, aggregates, strict=True):
        stats = point["figures"].get(figure)
        if stats is None or stats["mean"] is None:
            continue
        high = stats["ci95_high"]
        points.append((x, stats["mean"], 0.0 if high is None else high - stats["mean"]))
    return points


def _x_axis(report: dict[str, Any]) -> tuple[list[float], list[str] | None, str]:
    """One knob varies: its values; else the grid point index, labelled with what varies."""
    varying = [knob for knob, values in report["knobs"].items() if len(values) > 1]
    grid = report["grid"]
    if len(varying) == 1:
        return [float(point[varying[0]]) for point in grid], None, varying[0]
    labels = [
        "\n".join(f"{knob.partition('.')[2]}={point[knob]}" for knob in varying) or "as written"
        for point in grid
    ]
    return [float(index) for index in range(len(grid))], labels, "grid point"
