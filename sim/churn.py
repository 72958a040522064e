"""Churn models: up/down-time distributions and fault schedules, deterministic from a seed.

Theory of operation
-------------------
Every function here is pure: it takes an injected `random.Random` (never the global one);
the schedule builders return a list of frozen `ChurnEvent(time_s, node, action, ...)` sorted
by time. Nothing is scheduled or applied; the scenario loader turns the lists into faults.

- Distributions (`Exponential`, `Weibull`, `Pareto`, `Constant`) draw a duration in seconds
  with `draw_s(rng)`; each checks its parameters when built and names the bad one in a
  `ValueError`. `distribution({"kind": ..., ...})` builds one from a plain mapping (a TOML table).
- `session_schedule`: each node alternates up (a session drawn from `session`) and down (a
  gap drawn from `down`), starting up at `start_s`; a failure is `crash` (or `stop` with
  `clean=True`), a recovery is `restart`.
- `office_days`: desktops powered on each morning and off each evening, with jitter, some left
  on overnight, none switched on on weekend days; actions `start` and `stop`, and every node is
  down at time 0.
- Correlated failures: `site_power_cut` (every node crashes at once, each restarts after its
  own down time) and `switch_failure` (a group of nodes cut off together, rejoined together).
- `swizzle_clog`: FoundationDB's swizzle-clogging; a random subset of nodes is clogged one by
  one at intervals, then unclogged one by one in a new random order.
- `randomize_knobs` / `randomized`: BUGGIFY-style knob randomisation within valid ranges.

Determinism: `session_schedule` and `office_days` draw one 64-bit base seed from `rng` and
give every node its own stream, `random.Random(f"{base}:{node}")` (the style guide's rule), so
adding or removing a node never shifts another node's schedule. Node lists are sequences,
never sets; output is sorted by time, ties kept in generation order (a stable sort). Every
drawn interval lasts at least `MIN_INTERVAL_S` (the trace's microsecond resolution), so two
events of one node never share a timestamp.

Actions (the vocabulary of `ChurnEvent.action`):

| action | meaning |
|---|---|
| `start` / `stop` | power on / clean shutdown (goodbye sent) |
| `crash` / `restart` | silent death (kill -9, power loss) / start again |
| `partition_add` | the node joins the partition side named `side` (cut off from the rest) |
| `partition_remove` | the node leaves its side and rejoins the main network |
| `slow_add` / `slow_remove` | the node handles each incoming message `delay_s` late / normally |

Sources:
- D. Nurmi, J. Brevik, R. Wolski, "Modeling machine availability in enterprise and wide-area
  distributed computing environments", Euro-Par 2005 (LNCS 3648): Weibull and
  hyperexponential fit machine availability far better than the exponential; heavy tails.
- A. Iosup, M. Jan, O. Sonmez, D. Epema, "On the dynamic resource availability in grids",
  GRID 2007, and B. Javadi, D. Kondo, J.-M. Vincent, D. Anderson, "Discovering statistical
  models of availability in large distributed systems", MASCOTS 2009: Weibull, log-normal
  and Pareto fits of up and down times.
- P. B. Godfrey, S. Shenker, I. Stoica, "Minimizing churn in distributed systems", SIGCOMM
  2006: session-time models and the availability traces replayed by `sim/traces.py`.
- W. Wilson, "Testing Distributed Systems w/ Deterministic Simulation", Strange Loop 2014
  (FoundationDB): swizzle-clogging and knob randomisation (BUGGIFY).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, Protocol, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "ACTIONS",
    "DAY_S",
    "MIN_INTERVAL_S",
    "ChurnEvent",
    "Constant",
    "Distribution",
    "Exponential",
    "OfficeHours",
    "Pareto",
    "Weibull",
    "distribution",
    "office_days",
    "randomize_knobs",
    "randomized",
    "session_schedule",
    "site_power_cut",
    "switch_failure",
    "swizzle_clog",
]

ACTIONS: Final = (
    "start",
    "stop",
    "crash",
    "restart",
    "partition_add",
    "partition_remove",
    "slow_add",
    "slow_remove",
)
DAY_S: Final = 86_400.0
MIN_INTERVAL_S: Final = 1e-6
"""The shortest up or down interval: the run trace's resolution (whole microseconds)."""
WEEK_DAYS: Final = 7

