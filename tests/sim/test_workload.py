"""Churn models and trace replay inside runs: scenario tables, world actions, the replay
command, and every shipped scenario (short cut) holding its invariants deterministically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peerpxe.cli import main
from sim.network import MAIN_SIDE
from sim.run import Simulation
from sim.scenario import ScenarioError, load, parse
from sim.traces import TraceError
from tests.sim.helpers import SCENARIOS

pytestmark = pytest.mark.sim

BASE = """
[scenario]
name = "w"
duration_s = 60
[[subnet]]
name = "a"
cidr = "10.5.0.0/24"
site = "s1"
peers = 6
"""


def _parse(extra: str) -> Simulation:
    return Simulation(parse(BASE + extra, "w.toml"), 1)


def test_session_churn_crashes_and_restarts_peers_deterministically() -> None:
    extra = """
[[churn]]
model = "sessions"
targets = ["random:4@a"]
session = { kind = "exponential", mean_s = 10 }
down = { kind = "constant", value_s = 5 }
"""
    first, second = _parse(extra), _parse(extra)
    assert [a.nodes for a in first.planned] == [a.nodes for a in second.planned]
    assert {a.what for a in first.planned} == {"crash", "start"}
    assert len({node for a in first.planned for node in a.nodes}) == 4
    result = first.run()
    assert result.violation_count == 0
    assert result.churn_applied > 4
    assert result.digest == second.run().digest


def test_office_day_peers_are_off_until_they_come_in() -> None:
    extra = """
[[churn]]
model = "office-day"
targets = ["all@a"]
on_at_s = 30
off_at_s = 1000
jitter_s = 5
"""
    simulation = _parse(extra)
    simulation.at(20.0, lambda: None)
    result = simulation.run()
    starts = sorted(a.time_s for a in simulation.planned if a.what == "start")
    assert len(starts) == 6
    assert all(25.0 <= time_s <= 35.0 for time_s in starts)
    assert result.churn_skipped == 0
    assert all(node.running for node in simulation.world.members.values())
    assert all(node.life == 1 for node in simulation.world.members.values())


def test_switch_failure_takes_the_subnets_clients_along() -> None:
    """A switch failure cuts a whole subnet off: its PXE clients go with its peers, so
    they still boot from them."""
    extra = """
[[churn]]
model = "switch-failure"
targets = ["all@a"]
at_s = 10
down_s = 40
[[boot]]
subnet = "a"
at_s = 15
count = 5
spread_s = 20
"""
    simulation = _parse(extra)
    sides: list[int] = []
    simulation.at(20.0, lambda: sides.append(simulation.world.clients_side("10.5.0.0/24")))
    result = simulation.run()
    assert sides
    assert sides[0] != MAIN_SIDE
    assert simulation.world.clients_side("10.5.0.0/24") == MAIN_SIDE  # rejoined at 50 s
    assert result.boots_succeeded == 5
    assert result.violation_count == 0


def test_swizzle_clog_partitions_and_rejoins_every_clogged_peer() -> None:
    extra = """
