"""Churn and trace replay in a run: `[[churn]]` models and a `[replay]` trace become world actions.

Theory of operation
-------------------
A scenario names churn *models* (`sim.churn`: session lengths, office days, power cuts,
switch failures, swizzle-clog) over target peers, and optionally a failure trace to replay
(`sim.traces`: AVT, FTA or JSONL, mapped onto the topology, cut and looped). Before the run,
`plan_actions` turns them all into one time-ordered list of `Action`s (node ids, what,
a partition side label or a delay), deterministically: churn targets and draws come from
`random.Random(f"churn:{seed}:{index}")`, trace mapping from `random.Random(f"replay:{seed}")`.

During the run `apply` performs one action on the world, only where it applies (a `start`
of a running peer or a `crash` of a stopped one is skipped and counted): crash, stop, start,
join a named partition side, rejoin the main network, heal everything, or change a peer's
processing delay. Peers whose first planned action brings them up (office days, a trace that
starts with the machine off) are not started at time 0 (`initially_down`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from sim import churn, traces
from sim.churn import ChurnEvent
from sim.traces import TraceEvent

if TYPE_CHECKING:
    from sim.host import SimNode
    from sim.world import World

CHURN_MODELS: Final = ("sessions", "office-day", "power-cut", "switch-failure", "swizzle-clog")
TRACE_FORMATS: Final = ("avt", "fta", "jsonl")
TRACE_MAPPINGS: Final = ("identity", "round-robin", "random")
UP_ACTIONS: Final = ("start", "restart")
DOWN_ACTIONS: Final = ("crash", "stop")


@dataclass(frozen=True, slots=True)
class ChurnSpec:
    """One `[[churn]]` table, checked by `sim.scenario` (model parameters kept as given)."""

    model: str
    targets: tuple[str, ...]
    params: Mapping[str, Any]
    line: int


@dataclass(frozen=True, slots=True)
class ReplaySpec:
    """The `[replay]` table: which trace, read how, mapped how, cut and looped how."""

    trace: Path
    format: str
    mapping: str = "round-robin"
    down: str = "crash"
    cut_start_s: float | None = None
    cut_end_s: float | None = None
    loop_period_s: float | None = None
    allow_fold: bool = False


@dataclass(frozen=True, slots=True)
class Action:
    """At `time_s`, do `what` to `nodes` (`side` for `join`, `delay_s` for `slow`)."""

    time_s: float
    nodes: tuple[str, ...]
    what: str
    side: str = ""
    delay_s: float = 0.0
    origin: str = ""
    clients_of: str | None = None
    """For `join`/`rejoin` of a whole subnet (a switch failure): its cidr, so that its PXE
    clients move with its peers."""


@dataclass(slots=True)
class Applier:
    """Performs planned actions on a world; counts the ones that did not apply."""

    world: World
    skipped: int = 0
    applied: int = 0
    _sides: dict[str, list[SimNode]] = field(default_factory=dict)

    def apply(self, action: Action) -> None:
        """Do `action` to each of its nodes where it applies (see the module docstring)."""
        members = self.world.members
        nodes = [members[node_id] for node_id in action.nodes if node_id in members]
        handler = _HANDLERS[action.what]
        handler(self, nodes, action)

    def _each(
        self, nodes: list[SimNode], wanted_running: bool, do: Callable[[SimNode], None]
    ) -> None:
        for node in nodes:
            if node.running == wanted_running:
                do(node)
                self.applied += 1
            else:
                self.skipped += 1

    def crash(self, nodes: list[SimNode], action: Action) -> None:
        self._each(nodes, True, self.world.crash)

    def stop(self, nodes: list[SimNode], action: Action) -> None:
        self._each(nodes, True, self.world.stop)

    def start(self, nodes: list[SimNode], action: Action) -> None:
        self._each(nodes, False, self.world.start)

    def join(self, nodes: list[SimNode], action: Action) -> None:
        """Put `nodes` on the partition side named `action.side` (made on first use)."""
        self.world.partition_join(nodes, action.side, action.clients_of)
        self.applied += len(nodes)

    def rejoin(self, nodes: list[SimNode], action: Action) -> None:
        self.world.rejoin(nodes, action.clients_of)
        self.applied += len(nodes)

    def heal(self, nodes: list[SimNode], action: Action) -> None:
        self.world.heal()
        self.applied += 1

    def slow(self, nodes: list[SimNode], action: Action) -> None:
        for node in nodes:
            self.world.set_slow(node, action.delay_s)
            self.applied += 1


_HANDLERS: Final[dict[str, Callable[[Applier, list[SimNode], Action], None]]] = {
    "crash": Applier.crash,
    "stop": Applier.stop,
    "start": Applier.start,
    "join": Applier.join,
    "rejoin": Applier.rejoin,
    "heal": Applier.heal,
    "slow": Applier.slow,
}


# --------------------------------------------------------------------------- planning

Resolver = Callable[[str, random.Random], list[str]]
"""Node ids of a target rule (`all@a`, `random:3@b`, a node id), drawn from the given rng."""


def plan_actions(
    churn_specs: Sequence[ChurnSpec],
    replay: ReplaySpec | None,
    *,
    seed: int,
    duration_s: float,
    resolve: Resolver,
    topology: Mapping[str, tuple[str, str]],
    cidrs: Mapping[str, str],
) -> list[Action]:
    """Every churn and replay action of a run, in time order (stable for equal times).

    `topology` maps each node id to its (site, subnet name), for trace events that target a
    whole subnet or site; `cidrs` maps subnet names to their cidr.
    """
    actions: list[Action] = []
    for index, spec in enumerate(churn_specs):
        rng = random.Random(f"churn:{seed}:{index}")
        node_ids: list[str] = []
        for target in spec.targets:
            node_ids += [node for node in resolve(target, rng) if node not in node_ids]
        origin = f"churn[{index}] (line {spec.line})"
        events = churn_events(spec, node_ids, duration_s, rng)
        whole = _whole_subnet(spec, cidrs)
        actions += [_from_churn(event, origin, whole) for event in events]
    if replay is not None:
        actions += replay_actions(
            replay, seed=seed, duration_s=duration_s, topology=topology, cidrs=cidrs
        )
    actions.sort(key=lambda action: action.time_s)
    return [action for action in actions if action.time_s < duration_s]


def churn_events(
    spec: ChurnSpec, node_ids: list[str], duration_s: float, rng: random.Random
) -> list[ChurnEvent]:
    """The events of one churn model over `node_ids` (parameters checked by `sim.churn`)."""
    params = dict(spec.params)
    if not node_ids:
        return []
    if spec.model == "sessions":
        return churn.session_schedule(
            node_ids,
            duration_s,
            churn.distribution(params["session"]),
            churn.distribution(params["down"]),
            rng,
            clean=bool(params.get("clean", False)),
            random_phase=bool(params.get("random_phase", True)),
            start_s=float(params.get("start_s", 0.0)),
        )
    if spec.model == "office-day":
        hours = churn.OfficeHours(
            on_at_s=float(params["on_at_s"]),
            off_at_s=float(params["off_at_s"]),
            jitter_s=float(params.get("jitter_s", 0.0)),
            overnight_fraction=float(params.get("overnight_fraction", 0.0)),
            day_s=float(params.get("day_s", churn.DAY_S)),
        )
        return churn.office_days(node_ids, duration_s, hours, rng)
    if spec.model == "power-cut":
        down = churn.distribution(params["down"])
        return churn.site_power_cut(node_ids, float(params["at_s"]), down, rng)
    if spec.model == "switch-failure":
        side = str(params.get("side", f"switch-{spec.line}"))
        return churn.switch_failure(node_ids, float(params["at_s"]), float(params["down_s"]), side)
    assert spec.model == "swizzle-clog", spec.model
    count = params.get("count")
    return churn.swizzle_clog(
        node_ids,
        rng,
        start_s=float(params["start_s"]),
        interval_s=float(params["interval_s"]),
        hold_s=float(params.get("hold_s", 0.0)),
        count=None if count is None else min(int(count), len(node_ids)),  # "at most"
        mode="slow" if params.get("mode") == "slow" else "partition",
        delay_s=float(params.get("delay_s", 1.0)),
    )


def _whole_subnet(spec: ChurnSpec, cidrs: Mapping[str, str]) -> str | None:
    """The cidr of a switch failure that targets exactly one whole subnet (`all@name`)."""
    if spec.model != "switch-failure" or len(spec.targets) != 1:
        return None
    target = spec.targets[0]
    return cidrs.get(target.removeprefix("all@")) if target.startswith("all@") else None


def _from_churn(event: ChurnEvent, origin: str, clients_of: str | None) -> Action:
    what = {
        "crash": "crash",
        "stop": "stop",
        "start": "start",
        "restart": "start",
        "partition_add": "join",
        "partition_remove": "rejoin",
        "slow_add": "slow",
        "slow_remove": "slow",
    }[event.action]
    return Action(
        event.time_s,
        (event.node,),
        what,
        side=event.side or "",
        delay_s=event.delay_s or 0.0,
        origin=origin,
        clients_of=clients_of if what in ("join", "rejoin") else None,
    )


def read_trace(spec: ReplaySpec) -> list[TraceEvent]:
    """The trace file of `spec`, read by its format's reader."""
    if spec.format == "avt":
        return traces.read_avt(spec.trace)
    if spec.format == "fta":
        return traces.read_fta(spec.trace)
    return traces.read_jsonl(spec.trace)


