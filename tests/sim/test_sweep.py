"""Parameter sweeps: seed and `--set` parsing, grids, settings, statistics, and backends.

The small sweep (responder-crash cut to 20 s, 4 seeds, 2 lease timeouts) runs in this
process, through a process pool and through a real two-process Dask `LocalCluster` bound
to 127.0.0.1; all three must give the same records (wall time aside) and aggregates.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from peerpxe import cli
from peerpxe.sweep_command import DASK_MISSING, KEY_FIGURES, MATPLOTLIB_MISSING, execute
from sim.scenario import Scenario, load
from sim.sweep import (
    FigureStats,
    KnobSpec,
    SweepError,
    SweepPlan,
    aggregate,
    apply_setting,
    apply_settings,
    build_grid,
    check_grid,
    figure_stats,
    figures_of,
    order_records,
    parse_seeds,
    parse_set,
    parse_sets,
    run_point,
    summarise,
    t_quantile_975,
)
from tests.sim.helpers import SCENARIOS

pytestmark = pytest.mark.sim

CRASH = SCENARIOS / "responder-crash.toml"
SMALL_SETS = ("scenario.duration_s=20", "election.lease_timeout_s=1.5,3.0")
SMALL_SEEDS = (1, 2, 3, 4)


@pytest.fixture(scope="module")
def crash() -> Scenario:
    return load(CRASH)


# --------------------------------------------------------------------------- seeds


@pytest.mark.parametrize(
    ("text", "seeds"),
    [
        ("7", (7,)),
        ("0", (0,)),
        ("1-3", (1, 2, 3)),
        (" 9 , 1-2 ,5", (1, 2, 5, 9)),
        ("4-4", (4,)),
    ],
)
def test_seeds_parse_to_sorted_unique_seeds(text: str, seeds: tuple[int, ...]) -> None:
    """Seeds and ranges become every seed once, ascending."""
    assert parse_seeds(text) == seeds


def test_seeds_parse_ranges_and_singles() -> None:
    """The documented example gives 1012 seeds, ranges inclusive at both ends."""
    seeds = parse_seeds("1-1000,2000,3000-3010")
    assert len(seeds) == 1012
    assert seeds[:2] == (1, 2)
    assert seeds[999:1002] == (1000, 2000, 3000)
    assert seeds[-1] == 3010


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "seeds: none given (expected e.g. '1-1000,2000')"),
        ("  ", "seeds: none given (expected e.g. '1-1000,2000')"),
        ("1,,2", "seeds: empty item in '1,,2'"),
        ("3,", "seeds: empty item in '3,'"),
        ("a", "seeds: 'a' is neither a seed >= 0 nor a range like '1-1000'"),
        ("-3", "seeds: '-3' is neither a seed >= 0 nor a range like '1-1000'"),
        ("1-", "seeds: '1-' is neither a seed >= 0 nor a range like '1-1000'"),
        ("1.5", "seeds: '1.5' is neither a seed >= 0 nor a range like '1-1000'"),
        ("1-2-3", "seeds: '1-2-3' is neither a seed >= 0 nor a range like '1-1000'"),
        ("5-3", "seeds: range '5-3' goes down (write 3-5)"),
        ("1-10,5", "seeds: seed 5 is listed twice in '1-10,5'"),
        ("2,2", "seeds: seed 2 is listed twice in '2,2'"),
        ("0-1000000", "seeds: more than 1000000 seeds in '0-1000000'"),
        ("1-600000,700000-1300000", "seeds: more than 1000000 seeds in '1-600000,700000-1300000'"),
    ],
)
def test_bad_seeds_are_refused_with_a_clear_message(text: str, message: str) -> None:
    """Every malformed seed list names the bad item."""
    with pytest.raises(SweepError) as caught:
        parse_seeds(text)
    assert str(caught.value) == message


# --------------------------------------------------------------------------- --set


@pytest.mark.parametrize(
    ("text", "knob", "values"),
    [
        ("election.lease_timeout_s=1.0,1.5,3.0", "election.lease_timeout_s", (1.0, 1.5, 3.0)),
        ("discovery.probe_interval_s=2", "discovery.probe_interval_s", (2.0,)),
        ("discovery.gossip_fanout=1,4", "discovery.gossip_fanout", (1, 4)),
        ("election.standby_count=3", "election.standby_count", (3,)),
        ("network.loss=0.0,0.1", "network.loss", (0.0, 0.1)),
        ("network.duplicate=0.99", "network.duplicate", (0.99,)),
        ("network.slow_fraction=0.5", "scenario.slow_fraction", (0.5,)),
        ("scenario.slow_delay_s=0", "scenario.slow_delay_s", (0.0,)),
        ("tftp.bandwidth_mbit_s=10,1e3", "tftp.bandwidth_mbit_s", (10.0, 1000.0)),
        ("tftp.boot_file_bytes=1", "tftp.boot_file_bytes", (1,)),
        (" scenario.duration_s = 20 , 40 ", "scenario.duration_s", (20.0, 40.0)),
    ],
)
def test_set_specs_parse_to_typed_values(
    text: str, knob: str, values: tuple[float | int, ...]
) -> None:
    """A spec names its canonical knob and carries values of the field's own type."""
    spec = parse_set(text)
    assert spec == KnobSpec(knob, values)
    assert [type(value) for value in spec.values] == [type(value) for value in values]


