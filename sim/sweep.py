"""Parameter sweeps: a grid of knob settings times a list of seeds, run and summarised.

Theory of operation
-------------------
A sweep is `grid x seeds`. `parse_seeds` reads `1-1000,2000,3000-3010`; `parse_sets` reads
`--set section.knob=v1,v2,...` specs; `build_grid` takes their cartesian product, in the
order given, so each grid point is a `Settings` tuple of `(knob, value)` pairs. Every
(point, seed) is one independent, deterministic simulation: `run_point` is a top-level,
picklable function, so any executor (a process pool, Dask) can ship it by reference. This
module runs nothing in parallel itself (sim/ is single-threaded): the executors live in
`peerpxe/sweep_command.py`. `summarise` orders the records by (grid point, seed) before it
aggregates, so the summary is the same whatever ran the points, on how many workers, in
whatever order they finished.

Knobs (`KNOB_SECTIONS`): `scenario.*` is the scenario's own numeric fields, `discovery.*`
`DiscoveryKnobs`, `election.*` `ElectionKnobs`, `network.*` `NetworkSpec` (plus
`slow_fraction` and `slow_delay_s`, which the file also writes under `[network]`), `tftp.*`
`TftpSpec`. A value must match the field's type (int or float) and the bounds the scenario
loader applies (`_BOUNDS`, else >= 0), and `apply_settings` runs the dataclass's own
validation (`__post_init__`), section by section, so two knobs of one section are checked
together.

Statistics (`FigureStats`): for every numeric figure of a run (counters such as
`network.sent` flattened, a missing counter counts as 0; a None figure is skipped and
counted in `missing`), per grid point: n, mean, sample standard deviation (n - 1), the 95%
confidence interval of the mean `mean +- t(0.975, n - 1) * std / sqrt(n)`, min and max.
The Student t quantile comes from a table for 1 ... 30 degrees of freedom and from the
Cornish-Fisher expansion beyond (error below 2e-6), so no statistics library is needed and
every environment prints the same numbers. Sums use `math.fsum`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import traceback
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from sim.run import Simulation
from sim.scenario import Scenario, load

Value = int | float
Settings = tuple[tuple[str, Value], ...]
"""One grid point: `(section.knob, value)` pairs in `--set` order."""

KNOB_SECTIONS: Final[dict[str, str | None]] = {
    "scenario": None,
    "discovery": "knobs",
    "election": "election",
    "network": "network",
    "tftp": "tftp",
}
"""`--set` section -> the `Scenario` field holding that dataclass (None: the scenario)."""

SEEDS_MAX: Final = 1_000_000
DERIVED_FIGURES: Final = ("boot_success_ratio",)
"""Figures computed per run from others: boots_succeeded / boots_attempted."""

_UNAGGREGATED: Final = ("seed", "wall_time_s")
"""Numeric fields that are no figure: the seed, and wall time (differs run to run)."""

_ALIASES: Final = {
    "network.slow_fraction": "scenario.slow_fraction",
    "network.slow_delay_s": "scenario.slow_delay_s",
}
_NOT_KNOBS: Final = {"scenario.seed": "the seed is swept with --seeds"}
_SEED_ITEM: Final = re.compile(r"^([0-9]+)(?:-([0-9]+))?$")


class SweepError(Exception):
    """A sweep was specified wrongly (seeds, a knob, a value); the message says which."""


@dataclass(frozen=True, slots=True)
class _Bound:
    minimum: float = 0.0
    maximum: float | None = None
    exclusive: bool = False

    def problem(self, value: Value) -> str | None:
        low_ok = value > self.minimum if self.exclusive else value >= self.minimum
        if low_ok and (self.maximum is None or value <= self.maximum):
            return None
        relation = ">" if self.exclusive else ">="
        high = f" and <= {self.maximum}" if self.maximum is not None else ""
        return f"expected a number {relation} {self.minimum}{high}, got {value!r}"


_BOUNDS: Final = {
    "scenario.duration_s": _Bound(exclusive=True),
    "scenario.slow_fraction": _Bound(maximum=1.0),
    "network.loss": _Bound(maximum=0.99),
    "network.duplicate": _Bound(maximum=0.99),
    "tftp.boot_file_bytes": _Bound(minimum=1),
    "tftp.bandwidth_mbit_s": _Bound(exclusive=True),
}
"""The scenario loader's bounds (docs/scenarios.md); every other knob must be >= 0."""


@dataclass(frozen=True, slots=True)
class KnobSpec:
    """One `--set`: a knob (`section.name`, aliases resolved) and the values it takes."""

    knob: str
    values: tuple[Value, ...]