def replay_actions(
    spec: ReplaySpec,
    *,
    seed: int,
    duration_s: float,
    topology: Mapping[str, tuple[str, str]],
    cidrs: Mapping[str, str],
) -> list[Action]:
    """The trace of `spec` as actions: read, cut, looped, mapped onto `topology`'s nodes."""
    events = read_trace(spec)
    if spec.cut_start_s is not None or spec.cut_end_s is not None:
        start_s = spec.cut_start_s or 0.0
        end_s = spec.cut_end_s if spec.cut_end_s is not None else float("inf")
        events = traces.cut(events, start_s, end_s)
    if spec.loop_period_s is not None:
        events = traces.loop(events, spec.loop_period_s, duration_s)
    mapping: Literal["round-robin", "random"] | None = None
    if spec.mapping in ("round-robin", "random"):
        mapping = "random" if spec.mapping == "random" else "round-robin"
    events = traces.map_trace(
        events,
        list(topology),
        mapping,
        random.Random(f"replay:{seed}"),
        allow_fold=spec.allow_fold,
    )
    sites = {site for site, _ in topology.values()}
    for event in events:
        if event.subnet is not None and event.subnet not in cidrs:
            raise traces.TraceError(f"{event.origin}: unknown subnet {event.subnet!r}")
        if event.site is not None and event.site not in sites:
            raise traces.TraceError(f"{event.origin}: unknown site {event.site!r}")
    return [_from_trace(event, spec, topology, cidrs) for event in events]


