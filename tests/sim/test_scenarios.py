"""Every shipped scenario over many seeds: no invariant is ever broken.

Each scenario runs over `SEED_COUNT` seeds (20 by default, the least the test plan asks for;
`PEERPXE_SIM_SEEDS=N` for more). Durations are cut so the tier stays fast; the nightly
setting `PEERPXE_SIM_FULL=1` runs the longer cuts below. A failure prints the command that
reproduces it.

The 256-peer scenario is dominated by its join storm (every peer sights every other by
mDNS), which is exactly where admission bugs would show, so its seeds run that phase only,
two seeds at a time: by default its first 1.5 simulated seconds (half of the peers have
booted; each has sighted, by its browse answers, everyone booted before it, held them
pending, pinged and synced them and admitted those that answered; the first few are being
sighted by everyone through their announcements); with `PEERPXE_SIM_FULL=1`, the whole
storm (4.5 s: every peer sights every other both ways).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor

import pytest

from sim.run import Simulation
from sim.scenario import load
from tests.sim.helpers import SCENARIOS

pytestmark = pytest.mark.sim

SEED_COUNT = max(20, int(os.environ.get("PEERPXE_SIM_SEEDS", "20")))
SEEDS = range(1, SEED_COUNT + 1)
FULL = os.environ.get("PEERPXE_SIM_FULL") == "1"
DEFAULT_S = 90.0 if FULL else 45.0
JOIN_STORM_S = 4.5 if FULL else 1.5


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
    _, count, problems, crashes, detected = _sweep_one("default.toml", seed, DEFAULT_S)
    assert count == 0, f"{problems} -- reproduce: {_reproduce('default.toml', seed, DEFAULT_S)}"
    assert crashes >= 1
    assert detected >= 1


def test_membership_256_join_storm_holds_invariants() -> None:
    """256 peers joining at once, 20 seeds: nobody admits a stranger or believes itself dead."""
    count = len(SEEDS)
    with ProcessPoolExecutor(max_workers=2) as pool:
        outcomes = list(
            pool.map(_sweep_one, ["membership-256.toml"] * count, SEEDS, [JOIN_STORM_S] * count)
        )
    name = "membership-256.toml"
    failures = [
        f"seed {seed}: {problems} -- reproduce: {_reproduce(name, seed, JOIN_STORM_S)}"
        for seed, violations, problems, _, _ in outcomes
        if violations
    ]
    assert not failures, "\n".join(failures)
    assert len(outcomes) == count >= 20


def _detection_one(seed: int) -> tuple[int, list[float], int, int]:
    simulation = Simulation(load(SCENARIOS / "membership-256.toml"), seed)
    result = simulation.run()
    return result.violation_count, list(simulation.metrics.detections_s), result.false_dead, \
        result.undetected  # fmt: skip


def test_membership_targets_in_a_256_peer_subnet() -> None:
    """The foundation's membership targets (256 peers, 1% loss, 1% slow peers, 8 crashes a
    run): every live peer has declared each crash dead with p50 <= 6 s and p99 <= 15 s over
    the pooled crashes of 4 seeds, and no healthy peer is ever declared dead."""
    seeds = [1, 2, 3, 4]
    with ProcessPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(_detection_one, seeds))
    detections = sorted(d for _, found, _, _ in outcomes for d in found)
    assert all(violations == 0 for violations, _, _, _ in outcomes)
    assert sum(false_dead for _, _, false_dead, _ in outcomes) == 0
    assert len(detections) >= 24, f"only {len(detections)} crashes detected by everyone"
    p50 = detections[max(1, math.ceil(0.50 * len(detections))) - 1]
    p99 = detections[max(1, math.ceil(0.99 * len(detections))) - 1]
    print(
        f"\nmembership-256: {len(detections)} crashes, detection p50 {p50:.2f} s, p99 {p99:.2f} s"
    )
    assert p50 <= 6.0
    assert p99 <= 15.0
