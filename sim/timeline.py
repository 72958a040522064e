"""Time series of a run, for reports and plots: live peers, partitions, faults.

Theory of operation
-------------------
`Timeline` is a world listener (the protocol of `sim.checkers.Invariants`). It only reads
what the world tells every listener and keeps a few step series, each a list of
`(time_s, value)` samples: the value holds from that time until the next sample.

- Live peers: the running cluster members per site and in total. `start` and `restart`
  make a member live, `crash` and `stop` end that; repeated news about a member in the same
  state change nothing.
- Partitions: how many members are cut off from the main side, and on how many other
  sides, after every `partition` and `heal`.
- Faults: every lifecycle change but a first start (`crash`, `stop`, `restart`,
  `partition N`, `heal`, `slow X`), as `(time_s, node id or "-", what)`.

Responders per subnet are `sim.leadership.LeadershipWatch.figures.samples`; the report joins
both. Cost: O(1) per lifecycle event, nothing per message or membership change; several
changes at one simulated time collapse into one sample (the state after the last). The
timeline never writes to the trace, never draws randomness and never schedules anything, so
it cannot change a run or its digest. Forged nodes (not cluster members) are ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from actors.core import LeadershipChanged, MemberChanged, NodeId

if TYPE_CHECKING:
    from sim.host import SimNode
    from sim.world import World

Series = list[tuple[float, int]]
"""A step series: `(time_s, value)` samples, time ascending."""

LIVE_WHATS: Final = ("start", "restart")
GONE_WHATS: Final = ("crash", "stop")
PARTITION_PREFIX: Final = "partition"
HEAL: Final = "heal"


class Timeline:
    """A world listener that records the run's step series (see the module docstring)."""

    def __init__(self, world: World) -> None:
        self._world = world
        self.live_by_site: dict[str, Series] = {}
        self.live_total: Series = [(0.0, 0)]
        self.partitioned_peers: Series = [(0.0, 0)]
        self.partition_sides: Series = [(0.0, 0)]
        self.faults: list[tuple[float, str, str]] = []
        self._live: dict[NodeId, None] = {}
        self._live_per_site: dict[str, int] = {}
        self._side_of: dict[NodeId, str] = {}
        for node in world.members.values():
            self._site_series(node.info.site)

    # ----------------------------------------------------------------------- listener

    def member_changed(self, now_s: float, observer: SimNode, event: MemberChanged) -> None:
        """Membership views are not part of the timeline (too many, and in the metrics)."""

    def leadership_changed(self, now_s: float, node: SimNode, event: LeadershipChanged) -> None:
        """Responders are sampled by `sim.leadership.LeadershipWatch`."""

    def lifecycle(self, now_s: float, node: SimNode | None, what: str) -> None:
        """Update live peers, partitions and the fault list."""
        if node is None:
            self._on_heal(now_s, what)
            return
        if node.node_id not in self._world.members:
            return
        if what != "start":
            self.faults.append((now_s, node.node_id, what))
        if what in LIVE_WHATS:
            self._set_live(now_s, node, live=True)
        elif what in GONE_WHATS:
            self._set_live(now_s, node, live=False)
        elif what.startswith(PARTITION_PREFIX):
            self._side_of[node.node_id] = what.removeprefix(PARTITION_PREFIX).strip()
            self._sample_partitions(now_s)

    # ----------------------------------------------------------------------- output

    def to_json(self) -> dict[str, Any]:
        """The series as JSON-ready lists (`[time_s, value]` pairs), in creation order."""
        return {
            "live_peers_total": _pairs(self.live_total),
            "live_peers_by_site": {
                site: _pairs(series) for site, series in self.live_by_site.items()
            },
            "partitioned_peers": _pairs(self.partitioned_peers),
            "partition_sides": _pairs(self.partition_sides),
            "faults": [[time_s, node_id, what] for time_s, node_id, what in self.faults],
        }

    # ----------------------------------------------------------------------- helpers

    def _site_series(self, site: str) -> Series:
        series = self.live_by_site.get(site)
        if series is None:
            series = self.live_by_site[site] = [(0.0, 0)]
            self._live_per_site[site] = 0
        return series

    def _set_live(self, now_s: float, node: SimNode, *, live: bool) -> None:
        node_id = node.node_id
        if (node_id in self._live) == live:
            return
        if live:
            self._live[node_id] = None
        else:
            del self._live[node_id]
        site = node.info.site
        series = self._site_series(site)
        self._live_per_site[site] += 1 if live else -1
        assert self._live_per_site[site] >= 0
        _sample(series, now_s, self._live_per_site[site])
        _sample(self.live_total, now_s, len(self._live))

    def _on_heal(self, now_s: float, what: str) -> None:
        assert what == HEAL, f"a node-less lifecycle change is a heal, not {what!r}"
        self.faults.append((now_s, "-", what))
        self._side_of.clear()
        self._sample_partitions(now_s)

    def _sample_partitions(self, now_s: float) -> None:
        sides = dict.fromkeys(self._side_of.values())
        _sample(self.partitioned_peers, now_s, len(self._side_of))
        _sample(self.partition_sides, now_s, len(sides))


def extended_to(series: Series, end_s: float) -> Series:
    """`series` with its last value repeated at `end_s` (so a step plot reaches the end)."""
    assert series, "every series starts with a sample"
    last_s, value = series[-1]
    return [*series, (end_s, value)] if end_s > last_s else list(series)


def _sample(series: Series, now_s: float, value: int) -> None:
    """Append `(now_s, value)`, or replace the last sample when it has the same time."""
    if series and series[-1][0] == now_s:
        series[-1] = (now_s, value)
    else:
        series.append((now_s, value))


def _pairs(series: Series) -> list[list[float | int]]:
    return [[time_s, value] for time_s, value in series]