LEASE = "election.lease_timeout_s"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (LEASE, f"expected section.knob=v1,v2,..., got '{LEASE}'"),
        ("=1", "expected section.knob=v1,v2,..., got '=1'"),
        ("election=1", "'election': expected section.knob, e.g. election.lease_timeout_s"),
        ("election.=1", "'election.': expected section.knob, e.g. election.lease_timeout_s"),
        (
            "boot.count=1",
            "'boot.count': unknown section 'boot' (expected one of discovery, election, "
            "network, scenario, tftp)",
        ),
        (
            "tftp.blksize=512",
            "unknown knob 'tftp.blksize' (tftp knobs: boot_file_bytes, bandwidth_mbit_s)",
        ),
        ("scenario.seed=3", "scenario.seed is not a knob: the seed is swept with --seeds"),
        ("network.lan=1", "network.lan is not a numeric knob (network knobs: loss, duplicate)"),
        ("election.standby_count=1.5", "election.standby_count: expected an integer, got '1.5'"),
        ("tftp.boot_file_bytes=1e5", "tftp.boot_file_bytes: expected an integer, got '1e5'"),
        (f"{LEASE}=abc", f"{LEASE}: expected a number, got 'abc'"),
        (f"{LEASE}=", f"{LEASE}: empty value (expected {LEASE}=v1,v2,...)"),
        (f"{LEASE}=1,,2", f"{LEASE}: empty value (expected {LEASE}=v1,v2,...)"),
        (f"{LEASE}=1,1.0", f"{LEASE}: value 1.0 is listed twice"),
        (f"{LEASE}=nan", f"{LEASE}: expected a finite number, got nan"),
        (f"{LEASE}=inf", f"{LEASE}: expected a finite number, got inf"),
        (f"{LEASE}=-1", f"{LEASE}: expected a number >= 0.0, got -1.0"),
        ("discovery.gossip_fanout=-2", "discovery.gossip_fanout: expected a number >= 0.0, got -2"),
        ("network.loss=1", "network.loss: expected a number >= 0.0 and <= 0.99, got 1.0"),
        (
            "network.slow_fraction=1.5",
            "scenario.slow_fraction: expected a number >= 0.0 and <= 1.0, got 1.5",
        ),
        ("scenario.duration_s=0", "scenario.duration_s: expected a number > 0.0, got 0.0"),
        ("tftp.bandwidth_mbit_s=0", "tftp.bandwidth_mbit_s: expected a number > 0.0, got 0.0"),
        ("tftp.boot_file_bytes=0", "tftp.boot_file_bytes: expected a number >= 1, got 0"),
    ],
)
def test_bad_set_specs_are_refused_naming_knob_and_value(text: str, message: str) -> None:
    """Every malformed `--set` names the knob and the bad value."""
    with pytest.raises(SweepError) as caught:
        parse_set(text)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "texts",
    [
        ["election.lease_timeout_s=1.5", "election.lease_timeout_s=3.0"],
        ["network.slow_fraction=0.1", "scenario.slow_fraction=0.2"],
    ],
)
def test_a_knob_is_swept_once(texts: list[str]) -> None:
    """The same knob twice (also through its alias) is refused."""
    with pytest.raises(SweepError) as caught:
        parse_sets(texts)
    assert str(caught.value).endswith(" is set twice")