Number = int | float
Knobs = TypeVar("Knobs", bound="DataclassInstance")


@dataclass(frozen=True, slots=True)
class ChurnEvent:
    """At `time_s`, apply `action` to `node` (see the table in the module docstring)."""

    time_s: float
    node: str
    action: str
    side: str | None = None
    """For `partition_add`: the name of the partition side the node joins."""
    delay_s: float | None = None
    """For `slow_add`: the node's new processing delay."""

    def __post_init__(self) -> None:
        assert self.action in ACTIONS, f"unknown action {self.action!r}"
        assert math.isfinite(self.time_s)
        assert self.time_s >= 0.0
        assert (self.side is not None) == (self.action == "partition_add")
        assert (self.delay_s is not None) == (self.action == "slow_add")


# --------------------------------------------------------------------------- distributions


class Distribution(Protocol):
    """A distribution of durations in seconds."""

    @property
    def mean_s(self) -> float:
        """The expected duration (`math.inf` when it has none)."""
        ...

    def draw_s(self, rng: random.Random) -> float:
        """One duration >= 0, drawn from `rng`."""
        ...


@dataclass(frozen=True, slots=True)
class Exponential:
    """Memoryless durations with mean `mean_s` (Poisson failures)."""

    mean_s: float

    def __post_init__(self) -> None:
        _check_positive("Exponential", "mean_s", self.mean_s)

    def draw_s(self, rng: random.Random) -> float:
        """One duration from `rng`."""
        return rng.expovariate(1.0 / self.mean_s)


@dataclass(frozen=True, slots=True)
class Weibull:
    """Weibull durations: `shape` < 1 is heavy-tailed (Nurmi et al.), 1 is exponential."""

    shape: float
    scale_s: float

    def __post_init__(self) -> None:
        _check_positive("Weibull", "shape", self.shape)
        _check_positive("Weibull", "scale_s", self.scale_s)

    @property
    def mean_s(self) -> float:
        """`scale_s * Gamma(1 + 1 / shape)`."""
        return self.scale_s * math.gamma(1.0 + 1.0 / self.shape)

    def draw_s(self, rng: random.Random) -> float:
        """One duration from `rng`."""
        return rng.weibullvariate(self.scale_s, self.shape)


@dataclass(frozen=True, slots=True)
class Pareto:
    """Pareto (type I) durations of at least `scale_s`; `shape` is the tail index alpha."""

    shape: float
    scale_s: float

    def __post_init__(self) -> None:
        _check_positive("Pareto", "shape", self.shape)
        _check_positive("Pareto", "scale_s", self.scale_s)

    @property
    def mean_s(self) -> float:
        """`shape * scale_s / (shape - 1)`; infinite when `shape` <= 1."""
        if self.shape <= 1.0:
            return math.inf
        return self.shape * self.scale_s / (self.shape - 1.0)

    def draw_s(self, rng: random.Random) -> float:
        """One duration from `rng`."""
        return self.scale_s * rng.paretovariate(self.shape)


@dataclass(frozen=True, slots=True)
class Constant:
    """Always `value_s` (draws nothing from the stream)."""

    value_s: float

    def __post_init__(self) -> None:
        _check_positive("Constant", "value_s", self.value_s)

    @property
    def mean_s(self) -> float:
        """`value_s`."""
        return self.value_s

    def draw_s(self, rng: random.Random) -> float:
        """`value_s`."""
        return self.value_s


_PARAMETERS: Final[dict[str, tuple[str, ...]]] = {
    "exponential": ("mean_s",),
    "weibull": ("shape", "scale_s"),
    "pareto": ("shape", "scale_s"),
    "constant": ("value_s",),
}
_ALIASES: Final[dict[str, dict[str, str]]] = {"pareto": {"alpha": "shape", "minimum_s": "scale_s"}}


