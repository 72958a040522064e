"""Self-healing responders over many seeds: the shipped responder scenarios, checked.

Each scenario runs over `RESPONDER_SEEDS` seeds (200 by default, the least the test plan
asks for; `PEERPXE_SIM_SEEDS=N` raises it for a nightly run), two processes at a time. Per
run: no invariant broken (one leader per subnet and term, bounded overlap of reachable
leaders, membership), every boot that failed did so while its subnet had no eligible peer.
Over the sweep: the failover p99 meets the target where the scenario promises it, and no
DISCOVER got two offers in steady state on a healthy network. A failure prints the command
that reproduces it.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import pytest

from sim.run import Simulation
from sim.scenario import load
from tests.sim.helpers import SCENARIOS

pytestmark = pytest.mark.sim

RESPONDER_SEEDS = max(200, int(os.environ.get("PEERPXE_SIM_SEEDS", "200")))
FAILOVER_P99_TARGET_S = 4.0


@dataclass(frozen=True)
class Outcome:
    """What one seed of one scenario showed (small, to cross the process pool)."""

    seed: int
    violations: tuple[str, ...]
    failovers: tuple[float, ...]
    failed_servable: int
    boot_failures: dict[str, int]
    attempted: int
    succeeded: int
    finished: int
    steady_discovers: int
    steady_dual_offers: int
    dual_leader_s_max: float


def _run(name: str, seed: int) -> Outcome:
    simulation = Simulation(load(SCENARIOS / name), seed)
    result = simulation.run()
    return Outcome(
        seed=seed,
        violations=tuple(str(violation) for violation in result.violations[:3]),
        failovers=tuple(simulation.leadership.figures.failover_s),
        failed_servable=result.boots_failed - result.boots_failed_unservable,
        boot_failures=result.boot_failures,
        attempted=result.boots_attempted,
        succeeded=result.boots_succeeded,
        finished=result.boots_succeeded + result.boots_failed,
        steady_discovers=result.steady_discovers,
        steady_dual_offers=result.steady_dual_offers,
        dual_leader_s_max=result.dual_leader_s_max,
    )


def _sweep(name: str) -> list[Outcome]:
    seeds = range(1, RESPONDER_SEEDS + 1)
    with ProcessPoolExecutor(max_workers=2) as pool:
        return list(pool.map(_run, [name] * len(seeds), seeds, chunksize=8))


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(0.99 * len(ordered))) - 1]


def _check_every_seed(name: str, outcomes: list[Outcome]) -> None:
    problems = [
        f"seed {o.seed}: {list(o.violations) or o.boot_failures} -- reproduce: "
        f"peerpxe sim scenarios/{name} --seed {o.seed}"
        for o in outcomes
        if o.violations or o.failed_servable
    ]
    assert not problems, "\n".join(problems[:10])
    assert len(outcomes) >= 200


@pytest.mark.parametrize(
    ("name", "steady_dual_rate_max"),
    [
        ("responder-crash.toml", 0.0),
        ("crash-loop.toml", 0.0),
        ("partition-heal.toml", 0.0),
        # 2% and 30% loss: a client whose first two DISCOVERs went unanswered (lost) is
        # answered by the leader and by the first standby on its third (by design, see
        # actors/boot/actor.py); both offers are valid.
        ("responder-churn.toml", 0.005),
        ("lossy-links.toml", 0.05),
    ],
)
def test_responder_scenario_over_200_seeds(name: str, steady_dual_rate_max: float) -> None:
    """Invariants on every seed; every servable boot boots; failover p99 within target."""
    outcomes = _sweep(name)
    _check_every_seed(name, outcomes)
    failovers = [gap for outcome in outcomes for gap in outcome.failovers]
    assert failovers, "the scenario never lost its responder"
    p99 = _p99(failovers)
    print(f"\n{name}: {len(failovers)} failovers, p99 {p99:.2f} s, max {max(failovers):.2f} s")
    if name != "partition-heal.toml":
        # A partition can cut off the leader with both standbys; the next in line then
        # waits for discovery to declare them dead (documented in docs/election.md).
        assert p99 <= FAILOVER_P99_TARGET_S, f"failover p99 {p99:.2f} s"
    finished = sum(outcome.finished for outcome in outcomes)
    succeeded = sum(outcome.succeeded for outcome in outcomes)
    assert sum(outcome.attempted for outcome in outcomes) >= finished > 0
    assert succeeded / finished >= 0.97, f"{succeeded}/{finished} finished boots succeeded"
    dual = sum(outcome.steady_dual_offers for outcome in outcomes)
    steady = sum(outcome.steady_discovers for outcome in outcomes)
    print(f"{name}: steady-state DISCOVERs {steady}, with two offers {dual}")
    assert steady > 0
    assert dual <= steady_dual_rate_max * steady, f"{dual} of {steady} got two offers"


def test_partition_heal_leaves_one_responder_in_bounded_time() -> None:
    """After every heal the stale leader steps down: overlaps of reachable leaders end
    within discovery's reconnect interval plus a few heartbeats, on every seed."""
    outcomes = [_run("partition-heal.toml", seed) for seed in range(1, 11)]
    worst_s = max(outcome.dual_leader_s_max for outcome in outcomes)
    assert 0.0 < worst_s <= 15.0, f"worst overlap {worst_s:.2f} s"
