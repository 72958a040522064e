"""Reports of a run (`sim.report`, `sim.timeline`, `peerpxe sim --out`): content and safety.

A short run of `scenarios/responder-crash.toml` (30 s: one responder crash at 15 s, boots from
10 s) is reported once per module; the tests read what it wrote. Other tests prove that the
timeline, the report and the CLI's `--out` and progress callbacks leave the run unchanged,
and that a failed write never leaves a partial file behind.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from peerpxe import cli
from peerpxe.sim_command import every_simulated
from sim.report import (
    BOOT_CDF_NAME,
    JSON_NAME,
    LIVE_PEERS_NAME,
    MARKDOWN_NAME,
    REPLICATION_NAME,
    RESPONDERS_NAME,
    WAN_BYTES_NAME,
    ReportFiles,
    partition_spans,
    render_markdown,
    render_plots,
    report_data,
    write_atomic,
    write_report,
)
from sim.run import SimResult, Simulation
from sim.scenario import Scenario, load
from tests.sim.helpers import REPO, SCENARIOS

pytestmark = pytest.mark.sim

SCENARIO_PATH = SCENARIOS / "responder-crash.toml"
DURATION_S = 30.0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_SIZE_PX = (800, 400)
"""`FIGURE_SIZE_IN` (8 x 4 in) at `FIGURE_DPI` (100)."""
PNG_BYTES_MIN = 5_000
"""A plot with axes, labels and lines; an empty canvas of that size is ~3 KB."""


def scenario() -> Scenario:
    return load(SCENARIO_PATH).with_duration(DURATION_S)


def figures_without_wall_time(result: SimResult) -> dict[str, Any]:
    data = result.to_json()
    del data["wall_time_s"]
    return data


@dataclasses.dataclass(frozen=True)
class Reported:
    simulation: Simulation
    result: SimResult
    files: ReportFiles
    data: dict[str, Any]
    markdown: str


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> Reported:
    simulation = Simulation(scenario())
    result = simulation.run()
    out_dir = tmp_path_factory.mktemp("report")
    files = write_report(
        out_dir, simulation, result, scenario_path=str(SCENARIO_PATH), git_commit="c0ffee"
    )
    data = json.loads(files.json_path.read_text())
    return Reported(simulation, result, files, data, files.markdown_path.read_text())


# --------------------------------------------------------------------------- content


def test_report_json_holds_every_figure_of_the_result(reported: Reported) -> None:
    """Every key of `SimResult.to_json()` is in report.json with the same value."""
    expected = json.loads(json.dumps(reported.result.to_json()))
    assert expected.keys() <= reported.data.keys()
    for key, value in expected.items():
        assert reported.data[key] == value, key


def test_report_json_identifies_the_run(reported: Reported) -> None:
    """Seed, scenario sha256, code version and the reproduce command are recorded."""
    data = reported.data
    assert data["seed"] == scenario().seed == 1
    assert data["scenario_path"] == str(SCENARIO_PATH)
    assert data["scenario_hash"] == hashlib.sha256(SCENARIO_PATH.read_bytes()).hexdigest()
    assert data["code_version"]["git_commit"] == "c0ffee"
    assert data["code_version"]["peerpxe"] == "0.1.0"
    assert data["scenario_duration_s"] == DURATION_S
    assert data["reproduce"] == f"peerpxe sim {SCENARIO_PATH} --seed 1 --duration-s 30"
    assert data["plots"] == [BOOT_CDF_NAME, RESPONDERS_NAME, LIVE_PEERS_NAME]


def test_report_json_holds_the_time_series(reported: Reported) -> None:
    """Live peers, responders per subnet, faults and boot times match the run."""
    series = reported.data["series"]
    world = reported.simulation.world
    running = sum(1 for node in world.members.values() if node.running)
    assert series["end_s"] == DURATION_S
    assert series["live_peers_total"][-1][1] == running == len(world.members) - 1
    assert max(value for _time_s, value in series["live_peers_total"]) == len(world.members)
    assert list(series["live_peers_by_site"]) == ["s1"]
    assert series["live_peers_by_site"]["s1"] == series["live_peers_total"]
    assert [fault[0] for fault in series["faults"]] == [15.0]
    assert series["faults"][0][2] == "crash"
    assert list(series["responders_by_subnet"]) == ["a", "b"]
    responders_a = series["responders_by_subnet"]["a"]
    assert responders_a[0] == [0.0, 0]
    assert [15.0, 0] in responders_a, "the crash leaves subnet a without a responder"
    assert responders_a[-1][1] == 1, "and another peer takes over"
    assert series["boot_s"] == sorted(reported.simulation.boot_clients.figures.boot_s)
    assert len(series["boot_s"]) == reported.result.boots_succeeded > 0
    assert series["partitioned_peers"] == [[0.0, 0]]


def test_report_markdown_embeds_every_plot_and_labels_figures(reported: Reported) -> None:
    """report.md shows each plot as an image and labels every figure simulated."""
    markdown = reported.markdown
    for path in reported.files.plot_paths:
        assert f"]({path.name})" in markdown
    table = [line for line in markdown.splitlines() if line.startswith("| ")][1:]
    assert len(table) > 20
    for row in table:
        assert row.endswith(("| simulated |", "| measured |")), row
    assert [row for row in table if row.endswith("| measured |")] == [
        f"| simulator wall time | {reported.result.wall_time_s:.2f} s | measured |"
    ]
    assert f"| PXE boots succeeded | {reported.result.boots_succeeded} | simulated |" in table
    assert reported.result.digest in markdown
    assert "This run has no replication" in markdown


def test_plots_are_non_trivial_png_files_of_a_fixed_size(reported: Reported) -> None:
    """Each plot is a PNG of 800 x 400 pixels with real content; no replication plot."""
    names = [path.name for path in reported.files.plot_paths]
    assert names == [BOOT_CDF_NAME, RESPONDERS_NAME, LIVE_PEERS_NAME]
    for path in reported.files.plot_paths:
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC
        assert data[12:16] == b"IHDR"
        assert struct.unpack(">II", data[16:24]) == PNG_SIZE_PX
        assert len(data) > PNG_BYTES_MIN
    out_dir = reported.files.json_path.parent
    assert not (out_dir / WAN_BYTES_NAME).exists()
    assert not (out_dir / REPLICATION_NAME).exists()
    assert sorted(path.name for path in out_dir.iterdir()) == sorted(
        [JSON_NAME, MARKDOWN_NAME, *names]
    )


def test_replication_is_plotted_only_when_the_result_has_it(reported: Reported) -> None:
    """WAN bytes and replication progress get plots when present, and none when absent."""
    data = json.loads(json.dumps(reported.data))
    assert WAN_BYTES_NAME not in [plot.file_name for plot in render_plots(data)]
    data["wan_bytes_by_site"] = {"s1": 1_000_000, "s2": 1_000_000}
    data["replication_progress_by_site"] = {"s1": [[0.0, 0.0], [10.0, 0.5], [20.0, 1.0]]}
    plots = render_plots(data)
    names = [plot.file_name for plot in plots]
    assert names[-2:] == [WAN_BYTES_NAME, REPLICATION_NAME]
    assert all(plot.png.startswith(PNG_MAGIC) for plot in plots)
    markdown = render_markdown(data, plots)
    assert "no replication" not in markdown
    assert f"]({REPLICATION_NAME})" in markdown


def test_a_run_without_boots_has_no_boot_plot_and_stale_plots_go(reported: Reported) -> None:
    """No boots: no CDF (said in report.md), and an earlier report's CDF file is removed."""
    out_dir = reported.files.json_path.parent.with_name("no-boots")
    out_dir.mkdir()
    (out_dir / BOOT_CDF_NAME).write_bytes(b"old")
    simulation = Simulation(dataclasses.replace(scenario(), boots=()))
    result = simulation.run()
    files = write_report(out_dir, simulation, result, scenario_path=str(SCENARIO_PATH))
    assert [path.name for path in files.plot_paths] == [RESPONDERS_NAME, LIVE_PEERS_NAME]
    assert not (out_dir / BOOT_CDF_NAME).exists()
    markdown = files.markdown_path.read_text()
    assert "no boot time CDF" in markdown
    assert BOOT_CDF_NAME not in markdown
    assert json.loads(files.json_path.read_text())["code_version"]["git_commit"] == "unknown"


