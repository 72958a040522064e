"""Churn models: distributions, schedules, correlated failures, swizzle-clog, knobs."""

from __future__ import annotations

import itertools
import math
import random
import re
import statistics

import pytest

from actors.discovery import DiscoveryKnobs
from sim.churn import (
    DAY_S,
    MIN_INTERVAL_S,
    ChurnEvent,
    Constant,
    Distribution,
    Exponential,
    OfficeHours,
    Pareto,
    Weibull,
    distribution,
    office_days,
    randomize_knobs,
    randomized,
    session_schedule,
    site_power_cut,
    switch_failure,
    swizzle_clog,
)

DRAWS = 20_000
NODES = [f"n{index:02d}" for index in range(12)]


def draws(law: Distribution, seed: int = 7, count: int = DRAWS) -> list[float]:
    rng = random.Random(seed)
    return [law.draw_s(rng) for _ in range(count)]


def by_node(events: list[ChurnEvent]) -> dict[str, list[ChurnEvent]]:
    nodes: dict[str, list[ChurnEvent]] = {}
    for event in events:
        nodes.setdefault(event.node, []).append(event)
    return nodes


# --------------------------------------------------------------------------- distributions


@pytest.mark.parametrize(
    ("law", "expected_mean_s"),
    [
        (Exponential(100.0), 100.0),
        (Weibull(shape=0.7, scale_s=100.0), 100.0 * math.gamma(1 + 1 / 0.7)),
        (Weibull(shape=2.0, scale_s=50.0), 50.0 * math.sqrt(math.pi) / 2),
        (Pareto(shape=3.0, scale_s=10.0), 15.0),
        (Constant(42.0), 42.0),
    ],
)
def test_sample_mean_matches_the_distribution(law: Distribution, expected_mean_s: float) -> None:
    """Over 20,000 seeded draws the sample mean is within 5% of the closed-form mean."""
    assert law.mean_s == pytest.approx(expected_mean_s, rel=1e-12)
    assert statistics.fmean(draws(law)) == pytest.approx(expected_mean_s, rel=0.05)


def test_exponential_median_is_mean_times_ln2() -> None:
    """Exponential draws have the exponential's shape, not just its mean."""
    assert statistics.median(draws(Exponential(100.0))) == pytest.approx(69.3, rel=0.05)


def test_weibull_shape_one_is_exponential() -> None:
    """Weibull(1, s) has mean s and the exponential's coefficient of variation (1)."""
    sample = draws(Weibull(shape=1.0, scale_s=30.0))
    assert statistics.fmean(sample) == pytest.approx(30.0, rel=0.05)
    assert statistics.stdev(sample) / statistics.fmean(sample) == pytest.approx(1.0, rel=0.05)


def test_pareto_never_draws_below_its_minimum_and_is_heavy_tailed() -> None:
    """Pareto(shape, scale_s) draws are >= scale_s; with shape <= 1 the mean is infinite."""
    sample = draws(Pareto(shape=1.5, scale_s=300.0))
    assert min(sample) >= 300.0
    assert max(sample) > 100 * 300.0
    assert Pareto(shape=1.0, scale_s=1.0).mean_s == math.inf


def test_constant_draws_nothing_from_the_stream() -> None:
    """Constant never consumes randomness, so other draws are not shifted."""
    rng = random.Random(3)
    assert Constant(5.0).draw_s(rng) == 5.0
    assert rng.random() == random.Random(3).random()


@pytest.mark.parametrize(
    ("build", "named"),
    [
        (lambda: Exponential(0.0), "Exponential.mean_s"),
        (lambda: Exponential(-1.0), "Exponential.mean_s"),
        (lambda: Exponential(True), "Exponential.mean_s"),
        (lambda: Weibull(0.0, 1.0), "Weibull.shape"),
        (lambda: Weibull(1.0, math.inf), "Weibull.scale_s"),
        (lambda: Pareto(-2.0, 1.0), "Pareto.shape"),
        (lambda: Pareto(2.0, 0.0), "Pareto.scale_s"),
        (lambda: Constant(math.nan), "Constant.value_s"),
    ],
)
def test_bad_parameters_are_named(build: object, named: str) -> None:
    """A non-positive, infinite, NaN or boolean parameter is a ValueError naming it."""
    assert callable(build)
    with pytest.raises(ValueError, match="^" + re.escape(f"{named} must be a finite number > 0")):
        build()