def distribution(spec: Mapping[str, object]) -> Distribution:
    """Build a distribution from `{"kind": "weibull", "shape": 0.6, "scale_s": 3600}`.

    Kinds and parameters: `exponential` (`mean_s`), `weibull` (`shape`, `scale_s`), `pareto`
    (`shape` or `alpha`, `scale_s` or `minimum_s`), `constant` (`value_s`).

    Raises:
        ValueError: naming the kind and the missing, unknown or out-of-range parameter.
    """
    kind = spec.get("kind")
    if not isinstance(kind, str) or kind not in _PARAMETERS:
        raise ValueError(f"kind: expected one of {tuple(_PARAMETERS)}, got {kind!r}")
    aliases = _ALIASES.get(kind, {})
    values: dict[str, float] = {}
    for key, value in spec.items():
        if key == "kind":
            continue
        name = aliases.get(key, key)
        if name not in _PARAMETERS[kind]:
            raise ValueError(f"{kind}: unknown parameter {key!r} (expected {_PARAMETERS[kind]})")
        if name in values:
            raise ValueError(f"{kind}: parameter {name!r} given twice (alias {key!r})")
        values[name] = _number(kind, key, value)
    for name in _PARAMETERS[kind]:
        if name not in values:
            raise ValueError(f"{kind}: missing parameter {name!r}")
    return _build(kind, values)


def _build(kind: str, values: dict[str, float]) -> Distribution:
    if kind == "exponential":
        return Exponential(values["mean_s"])
    if kind == "weibull":
        return Weibull(values["shape"], values["scale_s"])
    if kind == "pareto":
        return Pareto(values["shape"], values["scale_s"])
    assert kind == "constant"
    return Constant(values["value_s"])


# --------------------------------------------------------------------------- sessions


def session_schedule(
    node_ids: Sequence[str],
    duration_s: float,
    session: Distribution,
    down: Distribution,
    rng: random.Random,
    *,
    clean: bool = False,
    random_phase: bool = False,
    start_s: float = 0.0,
) -> list[ChurnEvent]:
    """Alternating sessions and gaps for every node, in `[start_s, start_s + duration_s)`.

    Each node is up at `start_s`, fails after a session drawn from `session` (`crash`, or
    `stop` when `clean`), stays down for a gap drawn from `down`, then `restart`s, and so on.
    With `random_phase`, each node's first session is a uniform fraction of a drawn one, so
    nodes do not all fail in step (an approximation of a stationary start).
    """
    _check_window(start_s, duration_s)
    _check_unique(node_ids)
    cycle = _Cycle(session, down, "stop" if clean else "crash", random_phase)
    begin_s, end_s = float(start_s), float(start_s + duration_s)
    base = rng.getrandbits(64)
    events: list[ChurnEvent] = []
    for node in node_ids:
        stream = random.Random(f"{base}:{node}")
        events += cycle.events(node, begin_s, end_s, stream)
    return _by_time(events)


@dataclass(frozen=True, slots=True)
class _Cycle:
    """One node's up/down alternation."""

    session: Distribution
    down: Distribution
    failure: str
    random_phase: bool

    def events(
        self, node: str, start_s: float, end_s: float, stream: random.Random
    ) -> list[ChurnEvent]:
        events: list[ChurnEvent] = []
        up_s = self.session.draw_s(stream)
        if self.random_phase:
            up_s *= stream.random()
        now_s = start_s + max(up_s, MIN_INTERVAL_S)
        while now_s < end_s:
            events.append(ChurnEvent(now_s, node, self.failure))
            now_s += max(self.down.draw_s(stream), MIN_INTERVAL_S)
            if now_s >= end_s:
                break
            events.append(ChurnEvent(now_s, node, "restart"))
            now_s += max(self.session.draw_s(stream), MIN_INTERVAL_S)
        return events


# --------------------------------------------------------------------------- office days