# --------------------------------------------------------------------------- grid


def test_grid_is_the_cartesian_product_in_spec_order() -> None:
    """Points come in `--set` order with the last spec varying fastest."""
    specs = parse_sets(["election.lease_timeout_s=1.5,3.0", "network.loss=0.0,0.1,0.2"])
    grid = build_grid(specs)
    assert len(grid) == 6
    assert grid[0] == (("election.lease_timeout_s", 1.5), ("network.loss", 0.0))
    assert grid[1] == (("election.lease_timeout_s", 1.5), ("network.loss", 0.1))
    assert grid[5] == (("election.lease_timeout_s", 3.0), ("network.loss", 0.2))
    assert len(set(grid)) == 6


def test_no_specs_make_one_point() -> None:
    """Without `--set` the grid is the scenario as written."""
    assert build_grid(()) == ((),)


def test_plan_tasks_are_ordered_by_point_then_seed() -> None:
    """Every (point, seed) once, point-major."""
    plan = SweepPlan("x.toml", build_grid(parse_sets(["network.loss=0.0,0.1"])), (3, 5))
    assert [(task.settings[0][1], task.seed) for task in plan.tasks()] == [
        (0.0, 3),
        (0.0, 5),
        (0.1, 3),
        (0.1, 5),
    ]


# --------------------------------------------------------------------------- settings


def test_settings_give_a_new_scenario(crash: Scenario) -> None:
    """Each section's knob lands in its dataclass; the original scenario is untouched."""
    settings = (
        ("election.lease_timeout_s", 3.0),
        ("discovery.probe_interval_s", 2.0),
        ("network.loss", 0.2),
        ("network.slow_fraction", 0.5),
        ("tftp.bandwidth_mbit_s", 10.0),
        ("scenario.duration_s", 20.0),
    )
    changed = apply_settings(crash, settings)
    assert changed.election.lease_timeout_s == 3.0
    assert changed.knobs.probe_interval_s == 2.0
    assert changed.network.loss == 0.2
    assert changed.network.lan == crash.network.lan
    assert changed.slow_fraction == 0.5
    assert changed.tftp.bandwidth_mbit_s == 10.0
    assert changed.duration_s == 20.0
    assert changed.subnets == crash.subnets
    assert crash.election.lease_timeout_s == 1.5
    assert crash.network.loss == 0.01
    assert crash.duration_s == 90.0
    assert apply_settings(crash, ()) == crash


def test_one_setting_is_applied_alone(crash: Scenario) -> None:
    """`apply_setting` changes only its knob."""
    changed = apply_setting(crash, "election.standby_count", 3)
    assert changed.election.standby_count == 3
    assert changed.election.lease_timeout_s == crash.election.lease_timeout_s
    assert changed.knobs == crash.knobs


def test_the_knobs_own_validation_rejects_a_bad_value(crash: Scenario) -> None:
    """A lease shorter than the heartbeat passes the type check but not `ElectionKnobs`."""
    with pytest.raises(SweepError) as caught:
        apply_setting(crash, "election.lease_timeout_s", 0.4)
    message = str(caught.value)
    assert message.startswith("election.lease_timeout_s=0.4: rejected by ElectionKnobs: need 0 <")
    assert "lease_timeout_s" in message.removeprefix("election.lease_timeout_s=0.4")


def test_knobs_of_one_section_are_validated_together(crash: Scenario) -> None:
    """Heartbeat 2 s is refused alone (lease 1.5 s) but fine with a 5 s lease."""
    with pytest.raises(SweepError, match=r"^election.heartbeat_interval_s=2.0: rejected by"):
        apply_setting(crash, "election.heartbeat_interval_s", 2.0)
    both = (("election.heartbeat_interval_s", 2.0), ("election.lease_timeout_s", 5.0))
    changed = apply_settings(crash, both)
    assert (changed.election.heartbeat_interval_s, changed.election.lease_timeout_s) == (2.0, 5.0)
    bad = (("election.heartbeat_interval_s", 2.0), ("election.lease_timeout_s", 1.9))
    with pytest.raises(SweepError) as caught:
        apply_settings(crash, bad)
    assert str(caught.value).startswith(
        "election.heartbeat_interval_s=2.0, election.lease_timeout_s=1.9: rejected by ElectionKnobs"
    )