def test_distribution_from_a_table() -> None:
    """`distribution()` builds each kind, with the Pareto aliases alpha and minimum_s."""
    assert distribution({"kind": "exponential", "mean_s": 60}) == Exponential(60.0)
    assert distribution({"kind": "weibull", "shape": 0.5, "scale_s": 10}) == Weibull(0.5, 10.0)
    assert distribution({"kind": "pareto", "alpha": 2, "minimum_s": 5}) == Pareto(2.0, 5.0)
    assert distribution({"kind": "constant", "value_s": 1.5}) == Constant(1.5)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"mean_s": 1}, "kind: expected one of"),
        ({"kind": "gamma", "mean_s": 1}, "kind: expected one of"),
        ({"kind": "weibull", "shape": 1, "scale": 2}, "weibull: unknown parameter 'scale'"),
        ({"kind": "weibull", "shape": 1}, "weibull: missing parameter 'scale_s'"),
        ({"kind": "exponential", "mean_s": "60"}, "exponential: mean_s must be a finite number"),
        ({"kind": "pareto", "shape": 2, "alpha": 2, "scale_s": 1}, "pareto: parameter 'shape'"),
        ({"kind": "exponential", "mean_s": -5}, "Exponential.mean_s must be"),
    ],
)
def test_distribution_table_errors(spec: dict[str, object], message: str) -> None:
    """Every problem in a distribution table is a ValueError naming the parameter."""
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        distribution(spec)


# --------------------------------------------------------------------------- sessions


def schedule(seed: int, nodes: list[str] = NODES, **options: bool) -> list[ChurnEvent]:
    rng = random.Random(seed)
    session, down = Weibull(0.7, 600.0), Exponential(60.0)
    return session_schedule(nodes, 3600.0, session, down, rng, **options)


def test_same_seed_same_schedule() -> None:
    """The schedule is a pure function of the seed: same seed, identical events."""
    assert schedule(11) == schedule(11)
    assert schedule(11) != schedule(12)


def test_a_node_schedule_does_not_depend_on_the_other_nodes() -> None:
    """Each node has its own stream: adding nodes leaves n00's schedule unchanged."""
    alone = by_node(schedule(5, ["n00", "n01"]))["n00"]
    crowded = by_node(schedule(5, ["n09", "n00", "x", "n01"]))["n00"]
    assert alone == crowded
    assert alone != by_node(schedule(5, ["n01", "n00"]))["n01"]


def test_sessions_alternate_and_stay_in_the_window() -> None:
    """Events are sorted; each node alternates crash, restart, ... inside [0, duration)."""
    events = schedule(3)
    assert [event.time_s for event in events] == sorted(event.time_s for event in events)
    assert all(0.0 < event.time_s < 3600.0 for event in events)
    for node_events in by_node(events).values():
        actions = [event.action for event in node_events]
        assert actions == ["crash", "restart"] * (len(actions) // 2) + ["crash"] * (
            len(actions) % 2
        )
        gaps = [b.time_s - a.time_s for a, b in itertools.pairwise(node_events)]
        assert all(gap >= MIN_INTERVAL_S for gap in gaps)


def test_clean_schedules_stop_instead_of_crash() -> None:
    """With clean=True the failures are clean stops, at the same times."""
    dirty, clean = schedule(4), schedule(4, clean=True)
    assert {event.action for event in clean} == {"stop", "restart"}
    assert [event.time_s for event in clean] == [event.time_s for event in dirty]


def test_availability_matches_session_and_down_means() -> None:
    """Long-run share of up time is mean_up / (mean_up + mean_down), here 0.9."""
    nodes = [f"m{index}" for index in range(40)]
    duration_s = 50_000.0
    events = session_schedule(
        nodes, duration_s, Exponential(90.0), Exponential(10.0), random.Random(9)
    )
    down_s = 0.0
    for node_events in by_node(events).values():
        for index, event in enumerate(node_events):
            if event.action == "crash":
                end_s = node_events[index + 1].time_s if index + 1 < len(node_events) else None
                down_s += (end_s if end_s is not None else duration_s) - event.time_s
    assert 1 - down_s / (len(nodes) * duration_s) == pytest.approx(0.9, abs=0.01)


