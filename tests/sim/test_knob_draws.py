"""`[randomize]`: knob ranges drawn per seed, within valid ranges, reported with the run."""

from __future__ import annotations

import pytest

from sim.run import Simulation
from sim.scenario import ScenarioError, parse

pytestmark = pytest.mark.sim

BASE = """
[scenario]
name = "k"
duration_s = 20
[[subnet]]
name = "a"
cidr = "10.6.0.0/24"
site = "s1"
peers = 4
"""
RANGES = """
[randomize.election]
heartbeat_interval_s = [0.2, 1.0]
lease_timeout_s = [0.5, 3.0]
standby_count = [1, 3]
[randomize.network]
loss = [0.0, 0.05]
"""


def test_knobs_are_drawn_per_seed_within_their_ranges_and_valid() -> None:
    scenario = parse(BASE + RANGES, "k.toml")
    drawn = [Simulation(scenario, seed).knobs_drawn for seed in range(1, 30)]
    for knobs in drawn:
        assert set(knobs) == {
            "election.heartbeat_interval_s",
            "election.lease_timeout_s",
            "election.standby_count",
            "network.loss",
        }
        assert 0.2 <= knobs["election.heartbeat_interval_s"] <= 1.0
        assert knobs["election.heartbeat_interval_s"] < knobs["election.lease_timeout_s"] <= 3.0
        assert knobs["election.standby_count"] in (1, 2, 3)
        assert isinstance(knobs["election.standby_count"], int)
        assert 0.0 <= knobs["network.loss"] <= 0.05
    assert len({knobs["network.loss"] for knobs in drawn}) == len(drawn)  # really drawn


def test_the_run_uses_and_reports_the_drawn_knobs() -> None:
    scenario = parse(BASE + RANGES, "k.toml")
    simulation = Simulation(scenario, 4)
    knobs = simulation.knobs_drawn
    assert simulation.scenario.election.lease_timeout_s == knobs["election.lease_timeout_s"]
    assert simulation.scenario.network.loss == knobs["network.loss"]
    result = simulation.run()
    assert result.knobs_drawn == knobs
    again = Simulation(scenario, 4).run()
    assert again.digest == result.digest
    assert Simulation(parse(BASE, "k.toml"), 4).knobs_drawn == {}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("[randomize.election]\nlease_timeout_s = [3.0, 1.0]\n", "low 3.0 is above high 1.0"),
        ("[randomize.election]\nlease_timeout_s = 2.0\n", "expected [low, high]"),
        ("[randomize.election]\nstandby_count = [1.0, 2.5]\n", "integer bounds"),
        ("[randomize.election]\nfoo_s = [1, 2]\n", "unknown knob 'election.foo_s'"),
        ("[randomize.weather]\nrain = [1, 2]\n", "unknown section 'weather'"),
        ("[randomize.network]\nloss = [0.0, 1.5]\n", "network.loss"),
        ("[randomize]\nelection = 3\n", "expected a table"),
    ],
)
def test_bad_ranges_name_the_file_line_and_knob(table: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=r"^k\.toml:\d+: randomize") as caught:
        parse(BASE + table, "k.toml")
    assert message in str(caught.value)


def test_ranges_with_no_valid_combination_are_refused_when_drawn() -> None:
    scenario = parse(
        BASE + "[randomize.election]\nheartbeat_interval_s = [2.0, 3.0]\n"
        "lease_timeout_s = [0.5, 1.0]\n",
        "k.toml",
    )
    with pytest.raises(ScenarioError, match=r"k\.toml: randomize: no valid knob combination"):
        Simulation(scenario, 1)