def test_discovery_validation_rejects_a_bad_value(crash: Scenario) -> None:
    """A probe timeout longer than the probe interval is refused by `DiscoveryKnobs`."""
    with pytest.raises(SweepError, match=r"^discovery.probe_timeout_s=5.0: rejected by Discovery"):
        apply_setting(crash, "discovery.probe_timeout_s", 5.0)


@pytest.mark.parametrize(
    ("knob", "value", "message"),
    [
        ("election.standby_count", 1.5, "election.standby_count: expected an integer, got 1.5"),
        ("election.lease_timeout_s", True, "election.lease_timeout_s: expected a number, got True"),
        ("election.lease_timeout_s", "2", "election.lease_timeout_s: expected a number, got '2'"),
        ("network.loss", 0.995, "network.loss: expected a number >= 0.0 and <= 0.99, got 0.995"),
        (
            "tftp.nope",
            1,
            "unknown knob 'tftp.nope' (tftp knobs: boot_file_bytes, bandwidth_mbit_s)",
        ),
    ],
)
def test_programmatic_settings_are_checked_too(
    crash: Scenario, knob: str, value: Any, message: str
) -> None:
    """`apply_setting` checks types and bounds, not only the parser."""
    with pytest.raises(SweepError) as caught:
        apply_setting(crash, knob, value)
    assert str(caught.value) == message


def test_check_grid_finds_a_bad_point_before_any_run(crash: Scenario) -> None:
    """One bad combination in the grid fails the whole sweep up front."""
    good = build_grid(parse_sets(["election.lease_timeout_s=1.5,3.0"]))
    check_grid(crash, good)
    bad = build_grid(parse_sets(["election.lease_timeout_s=3.0,0.4"]))
    with pytest.raises(SweepError, match=r"^election.lease_timeout_s=0.4: "):
        check_grid(crash, bad)


# --------------------------------------------------------------------------- statistics


def test_t_quantiles_match_the_t_distribution() -> None:
    """Table values at both ends, the expansion beyond 30, decreasing towards 1.96."""
    assert t_quantile_975(1) == 12.706205
    assert t_quantile_975(3) == 3.182446
    assert t_quantile_975(30) == 2.042272
    assert t_quantile_975(31) == pytest.approx(2.039513, abs=2e-6)
    assert t_quantile_975(60) == pytest.approx(2.000298, abs=2e-6)
    assert t_quantile_975(999) == pytest.approx(1.962341, abs=2e-6)
    quantiles = [t_quantile_975(df) for df in range(1, 2000)]
    assert all(a > b for a, b in itertools.pairwise(quantiles))
    assert quantiles[-1] > 1.959963984540054


def test_stats_of_four_values_by_hand() -> None:
    """1, 2, 3, 4: mean 2.5, s = sqrt(5/3), half width t(3) * s / 2."""
    stats = figure_stats([3.0, 1.0, 4.0, 2.0])
    std = math.sqrt(5 / 3)  # 1.2909944
    half = 3.182446 * std / 2  # 2.0542602
    assert (stats.n, stats.missing, stats.mean, stats.min, stats.max) == (4, 0, 2.5, 1.0, 4.0)
    assert stats.std == pytest.approx(1.2909944, abs=1e-7)
    assert stats.std == pytest.approx(std, rel=1e-12)
    assert stats.ci95_low == pytest.approx(2.5 - 2.0542602, abs=1e-6)
    assert stats.ci95_high == pytest.approx(2.5 + half, rel=1e-12)
    assert stats.ci95_half_width == pytest.approx(2.0542602, abs=1e-6)


def test_none_values_are_skipped_and_counted() -> None:
    """2 and 4 among two Nones: n 2, mean 3, s = sqrt(2), half width t(1) * 1."""
    stats = figure_stats([None, 2.0, None, 4.0])
    assert (stats.n, stats.missing, stats.mean) == (2, 2, 3.0)
    assert stats.std == pytest.approx(math.sqrt(2), rel=1e-12)
    assert stats.ci95_low == pytest.approx(3.0 - 12.706205, rel=1e-12)
    assert stats.ci95_high == pytest.approx(3.0 + 12.706205, rel=1e-12)