def test_random_phase_spreads_the_first_failure() -> None:
    """Constant sessions fail in lockstep; a random phase spreads first failures over [0, 100)."""
    rng = random.Random(1)
    lockstep = session_schedule(NODES, 150.0, Constant(100.0), Constant(10.0), rng)
    assert {event.time_s for event in lockstep if event.action == "crash"} == {100.0}
    phased = session_schedule(
        NODES, 150.0, Constant(100.0), Constant(10.0), random.Random(1), random_phase=True
    )
    first = [node_events[0].time_s for node_events in by_node(phased).values()]
    assert len(set(first)) == len(NODES)
    assert all(0.0 < time_s < 100.0 for time_s in first)


def test_start_s_offsets_the_window() -> None:
    """With start_s, nodes are up from start_s and events stay in [start_s, start_s + d)."""
    events = session_schedule(
        ["a"], 100.0, Constant(30.0), Constant(5.0), random.Random(0), start_s=1000.0
    )
    assert [(event.time_s, event.action) for event in events] == [
        (1030.0, "crash"),
        (1035.0, "restart"),
        (1065.0, "crash"),
        (1070.0, "restart"),
    ]


@pytest.mark.parametrize(
    ("nodes", "duration_s", "message"),
    [
        (["a", "a"], 10.0, "duplicate node id 'a'"),
        ("abc", 10.0, "not one string"),
        (["a"], 0.0, "schedule.duration_s must be"),
        (["a", ""], 10.0, "non-empty strings"),
    ],
)
def test_schedule_arguments_are_checked(nodes: list[str], duration_s: float, message: str) -> None:
    """Duplicate or empty node ids and an empty window are ValueErrors."""
    with pytest.raises(ValueError, match=re.escape(message)):
        session_schedule(nodes, duration_s, Constant(1.0), Constant(1.0), random.Random(0))


# --------------------------------------------------------------------------- office days

WEEK = OfficeHours(weekend_days=(5, 6), overnight_fraction=0.2, jitter_s=1800.0)


def test_office_days_follow_the_clock() -> None:
    """Starts fall in 08:00 +- 30 min, stops in 18:00 +- 30 min, none on the weekend."""
    events = office_days(NODES, 14 * DAY_S, WEEK, random.Random(2))
    assert events
    for event in events:
        day, second_of_day = divmod(event.time_s, DAY_S)
        assert int(day) % 7 not in (5, 6)
        centre_s = WEEK.on_at_s if event.action == "start" else WEEK.off_at_s
        assert abs(second_of_day - centre_s) <= WEEK.jitter_s
    for node_events in by_node(events).values():
        actions = [event.action for event in node_events]
        assert actions[0::2] == ["start"] * len(actions[0::2])
        assert actions[1::2] == ["stop"] * len(actions[1::2])


def test_office_days_without_overnight_machines() -> None:
    """With overnight_fraction 0, each node starts and stops once per working day (10 of 14)."""
    hours = OfficeHours(weekend_days=(5, 6), overnight_fraction=0.0)
    counts = {
        node: len(node_events)
        for node, node_events in by_node(
            office_days(NODES, 14 * DAY_S, hours, random.Random(1))
        ).items()
    }
    assert counts == dict.fromkeys(NODES, 20)


def test_office_days_always_on_machines_start_once() -> None:
    """With overnight_fraction 1, every node is switched on once and never off."""
    hours = OfficeHours(overnight_fraction=1.0)
    events = office_days(NODES, 5 * DAY_S, hours, random.Random(1))
    assert [event.action for event in events] == ["start"] * len(NODES)
    assert all(event.time_s < DAY_S for event in events)


def test_office_days_leave_the_right_share_on_overnight() -> None:
    """About overnight_fraction of the evenings a machine is on, it stays on."""
    nodes = [f"pc{index}" for index in range(60)]
    hours = OfficeHours(overnight_fraction=0.3)
    events = office_days(nodes, 20 * DAY_S, hours, random.Random(8))
    stops = sum(event.action == "stop" for event in events)
    evenings_on = 20 * len(nodes)
    assert 1 - stops / evenings_on == pytest.approx(0.3, abs=0.03)