class RunTask(NamedTuple):
    """The arguments of one `run_point` call."""

    scenario_path: str
    settings: Settings
    seed: int


@dataclass(frozen=True, slots=True)
class SweepPlan:
    """What to run: every grid point with every seed."""

    scenario_path: str
    grid: tuple[Settings, ...]
    seeds: tuple[int, ...]

    def tasks(self) -> list[RunTask]:
        """Every run, ordered by (grid point, seed)."""
        return [
            RunTask(self.scenario_path, settings, seed)
            for settings in self.grid
            for seed in self.seeds
        ]


@dataclass(frozen=True, slots=True)
class FigureStats:
    """One figure at one grid point; statistics are None where n is too small."""

    n: int
    missing: int
    mean: float | None
    std: float | None
    ci95_low: float | None
    ci95_high: float | None
    min: float | None
    max: float | None

    @property
    def ci95_half_width(self) -> float | None:
        """Half the width of the 95% confidence interval (None below two values)."""
        if self.ci95_high is None or self.mean is None:
            return None
        return self.ci95_high - self.mean


# --------------------------------------------------------------------------- seeds


def parse_seeds(text: str) -> tuple[int, ...]:
    """`1-1000,2000,3000-3010` -> every seed once, ascending; SweepError on a bad item."""
    if not text.strip():
        raise SweepError("seeds: none given (expected e.g. '1-1000,2000')")
    seen: dict[int, None] = {}
    for item in text.split(","):
        for seed in _seed_item(item.strip(), text):
            if seed in seen:
                raise SweepError(f"seeds: seed {seed} is listed twice in {text!r}")
            seen[seed] = None
            if len(seen) > SEEDS_MAX:
                raise SweepError(f"seeds: more than {SEEDS_MAX} seeds in {text!r}")
    return tuple(sorted(seen))


def _seed_item(item: str, text: str) -> range:
    if not item:
        raise SweepError(f"seeds: empty item in {text!r}")
    match = _SEED_ITEM.match(item)
    if match is None:
        raise SweepError(f"seeds: {item!r} is neither a seed >= 0 nor a range like '1-1000'")
    first = int(match.group(1))
    last = int(match.group(2)) if match.group(2) is not None else first
    if last < first:
        raise SweepError(f"seeds: range {item!r} goes down (write {last}-{first})")
    if last - first >= SEEDS_MAX:
        raise SweepError(f"seeds: more than {SEEDS_MAX} seeds in {text!r}")
    return range(first, last + 1)


# --------------------------------------------------------------------------- knobs


def parse_sets(texts: Sequence[str]) -> tuple[KnobSpec, ...]:
    """Every `--set section.knob=v1,v2,...`; a knob may be swept only once."""
    specs: dict[str, KnobSpec] = {}
    for text in texts:
        spec = parse_set(text)
        if spec.knob in specs:
            raise SweepError(f"{spec.knob} is set twice")
        specs[spec.knob] = spec
    return tuple(specs.values())


def parse_set(text: str) -> KnobSpec:
    """`election.lease_timeout_s=1.0,1.5,3.0` -> its knob and typed, checked values."""
    name, equals, raw_values = text.partition("=")
    if not equals or not name.strip():
        raise SweepError(f"expected section.knob=v1,v2,..., got {text!r}")
    knob = knob_name(name.strip())
    kind = knob_type(knob)
    values: dict[Value, None] = {}
    for raw in raw_values.split(","):
        value = _parse_value(knob, kind, raw.strip())
        if value in values:
            raise SweepError(f"{knob}: value {value!r} is listed twice")
        values[value] = None
    return KnobSpec(knob, tuple(values))


def knob_name(name: str) -> str:
    """The canonical `section.knob` for `name` (aliases resolved); SweepError if unknown."""
    section, dot, field_name = name.partition(".")
    if not dot or not field_name:
        raise SweepError(f"{name!r}: expected section.knob, e.g. election.lease_timeout_s")
    if section not in KNOB_SECTIONS:
        sections = ", ".join(sorted(KNOB_SECTIONS))
        raise SweepError(f"{name!r}: unknown section {section!r} (expected one of {sections})")
    canonical = _ALIASES.get(name, name)
    if canonical in _NOT_KNOBS:
        raise SweepError(f"{canonical} is not a knob: {_NOT_KNOBS[canonical]}")
    knob_type(canonical)
    return canonical