def test_partitions_are_recorded_and_shaded() -> None:
    """partition-heal: one peer cut off from 15 s to the heal at 40 s, then three at 60 s."""
    path = SCENARIOS / "partition-heal.toml"
    simulation = Simulation(load(path).with_duration(70.0))
    result = simulation.run()
    data = report_data(simulation, result, scenario_path=str(path), git_commit="x")
    series = data["series"]
    assert series["partitioned_peers"] == [[0.0, 0], [15.0, 1], [40.0, 0], [60.0, 3]]
    assert series["partition_sides"] == [[0.0, 0], [15.0, 1], [40.0, 0], [60.0, 1]]
    assert partition_spans(series) == [(15.0, 40.0), (60.0, 70.0)]
    assert series["live_peers_total"][-1][1] == len(simulation.world.members)
    assert "Grey spans mark partitions" in render_markdown(data, render_plots(data))


# --------------------------------------------------------------------------- the run is unchanged


def test_timeline_does_not_change_the_run() -> None:
    """The same seed with and without the timeline listener: same digest, same figures."""
    with_timeline = Simulation(scenario())
    assert with_timeline.timeline in with_timeline.world.listeners
    without = Simulation(scenario())
    without.world.listeners.remove(without.timeline)
    first = with_timeline.run()
    second = without.run()
    assert first.digest == second.digest
    assert figures_without_wall_time(first) == figures_without_wall_time(second)
    assert without.timeline.live_total == [(0.0, 0)], "the removed timeline heard nothing"
    assert len(with_timeline.timeline.live_total) > 2


