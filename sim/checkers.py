"""Invariants checked while a simulation runs, and once more at its end.

During the run (on every `MemberChanged` a discovery actor emits):
- a node never believes itself dead;
- no peer outside the cluster (a node without the cluster key, or an id that is not a
  simulated node at all) is ever admitted into a member's view.
At the end (on every running member whose discovery can list its table):
- the member table only contains real cluster members, and never the node itself;
- no node's view of itself is DEAD.

Violations are collected (the first `VIOLATIONS_KEPT` in full, all of them counted), so one
run reports everything it found; the sim tests fail on any.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from actors.core import ActorName, LeadershipChanged, MemberChanged, MemberState

if TYPE_CHECKING:
    from sim.host import SimNode
    from sim.world import World

VIOLATIONS_KEPT: Final = 100


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken invariant: when, where, what."""

    time_s: float
    node: str
    text: str

    def __str__(self) -> str:
        return f"t={self.time_s:.6f}s {self.node}: {self.text}"


class _HasMember(Protocol):
    @property
    def node_id(self) -> str: ...


class _MemberRow(Protocol):
    @property
    def member(self) -> _HasMember: ...


class Invariants:
    """A world listener that records every invariant violation."""

    def __init__(self, world: World) -> None:
        self._world = world
        self.violations: list[Violation] = []
        self.count = 0

    def member_changed(self, now_s: float, observer: SimNode, event: MemberChanged) -> None:
        """Check one view change of a cluster member."""
        if observer.node_id not in self._world.members:
            return  # a forged node may believe what it likes
        subject = event.member.node_id
        if subject == observer.node_id and event.state is MemberState.DEAD:
            self._violate(now_s, observer.node_id, "believes itself dead")
        if subject not in self._world.members:
            self._violate(now_s, observer.node_id, f"admitted non-member {subject!r}")

    def lifecycle(self, now_s: float, node: SimNode | None, what: str) -> None:
        """Lifecycle changes carry no invariant of their own."""

    def leadership_changed(self, now_s: float, node: SimNode, event: LeadershipChanged) -> None:
        """Leadership invariants live in `sim.leadership`."""

    def check_final(self) -> None:
        """End-of-run checks over every running member's table."""
        now_s = self._world.env.now
        for node in self._world.members.values():
            if not node.running:
                continue
            discovery = node.actors.get(ActorName.DISCOVERY)
            state_of = getattr(discovery, "state_of", None)
            if state_of is not None and state_of(node.node_id) is MemberState.DEAD:
                self._violate(now_s, node.node_id, "believes itself dead at the end")
            members = getattr(discovery, "members", None)
            if members is None:
                continue
            rows: list[_MemberRow] = members()
            for row in rows:
                self._check_row(now_s, node, row.member.node_id)

    def _check_row(self, now_s: float, node: SimNode, member_id: str) -> None:
        if member_id == node.node_id:
            self._violate(now_s, node.node_id, "lists itself in its member table")
        elif member_id not in self._world.members:
            self._violate(now_s, node.node_id, f"member table holds non-member {member_id!r}")

    def violate(self, now_s: float, node_id: str, text: str) -> None:
        """Record a violation found by another checker (`sim.leadership`)."""
        self._violate(now_s, node_id, text)

    def _violate(self, now_s: float, node_id: str, text: str) -> None:
        self.count += 1
        if len(self.violations) < VIOLATIONS_KEPT:
            self.violations.append(Violation(now_s, node_id, text))
        self._world.trace.record(now_s, node_id, "violation", text)
