"""Failure traces: read AVT, FTA and JSONL files into one list of `TraceEvent`, map, cut, loop.

Theory of operation
-------------------
Each reader turns a file into a list of frozen `TraceEvent(time_s, node, event, site, subnet,
params)`, sorted by time (a stable sort: ties keep file order), or raises one `TraceError`
whose message reads `path:line: problem`. Every event remembers where it came from
(`origin`, `path:line`, not part of equality), so the later steps can point at the line too.
The formats are described in docs/traces.md:

- AVT (Godfrey's Repository of Availability Traces): one node per line,
  `name count start_1 end_1 ... start_count end_count`, the up intervals in seconds;
  each interval becomes `up` at its start and `down` at its end.
- FTA (Failure Trace Archive `event_trace` tables): tab-separated rows, one availability
  (`event_type` 1) or unavailability (0) interval each, absolute epoch seconds. Redundant
  transitions are dropped, so touching intervals of one node merge.
- JSONL (ours): one JSON object per line, any event of `EVENTS`, with optional site, subnet
  and free-form scalar `params`; `dump_jsonl` writes it back (a lossless round trip).

Then `map_trace` renames trace nodes onto simulator node ids (identity, round-robin, random
or an explicit dict), `cut` keeps a window and shifts it to start at 0, and `loop` repeats a
trace. Nothing here touches the simulator; the scenario loader turns events into faults.

Event vocabulary: `up`/`down` (availability, from AVT and FTA: the replayer decides whether
`down` is a crash or a clean stop), `crash`, `restart`, `stop`, `start`, `partition` (the
target joins side `params["side"]`, default `"trace"`), `heal` (with a target: that target
rejoins the main network; without: every partition is removed), `slow`
(`params["delay_s"]`, 0 restores). A target is a `node`, or, without a node, a whole
`subnet` or `site` (a switch failure, a site power cut); `heal` alone needs none.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

__all__ = [
    "DOWN_EVENTS",
    "EVENTS",
    "FTA_COLUMNS",
    "UP_EVENTS",
    "NodeMapping",
    "ParamValue",
    "TraceError",
    "TraceEvent",
    "cut",
    "dump_jsonl",
    "loop",
    "map_trace",
    "node_assignment",
    "parse_avt",
    "parse_fta",
    "parse_jsonl",
    "read_avt",
    "read_fta",
    "read_jsonl",
    "to_jsonl",
    "trace_nodes",
]

EVENTS: Final = ("up", "down", "crash", "restart", "stop", "start", "partition", "heal", "slow")
DOWN_EVENTS: Final = ("down", "crash", "stop")
"""Events after which the target node is not running."""
UP_EVENTS: Final = ("up", "restart", "start")
"""Events after which the target node is running."""
JSONL_KEYS: Final = ("time_s", "node", "site", "subnet", "event", "params")
FTA_COLUMNS: Final = (
    "event_id",
    "component_id",
    "node_id",
    "platform_id",
    "node_name",
    "event_type",
    "event_start_time",
    "event_stop_time",
    "event_end_reason",
)
"""The FTA `event_trace` columns, in the order assumed when a file has no header row."""
FTA_ALIASES: Final = {"event_end_time": "event_stop_time"}
FTA_INTEGER_COLUMNS: Final = ("event_id", "component_id", "platform_id", "event_end_reason")
FTA_NULLS: Final = ("", "NULL", "\\N")
"""How FTA dumps write a missing value (MySQL's `\\N`, `NULL`, or nothing)."""
FTA_AVAILABLE: Final = {"0": "down", "1": "up"}
"""`event_type` 0 is an unavailability interval, 1 an availability interval."""

_NUMBER: Final = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
_INTEGER: Final = re.compile(r"[+-]?[0-9]+")
_COUNT: Final = re.compile(r"[0-9]+")

ParamValue = str | int | float | bool | None
NodeMapping = Literal["round-robin", "random"] | Mapping[str, str] | None


class TraceError(Exception):
    """A trace file is malformed or does not fit the topology; reads `path:line: problem`."""


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """At `time_s`, `event` happens to `node` (or to all of `subnet` / `site` when no node)."""

    time_s: float
    node: str | None
    event: str
    site: str | None = None
    subnet: str | None = None
    params: dict[str, ParamValue] = field(default_factory=dict)
    origin: str = field(default="", compare=False, repr=False)
    """`path:line` it was read from ('' when built in code); not part of equality.

    Events compare by value but are not hashable (`params` is a dict)."""

    def __post_init__(self) -> None:
        assert self.event in EVENTS, f"unknown event {self.event!r}"
        assert math.isfinite(self.time_s)
        assert self.time_s >= 0.0


# --------------------------------------------------------------------------- AVT


def read_avt(path: str | Path) -> list[TraceEvent]:
    """Read an AVT file (see `parse_avt`)."""
    return parse_avt(Path(path).read_text(encoding="utf-8"), str(path))


def parse_avt(text: str, path: str = "<avt>") -> list[TraceEvent]:
    """Up intervals per node -> `up` at each start, `down` at each end, sorted by time.

    A line is `name count start_1 end_1 ... start_count end_count` (whitespace separated,
    seconds); `#` starts a comment; blank lines are skipped. Each name appears once; within a
    line every interval ends after it starts and starts after the previous one ends.
    """
    events: list[TraceEvent] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        fields = line.split("#", 1)[0].split()
        if fields:
            events += _avt_line(fields, f"{path}:{number}", number, seen)
    return _by_time(events)


def _avt_line(fields: list[str], where: str, number: int, seen: dict[str, int]) -> list[TraceEvent]:
    if len(fields) < 2:
        raise TraceError(f"{where}: expected 'node count start end ...', got {fields[0]!r} alone")
    node, count_text, time_texts = fields[0], fields[1], fields[2:]
    if node in seen:
        raise TraceError(f"{where}: node {node!r} already listed on line {seen[node]}")
    seen[node] = number
    if not _COUNT.fullmatch(count_text):
        raise TraceError(f"{where}: interval count: expected an integer >= 0, got {count_text!r}")
    count = int(count_text)
    if len(time_texts) != 2 * count:
        problem = f"expected {2 * count} times ({count} intervals), got {len(time_texts)}"
        raise TraceError(f"{where}: {problem}")
    times = [_time(text, where, f"time {index + 1}") for index, text in enumerate(time_texts)]
    events: list[TraceEvent] = []
    previous_end_s: float | None = None
    for index in range(count):
        start_s, end_s = times[2 * index], times[2 * index + 1]
        _check_interval(start_s, end_s, where, f"up interval {index + 1}")
        if previous_end_s is not None and start_s <= previous_end_s:
            problem = f"does not start after up interval {index} ends at {_s(previous_end_s)}"
            raise TraceError(f"{where}: up interval {index + 1} starts at {_s(start_s)}: {problem}")
        events.append(TraceEvent(start_s, node, "up", origin=where))
        events.append(TraceEvent(end_s, node, "down", origin=where))
        previous_end_s = end_s
    return events


# --------------------------------------------------------------------------- FTA


def read_fta(path: str | Path, node_column: str = "node_id") -> list[TraceEvent]:
    """Read an FTA event table (see `parse_fta`)."""
    return parse_fta(Path(path).read_text(encoding="utf-8"), str(path), node_column)


def parse_fta(text: str, path: str = "<fta>", node_column: str = "node_id") -> list[TraceEvent]:
    """FTA availability rows -> `up`/`down` transitions per node, sorted by time.

    Tab-separated; lines starting with `#` and blank lines are skipped. The first row may be a
    header naming the columns (any order, `event_end_time` accepted for `event_stop_time`);
    without one, the nine `FTA_COLUMNS` are assumed in order. Required: `node_column`,
    `event_type`, `event_start_time`, `event_stop_time`. A node's rows come in time order and
    do not overlap; transitions that do not change the node's state are dropped.
    """
    if node_column not in ("node_id", "node_name"):
        raise ValueError(f"node_column must be 'node_id' or 'node_name', got {node_column!r}")
    reader = _FtaReader(path, node_column)
    for number, line in enumerate(text.split("\n"), start=1):
        row = line.rstrip("\r")
        if row.strip() and not row.lstrip().startswith("#"):
            reader.row(row.split("\t"), number)
    return reader.events()


class _FtaReader:
    """Collects one node's intervals at a time; checks order and overlap per node."""

    def __init__(self, path: str, node_column: str) -> None:
        self._path = path
        self._node_column = node_column
        self._columns: tuple[str, ...] | None = None
        self._by_node: dict[str, list[TraceEvent]] = {}
        self._last: dict[str, tuple[float, int]] = {}
        """node -> (stop time of its latest row, that row's line)."""

    def row(self, fields: list[str], number: int) -> None:
        where = f"{self._path}:{number}"
        cells = [cell.strip() for cell in fields]
        if self._columns is None:
            if any(_fta_name(cell) in FTA_COLUMNS for cell in cells):
                self._columns = self._header(cells, where)
                return
            self._columns = FTA_COLUMNS
        if len(cells) != len(self._columns):
            problem = f"expected {len(self._columns)} tab-separated columns {self._columns}"
            raise TraceError(f"{where}: {problem}, got {len(cells)}")
        self._interval(dict(zip(self._columns, cells, strict=True)), where, number)

    def events(self) -> list[TraceEvent]:
        merged: list[TraceEvent] = []
        for events in self._by_node.values():
            merged += _transitions(events)
        return _by_time(merged)

    def _header(self, cells: list[str], where: str) -> tuple[str, ...]:
        columns: list[str] = []
        for cell in cells:
            name = _fta_name(cell)
            if name not in FTA_COLUMNS:
                raise TraceError(f"{where}: unknown column {cell!r} (expected {FTA_COLUMNS})")
            if name in columns:
                raise TraceError(f"{where}: column {name!r} appears twice")
            columns.append(name)
        required = (self._node_column, "event_type", "event_start_time", "event_stop_time")
        for name in required:
            if name not in columns:
                raise TraceError(f"{where}: missing column {name!r}")
        return tuple(columns)

    def _interval(self, row: dict[str, str], where: str, number: int) -> None:
        node = row[self._node_column]
        if node in FTA_NULLS:
            raise TraceError(f"{where}: {self._node_column}: expected a node, got {node!r}")
        for name in FTA_INTEGER_COLUMNS:
            value = row.get(name, "")
            if value not in FTA_NULLS and not _INTEGER.fullmatch(value):
                raise TraceError(f"{where}: {name}: expected an integer, got {value!r}")
        kind = row["event_type"]
        if kind not in FTA_AVAILABLE:
            problem = f"expected 0 (unavailable) or 1 (available), got {kind!r}"
            raise TraceError(f"{where}: event_type: {problem}")
        start_s = _time(row["event_start_time"], where, "event_start_time")
        stop_s = _time(row["event_stop_time"], where, "event_stop_time")
        _check_interval(start_s, stop_s, where, "interval")
        self._check_after_previous(node, start_s, where)
        self._last[node] = (stop_s, number)
        state = FTA_AVAILABLE[kind]
        after = "down" if state == "up" else "up"
        intervals = self._by_node.setdefault(node, [])
        intervals.append(TraceEvent(start_s, node, state, origin=where))
        intervals.append(TraceEvent(stop_s, node, after, origin=where))

    def _check_after_previous(self, node: str, start_s: float, where: str) -> None:
        if node not in self._last:
            return
        previous_stop_s, line = self._last[node]
        if start_s < previous_stop_s:
            problem = f"node {node!r}'s interval starts at {_s(start_s)}, before its previous"
            raise TraceError(f"{where}: {problem} one (line {line}) ends at {_s(previous_stop_s)}")


def _fta_name(cell: str) -> str:
    return FTA_ALIASES.get(cell, cell)


def _transitions(events: list[TraceEvent]) -> list[TraceEvent]:
    """One node's events in order, keeping only changes of state.

    A repeat of the current state is dropped; a flip at the very time of the previous kept
    flip cancels it (two touching intervals of the same kind merge).
    """
    kept: list[TraceEvent] = []
    for event in events:
        if kept and kept[-1].event == event.event:
            continue
        if kept and kept[-1].time_s == event.time_s:
            kept.pop()
            if kept and kept[-1].event == event.event:
                continue
        kept.append(event)
    return kept


# --------------------------------------------------------------------------- JSONL


def read_jsonl(path: str | Path) -> list[TraceEvent]:
    """Read a JSONL trace (see `parse_jsonl`)."""
    return parse_jsonl(Path(path).read_text(encoding="utf-8"), str(path))


def parse_jsonl(text: str, path: str = "<jsonl>") -> list[TraceEvent]:
    """One JSON object per line -> events, in file order (which must be time order).

    Keys: `time_s` (number >= 0, required), `event` (one of `EVENTS`, required), `node`,
    `site`, `subnet` (non-empty strings or null), `params` (an object of strings, numbers,
    booleans or nulls). Blank lines are skipped. Unknown or duplicate keys, times that go
    backwards, a node going down twice (or up twice) in a row, an event without a target
    (except `heal`) and `slow` without `params.delay_s` >= 0 are errors.
    """
    events: list[TraceEvent] = []
    state: dict[str, tuple[str, int]] = {}
    previous: tuple[float, int] | None = None
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        event = _jsonl_event(line, where)
        if previous is not None and event.time_s < previous[0]:
            problem = f"goes backwards: {_s(event.time_s)} after {_s(previous[0])}"
            raise TraceError(f"{where}: time_s {problem} on line {previous[1]}")
        previous = (event.time_s, number)
        _check_state(event, number, where, state)
        events.append(event)
    return events


def to_jsonl(events: Iterable[TraceEvent]) -> str:
    """The JSONL text of `events`: one object per line; null fields and empty params left out."""
    lines = [json.dumps(_jsonl_object(event), allow_nan=False) + "\n" for event in events]
    return "".join(lines)


def dump_jsonl(events: Iterable[TraceEvent], path: str | Path) -> None:
    """Write `events` to `path` as JSONL (`read_jsonl` reads back equal events)."""
    Path(path).write_text(to_jsonl(events), encoding="utf-8")


def _jsonl_object(event: TraceEvent) -> dict[str, object]:
    data: dict[str, object] = {"time_s": event.time_s}
    for key in ("node", "site", "subnet"):
        value = getattr(event, key)
        if value is not None:
            data[key] = value
    data["event"] = event.event
    if event.params:
        data["params"] = dict(event.params)
    return data


def _jsonl_event(line: str, where: str) -> TraceEvent:
    data = _json_object(line, where)
    for key in data:
        if key not in JSONL_KEYS:
            raise TraceError(f"{where}: unknown key {key!r} (expected one of {JSONL_KEYS})")
    time_s = _json_time(data.get("time_s"), where)
    kind = data.get("event")
    if not isinstance(kind, str) or kind not in EVENTS:
        raise TraceError(f"{where}: event: expected one of {EVENTS}, got {kind!r}")
    node, site, subnet = (
        _json_name(data.get(key), where, key) for key in ("node", "site", "subnet")
    )
    if kind != "heal" and node is None and site is None and subnet is None:
        raise TraceError(f"{where}: {kind} needs a target: node, subnet or site")
    params = _json_params(data.get("params", {}), where)
    _check_params(kind, params, where)
    return TraceEvent(time_s, node, kind, site, subnet, params, origin=where)


def _check_params(kind: str, params: dict[str, ParamValue], where: str) -> None:
    """`slow` needs `delay_s` >= 0; a `partition` side, when given, is a non-empty string."""
    if kind == "slow":
        delay_s = params.get("delay_s")
        if isinstance(delay_s, bool) or not isinstance(delay_s, int | float) or delay_s < 0:
            raise TraceError(f"{where}: slow needs params.delay_s >= 0, got {delay_s!r}")
    side = params.get("side", "trace")
    if kind == "partition" and (not isinstance(side, str) or not side):
        raise TraceError(
            f"{where}: partition: params.side must be a non-empty string, got {side!r}"
        )


def _json_object(line: str, where: str) -> dict[str, object]:
    try:
        data = json.loads(line, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except (ValueError, _DuplicateKeyError) as error:
        raise TraceError(f"{where}: {error}") from error
    if not isinstance(data, dict):
        raise TraceError(f"{where}: expected a JSON object, got {line.strip()!r}")
    return data


class _DuplicateKeyError(Exception):
    """A JSON object names a key twice."""


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    data: dict[str, object] = {}
    for key, value in pairs:
        if key in data:
            raise _DuplicateKeyError(f"duplicate key {key!r}")
        data[key] = value
    return data


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a number JSON allows")


def _json_time(value: object, where: str) -> float:
    if value is None:
        raise TraceError(f"{where}: time_s: missing required key")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TraceError(f"{where}: time_s: expected a number, got {value!r}")
    if value < 0:
        raise TraceError(f"{where}: time_s: negative time {value!r}")
    time_s = float(value)
    if not math.isfinite(time_s):
        raise TraceError(f"{where}: time_s: expected a finite number, got {value!r}")
    return time_s


def _json_name(value: object, where: str, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise TraceError(f"{where}: {key}: expected a non-empty string or null, got {value!r}")
    return value


def _json_params(value: object, where: str) -> dict[str, ParamValue]:
    if not isinstance(value, dict):
        raise TraceError(f"{where}: params: expected an object, got {value!r}")
    params: dict[str, ParamValue] = {}
    for key, item in value.items():
        if item is not None and not isinstance(item, str | int | float | bool):
            problem = f"expected a string, number, boolean or null, got {item!r}"
            raise TraceError(f"{where}: params.{key}: {problem}")
        params[key] = item
    return params


def _check_state(
    event: TraceEvent, number: int, where: str, state: dict[str, tuple[str, int]]
) -> None:
    """A node cannot go down while down or come up while up (overlapping intervals)."""
    if event.node is None or event.event not in DOWN_EVENTS + UP_EVENTS:
        return
    now = "down" if event.event in DOWN_EVENTS else "up"
    if event.node in state and state[event.node][0] == now:
        line = state[event.node][1]
        problem = f"node {event.node!r} is already {now} (since line {line})"
        raise TraceError(f"{where}: {event.event}: {problem}")
    state[event.node] = (now, number)


# --------------------------------------------------------------------------- mapping


def trace_nodes(events: Iterable[TraceEvent]) -> list[str]:
    """The trace's node names, in order of first appearance."""
    seen: dict[str, None] = {}
    for event in events:
        if event.node is not None:
            seen.setdefault(event.node, None)
    return list(seen)


def node_assignment(
    events: Sequence[TraceEvent],
    topology_node_ids: Sequence[str],
    mapping: NodeMapping = None,
    rng: random.Random | None = None,
    *,
    allow_fold: bool = False,
) -> dict[str, str]:
    """Trace node name -> simulator node id, for every node of the trace (see `map_trace`)."""
    topology = _topology(topology_node_ids)
    names = trace_nodes(events)
    first = _first_origins(events)
    if mapping is None:
        assignment = {name: name for name in names}
    elif isinstance(mapping, str):
        order = _spread_order(topology, mapping, rng)
        if not allow_fold:
            _check_size(names, order, first)
        assignment = {name: order[index % len(order)] for index, name in enumerate(names)}
    else:
        assignment = _explicit(names, mapping, first)
    _check_targets(assignment, topology, first)
    if not allow_fold:
        _check_no_fold(assignment, first)
    return assignment


def map_trace(
    events: Sequence[TraceEvent],
    topology_node_ids: Sequence[str],
    mapping: NodeMapping = None,
    rng: random.Random | None = None,
    *,
    allow_fold: bool = False,
) -> list[TraceEvent]:
    """The events with trace node names replaced by simulator node ids.

    `mapping`:
    - None: the names already are node ids; any other name is an error.
    - "round-robin": the i-th trace node (first appearance) -> `topology_node_ids[i % n]`.
    - "random": the same over a copy of the topology shuffled with `rng` (required).
    - a dict {trace name: node id}: every trace node must be mapped, onto a known id.
    Two trace nodes on one simulator node (more trace nodes than topology nodes, or a dict
    that maps two names to one id) are an error unless `allow_fold`; folded nodes' events
    then interleave and the replayer must tolerate redundant ups and downs. Events without
    a node (subnet, site, global `heal`) pass unchanged; site and subnet names are not mapped.

    Raises:
        TraceError: `path:line` of the first event of the offending trace node.
    """
    assignment = node_assignment(events, topology_node_ids, mapping, rng, allow_fold=allow_fold)
    return [
        event if event.node is None else dataclasses.replace(event, node=assignment[event.node])
        for event in events
    ]


def _topology(node_ids: Sequence[str]) -> list[str]:
    topology = list(node_ids)
    if len(set(topology)) != len(topology):
        raise ValueError("topology_node_ids: duplicate node ids")
    return topology


def _first_origins(events: Iterable[TraceEvent]) -> dict[str, str]:
    first: dict[str, str] = {}
    for event in events:
        if event.node is not None and event.node not in first:
            first[event.node] = event.origin or "<trace>"
    return first


def _spread_order(topology: list[str], how: str, rng: random.Random | None) -> list[str]:
    """The topology in the order trace nodes are dealt onto it."""
    if how not in ("round-robin", "random"):
        raise ValueError(f"mapping must be None, 'round-robin', 'random' or a dict, got {how!r}")
    order = topology.copy()
    if how == "random":
        if rng is None:
            raise ValueError("mapping='random' needs an rng")
        rng.shuffle(order)
    if not order:
        raise ValueError("topology_node_ids: no nodes to map the trace onto")
    return order


def _check_size(names: list[str], order: list[str], first: dict[str, str]) -> None:
    if len(names) <= len(order):
        return
    name = names[len(order)]
    problem = f"trace node {name!r} is node {len(order) + 1} of the trace ({len(names)} in all)"
    hint = "pass allow_fold=True to fold several trace nodes onto one"
    raise TraceError(f"{first[name]}: {problem}, but the topology has {len(order)} ({hint})")


def _explicit(
    names: list[str], mapping: Mapping[str, str], first: dict[str, str]
) -> dict[str, str]:
    assignment: dict[str, str] = {}
    for name in names:
        if name not in mapping:
            raise TraceError(f"{first[name]}: trace node {name!r} is not in the mapping")
        assignment[name] = mapping[name]
    return assignment


def _check_targets(assignment: dict[str, str], topology: list[str], first: dict[str, str]) -> None:
    known = dict.fromkeys(topology)
    for name, target in assignment.items():
        if target not in known:
            what = (
                f"unknown node {name!r}"
                if target == name
                else f"{name!r} maps to unknown node {target!r}"
            )
            raise TraceError(f"{first[name]}: {what} (not in the topology)")


def _check_no_fold(assignment: dict[str, str], first: dict[str, str]) -> None:
    owner: dict[str, str] = {}
    for name, target in assignment.items():
        if target in owner:
            problem = f"trace nodes {owner[target]!r} and {name!r} both map to {target!r}"
            raise TraceError(f"{first[name]}: {problem} (pass allow_fold=True to allow it)")
        owner[target] = name


# --------------------------------------------------------------------------- time windows


def cut(
    events: Iterable[TraceEvent], start_s: float, end_s: float, *, carry_state: bool = True
) -> list[TraceEvent]:
    """The events in `[start_s, end_s)`, shifted so that `start_s` becomes 0.

    With `carry_state`, each node's last `up`/`down`-kind event before `start_s` is replayed
    at 0, so every node starts the window in the state the trace had it in then.
    """
    if not math.isfinite(start_s) or start_s < 0:
        raise ValueError(f"cut.start_s must be a finite number >= 0, got {start_s!r}")
    if not end_s > start_s:
        raise ValueError(f"cut.end_s must be greater than start_s ({start_s!r}), got {end_s!r}")
    before: dict[str, TraceEvent] = {}
    inside: list[TraceEvent] = []
    for event in _by_time(list(events)):
        if event.time_s < start_s:
            if event.node is not None and event.event in DOWN_EVENTS + UP_EVENTS:
                before[event.node] = event
        elif event.time_s < end_s:
            inside.append(dataclasses.replace(event, time_s=event.time_s - start_s))
    carried = [dataclasses.replace(event, time_s=0.0) for event in before.values()]
    return (carried if carry_state else []) + inside


def loop(events: Iterable[TraceEvent], period_s: float, until_s: float) -> list[TraceEvent]:
    """The trace repeated every `period_s` up to (not including) `until_s`.

    Every event must lie in `[0, period_s)`; `cut` a longer trace first. Copy k is shifted by
    `k * period_s`.
    """
    if not math.isfinite(period_s) or period_s <= 0:
        raise ValueError(f"loop.period_s must be a finite number > 0, got {period_s!r}")
    if not math.isfinite(until_s) or until_s < 0:
        raise ValueError(f"loop.until_s must be a finite number >= 0, got {until_s!r}")
    one = _by_time(list(events))
    for event in one:
        if event.time_s >= period_s:
            where = event.origin or "<trace>"
            raise ValueError(
                f"{where}: event at {_s(event.time_s)} is not before period_s; cut first"
            )
    repeated: list[TraceEvent] = []
    for copy in range(math.ceil(until_s / period_s)):
        offset_s = copy * period_s
        repeated += [
            dataclasses.replace(event, time_s=event.time_s + offset_s)
            for event in one
            if event.time_s + offset_s < until_s
        ]
    return repeated


# --------------------------------------------------------------------------- helpers


def _by_time(events: list[TraceEvent]) -> list[TraceEvent]:
    """Sorted by time; a stable sort, so ties keep their order."""
    return sorted(events, key=lambda event: event.time_s)


def _time(text: str, where: str, what: str) -> float:
    if not _NUMBER.fullmatch(text):
        raise TraceError(f"{where}: {what}: expected a time in seconds, got {text!r}")
    value = float(text)
    if value < 0:
        raise TraceError(f"{where}: {what}: negative time {text!r}")
    if not math.isfinite(value):
        raise TraceError(f"{where}: {what}: time out of range {text!r}")
    return value


def _check_interval(start_s: float, end_s: float, where: str, what: str) -> None:
    if end_s < start_s:
        problem = f"goes backwards: ends at {_s(end_s)} before it starts at {_s(start_s)}"
        raise TraceError(f"{where}: {what} {problem}")
    if end_s == start_s:
        raise TraceError(f"{where}: {what} is empty: starts and ends at {_s(start_s)}")


def _s(value: float) -> str:
    """Seconds for a message: `12 s`, `12.5 s`, `1700000000 s`."""
    return f"{value:.15g} s"
