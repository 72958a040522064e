"""Reports of one run: `report.json`, `report.md` and PNG plots in one directory.

Theory of operation
-------------------
`write_report(out_dir, simulation, result, scenario_path=...)` runs after
`Simulation.run()` and only reads: the result's figures, the run's time series
(`Simulation.timeline`, `sim.timeline`; responders from `LeadershipWatch.figures.samples`;
boot times from `BootClients.figures.boot_s`) and the scenario file (its sha256). It never
touches the world, so it cannot change the run.

Files, written in this order so that `report.md` never names a plot that is not there:
- plots (matplotlib's Agg canvas, fixed sizes, default style, no version stamp: the same
  run gives the same bytes): `boot_time_cdf.png` (when some machine booted),
  `responders.png`, `live_peers.png` (partitions shaded), and `wan_bytes.png` /
  `replication.png` only when the result carries `wan_bytes_by_site` /
  `replication_progress_by_site` (runs that replicate a package: no empty plots);
  a plot of an earlier report that this run does not draw is removed;
- `report.json`: every figure of `SimResult.to_json()` at the top level, plus
  `scenario_path`, `scenario_hash` (sha256 of the file), `code_version` (`peerpxe` package
  version and git commit, which the caller looks up), `reproduce`, `plots` and `series`;
- `report.md`: a table of the key figures (each labelled simulated; the wall time is the
  only measured one), the plots as images, faults and violations.

Every file is written atomically (`write_atomic`: temporary file in the same directory,
flush, fsync, `os.replace`, fsync of the directory), so a crash leaves either the previous
file or the whole new one, never half a report.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import os
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from matplotlib import style
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sim.timeline import Series, extended_to

if TYPE_CHECKING:
    from collections.abc import Callable

    from matplotlib.axes import Axes

    from sim.run import SimResult, Simulation

REPORT_FORMAT: Final = 1
"""Bumped when a key of `report.json` changes meaning."""
JSON_NAME: Final = "report.json"
MARKDOWN_NAME: Final = "report.md"
BOOT_CDF_NAME: Final = "boot_time_cdf.png"
RESPONDERS_NAME: Final = "responders.png"
LIVE_PEERS_NAME: Final = "live_peers.png"
WAN_BYTES_NAME: Final = "wan_bytes.png"
REPLICATION_NAME: Final = "replication.png"
PLOT_NAMES: Final = (
    BOOT_CDF_NAME,
    RESPONDERS_NAME,
    LIVE_PEERS_NAME,
    WAN_BYTES_NAME,
    REPLICATION_NAME,
)
WAN_BYTES_KEY: Final = "wan_bytes_by_site"
REPLICATION_KEY: Final = "replication_progress_by_site"
FIGURE_SIZE_IN: Final = (8.0, 4.0)
FIGURE_DPI: Final = 100
PLOT_STYLE: Final[list[str | dict[str, Any]]] = [
    "default",
    {"font.size": 9.0, "axes.grid": True, "grid.alpha": 0.4},
]
PNG_METADATA: Final[dict[str, str | None]] = {"Software": None}
"""No matplotlib version stamp in the PNG: the bytes depend on the run only."""
LISTED_MAX: Final = 20
"""Faults and violations listed in `report.md` (all of them are in `report.json`)."""
FILE_MODE: Final = 0o644


@dataclass(frozen=True, slots=True)
class ReportFiles:
    """What `write_report` wrote."""

    json_path: Path
    markdown_path: Path
    plot_paths: tuple[Path, ...]


@dataclass(frozen=True, slots=True)
class Plot:
    """One rendered plot: its file name, its title in `report.md`, and its PNG bytes."""

    file_name: str
    title: str
    png: bytes


def write_report(
    out_dir: Path,
    simulation: Simulation,
    result: SimResult,
    *,
    scenario_path: str,
    git_commit: str = "unknown",
) -> ReportFiles:
    """Write the report of `result` (a finished run of `simulation`) into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = report_data(simulation, result, scenario_path=scenario_path, git_commit=git_commit)
    plots = render_plots(data)
    data["plots"] = [plot.file_name for plot in plots]
    plot_paths = tuple(out_dir / plot.file_name for plot in plots)
    for plot, path in zip(plots, plot_paths, strict=True):
        write_atomic(path, plot.png)
    _remove_stale_plots(out_dir, plots)
    json_path = out_dir / JSON_NAME
    write_atomic(json_path, (json.dumps(data, sort_keys=True, indent=2) + "\n").encode())
    markdown_path = out_dir / MARKDOWN_NAME
    write_atomic(markdown_path, render_markdown(data, plots).encode())
    return ReportFiles(json_path, markdown_path, plot_paths)