def test_progress_callbacks_do_not_change_the_run() -> None:
    """Ticks every simulated second fire at 1 .. 29 s and leave digest and figures alone."""
    ticked = Simulation(scenario())
    ticks_s: list[float] = []
    every_simulated(ticked, 1.0, ticks_s.append)
    first = ticked.run()
    second = Simulation(scenario()).run()
    assert ticks_s == [float(second_s) for second_s in range(1, 30)]
    assert first.digest == second.digest
    assert figures_without_wall_time(first) == figures_without_wall_time(second)


def test_cli_out_writes_the_report_and_keeps_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--out` writes the files, names report.md, and changes nothing else of `--json`."""
    base = [
        "sim",
        str(SCENARIO_PATH),
        "--duration-s",
        str(DURATION_S),
        "--json",
    ]
    assert cli.main(base) == 0
    plain = json.loads(capsys.readouterr().out)
    assert cli.main([*base, "--out", str(tmp_path / "r")]) == 0
    with_out = json.loads(capsys.readouterr().out)
    assert with_out.pop("report") == str(tmp_path / "r" / MARKDOWN_NAME)
    del plain["wall_time_s"], with_out["wall_time_s"]
    assert with_out == plain
    written = json.loads((tmp_path / "r" / JSON_NAME).read_text())
    assert written["digest"] == plain["digest"]
    commit = written["code_version"]["git_commit"]
    assert commit == "unknown" or len(commit) in (40, 64)


def test_cli_text_report_says_where_the_report_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The text report ends with `report: DIR/report.md`."""
    out_dir = tmp_path / "text"
    assert cli.main(["sim", str(SCENARIO_PATH), "--duration-s", "20", "--out", str(out_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"report: {out_dir / MARKDOWN_NAME}"
    assert lines[-2].startswith("  digest ")
    assert (out_dir / MARKDOWN_NAME).is_file()


def test_cli_reports_an_unwritable_out_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--out` naming a regular file: exit 2 with a message, figures still printed."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code = cli.main(["sim", str(SCENARIO_PATH), "--duration-s", "5", "--out", str(blocker)])
    captured = capsys.readouterr()
    assert code == 2
    assert "cannot write the report" in captured.err
    assert "digest" in captured.out
    assert "report:" not in captured.out


# --------------------------------------------------------------------------- atomic writes