def knob_type(knob: str) -> type[int] | type[float]:
    """The type of knob `section.name` (int or float); SweepError when it is none."""
    section, _, field_name = knob.partition(".")
    hints = typing.get_type_hints(_section_class(section))
    kind = hints.get(field_name)
    known = ", ".join(_numeric_fields(hints))
    if kind is None:
        raise SweepError(f"unknown knob {knob!r} ({section} knobs: {known})")
    if kind is not int and kind is not float:
        raise SweepError(f"{knob} is not a numeric knob ({section} knobs: {known})")
    return kind


def check_value(knob: str, value: object) -> Value:
    """`value` if it suits `knob`'s type and bounds (an int passes for a float knob)."""
    kind = knob_type(knob)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SweepError(f"{knob}: expected a number, got {value!r}")
    if kind is int and not isinstance(value, int):
        raise SweepError(f"{knob}: expected an integer, got {value!r}")
    if not math.isfinite(value):
        raise SweepError(f"{knob}: expected a finite number, got {value!r}")
    problem = _BOUNDS.get(knob, _Bound()).problem(value)
    if problem is not None:
        raise SweepError(f"{knob}: {problem}")
    return kind(value)


def _parse_value(knob: str, kind: type[int] | type[float], raw: str) -> Value:
    if not raw:
        raise SweepError(f"{knob}: empty value (expected {knob}=v1,v2,...)")
    try:
        value: Value = kind(raw)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise SweepError(f"{knob}: expected {expected}, got {raw!r}") from None
    return check_value(knob, value)


def _section_class(section: str) -> type[Any]:
    attribute = KNOB_SECTIONS[section]
    if attribute is None:
        return Scenario
    kind: type[Any] = typing.get_type_hints(Scenario)[attribute]
    return kind


def _numeric_fields(hints: dict[str, Any]) -> list[str]:
    return [name for name, kind in hints.items() if kind in (int, float) and name != "seed"]


# --------------------------------------------------------------------------- grid


def build_grid(specs: Sequence[KnobSpec]) -> tuple[Settings, ...]:
    """The cartesian product of the specs' values (the last spec varies fastest).

    No specs: one point, the scenario as written.
    """
    axes = [[(spec.knob, value) for value in spec.values] for spec in specs]
    return tuple(tuple(point) for point in itertools.product(*axes))


def apply_setting(scenario: Scenario, knob: str, value: Value) -> Scenario:
    """A new scenario with `knob` (`section.name`) set to `value`."""
    return apply_settings(scenario, ((knob, value),))


def apply_settings(scenario: Scenario, settings: Settings) -> Scenario:
    """A new scenario with every setting applied; SweepError names a rejected knob and value.

    Settings of one section are applied in one `dataclasses.replace`, so the section's own
    validation sees them together (raising heartbeat and lease together is fine).
    """
    by_section: dict[str, dict[str, Value]] = {}
    for name, value in settings:
        knob = knob_name(name)
        section, _, field_name = knob.partition(".")
        by_section.setdefault(section, {})[field_name] = check_value(knob, value)
    changes: dict[str, Any] = dict(by_section.pop("scenario", {}))
    for section, values in by_section.items():
        attribute = KNOB_SECTIONS[section]
        assert attribute is not None
        changes[attribute] = _replace(getattr(scenario, attribute), section, values)
    return dataclasses.replace(scenario, **changes)


def check_grid(scenario: Scenario, grid: Sequence[Settings]) -> None:
    """Apply every grid point once, so a bad combination fails before any run starts."""
    for settings in grid:
        apply_settings(scenario, settings)


def settings_label(settings: Settings) -> str:
    """`election.lease_timeout_s=1.5, network.loss=0.1` (or `(as written)`)."""
    if not settings:
        return "(as written)"
    return ", ".join(f"{knob}={value!r}" for knob, value in settings)


def _replace(target: object, section: str, values: dict[str, Value]) -> object:
    assert dataclasses.is_dataclass(target)
    assert not isinstance(target, type)
    try:
        return dataclasses.replace(target, **values)
    except (AssertionError, ValueError) as error:
        label = ", ".join(f"{section}.{name}={value!r}" for name, value in values.items())
        raise SweepError(
            f"{label}: rejected by {type(target).__name__}: {_reason(error)}"
        ) from error


def _reason(error: Exception) -> str:
    """The error's message, or the failing `assert` line when it has none."""
    if str(error):
        return str(error)
    frames = traceback.extract_tb(error.__traceback__)
    line = frames[-1].line if frames else None
    return line or type(error).__name__


# --------------------------------------------------------------------------- runs