def report_data(
    simulation: Simulation, result: SimResult, *, scenario_path: str, git_commit: str
) -> dict[str, Any]:
    """The content of `report.json` (without `plots`)."""
    data = result.to_json()
    extra = {
        "report_format": REPORT_FORMAT,
        "scenario_path": scenario_path,
        "scenario_hash": file_sha256(Path(scenario_path)),
        "scenario_duration_s": simulation.scenario.duration_s,
        "code_version": code_version(git_commit),
        "reproduce": reproduce_command(scenario_path, result.seed, simulation),
        "series": series_of(simulation, result.sim_time_s),
    }
    clash = sorted(key for key in extra if key in data)
    assert not clash, f"report keys {clash} clash with SimResult figures"
    data.update(extra)
    return data


def series_of(simulation: Simulation, end_s: float) -> dict[str, Any]:
    """The run's time series: the timeline, responders per subnet, sorted boot times."""
    series = simulation.timeline.to_json()
    series["end_s"] = end_s
    series["responders_by_subnet"] = {
        name: _pairs(samples) for name, samples in responder_series(simulation).items()
    }
    series["boot_s"] = sorted(simulation.boot_clients.figures.boot_s)
    return series


def responder_series(simulation: Simulation) -> dict[str, Series]:
    """Leaders on the clients' side of each subnet over time, keyed by subnet name."""
    name_of = {subnet.cidr: subnet.name for subnet in simulation.scenario.subnets}
    by_name: dict[str, Series] = {name: [(0.0, 0)] for name in name_of.values()}
    for time_s, cidr, leaders in simulation.leadership.figures.samples:
        series = by_name.setdefault(name_of.get(cidr, cidr), [(0.0, 0)])
        if series[-1][0] == time_s:
            series[-1] = (time_s, leaders)
        else:
            series.append((time_s, leaders))
    return by_name


def code_version(git_commit: str) -> dict[str, str]:
    """The `peerpxe` package version (from its metadata) and the given git commit."""
    try:
        version = importlib.metadata.version("peerpxe")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {"peerpxe": version, "git_commit": git_commit}


def file_sha256(path: Path) -> str:
    """Hex sha256 of the file at `path`."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def reproduce_command(scenario_path: str, seed: int, simulation: Simulation) -> str:
    """The command line that runs this very simulation again."""
    duration_s = simulation.scenario.duration_s
    return f"peerpxe sim {shlex.quote(scenario_path)} --seed {seed} --duration-s {duration_s:g}"


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path`: readers see the previous file or all of `data`, never part."""
    descriptor, temp_name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    temp_path = Path(temp_name)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            os.fchmod(handle.fileno(), FILE_MODE)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_path, path)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


# --------------------------------------------------------------------------- plots


def render_plots(data: dict[str, Any]) -> list[Plot]:
    """Every plot the report's data allows, in `PLOT_NAMES` order."""
    series = data["series"]
    candidates: list[Plot | None] = [
        plot_boot_cdf(series["boot_s"]),
        plot_responders(series),
        plot_live_peers(series),
        plot_wan_bytes(data.get(WAN_BYTES_KEY)),
        plot_replication(data.get(REPLICATION_KEY), series["end_s"]),
    ]
    return [plot for plot in candidates if plot is not None]


def has_replication(data: dict[str, Any]) -> bool:
    """Whether the result carries replication figures (WAN bytes or progress)."""
    return bool(data.get(WAN_BYTES_KEY)) or bool(data.get(REPLICATION_KEY))