def test_office_days_are_deterministic() -> None:
    """Same seed, same office days; another seed differs."""
    assert office_days(NODES, 7 * DAY_S, WEEK, random.Random(4)) == office_days(
        NODES, 7 * DAY_S, WEEK, random.Random(4)
    )
    assert office_days(NODES, 7 * DAY_S, WEEK, random.Random(4)) != office_days(
        NODES, 7 * DAY_S, WEEK, random.Random(5)
    )


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"on_at_s": 1000.0}, "OfficeHours.on_at_s"),
        ({"off_at_s": 9 * 3600.0}, "OfficeHours.off_at_s"),
        ({"off_at_s": 23.9 * 3600.0}, "OfficeHours.off_at_s"),
        ({"jitter_s": -1.0}, "OfficeHours.jitter_s"),
        ({"overnight_fraction": 1.5}, "OfficeHours.overnight_fraction"),
        ({"weekend_days": (5, 7)}, "OfficeHours.weekend_days"),
        ({"weekend_days": (5, 5)}, "OfficeHours.weekend_days"),
    ],
)
def test_office_hours_are_checked(options: dict[str, object], named: str) -> None:
    """Impossible office hours are a ValueError naming the parameter."""
    with pytest.raises(ValueError, match="^" + re.escape(named)):
        OfficeHours(**options)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- correlated


def test_site_power_cut_crashes_all_then_restarts_each() -> None:
    """All nodes crash at t; each restarts once, after its own down time."""
    events = site_power_cut(NODES, 50.0, Exponential(30.0), random.Random(6))
    crashes = [event for event in events if event.action == "crash"]
    restarts = [event for event in events if event.action == "restart"]
    assert [event.node for event in crashes] == NODES
    assert {event.time_s for event in crashes} == {50.0}
    assert sorted(event.node for event in restarts) == NODES
    assert len({event.time_s for event in restarts}) == len(NODES)
    assert all(event.time_s > 50.0 for event in restarts)


def test_switch_failure_cuts_and_heals_a_subnet() -> None:
    """The subnet's nodes join one side at t and all leave it at t + d."""
    events = switch_failure(["a", "b"], 10.0, 25.0, "lan-a")
    assert events == [
        ChurnEvent(10.0, "a", "partition_add", side="lan-a"),
        ChurnEvent(10.0, "b", "partition_add", side="lan-a"),
        ChurnEvent(35.0, "a", "partition_remove"),
        ChurnEvent(35.0, "b", "partition_remove"),
    ]
    with pytest.raises(ValueError, match=re.escape("switch_failure.down_s")):
        switch_failure(["a"], 10.0, 0.0, "lan-a")


def clog_orders(events: list[ChurnEvent]) -> tuple[list[str], list[str]]:
    clogs = [event.node for event in events if event.action in ("partition_add", "slow_add")]
    unclogs = [
        event.node for event in events if event.action in ("partition_remove", "slow_remove")
    ]
    return clogs, unclogs


def test_swizzle_unclog_order_is_a_permutation_of_the_clogged() -> None:
    """Every clogged node is unclogged exactly once, all after the last clog."""
    for seed in range(30):
        events = swizzle_clog(NODES, random.Random(seed), start_s=5.0, interval_s=2.0, hold_s=3.0)
        clogs, unclogs = clog_orders(events)
        assert sorted(clogs) == sorted(unclogs)
        assert len(set(clogs)) == len(clogs) >= 1
        last_clog_s = max(event.time_s for event in events if event.action == "partition_add")
        first_unclog_s = min(event.time_s for event in events if event.action == "partition_remove")
        assert first_unclog_s == pytest.approx(last_clog_s + 2.0 + 3.0)


def test_swizzle_reorders_the_unclogs() -> None:
    """Unclogging is swizzled: neither always the clog order nor always its reverse."""
    orders = [
        clog_orders(swizzle_clog(NODES, random.Random(seed), start_s=0.0, interval_s=1.0, count=5))
        for seed in range(20)
    ]
    assert any(unclogs != clogs for clogs, unclogs in orders)
    assert any(unclogs != clogs[::-1] for clogs, unclogs in orders)
    assert len({tuple(clogs) for clogs, _ in orders}) > 1


def test_swizzle_clog_times_and_sides() -> None:
    """Clog i happens at start + i * interval; each node is alone on side clog:<node>."""
    events = swizzle_clog(NODES, random.Random(2), start_s=10.0, interval_s=4.0, count=3)
    clogs = [event for event in events if event.action == "partition_add"]
    assert [event.time_s for event in clogs] == [10.0, 14.0, 18.0]
    assert [event.side for event in clogs] == [f"clog:{event.node}" for event in clogs]
    assert swizzle_clog(NODES, random.Random(2), start_s=10.0, interval_s=4.0, count=3) == events