def test_stats_below_two_values() -> None:
    """One value has a mean but no spread; no value has nothing."""
    assert figure_stats([7]) == FigureStats(1, 0, 7.0, None, None, None, 7.0, 7.0)
    assert figure_stats([None, None]) == FigureStats(0, 2, None, None, None, None, None, None)
    assert figure_stats([]) == FigureStats(0, 0, None, None, None, None, None, None)
    assert figure_stats([7]).ci95_half_width is None


def test_constant_values_have_a_zero_width_interval() -> None:
    """Forty equal values: std 0 and the interval is the mean itself."""
    stats = figure_stats([0.25] * 40)
    assert (stats.mean, stats.std, stats.ci95_low, stats.ci95_high) == (0.25, 0.0, 0.25, 0.25)


def test_a_large_sample_uses_the_expansion() -> None:
    """Values 0 ... 99: mean 49.5, s = sqrt(841.666...), t(99) = 1.984217."""
    stats = figure_stats([float(value) for value in range(100)])
    std = math.sqrt(sum((value - 49.5) ** 2 for value in range(100)) / 99)
    assert stats.std == pytest.approx(std, rel=1e-12)
    assert stats.ci95_half_width == pytest.approx(1.984217 * std / 10, abs=1e-5)


def _record(seed: int, settings: dict[str, Any], **figures: Any) -> dict[str, Any]:
    return {"seed": seed, "settings": settings, "scenario": "x", "wall_time_s": 0.1, **figures}


def test_figures_of_a_record() -> None:
    """Numbers and Nones are figures, counters are flattened, the boot ratio is derived."""
    record = _record(
        3,
        {"network.loss": 0.1},
        digest="ab",
        peers=8,
        detect_s_p99=None,
        flag=True,
        network={"sent": 10, "lost": 1},
        violations=["x"],
        boots_attempted=4,
        boots_succeeded=3,
    )
    scalars, counters = figures_of(record)
    assert scalars == {
        "peers": 8,
        "detect_s_p99": None,
        "boots_attempted": 4,
        "boots_succeeded": 3,
        "boot_success_ratio": 0.75,
    }
    assert counters == {"network.sent": 10.0, "network.lost": 1.0}
    assert figures_of(_record(1, {}, boots_attempted=0))[0]["boot_success_ratio"] is None


def test_aggregate_by_hand() -> None:
    """Means, missing counts and counters that a run lacks (0) over three records."""
    records = [
        _record(1, {}, failover_s_p99=1.0, network={"sent": 10}, boots_attempted=2),
        _record(2, {}, failover_s_p99=None, network={"sent": 20, "lost": 3}, boots_attempted=2),
        _record(3, {}, failover_s_p99=2.0, network={}, boots_attempted=0),
    ]
    for record, succeeded in zip(records, (2, 1, 0), strict=True):
        record["boots_succeeded"] = succeeded
    stats = aggregate(records)
    assert list(stats) == sorted(stats)
    assert "seed" not in stats
    assert "wall_time_s" not in stats
    failover = stats["failover_s_p99"]
    assert (failover.n, failover.missing, failover.mean) == (2, 1, 1.5)
    assert failover.ci95_high == pytest.approx(1.5 + 12.706205 * math.sqrt(0.5) / math.sqrt(2))
    sent = stats["network.sent"]
    assert (sent.n, sent.mean, sent.min, sent.max) == (3, 10.0, 0.0, 20.0)
    lost = stats["network.lost"]
    assert (lost.n, lost.missing, lost.mean) == (3, 0, 1.0)
    ratio = stats["boot_success_ratio"]
    assert (ratio.n, ratio.missing, ratio.mean) == (2, 1, 0.75)


def test_summary_does_not_depend_on_record_order() -> None:
    """Shuffled records give the same summary; points keep grid order."""
    grid = build_grid(parse_sets(["network.loss=0.0,0.1"]))
    plan = SweepPlan("x.toml", grid, (1, 2, 3))
    records = [
        _record(seed, dict(settings), value=float(seed) * (index + 1))
        for index, settings in enumerate(grid)
        for seed in plan.seeds
    ]
    shuffled = list(records)
    random.Random(4).shuffle(shuffled)
    assert shuffled != records
    assert order_records(plan, shuffled) == records
    summary = summarise(plan, shuffled)
    assert summary == summarise(plan, records)
    assert [point["settings"] for point in summary] == [
        {"network.loss": 0.0},
        {"network.loss": 0.1},
    ]
    assert [point["figures"]["value"]["mean"] for point in summary] == [2.0, 4.0]
    assert [point["runs"] for point in summary] == [3, 3]