def plot_boot_cdf(boot_s: list[float]) -> Plot | None:
    """Empirical CDF of the boot times of the machines that booted; None if none did."""
    if not boot_s:
        return None
    ordered = sorted(boot_s)
    fractions = [(index + 1) / len(ordered) for index in range(len(ordered))]

    def draw(axes: Axes) -> None:
        axes.step([ordered[0], *ordered], [0.0, *fractions], where="post")
        axes.set_xlabel("boot time, power-on to boot program loaded (simulated s)")
        axes.set_ylabel("fraction of booted machines")
        axes.set_ylim(0.0, 1.02)

    title = f"Boot time CDF (simulated, {len(ordered)} boots)"
    return Plot(BOOT_CDF_NAME, title, _render(title, draw))


def plot_responders(series: dict[str, Any]) -> Plot:
    """Responders (leaders on the clients' side) per subnet over simulated time."""
    end_s = series["end_s"]

    def draw(axes: Axes) -> None:
        _shade_partitions(axes, series)
        for name, samples in series["responders_by_subnet"].items():
            _step(axes, samples, end_s, f"subnet {name}")
        axes.set_ylabel("responders")
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        _finish_time_axes(axes, end_s)

    title = "Responders per subnet (simulated)"
    return Plot(RESPONDERS_NAME, title, _render(title, draw))


def plot_live_peers(series: dict[str, Any]) -> Plot:
    """Running peers per site and in total over simulated time."""
    end_s = series["end_s"]

    def draw(axes: Axes) -> None:
        _shade_partitions(axes, series)
        by_site = series["live_peers_by_site"]
        if len(by_site) > 1:
            for site, samples in by_site.items():
                _step(axes, samples, end_s, f"site {site}")
        _step(axes, series["live_peers_total"], end_s, "total")
        axes.set_ylabel("live peers")
        _finish_time_axes(axes, end_s)

    title = "Live peers (simulated)"
    return Plot(LIVE_PEERS_NAME, title, _render(title, draw))


def plot_wan_bytes(wan_bytes_by_site: dict[str, int] | None) -> Plot | None:
    """WAN bytes per site (bars); None when the run has no such figures."""
    if not wan_bytes_by_site:
        return None
    sites = list(wan_bytes_by_site)

    def draw(axes: Axes) -> None:
        axes.bar(sites, [wan_bytes_by_site[site] for site in sites])
        axes.set_xlabel("site")
        axes.set_ylabel("WAN bytes (simulated)")

    title = "WAN bytes per site (simulated)"
    return Plot(WAN_BYTES_NAME, title, _render(title, draw))


def plot_replication(
    progress_by_site: dict[str, list[list[float]]] | None, end_s: float
) -> Plot | None:
    """Replication progress (fraction of the package held) per site; None without data."""
    if not progress_by_site:
        return None

    def draw(axes: Axes) -> None:
        for site, samples in progress_by_site.items():
            times_s = [sample[0] for sample in samples]
            axes.step(times_s, [sample[1] for sample in samples], where="post", label=site)
        axes.set_ylabel("fraction of the package replicated")
        axes.set_ylim(0.0, 1.02)
        _finish_time_axes(axes, end_s)

    title = "Replication progress per site (simulated)"
    return Plot(REPLICATION_NAME, title, _render(title, draw))


def _render(title: str, draw: Callable[[Axes], None]) -> bytes:
    with style.context(PLOT_STYLE):
        figure = Figure(figsize=FIGURE_SIZE_IN, dpi=FIGURE_DPI)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        axes.set_title(title)
        draw(axes)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=FIGURE_DPI, metadata=PNG_METADATA)
    return buffer.getvalue()


def _step(axes: Axes, samples: list[list[float]], end_s: float, label: str) -> None:
    series = extended_to([(sample[0], int(sample[1])) for sample in samples], end_s)
    times_s = [point[0] for point in series]
    axes.step(times_s, [point[1] for point in series], where="post", label=label)