class _BreaksMidWrite(io.BufferedWriter):
    """A file that writes the first half of what it is given, then fails (disk full)."""

    def write(self, data: Any) -> int:
        super().write(bytes(data)[: len(data) // 2])
        super().flush()
        raise OSError(28, "No space left on device")


def _fdopen_breaking_mid_write(descriptor: int, mode: str) -> io.BufferedWriter:
    assert mode == "wb"
    return _BreaksMidWrite(io.FileIO(descriptor, "wb"))


def test_a_failure_mid_write_leaves_no_partial_report(
    reported: Reported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full half-way through: no report.json at all, and no temporary file left."""
    with monkeypatch.context() as patch:
        patch.setattr(os, "fdopen", _fdopen_breaking_mid_write)
        with pytest.raises(OSError, match="No space left"):
            write_report(
                tmp_path, reported.simulation, reported.result, scenario_path=str(SCENARIO_PATH)
            )
    assert list(tmp_path.iterdir()) == []


def test_a_failed_rewrite_keeps_the_previous_report(
    reported: Reported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash before the rename leaves the previous report.json whole and untouched."""
    args = (tmp_path, reported.simulation, reported.result)
    write_report(*args, scenario_path=str(SCENARIO_PATH))
    before = (tmp_path / JSON_NAME).read_bytes()
    real_replace = os.replace

    def replace_failing_for_json(source: str | Path, target: str | Path) -> None:
        if Path(target).name == JSON_NAME:
            raise KeyboardInterrupt  # a crash, not an error the code could handle
        real_replace(source, target)

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", replace_failing_for_json)
        with pytest.raises(KeyboardInterrupt):
            write_report(*args, scenario_path=str(SCENARIO_PATH), git_commit="new")
    assert (tmp_path / JSON_NAME).read_bytes() == before
    assert json.loads(before)["code_version"]["git_commit"] == "unknown"
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []


FILE_SIZE_LIMIT_SCRIPT = """
import resource, signal, sys
from pathlib import Path
from sim.report import write_atomic

target = Path(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
_soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
try:
    write_atomic(target, b"n" * 65536)
except OSError as error:
    print("failed", error.errno)
"""
"""Writes 64 KiB while the process may not grow any file past 4 KiB (a full disk)."""


@pytest.mark.parametrize("previous", [None, b"the whole previous report\n"])
def test_a_write_that_fails_half_way_leaves_no_partial_file(
    tmp_path: Path, previous: bytes | None
) -> None:
    """The file system refuses the write after 4 KiB: the old file or none, never a part."""
    target = tmp_path / JSON_NAME
    if previous is not None:
        target.write_bytes(previous)
    completed = subprocess.run(
        [sys.executable, "-c", FILE_SIZE_LIMIT_SCRIPT, str(target)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["failed", str(errno.EFBIG)]
    if previous is None:
        assert not target.exists()
    else:
        assert target.read_bytes() == previous
    assert [path.name for path in tmp_path.iterdir()] == ([] if previous is None else [JSON_NAME])


def test_write_atomic_replaces_the_whole_file(tmp_path: Path) -> None:
    """A rewrite leaves exactly the new bytes, readable by others, and no temporary file."""
    target = tmp_path / "x.json"
    write_atomic(target, b"a much longer first version\n")
    write_atomic(target, b"short\n")
    assert target.read_bytes() == b"short\n"
    assert target.stat().st_mode & 0o777 == 0o644
    assert [path.name for path in tmp_path.iterdir()] == ["x.json"]


def test_plots_are_deterministic(reported: Reported, tmp_path: Path) -> None:
    """The same run drawn again (another run of the same seed) gives the same PNG bytes."""
    simulation = Simulation(scenario())
    result = simulation.run()
    files = write_report(tmp_path, simulation, result, scenario_path=str(SCENARIO_PATH))
    for first, second in zip(reported.files.plot_paths, files.plot_paths, strict=True):
        assert first.read_bytes() == second.read_bytes(), first.name
    again = json.loads(files.json_path.read_text())
    first_data = dict(reported.data)
    for data in (again, first_data):
        del data["wall_time_s"], data["code_version"]
    assert again == first_data