@dataclass(frozen=True, slots=True)
class OfficeHours:
    """When desktops are switched on and off; times are seconds after each midnight.

    Each on and off time is `on_at_s` (`off_at_s`) plus a uniform jitter in
    `[-jitter_s, +jitter_s]`. Each evening every machine that is on stays on overnight with
    probability `overnight_fraction`. On `weekend_days` (day index modulo 7; day 0 starts at
    time 0) nobody switches a machine on or off.
    """

    on_at_s: float = 8 * 3600.0
    off_at_s: float = 18 * 3600.0
    jitter_s: float = 1800.0
    overnight_fraction: float = 0.1
    weekend_days: tuple[int, ...] = ()
    day_s: float = DAY_S

    def __post_init__(self) -> None:
        _check_positive("OfficeHours", "day_s", self.day_s)
        _check_at_least("OfficeHours", "jitter_s", self.jitter_s, 0.0)
        why = "on_at_s - jitter_s must not fall before midnight"
        _check_at_least("OfficeHours", "on_at_s", self.on_at_s, self.jitter_s, why)
        if not self.on_at_s + self.jitter_s < self.off_at_s - self.jitter_s:
            problem = "must be later than on_at_s + 2 * jitter_s"
            raise ValueError(f"OfficeHours.off_at_s {problem}, got {self.off_at_s!r}")
        if self.off_at_s + self.jitter_s > self.day_s:
            raise ValueError(f"OfficeHours.off_at_s + jitter_s must be <= day_s ({self.day_s})")
        _check_fraction("OfficeHours", "overnight_fraction", self.overnight_fraction)
        days = self.weekend_days
        if not all(_is_weekday(day) for day in days) or len(set(days)) != len(days):
            raise ValueError(f"OfficeHours.weekend_days must be distinct 0 ... 6, got {days!r}")


def office_days(
    node_ids: Sequence[str], duration_s: float, hours: OfficeHours, rng: random.Random
) -> list[ChurnEvent]:
    """`start` each morning and `stop` each evening for every node, over `[0, duration_s)`.

    Every node is down at time 0. A node left on overnight gets no `stop` that evening and no
    `start` the next morning. Every working day draws the same numbers (on jitter, off jitter,
    overnight coin) whatever the node's state, so the streams stay aligned.
    """
    _check_window(0.0, duration_s)
    _check_unique(node_ids)
    base = rng.getrandbits(64)
    events: list[ChurnEvent] = []
    for node in node_ids:
        stream = random.Random(f"{base}:{node}")
        events += _office_node(node, duration_s, hours, stream)
    return _by_time(events)


def _office_node(
    node: str, duration_s: float, hours: OfficeHours, stream: random.Random
) -> list[ChurnEvent]:
    events: list[ChurnEvent] = []
    running = False
    for day in range(math.ceil(duration_s / hours.day_s)):
        if day % WEEK_DAYS in hours.weekend_days:
            continue
        midnight_s = day * hours.day_s
        on_s = midnight_s + hours.on_at_s + stream.uniform(-hours.jitter_s, hours.jitter_s)
        off_s = midnight_s + hours.off_at_s + stream.uniform(-hours.jitter_s, hours.jitter_s)
        left_on = stream.random() < hours.overnight_fraction
        if not running and on_s < duration_s:
            events.append(ChurnEvent(on_s, node, "start"))
            running = True
        if running and not left_on and off_s < duration_s:
            events.append(ChurnEvent(off_s, node, "stop"))
            running = False
    return events


# --------------------------------------------------------------------------- correlated


def site_power_cut(
    node_ids: Sequence[str], at_s: float, down: Distribution, rng: random.Random
) -> list[ChurnEvent]:
    """Every node `crash`es at `at_s` (a site loses power); each `restart`s after its own gap.

    Gaps are drawn from `rng` in node order.
    """
    _check_at_least("site_power_cut", "at_s", at_s, 0.0)
    _check_unique(node_ids)
    cut_s = float(at_s)
    events = [ChurnEvent(cut_s, node, "crash") for node in node_ids]
    for node in node_ids:
        restart_s = cut_s + max(down.draw_s(rng), MIN_INTERVAL_S)
        events.append(ChurnEvent(restart_s, node, "restart"))
    return _by_time(events)


