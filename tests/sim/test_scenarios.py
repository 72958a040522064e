"""Every shipped scenario over many seeds: no invariant is ever broken.

Durations are cut so the tier stays fast; a failure prints the command that reproduces it.
The 256-peer scenario is dominated by its join storm (every peer sights every other by
mDNS), which is exactly where admission bugs would show, so its seeds run that phase only,
two seeds at a time.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import pytest

from sim.run import Simulation
from sim.scenario import load
from tests.sim.helpers import SCENARIOS

pytestmark = pytest.mark.sim

SEEDS = range(1, 21)


def _sweep_one(name: str, seed: int, duration_s: float) -> tuple[int, int, list[str], int, int]:
    scenario = load(SCENARIOS / name).with_duration(duration_s)
    result = Simulation(scenario, seed).run()
    problems = [str(violation) for violation in result.violations[:5]]
    return seed, result.violation_count, problems, result.crashes, result.detected


def _reproduce(name: str, seed: int, duration_s: float) -> str:
    return f"peerpxe sim scenarios/{name} --seed {seed} --duration-s {duration_s}"


@pytest.mark.parametrize("seed", SEEDS)
def test_default_scenario_holds_invariants(seed: int) -> None:
    """The default churn scenario (cut to 45 s: two crash waves, a stop, a restart, a partition)."""
    _, count, problems, crashes, detected = _sweep_one("default.toml", seed, 45.0)
    assert count == 0, f"{problems} -- reproduce: {_reproduce('default.toml', seed, 45.0)}"
    assert crashes >= 1
    assert detected >= 1


def test_membership_256_join_storm_holds_invariants() -> None:
    """256 peers joining at once, 20 seeds: nobody admits a stranger or believes itself dead."""
    with ProcessPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(_sweep_one, ["membership-256.toml"] * 20, SEEDS, [4.5] * 20))
    failures = [
        f"seed {seed}: {problems} -- reproduce: {_reproduce('membership-256.toml', seed, 4.5)}"
        for seed, count, problems, _, _ in outcomes
        if count
    ]
    assert not failures, "\n".join(failures)
