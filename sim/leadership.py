"""Responder leadership: invariants checked at every change, and failover figures.

Theory of operation
-------------------
`LeadershipWatch` listens to the `LeadershipChanged` tells of every node's election actor
(responder scopes, `subnet:<cidr>`) and to the world's faults. It keeps, per subnet, the
nodes that currently lead and the ballot each leads under. A ballot is `(term, leader id)`:
the election's fencing epoch (`actors.election`).

Invariants (violations; checked whenever leadership or the topology changes):
- a node announces leadership only under a ballot that names itself;
- so a ballot (a subnet's term) has one leader at most, and
- within one life a node's successive ballots only grow: a leader that stepped down never
  leads again under its old term or a lower one (a node that restarts forgets its rounds,
  as the real agent does; only peers' leases raise them again);
- two leaders of one subnet that can reach each other (the same partition side) do not
  coexist for longer than `dual_leader_bound_s`: a stale leader steps down once it hears the
  higher term. Under loss and right after a partition heals two leaders can briefly overlap
  (ballots, not majorities: `actors.election`); the episode is bounded, not forbidden, and
  every episode is measured (`dual_leader_s_max`).

Failover: a subnet's responder is *lost* when the clients' side (`World.clients_side`) has
no leader any more because the leader crashed or was cut off by a partition, while another
responder-eligible peer still runs there. The failover time is from that fault to the moment
a leader leads on that side again. A clean stop hands over (`Resign`) and is measured
apart (`handover_s`). An outage still open at the end of the run is counted `unfinished`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from actors.core import LeadershipChanged, MemberChanged, NodeId
from actors.election import RESPONDER_CAPABILITY

if TYPE_CHECKING:
    from sim.checkers import Invariants
    from sim.host import SimNode
    from sim.world import World

DUAL_LEADER_BOUND_S: Final = 30.0
"""Longest tolerated overlap of two reachable leaders (discovery reconnect 10 s + margins)."""

Ballot = tuple[int, NodeId]
Eligibility = Callable[["SimNode"], bool]


@dataclass(slots=True)
class _Outage:
    cause: str
    since_s: float


@dataclass(slots=True)
class LeadershipFigures:
    """What the responder elections of a run did."""

    failover_s: list[float] = field(default_factory=list)
    handover_s: list[float] = field(default_factory=list)
    unfinished: int = 0
    abandoned: int = 0
    """Losses during which the last eligible peer on the clients' side went too."""
    first_leader_s: dict[str, float] = field(default_factory=dict)
    dual_leader_episodes: int = 0
    dual_leader_s_max: float = 0.0
    leader_changes: int = 0
    samples: list[tuple[float, str, int]] = field(default_factory=list)
    """(time, subnet, leaders on the clients' side) at every change, for plots."""