def _shade_partitions(axes: Axes, series: dict[str, Any]) -> None:
    for index, (start_s, stop_s) in enumerate(partition_spans(series)):
        label = "partition" if index == 0 else None
        axes.axvspan(start_s, stop_s, color="0.85", zorder=0, label=label)


def partition_spans(series: dict[str, Any]) -> list[tuple[float, float]]:
    """The `(start_s, end_s)` spans during which some peer was cut off."""
    spans: list[tuple[float, float]] = []
    since_s: float | None = None
    for time_s, peers in series["partitioned_peers"]:
        if peers and since_s is None:
            since_s = time_s
        elif not peers and since_s is not None:
            spans.append((since_s, time_s))
            since_s = None
    if since_s is not None:
        spans.append((since_s, series["end_s"]))
    return spans


def _finish_time_axes(axes: Axes, end_s: float) -> None:
    axes.set_xlabel("simulated time (s)")
    axes.set_xlim(0.0, max(end_s, 1e-9))
    axes.set_ylim(bottom=0.0)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="best")


# --------------------------------------------------------------------------- markdown

KEY_FIGURES: Final = (
    ("peers", "peers", ""),
    ("simulated time", "sim_time_s", "s"),
    ("actor events", "events", ""),
    ("messages sent", "messages", ""),
    ("messages per peer per second", "messages_per_peer_per_s", ""),
    ("crashes", "crashes", ""),
    ("crashes detected by the whole subnet", "detected", ""),
    ("crashes undetected", "undetected", ""),
    ("detection time p50", "detect_s_p50", "s"),
    ("detection time p99", "detect_s_p99", "s"),
    ("false dead declarations", "false_dead", ""),
    ("responder failovers", "failovers", ""),
    ("failover time p50", "failover_s_p50", "s"),
    ("failover time p99", "failover_s_p99", "s"),
    ("failover time max", "failover_s_max", "s"),
    ("failovers unfinished", "failovers_unfinished", ""),
    ("clean handover max", "handover_s_max", "s"),
    ("two reachable leaders, episodes", "dual_leader_episodes", ""),
    ("two reachable leaders, longest", "dual_leader_s_max", "s"),
    ("PXE boots attempted", "boots_attempted", ""),
    ("PXE boots succeeded", "boots_succeeded", ""),
    ("PXE boots failed", "boots_failed", ""),
    ("PXE boots failed with no eligible peer", "boots_failed_unservable", ""),
    ("PXE boots unfinished", "boots_unfinished", ""),
    ("boot time p50", "boot_s_p50", "s"),
    ("boot time p99", "boot_s_p99", "s"),
    ("DISCOVERs", "discovers", ""),
    ("DISCOVERs with two offers", "dual_offers", ""),
    ("two offers in steady state", "steady_dual_offers", ""),
    ("invariant violations", "violation_count", ""),
)
"""(label, `report.json` key, unit) of the rows of the key-figures table."""


def render_markdown(data: dict[str, Any], plots: list[Plot]) -> str:
    """The human report: header, key figures, plots, replication, faults, violations."""
    sections = [
        _header(data),
        _figures_table(data),
        _plots_section(plots, data),
        _replication_section(data),
        _faults_section(data["series"]["faults"]),
        _violations_section(data),
    ]
    return "\n".join(sections)


def _header(data: dict[str, Any]) -> str:
    version = data["code_version"]
    return "\n".join(
        [
            f"# Simulation report: {data['scenario']} (simulated)",
            "",
            "Every figure below comes from the deterministic simulator (`peerpxe sim`) and is "
            "simulated, not measured on real machines; only the wall time is measured.",
            "",
            f"- scenario: `{data['scenario_path']}` (sha256 `{data['scenario_hash']}`)",
            f"- seed: {data['seed']}; simulated duration: {data['sim_time_s']:g} s",
            f"- code: peerpxe {version['peerpxe']}, git commit {version['git_commit']}",
            f"- trace digest: `{data['digest']}`",
            f"- reproduce: `{data['reproduce']}`",
            "",
        ]
    )