def switch_failure(
    node_ids: Sequence[str], at_s: float, down_s: float, side: str
) -> list[ChurnEvent]:
    """A switch dies: `node_ids` (a subnet) join partition `side` at `at_s`, leave after `down_s`.

    The nodes keep running and still reach each other; they only lose everyone else.
    """
    _check_at_least("switch_failure", "at_s", at_s, 0.0)
    _check_positive("switch_failure", "down_s", down_s)
    _check_unique(node_ids)
    if not side:
        raise ValueError("switch_failure.side must be a non-empty name")
    cut_s, heal_s = float(at_s), float(at_s + down_s)
    cut = [ChurnEvent(cut_s, node, "partition_add", side=side) for node in node_ids]
    heal = [ChurnEvent(heal_s, node, "partition_remove") for node in node_ids]
    return cut + heal


def swizzle_clog(
    node_ids: Sequence[str],
    rng: random.Random,
    *,
    start_s: float,
    interval_s: float,
    hold_s: float = 0.0,
    count: int | None = None,
    mode: Literal["partition", "slow"] = "partition",
    delay_s: float = 1.0,
) -> list[ChurnEvent]:
    """FoundationDB's swizzle-clog: clog a random subset one by one, unclog in a new order.

    Picks `count` nodes (default: a random number, 1 ... all) with `rng`, clogs the i-th at
    `start_s + i * interval_s`, waits `hold_s` more after the last clog, then unclogs them one
    per `interval_s` in an order freshly shuffled with `rng`. Clogging with `mode="partition"`
    puts each node alone on its own side (`partition_add`, side `clog:<node>`) and unclogging
    is `partition_remove`; with `mode="slow"` it is `slow_add` (`delay_s`) and `slow_remove`.
    """
    _check_at_least("swizzle_clog", "start_s", start_s, 0.0)
    _check_positive("swizzle_clog", "interval_s", interval_s)
    _check_at_least("swizzle_clog", "hold_s", hold_s, 0.0)
    _check_unique(node_ids)
    if mode not in ("partition", "slow"):
        raise ValueError(f"swizzle_clog.mode must be 'partition' or 'slow', got {mode!r}")
    if mode == "slow":
        _check_positive("swizzle_clog", "delay_s", delay_s)
    size = _clog_count(count, len(node_ids), rng)
    clogged = rng.sample(list(node_ids), size)
    unclogged = clogged.copy()
    rng.shuffle(unclogged)
    events = [
        _clog(float(start_s + i * interval_s), node, mode, delay_s)
        for i, node in enumerate(clogged)
    ]
    first_unclog_s = start_s + size * interval_s + hold_s
    action = "partition_remove" if mode == "partition" else "slow_remove"
    for i, node in enumerate(unclogged):
        events.append(ChurnEvent(float(first_unclog_s + i * interval_s), node, action))
    return events


def _clog_count(count: int | None, available: int, rng: random.Random) -> int:
    if available == 0:
        raise ValueError("swizzle_clog.node_ids must not be empty")
    if count is None:
        return rng.randint(1, available)
    value: object = count
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= available:
        raise ValueError(f"swizzle_clog.count must be 1 ... {available}, got {count!r}")
    return count


def _clog(time_s: float, node: str, mode: str, delay_s: float) -> ChurnEvent:
    if mode == "partition":
        return ChurnEvent(time_s, node, "partition_add", side=f"clog:{node}")
    assert mode == "slow"
    return ChurnEvent(time_s, node, "slow_add", delay_s=float(delay_s))


# --------------------------------------------------------------------------- knobs


def randomize_knobs(
    ranges: Mapping[str, tuple[Number, Number]], rng: random.Random
) -> dict[str, Number]:
    """One value per knob, drawn in sorted knob order: integers when both bounds are integers
    (`randint`, bounds included), floats otherwise (`uniform`)."""
    values: dict[str, Number] = {}
    for name in sorted(ranges):
        low, high = _bounds(name, ranges[name])
        integer = isinstance(low, int) and isinstance(high, int)
        values[name] = _draw_knob(low, high, integer, rng)
    return values