def test_a_record_outside_the_plan_is_a_bug() -> None:
    """Records must belong to the plan's grid."""
    plan = SweepPlan("x.toml", ((),), (1,))
    with pytest.raises(AssertionError):
        order_records(plan, [_record(1, {"network.loss": 0.5})])


# --------------------------------------------------------------------------- runs


def _small_plan() -> SweepPlan:
    grid = build_grid(parse_sets(SMALL_SETS))
    return SweepPlan(str(CRASH), grid, SMALL_SEEDS)


def _deterministic(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in record.items() if k != "wall_time_s"} for record in records]


@pytest.fixture(scope="module")
def in_process() -> list[dict[str, Any]]:
    """The small sweep run in this process: the reference for the other backends."""
    return execute(_small_plan(), workers=1)


def test_run_point_applies_its_settings() -> None:
    """One run carries its settings; the knob changes the run."""
    short = (("scenario.duration_s", 20.0), ("election.lease_timeout_s", 1.5))
    longer = (("scenario.duration_s", 20.0), ("election.lease_timeout_s", 3.0))
    record = run_point(str(CRASH), short, 2)
    assert record["settings"] == dict(short)
    assert (record["seed"], record["sim_time_s"], record["scenario"]) == (2, 20, "responder-crash")
    assert record["digest"] != run_point(str(CRASH), longer, 2)["digest"]
    assert record["digest"] == run_point(str(CRASH), short, 2)["digest"]


def test_small_sweep_in_process(in_process: list[dict[str, Any]]) -> None:
    """8 runs in (point, seed) order, each with its own settings; leases change failover."""
    plan = _small_plan()
    assert [(r["settings"]["election.lease_timeout_s"], r["seed"]) for r in in_process] == [
        (lease, seed) for lease in (1.5, 3.0) for seed in SMALL_SEEDS
    ]
    assert all(record["sim_time_s"] == 20 for record in in_process)
    assert len({record["digest"] for record in in_process}) == 8
    summary = summarise(plan, in_process)
    failover = [point["figures"]["failover_s_p99"] for point in summary]
    assert all(stats["n"] == 4 for stats in failover)
    assert failover[0]["mean"] < failover[1]["mean"]  # a longer lease fails over later


def test_process_pool_gives_identical_results(in_process: list[dict[str, Any]]) -> None:
    """Two worker processes give the same records and aggregates as one process."""
    plan = _small_plan()
    pooled = execute(plan, workers=2)
    assert _deterministic(pooled) == _deterministic(in_process)
    assert summarise(plan, pooled) == summarise(plan, in_process)