def _figures_table(data: dict[str, Any]) -> str:
    rows = ["## Key figures", "", "| figure | value | kind |", "|---|---:|---|"]
    for label, key, unit in KEY_FIGURES:
        rows.append(f"| {label} | {_value(data.get(key), unit)} | simulated |")
    rows.append(f"| simulator wall time | {_value(data['wall_time_s'], 's')} | measured |")
    rows.append("")
    return "\n".join(rows)


def _value(value: object, unit: str) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.2f}" if isinstance(value, float) else str(value)
    return f"{text} {unit}" if unit else text


def _plots_section(plots: list[Plot], data: dict[str, Any]) -> str:
    lines = ["## Plots", ""]
    for plot in plots:
        lines += [f"### {plot.title}", "", f"![{plot.title}]({plot.file_name})", ""]
    if not data["series"]["boot_s"]:
        lines += ["No PXE machine booted in this run, so there is no boot time CDF.", ""]
    if partition_spans(data["series"]):
        lines += ["Grey spans mark partitions (some peers cut off from the clients' side).", ""]
    return "\n".join(lines)


REPLICATION_FIGURES: Final = (
    ("WAN bytes / package size, worst site", "wan_bytes_ratio_max", ""),
    ("WAN cap exceeded (1 s windows)", "wan_cap_exceeded", ""),
    ("origin offload", "origin_offload", ""),
    ("site replication time p50", "replication_s_p50", "s"),
    ("site replication time p99", "replication_s_p99", "s"),
    ("sites not reached", "replication_unfinished", ""),
    ("corrupt chunks refused", "corrupt_chunks_refused", ""),
    ("corrupt chunks accepted", "corrupt_chunks_accepted", ""),
    ("LAN utilisation while fetching", "lan_utilisation", ""),
)
"""(label, `report.json` key, unit) of the replication table."""


def _replication_section(data: dict[str, Any]) -> str:
    if has_replication(data):
        rows = ["## Replication", "", "See the WAN bytes and replication plots above.", ""]
        rows += ["| figure | value | kind |", "|---|---:|---|"]
        for label, key, unit in REPLICATION_FIGURES:
            value = data.get(key)
            text = f"{value:.4f}" if isinstance(value, float) and not unit else _value(value, unit)
            rows.append(f"| {label} | {text} | simulated |")
        rows.append("")
        return "\n".join(rows)
    return (
        "## Replication\n\nThis run has no replication: the result carries no WAN bytes or "
        "replication progress, so there are no replication plots.\n"
    )


def _faults_section(faults: list[list[Any]]) -> str:
    lines = ["## Faults", ""]
    if not faults:
        return "\n".join([*lines, "No faults were injected.", ""])
    counts: dict[str, int] = {}
    for _time_s, _node, what in faults:
        kind = str(what).split(" ", 1)[0]
        counts[kind] = counts.get(kind, 0) + 1
    lines.append(", ".join(f"{kind} {counts[kind]}" for kind in sorted(counts)) + ".")
    lines.append("")
    lines += [f"- t={time_s:.3f} s: {node} {what}" for time_s, node, what in faults[:LISTED_MAX]]
    if len(faults) > LISTED_MAX:
        lines.append(f"- ... {len(faults) - LISTED_MAX} more in `report.json`")
    lines.append("")
    return "\n".join(lines)


def _violations_section(data: dict[str, Any]) -> str:
    violations: list[str] = data["violations"]
    lines = ["## Invariant violations", ""]
    if not violations:
        return "\n".join([*lines, "None: every invariant held.", ""])
    lines += [f"- {violation}" for violation in violations[:LISTED_MAX]]
    if data["violation_count"] > LISTED_MAX:
        lines.append(f"- ... {data['violation_count'] - LISTED_MAX} more")
    lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- files


def _remove_stale_plots(out_dir: Path, plots: list[Plot]) -> None:
    drawn = {plot.file_name for plot in plots}
    for name in PLOT_NAMES:
        if name not in drawn:
            (out_dir / name).unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _pairs(series: Series) -> list[list[float | int]]:
    return [[time_s, value] for time_s, value in series]