def randomized(
    knobs: Knobs,
    ranges: Mapping[str, tuple[Number, Number]],
    rng: random.Random,
    probability: float = 1.0,
) -> Knobs:
    """A copy of the frozen `knobs` dataclass with the named fields drawn from their ranges.

    Each knob is redrawn with `probability` (FoundationDB randomises a knob only when BUGGIFY
    fires); integer fields get integers (their bounds must be integers), float fields floats.
    The knobs' own checks (`__post_init__`) apply to the result.
    """
    _check_fraction("randomized", "probability", probability)
    fields = {field.name: field for field in dataclasses.fields(knobs)}
    changes: dict[str, Number] = {}
    for name in sorted(ranges):
        if name not in fields:
            raise ValueError(f"{name}: not a field of {type(knobs).__name__}")
        low, high = _bounds(name, ranges[name])
        current = getattr(knobs, name)
        integer = _is_integer_knob(name, current, low, high)
        value = _draw_knob(low, high, integer, rng)
        if rng.random() < probability:
            changes[name] = value
    return dataclasses.replace(knobs, **changes)


def _is_integer_knob(name: str, current: object, low: Number, high: Number) -> bool:
    if isinstance(current, bool) or not isinstance(current, int | float):
        raise ValueError(f"{name}: only numeric knobs can be randomised, got {current!r}")
    if isinstance(current, int) and not (isinstance(low, int) and isinstance(high, int)):
        raise ValueError(f"{name}: an integer knob needs integer bounds, got {(low, high)!r}")
    return isinstance(current, int)


def _bounds(name: str, bounds: object) -> tuple[Number, Number]:
    if not isinstance(bounds, tuple) or len(bounds) != 2:
        raise ValueError(f"{name}: expected a (low, high) pair, got {bounds!r}")
    low, high = bounds
    for value in (low, high):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name}: bounds must be numbers, got {bounds!r}")
        if not math.isfinite(value):
            raise ValueError(f"{name}: bounds must be finite, got {bounds!r}")
    if low > high:
        raise ValueError(f"{name}: low must be <= high, got {bounds!r}")
    return low, high


def _draw_knob(low: Number, high: Number, integer: bool, rng: random.Random) -> Number:
    if integer:
        assert isinstance(low, int)
        assert isinstance(high, int)
        return rng.randint(low, high)
    return rng.uniform(float(low), float(high))


# --------------------------------------------------------------------------- checks


def _by_time(events: list[ChurnEvent]) -> list[ChurnEvent]:
    """Sorted by time; a stable sort, so ties keep their generation order."""
    return sorted(events, key=lambda event: event.time_s)


def _number(owner: str, name: str, value: object) -> float:
    number = _finite(value)
    if number is None:
        raise ValueError(f"{owner}: {name} must be a finite number, got {value!r}")
    return number


def _finite(value: object) -> float | None:
    """`value` as a float when it is a finite int or float (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _check_positive(owner: str, name: str, value: object) -> None:
    number = _finite(value)
    if number is None or number <= 0.0:
        raise ValueError(f"{owner}.{name} must be a finite number > 0, got {value!r}")


def _check_at_least(owner: str, name: str, value: object, minimum: float, why: str = "") -> None:
    number = _finite(value)
    if number is None or number < minimum:
        because = f" ({why})" if why else ""
        problem = f"must be a finite number >= {minimum:g}{because}"
        raise ValueError(f"{owner}.{name} {problem}, got {value!r}")


def _check_fraction(owner: str, name: str, value: object) -> None:
    number = _finite(value)
    if number is None or not 0.0 <= number <= 1.0:
        raise ValueError(f"{owner}.{name} must be a number 0 ... 1, got {value!r}")


def _is_weekday(day: object) -> bool:
    return isinstance(day, int) and not isinstance(day, bool) and 0 <= day < WEEK_DAYS


def _check_window(start_s: float, duration_s: float) -> None:
    _check_at_least("schedule", "start_s", start_s, 0.0)
    _check_positive("schedule", "duration_s", duration_s)


def _check_unique(node_ids: Sequence[str]) -> None:
    if isinstance(node_ids, str):
        raise ValueError("node_ids must be a sequence of node ids, not one string")
    seen: dict[str, None] = {}
    for node in node_ids:
        value: object = node
        if not isinstance(value, str) or not value:
            raise ValueError(f"node_ids: expected non-empty strings, got {node!r}")
        if node in seen:
            raise ValueError(f"node_ids: duplicate node id {node!r}")
        seen[node] = None
