"""Scenario files: valid ones load; every error names file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.scenario import ScenarioError, load, parse
from tests.sim.helpers import SCENARIOS

GOOD = """\
[scenario]
name = "t"
duration_s = 10

[network]
loss = 0.01
latency = { kind = "uniform", base_ms = 0.2, jitter_ms = 0.1 }

[discovery]
probe_interval_s = 2.0

[[subnet]]
name = "a"
cidr = "10.0.0.0/24"
site = "s1"
peers = 3

[[subnet]]
name = "b"
cidr = "10.0.1.0/24"
site = "s1"
peers = 2

[[event]]
at_s = 5
action = "crash"
targets = ["random:1@a", "s1-b-001"]
"""


def test_shipped_scenarios_load() -> None:
    """Every file in scenarios/ is valid and starts with a comment saying its question."""
    paths = sorted(SCENARIOS.glob("*.toml"))
    names = [path.name for path in paths]
    assert {"default.toml", "membership-256.toml", "responder-crash.toml"} <= set(names)
    for path in paths:
        scenario = load(path)
        assert scenario.duration_s > 0
        assert path.read_text().startswith("# Question:")


def test_good_scenario_fields() -> None:
    """Node ids are deterministic and the knobs override the defaults."""
    scenario = parse(GOOD, "x.toml")
    assert scenario.node_ids() == ["s1-a-000", "s1-a-001", "s1-a-002", "s1-b-000", "s1-b-001"]
    assert scenario.knobs.probe_interval_s == 2.0
    assert scenario.network.lan.kind == "uniform"
    assert scenario.network.lan.base_s == pytest.approx(0.0002)
    assert scenario.events[0].targets == ("random:1@a", "s1-b-001")
    assert scenario.subnets[0].host_of(0) == "10.0.0.1"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "peers = 2",
            "peers = -3",
            "x.toml:22: subnet[1].peers: expected a positive integer, got -3",
        ),
        ("loss = 0.01", "loss = 2", "x.toml:6: network.loss: expected a number >= 0.0"),
        ("loss = 0.01", "lost = 0.01", "x.toml:6: network.lost: unknown key"),
        ('action = "crash"', 'action = "explode"', "x.toml:26: event[0].action: expected one of"),
        ('"s1-b-001"]', '"s1-z-001"]', "x.toml:27: event[0].targets: 's1-z-001' is neither"),
        ("random:1@a", "random:1@zz", "x.toml:27: event[0].targets: 'random:1@zz': unknown subnet"),
        ("duration_s = 10", "duration_s = 0", "x.toml:3: scenario.duration_s: expected a number >"),
        ('name = "t"', "", "x.toml:1: scenario.name: missing required key"),
        ("probe_interval_s = 2.0", "probe_interval_s = 0.1", "x.toml:9: discovery: invalid knobs"),
        ("probe_interval_s = 2.0", "probe_every = 1", "x.toml:10: discovery.probe_every: unknown"),
        ('cidr = "10.0.1.0/24"', 'cidr = "10.0.0.0/25"', "x.toml:20: subnet[1].cidr: overlaps"),
        ("peers = 3", "peers = 300", "x.toml:16: subnet[0].peers: 300 peers do not fit"),
        (
            "base_ms = 0.2",
            "base_ms = -1",
            "x.toml:7: network.latency: base_ms: expected a positive",
        ),
    ],
)
def test_errors_name_file_line_and_key(old: str, new: str, expected: str) -> None:
    """A bad value is reported at its own line, with its dotted key."""
    assert old in GOOD
    with pytest.raises(ScenarioError) as caught:
        parse(GOOD.replace(old, new, 1), "x.toml")
    assert str(caught.value).startswith(expected), str(caught.value)


def test_toml_syntax_error_names_file(tmp_path: Path) -> None:
    """A TOML syntax error is a ScenarioError naming the file."""
    path = tmp_path / "broken.toml"
    path.write_text("[scenario\n")
    with pytest.raises(ScenarioError, match=r"broken\.toml"):
        load(path)