def _from_trace(
    event: TraceEvent,
    spec: ReplaySpec,
    topology: Mapping[str, tuple[str, str]],
    cidrs: Mapping[str, str],
) -> Action:
    nodes = _trace_targets(event, topology)
    origin = event.origin or str(spec.trace)
    whole = cidrs.get(event.subnet) if event.node is None and event.subnet else None
    kind = event.event
    if kind in ("up", "start", "restart"):
        return Action(event.time_s, nodes, "start", origin=origin)
    if kind == "down":
        return Action(event.time_s, nodes, spec.down, origin=origin)
    if kind in DOWN_ACTIONS:
        return Action(event.time_s, nodes, kind, origin=origin)
    if kind == "partition":
        side = str(event.params.get("side", "trace"))
        return Action(event.time_s, nodes, "join", side=side, origin=origin, clients_of=whole)
    if kind == "heal":
        what = "rejoin" if nodes else "heal"
        return Action(event.time_s, nodes, what, origin=origin, clients_of=whole)
    assert kind == "slow", kind
    delay_s = event.params.get("delay_s")
    assert isinstance(delay_s, int | float), "traces checks delay_s"
    return Action(event.time_s, nodes, "slow", delay_s=float(delay_s), origin=origin)


def _trace_targets(event: TraceEvent, topology: Mapping[str, tuple[str, str]]) -> tuple[str, ...]:
    if event.node is not None:
        return (event.node,)
    if event.subnet is not None:
        return tuple(node for node, (_, subnet) in topology.items() if subnet == event.subnet)
    if event.site is not None:
        return tuple(node for node, (site, _) in topology.items() if site == event.site)
    return ()


def initially_down(actions: Sequence[Action]) -> set[str]:
    """Peers whose first planned action brings them up: they stay off at time 0."""
    first: dict[str, str] = {}
    for action in actions:
        for node in action.nodes:
            first.setdefault(node, action.what)
    return {node for node, what in first.items() if what == "start"}