[[churn]]
model = "swizzle-clog"
targets = ["all@a"]
start_s = 10
interval_s = 2
hold_s = 5
count = 3
"""
    simulation = _parse(extra)
    joins = [a for a in simulation.planned if a.what == "join"]
    rejoins = [a for a in simulation.planned if a.what == "rejoin"]
    assert len(joins) == len(rejoins) == 3
    assert sorted(a.nodes for a in joins) == sorted(a.nodes for a in rejoins)
    assert simulation.run().violation_count == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[[churn]]\nmodel = "tornado"\ntargets = ["all"]\n', "churn[0].model: expected one of"),
        ('[[churn]]\nmodel = "sessions"\ntargets = ["all"]\ndown = { kind = "constant", '
         'value_s = 1 }\n', "churn[0].session: missing required key"),
        ('[[churn]]\nmodel = "sessions"\ntargets = ["all"]\nsession = { kind = "weibull", '
         'shape = -1, scale_s = 5 }\ndown = { kind = "constant", value_s = 1 }\n', "shape"),
        ('[[churn]]\nmodel = "power-cut"\ntargets = ["leader@a"]\nat_s = 1\n'
         'down = { kind = "constant", value_s = 1 }\n', "not roles"),
        ('[[churn]]\nmodel = "power-cut"\ntargets = ["all@zz"]\nat_s = 1\n'
         'down = { kind = "constant", value_s = 1 }\n', "unknown subnet"),
        ('[[churn]]\nmodel = "switch-failure"\ntargets = ["all"]\nat_s = -1\ndown_s = 3\n',
         "churn[0].at_s: expected a number >= 0"),
        ('[[churn]]\nmodel = "swizzle-clog"\ntargets = ["all"]\nstart_s = 1\n'
         'interval_s = 1\nmode = "melt"\n', "churn[0].mode"),
        ('[[churn]]\nmodel = "sessions"\ntargets = ["all"]\nsession = { kind = "constant", '
         'value_s = 1 }\ndown = { kind = "constant", value_s = 1 }\nspeed = 3\n',
         "churn[0].speed: unknown key"),
        ('[replay]\ntrace = "missing.jsonl"\n', "replay.trace: no such trace file"),
        ('[replay]\ntrace = "x.bin"\n', "replay.format: missing required key"),
    ],
)  # fmt: skip
def test_bad_churn_and_replay_tables_name_file_line_and_key(extra: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=r"^w\.toml:\d+: ") as caught:
        parse(BASE + extra, "w.toml")
    assert message in str(caught.value)


def test_kinds_give_weights_in_rank_order() -> None:
    text = BASE.replace(
        "peers = 6", "peers = 6\nkinds = { laptop = 2, server = 1, wifi = 1, never = 2 }"
    )
    (subnet,) = parse(text, "w.toml").subnets
    assert [subnet.weight_of(i) for i in range(6)] == [90, 40, 40, 20, 0, 0]
    bad = BASE.replace("peers = 6", "peers = 6\nkinds = { server = 2 }")
    with pytest.raises(ScenarioError, match=r"subnet\[0\]\.kinds: the kinds add up to 2"):
        parse(bad, "w.toml")


def test_trace_with_an_unknown_subnet_is_refused_with_its_line(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"time_s": 1, "event": "crash", "node": "s1-a-000"}\n'
                     '{"time_s": 2, "event": "partition", "subnet": "zz"}\n')  # fmt: skip
    scenario = parse(BASE + f'[replay]\ntrace = "{trace}"\nmapping = "identity"\n', "w.toml")
    with pytest.raises(TraceError, match=r"t\.jsonl:2: unknown subnet 'zz'"):
        Simulation(scenario, 1)


def test_replay_command_replays_the_shipped_jsonl_trace(
    capsys: pytest.CaptureFixture[str],
) -> None:
    trace = str(SCENARIOS / "traces" / "responder-crash.jsonl")
    scenario = str(SCENARIOS / "trace-replay.toml")
    code = main(["replay", trace, "--scenario", scenario, "--mapping", "identity", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["churn_applied"] >= 8
    assert result["crashes"] >= 2
    assert result["boots_failed"] == result["boots_failed_unservable"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--cut", "5"], "--cut expects START,END"),
        (["--cut", "9,3"], "cut.end_s must be greater"),
        (["--mapping", "identity"], "(not in the topology)"),
    ],
)
def test_replay_command_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = str(SCENARIOS / "traces" / "office-week.avt")
    code = main(["replay", trace, "--scenario", str(SCENARIOS / "trace-replay.toml"), *argv])
    assert code == 2
    assert message in capsys.readouterr().err


SHIPPED = sorted(path.name for path in SCENARIOS.glob("*.toml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_scenario_holds_its_invariants_deterministically(name: str) -> None:
    """Each scenario in scenarios/, cut to at most 60 simulated seconds, two seeds.

    Scenarios that replicate a package move hundreds of MiB between hundreds of peers: they
    are cut to 25 s (publish and the first transfers, WAN cap and corruption checks) and run
    one seed; bench/replication.py runs them whole."""
    scenario = load(SCENARIOS / name)
    scenario = scenario.with_duration(min(scenario.duration_s, 60.0))
    seeds: tuple[int, ...] = (1, 2)
    if scenario.replication is not None:
        scenario = scenario.with_duration(min(scenario.duration_s, 25.0))
        seeds = (1,)
    if name == "membership-256.toml":
        scenario = scenario.with_duration(1.5)  # its join storm; tests/sim/test_scenarios.py
    for seed in seeds:
        first = Simulation(scenario, seed).run()
        assert first.violation_count == 0, (name, seed, first.violations[:3])
        assert first.digest == Simulation(scenario, seed).run().digest