def run_point(scenario_path: str, settings: Settings, seed: int) -> dict[str, Any]:
    """One run of a sweep: load, apply `settings`, simulate with `seed`.

    Returns the run's `SimResult.to_json()` plus `settings` (a dict, knob -> value).
    """
    scenario = apply_settings(load(scenario_path), settings)
    try:
        result = Simulation(scenario, seed).run()
    except Exception as error:
        error.add_note(f"sweep run: {scenario_path} seed {seed} {settings_label(settings)}")
        raise
    record = result.to_json()
    record["settings"] = dict(settings)
    return record


def order_records(plan: SweepPlan, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """`records` sorted by (grid point, seed); every record must belong to the plan."""
    index_of = {settings: index for index, settings in enumerate(plan.grid)}

    def key(record: dict[str, Any]) -> tuple[int, int]:
        settings = tuple(record["settings"].items())
        assert settings in index_of, f"settings {settings} are not in the grid"
        return index_of[settings], int(record["seed"])

    return sorted(records, key=key)


# --------------------------------------------------------------------------- statistics


T_975: Final = (
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004,
    2.262157, 2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905,
    2.109816, 2.100922, 2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899,
    2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272,
)  # fmt: skip
"""Student t quantiles t(0.975, df) for df = 1 ... 30 (two-sided 95%)."""

Z_975: Final = 1.959963984540054
"""The standard normal 0.975 quantile."""


def t_quantile_975(df: int) -> float:
    """t(0.975, df): the table up to 30, then the Cornish-Fisher expansion in 1/df."""
    assert df >= 1
    if df <= len(T_975):
        return T_975[df - 1]
    z = Z_975
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


def figure_stats(values: Sequence[float | None]) -> FigureStats:
    """n, mean, sample std, 95% CI of the mean, min, max; None values are only counted."""
    present = [float(value) for value in values if value is not None]
    n = len(present)
    missing = len(values) - n
    if n == 0:
        return FigureStats(0, missing, None, None, None, None, None, None)
    mean = math.fsum(present) / n
    if n == 1:
        return FigureStats(1, missing, mean, None, None, None, present[0], present[0])
    std = math.sqrt(math.fsum((value - mean) ** 2 for value in present) / (n - 1))
    half = t_quantile_975(n - 1) * std / math.sqrt(n)
    return FigureStats(n, missing, mean, std, mean - half, mean + half, min(present), max(present))


def figures_of(record: dict[str, Any]) -> tuple[dict[str, float | None], dict[str, float]]:
    """A run's figures: (numeric or None fields plus derived ones, flattened counters)."""
    scalars: dict[str, float | None] = {}
    counters: dict[str, float] = {}
    for name, value in record.items():
        if name in _UNAGGREGATED or isinstance(value, bool):
            continue
        if value is None or isinstance(value, int | float):
            scalars[name] = value
        elif isinstance(value, dict) and name != "settings":
            counters.update(_counters(name, value))
    attempted = record.get("boots_attempted") or 0
    succeeded = record.get("boots_succeeded") or 0
    scalars["boot_success_ratio"] = succeeded / attempted if attempted else None
    return scalars, counters


def aggregate(records: Sequence[dict[str, Any]]) -> dict[str, FigureStats]:
    """Every figure of `records` (runs of one grid point), by name, names sorted."""
    figures = [figures_of(record) for record in records]
    scalar_names = {name: None for scalars, _ in figures for name in scalars}
    counter_names = {name: None for _, counters in figures for name in counters}
    columns: dict[str, Sequence[float | None]] = {
        name: [scalars.get(name) for scalars, _ in figures] for name in scalar_names
    }
    for name in counter_names:
        columns[name] = [counters.get(name, 0.0) for _, counters in figures]
    return {name: figure_stats(columns[name]) for name in sorted(columns)}


def summarise(plan: SweepPlan, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per grid point, in grid order: its settings, run count and every figure's stats."""
    by_point: dict[Settings, list[dict[str, Any]]] = {settings: [] for settings in plan.grid}
    for record in order_records(plan, records):
        by_point[tuple(record["settings"].items())].append(record)
    return [
        {
            "point": index,
            "settings": dict(settings),
            "runs": len(by_point[settings]),
            "figures": {
                name: dataclasses.asdict(stats)
                for name, stats in aggregate(by_point[settings]).items()
            },
        }
        for index, settings in enumerate(plan.grid)
    ]


def _counters(name: str, values: dict[str, Any]) -> dict[str, float]:
    return {
        f"{name}.{key}": float(count)
        for key, count in values.items()
        if isinstance(count, int | float) and not isinstance(count, bool)
    }