@pytest.fixture
def dask_cluster() -> Iterator[str]:
    """A two-process Dask cluster on loopback; closed afterwards (checked)."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2,
        processes=True,
        threads_per_worker=1,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",  # no fixed port 8787 (it may be taken)
    )
    try:
        address = cluster.scheduler_address
        assert address.startswith("tcp://127.0.0.1:")
        yield address
    finally:
        cluster.close()
    assert cluster.status.name == "closed"


def test_dask_cluster_gives_identical_results(
    in_process: list[dict[str, Any]], dask_cluster: str
) -> None:
    """A real two-worker `LocalCluster` gives the same records and aggregates."""
    plan = _small_plan()
    distributed_records = execute(plan, scheduler=dask_cluster)
    assert _deterministic(distributed_records) == _deterministic(in_process)
    assert summarise(plan, distributed_records) == summarise(plan, in_process)


# --------------------------------------------------------------------------- command line


def _run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["sweep", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_top_level_help_lists_sweep() -> None:
    """`peerpxe --help` formats the sweep entry (argparse %-expands subcommand help)."""
    assert "sweep" in cli.build_parser().format_help()


def test_cli_sweep_json_and_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, in_process: list[dict[str, Any]]
) -> None:
    """`peerpxe sweep --json --out` prints the aggregates and writes sweep.json and plots."""
    sets = [arg for spec in SMALL_SETS for arg in ("--set", spec)]
    seeds = ",".join(str(seed) for seed in SMALL_SEEDS)
    args = [str(CRASH), "--seeds", seeds, *sets, "--workers", "1", "--json"]
    code, out, err = _run_cli(capsys, *args, "--out", str(tmp_path / "out"))
    assert code == 0, err
    report = json.loads(out)
    assert report["scenario"] == "responder-crash"
    assert report["seeds"] == list(SMALL_SEEDS)
    assert report["knobs"] == {
        "scenario.duration_s": [20.0],
        "election.lease_timeout_s": [1.5, 3.0],
    }
    assert report["run_count"] == 8
    assert report["violating_runs"] == []
    assert report["aggregates"] == json.loads(json.dumps(summarise(_small_plan(), in_process)))
    assert "runs" not in report
    saved = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert _deterministic(saved["runs"]) == json.loads(json.dumps(_deterministic(in_process)))
    assert saved["aggregates"] == report["aggregates"]
    for figure in KEY_FIGURES:
        assert (tmp_path / "out" / f"{figure}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "sweep.json" in err


def test_cli_sweep_table(capsys: pytest.CaptureFixture[str]) -> None:
    """Without --json, a plain-text table: one row per grid point, key figures as columns."""
    args = [str(CRASH), "--seeds", "1-2", "--set", "scenario.duration_s=10,20", "--workers", "1"]
    code, out, err = _run_cli(capsys, *args)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("sweep responder-crash (simulated): 4 runs, 2 grid points x 2")
    assert lines[1].split() == [
        "#",
        "scenario.duration_s",
        "runs",
        *KEY_FIGURES,
        "violating",
        "runs",
    ]
    assert lines[3].split()[:3] == ["0", "10.0", "2"]
    assert lines[4].split()[:3] == ["1", "20.0", "2"]
    assert len(lines) == 5


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seeds", "5-3"], "peerpxe sweep: seeds: range '5-3' goes down (write 3-5)\n"),
        (
            ["--set", "election.lease_timeout_s=x"],
            "peerpxe sweep: election.lease_timeout_s: expected a number, got 'x'\n",
        ),
        (["--workers", "0"], "peerpxe sweep: --workers: expected a positive integer, got 0\n"),
        (
            ["--scheduler", "nowhere"],
            "peerpxe sweep: --scheduler: expected an address like tcp://10.0.0.5:8786, got "
            "'nowhere' (missing port number in address 'nowhere')\n",
        ),
    ],
)
def test_cli_bad_input_exits_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """Bad seeds, knobs, worker counts and scheduler addresses stop before any run."""
    code, out, err = _run_cli(capsys, str(CRASH), *argv)
    assert (code, out, err) == (2, "", message)


def test_cli_bad_combination_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A grid point the knobs' validation refuses stops the sweep up front."""
    code, _, err = _run_cli(capsys, str(CRASH), "--set", "election.lease_timeout_s=0.4")
    assert code == 2
    assert err.startswith("peerpxe sweep: election.lease_timeout_s=0.4: rejected by ElectionKnobs")


def test_cli_missing_scenario_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A missing scenario file is bad input."""
    code, _, err = _run_cli(capsys, str(tmp_path / "none.toml"))
    assert code == 2
    assert err.startswith("peerpxe sweep: ")
    assert "none.toml" in err


@pytest.mark.parametrize(
    ("module", "argv", "message"),
    [
        ("dask.distributed", ["--scheduler", "tcp://127.0.0.1:1"], DASK_MISSING),
        ("matplotlib.figure", ["--out", "plots"], MATPLOTLIB_MISSING),
    ],
)
def test_missing_optional_dependency_is_named(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    *,
    module: str,
    argv: list[str],
    message: str,
) -> None:
    """Without Dask (or matplotlib) the option says what to install, before any run."""
    monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.chdir(tmp_path)
    code, out, err = _run_cli(capsys, str(CRASH), *argv)
    assert (code, out, err) == (2, "", f"peerpxe sweep: {message}\n")
    assert not (tmp_path / "plots").exists()
    assert "pip install" in message
