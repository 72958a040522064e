"""Knob randomisation: a scenario's `[randomize]` ranges drawn anew for every seed.

Theory of operation
-------------------
A scenario may name knob ranges (`[randomize.election] lease_timeout_s = [1.0, 3.0]`), the
way FoundationDB's simulator randomises its knobs so that tests cover settings nobody
would pick by hand. Each range is checked at load time against the knob's type and bounds
(`sim.sweep`'s knob table, the same one `peerpxe sweep --set` uses). For a run with seed
`s`, `draw` takes `random.Random(f"knobs:{s}")` and draws every knob in sorted name order:
an integer knob uniformly among the integers of its range, a float knob uniformly in it.
A combination the knobs' own checks refuse (a lease no longer than the heartbeat) is drawn
again, up to `DRAWS_MAX` times, so every run gets valid knobs ("within valid ranges"). The
values drawn are reported with the run (`knobs_drawn`), so a failing seed shows its knobs.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from sim.scenario import Scenario

DRAWS_MAX: Final = 100
"""Draws of a whole combination before giving up (the ranges admit no valid one)."""

KnobRange = tuple[str, float, float]
"""(`section.knob`, low, high), bounds included."""


class KnobRangeError(ValueError):
    """A `[randomize]` range names no knob, has the wrong type, or leaves the knob's bounds."""


def check_ranges(raw: Mapping[str, object]) -> tuple[KnobRange, ...]:
    """`{section: {knob: [low, high]}}` as checked ranges, sorted by knob name."""
    # sim.sweep imports sim.scenario, which imports this module: import at call time.
    from sim.sweep import SweepError, check_value, knob_name, knob_type  # noqa: PLC0415

    ranges: list[KnobRange] = []
    for section, table in raw.items():
        if not isinstance(table, dict):
            raise KnobRangeError(f"{section}: expected a table of knob = [low, high]")
        for field_name, bounds in table.items():
            try:
                knob = knob_name(f"{section}.{field_name}")
                low, high = _pair(knob, bounds)
                kind = knob_type(knob)
                check_value(knob, kind(low) if kind is int else low)
                check_value(knob, kind(high) if kind is int else high)
            except SweepError as error:
                raise KnobRangeError(str(error)) from error
            ranges.append((knob, low, high))
    return tuple(sorted(ranges))


def _pair(knob: str, bounds: object) -> tuple[float, float]:
    from sim.sweep import SweepError, knob_type  # noqa: PLC0415 (see check_ranges)

    if not isinstance(bounds, list | tuple) or len(bounds) != 2:
        raise SweepError(f"{knob}: expected [low, high], got {bounds!r}")
    if not all(isinstance(value, int | float) and not isinstance(value, bool) for value in bounds):
        raise SweepError(f"{knob}: expected [low, high], got {bounds!r}")
    low, high = float(bounds[0]), float(bounds[1])
    if low > high:
        raise SweepError(f"{knob}: low {bounds[0]!r} is above high {bounds[1]!r}")
    if knob_type(knob) is int and not all(isinstance(value, int) for value in bounds):
        raise SweepError(f"{knob}: an integer knob needs integer bounds, got {bounds!r}")
    return low, high


def draw(scenario: Scenario, seed: int) -> tuple[Scenario, dict[str, float]]:
    """`scenario` with its `[randomize]` knobs drawn for `seed`, and the values drawn."""
    from sim.sweep import SweepError, apply_settings, knob_type  # noqa: PLC0415 (see above)

    if not scenario.randomize:
        return scenario, {}
    rng = random.Random(f"knobs:{seed}")
    last_problem = ""
    for _ in range(DRAWS_MAX):
        settings = tuple(
            (knob, _draw_one(rng, low, high, knob_type(knob) is int))
            for knob, low, high in scenario.randomize
        )
        try:
            return apply_settings(scenario, settings), dict(settings)
        except SweepError as error:
            last_problem = str(error)
    raise KnobRangeError(f"no valid knob combination in {DRAWS_MAX} draws: {last_problem}")


def _draw_one(rng: random.Random, low: float, high: float, integer: bool) -> float:
    if integer:
        return rng.randint(int(low), int(high))
    return rng.uniform(low, high)