class LeadershipWatch:
    """A world listener for responder leadership (see the module docstring)."""

    def __init__(
        self,
        world: World,
        invariants: Invariants,
        eligible: Eligibility,
        dual_leader_bound_s: float = DUAL_LEADER_BOUND_S,
    ) -> None:
        self._world = world
        self._invariants = invariants
        self._eligible = eligible
        self._bound_s = dual_leader_bound_s
        self.figures = LeadershipFigures()
        self._leaders: dict[str, dict[NodeId, Ballot]] = {}
        self._last_ballot: dict[tuple[NodeId, int], Ballot] = {}
        self._outage: dict[str, _Outage] = {}
        self._overlap_since: dict[str, float] = {}
        self._subnets: list[str] = []
        for node in world.members.values():
            if node.info.subnet not in self._subnets:
                self._subnets.append(node.info.subnet)

    # ----------------------------------------------------------------------- listener

    def member_changed(self, now_s: float, observer: SimNode, event: MemberChanged) -> None:
        """Membership is discovery's business (`sim.checkers`)."""

    def leadership_changed(self, now_s: float, node: SimNode, event: LeadershipChanged) -> None:
        """Check and record one node's new standing in its subnet scope."""
        if event.capability != RESPONDER_CAPABILITY or node.node_id not in self._world.members:
            return
        subnet = event.scope.removeprefix("subnet:")
        leaders = self._leaders.setdefault(subnet, {})
        if event.leading:
            self._check_new_ballot(now_s, node, subnet, (event.term, event.leader))
            leaders[node.node_id] = (event.term, event.leader)
            self.figures.leader_changes += 1
            self.figures.first_leader_s.setdefault(subnet, now_s)
        elif leaders.pop(node.node_id, None) is None:
            return
        self._after_change(now_s, subnet, cause="stop" if node.stopping else "election")

    def lifecycle(self, now_s: float, node: SimNode | None, what: str) -> None:
        """A crash removes a leader silently; partitions and heals move leaders between sides."""
        if node is not None and what == "crash":
            subnet = node.info.subnet
            if self._leaders.get(subnet, {}).pop(node.node_id, None) is not None:
                self._after_change(now_s, subnet, cause="crash")
            return
        if node is None or what.startswith("partition"):
            for subnet in self._affected(node):
                self._after_change(now_s, subnet, cause="partition")
        elif what in ("start", "restart"):
            self._after_change(now_s, node.info.subnet, cause="start")

    def finish(self) -> LeadershipFigures:
        """Close open outages and overlaps at the end of the run."""
        now_s = self._world.env.now
        self.figures.unfinished += len(self._outage)
        self._outage.clear()
        for subnet in list(self._overlap_since):
            self._close_overlap(now_s, subnet)
        return self.figures

    def leaders_of(self, subnet: str) -> list[NodeId]:
        """The nodes leading `subnet` now, in id order."""
        return sorted(self._leaders.get(subnet, {}))

    # ----------------------------------------------------------------------- invariants

    def _check_new_ballot(self, now_s: float, node: SimNode, subnet: str, ballot: Ballot) -> None:
        node_id = node.node_id
        if ballot[1] != node_id:
            self._violate(now_s, node_id, f"leads {subnet} under another's ballot {ballot}")
        life = (node_id, node.life)
        previous = self._last_ballot.get(life)
        if previous is not None and ballot <= previous:
            self._violate(now_s, node_id, f"leads {subnet} under {ballot}, not above {previous}")
        self._last_ballot[life] = ballot

    def _violate(self, now_s: float, node_id: str, text: str) -> None:
        self._invariants.violate(now_s, node_id, text)

    # ----------------------------------------------------------------------- bookkeeping

    def _affected(self, node: SimNode | None) -> list[str]:
        return self._subnets if node is None else [node.info.subnet]

    def _after_change(self, now_s: float, subnet: str, cause: str) -> None:
        main_leaders = self._main_side_leaders(subnet)
        self.figures.samples.append((now_s, subnet, main_leaders))
        self._track_outage(now_s, subnet, main_leaders, cause)
        self._track_overlap(now_s, subnet)

    def _main_side_leaders(self, subnet: str) -> int:
        members = self._world.members
        leaders = self._leaders.get(subnet, {})
        side = self._world.clients_side(subnet)
        return sum(1 for node_id in leaders if members[node_id].port.side == side)

    def _track_outage(self, now_s: float, subnet: str, main_leaders: int, cause: str) -> None:
        outage = self._outage.get(subnet)
        if outage is not None and not main_leaders and not self._eligible_alive(subnet):
            del self._outage[subnet]  # nobody left who could take over: not a failover
            self.figures.abandoned += 1
            return
        if main_leaders:
            if outage is not None:
                del self._outage[subnet]
                gaps = (
                    self.figures.handover_s if outage.cause == "stop" else self.figures.failover_s
                )
                gaps.append(now_s - outage.since_s)
            return
        if outage is not None or cause not in ("crash", "partition", "stop"):
            return
        if subnet not in self.figures.first_leader_s or not self._eligible_alive(subnet):
            return  # never elected yet, or nobody left who could take over
        self._outage[subnet] = _Outage(cause, now_s)

    def _eligible_alive(self, subnet: str) -> bool:
        side = self._world.clients_side(subnet)
        return any(
            node.running and node.port.side == side and self._eligible(node)
            for node in self._world.members.values()
            if node.info.subnet == subnet
        )

    def _track_overlap(self, now_s: float, subnet: str) -> None:
        members = self._world.members
        sides: dict[int, int] = {}
        for node_id in self._leaders.get(subnet, {}):
            side = members[node_id].port.side
            sides[side] = sides.get(side, 0) + 1
        overlapping = any(count > 1 for count in sides.values())
        if overlapping and subnet not in self._overlap_since:
            self._overlap_since[subnet] = now_s
            self.figures.dual_leader_episodes += 1
        elif not overlapping and subnet in self._overlap_since:
            self._close_overlap(now_s, subnet)

    def _close_overlap(self, now_s: float, subnet: str) -> None:
        since_s = self._overlap_since.pop(subnet)
        duration_s = now_s - since_s
        self.figures.dual_leader_s_max = max(self.figures.dual_leader_s_max, duration_s)
        if duration_s > self._bound_s:
            text = f"two reachable leaders of {subnet} for {duration_s:.3f} s from t={since_s:.3f}"
            self._violate(now_s, "-", text)


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]