def test_swizzle_slow_mode() -> None:
    """In slow mode clogging sets delay_s and unclogging restores it."""
    events = swizzle_clog(
        NODES, random.Random(1), start_s=0.0, interval_s=1.0, count=2, mode="slow", delay_s=0.5
    )
    assert [event.action for event in events] == ["slow_add"] * 2 + ["slow_remove"] * 2
    assert [event.delay_s for event in events[:2]] == [0.5, 0.5]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"count": 0}, "swizzle_clog.count must be 1 ... 12"),
        ({"count": 13}, "swizzle_clog.count must be 1 ... 12"),
        ({"interval_s": 0.0}, "swizzle_clog.interval_s"),
        ({"mode": "drop"}, "swizzle_clog.mode"),
    ],
)
def test_swizzle_arguments_are_checked(options: dict[str, object], message: str) -> None:
    """Bad counts, intervals and modes are ValueErrors naming the argument."""
    arguments: dict[str, object] = {"start_s": 0.0, "interval_s": 1.0, **options}
    with pytest.raises(ValueError, match=re.escape(message)):
        swizzle_clog(NODES, random.Random(0), **arguments)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- knobs


def test_knob_integers_stay_integers_and_cover_their_range() -> None:
    """Integer bounds draw ints, both ends included; float bounds draw floats inside."""
    rng = random.Random(0)
    seen: set[int] = set()
    for _ in range(200):
        values = randomize_knobs({"fanout": (1, 4), "timeout_s": (0.5, 2)}, rng)
        fanout, timeout_s = values["fanout"], values["timeout_s"]
        assert type(fanout) is int
        assert type(timeout_s) is float
        assert 0.5 <= timeout_s <= 2.0
        seen.add(fanout)
    assert seen == {1, 2, 3, 4}


def test_knob_draws_do_not_depend_on_dict_order() -> None:
    """Knobs are drawn in sorted name order, so insertion order does not matter."""
    one = randomize_knobs({"a": (0, 100), "b": (0.0, 1.0)}, random.Random(3))
    other = randomize_knobs({"b": (0.0, 1.0), "a": (0, 100)}, random.Random(3))
    assert one == other
    assert one != randomize_knobs({"a": (0, 100), "b": (0.0, 1.0)}, random.Random(4))


@pytest.mark.parametrize(
    ("ranges", "message"),
    [
        ({"x": (2, 1)}, "x: low must be <= high"),
        ({"x": (True, 3)}, "x: bounds must be numbers"),
        ({"x": (0.0, math.inf)}, "x: bounds must be finite"),
        ({"x": [0, 1]}, "x: expected a (low, high) pair"),
    ],
)
def test_knob_ranges_are_checked(ranges: dict[str, object], message: str) -> None:
    """Reversed, non-numeric, infinite or malformed ranges are ValueErrors naming the knob."""
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        randomize_knobs(ranges, random.Random(0))  # type: ignore[arg-type]


def test_randomized_knobs_dataclass() -> None:
    """`randomized` redraws the named fields of a frozen knobs dataclass, typed as the field."""
    ranges = {"gossip_fanout": (2, 5), "probe_interval_s": (1, 3)}
    knobs = randomized(DiscoveryKnobs(), ranges, random.Random(1))
    assert type(knobs.gossip_fanout) is int
    assert 2 <= knobs.gossip_fanout <= 5
    assert type(knobs.probe_interval_s) is float
    assert 1.0 <= knobs.probe_interval_s <= 3.0
    assert knobs.indirect_probes == DiscoveryKnobs().indirect_probes
    assert randomized(DiscoveryKnobs(), ranges, random.Random(1), probability=0.0) == (
        DiscoveryKnobs()
    )


@pytest.mark.parametrize(
    ("ranges", "message"),
    [
        ({"gossip_fanout": (1.0, 2.5)}, "gossip_fanout: an integer knob needs integer bounds"),
        ({"no_such_knob": (1, 2)}, "no_such_knob: not a field of DiscoveryKnobs"),
    ],
)
def test_randomized_rejects_bad_knobs(ranges: dict[str, tuple[float, float]], message: str) -> None:
    """Float bounds for an integer knob and unknown knob names are ValueErrors."""
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        randomized(DiscoveryKnobs(), ranges, random.Random(0))
