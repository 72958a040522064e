"""Membership figures of a run, observed from the `MemberChanged` tells discovery emits.

- Detection time, per crash: from the crash until EVERY cluster member of the crashed node's
  subnet that was running at the crash (and still runs) has declared it DEAD. A crash whose
  node restarts first, or whose detection has not completed when the run ends, is counted as
  undetected (censored) and left out of the percentiles.
- False dead: a DEAD declaration about a member that was running, reachable from the
  declarer (same partition side), had been running for at least `grace_s`, and with no
  partition or heal in the last `grace_s` (declarations inside those windows are legitimate
  or ambiguous: counted apart as `dead_ambiguous`).
- Load: messages sent per member-second of running time (constant as a subnet grows, for
  SWIM-style protocols).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from actors.core import LeadershipChanged, MemberChanged, MemberState, NodeId

if TYPE_CHECKING:
    from sim.host import SimNode
    from sim.world import World

GRACE_S: Final = 30.0


@dataclass(slots=True)
class _Crash:
    subject: NodeId
    at_s: float
    pending: dict[NodeId, None]
    detected_s: float | None = None


@dataclass(slots=True)
class MembershipMetrics:
    """A world listener that measures detection, false positives and load."""

    world: World
    grace_s: float = GRACE_S
    detections_s: list[float] = field(default_factory=list)
    crashes: int = 0
    undetected: int = 0
    false_dead: int = 0
    dead_ambiguous: int = 0
    dead_true: int = 0
    member_seconds: float = 0.0
    _open: dict[NodeId, _Crash] = field(default_factory=dict)
    _believed_dead: dict[tuple[NodeId, NodeId], None] = field(default_factory=dict)
    _running_since: dict[NodeId, float] = field(default_factory=dict)
    _topology_changed_s: float = -math.inf

    def member_changed(self, now_s: float, observer: SimNode, event: MemberChanged) -> None:
        """Track declarations of cluster members about cluster members."""
        members = self.world.members
        subject_id = event.member.node_id
        if observer.node_id not in members or subject_id not in members:
            return
        key = (observer.node_id, subject_id)
        if event.state is not MemberState.DEAD:
            self._believed_dead.pop(key, None)
            return
        self._believed_dead[key] = None
        crash = self._open.get(subject_id)
        if crash is not None:
            self.dead_true += 1
            self._resolve(crash, observer.node_id, now_s)
            return
        self._judge(now_s, observer, members[subject_id])

    def lifecycle(self, now_s: float, node: SimNode | None, what: str) -> None:
        """Open crash records, close them on restart, keep running time."""
        if node is None or what.startswith("partition"):
            self._topology_changed_s = now_s
            return
        if node.node_id not in self.world.members:
            return
        if what in ("start", "restart"):
            self._running_since[node.node_id] = now_s
            if self._open.pop(node.node_id, None) is not None:
                self.undetected += 1
        elif what in ("crash", "stop"):
            self.member_seconds += now_s - self._running_since.pop(node.node_id)
            for crash in list(self._open.values()):
                self._resolve(crash, node.node_id, now_s)
            if what == "crash":
                self._open_crash(now_s, node)

    def leadership_changed(self, now_s: float, node: SimNode, event: LeadershipChanged) -> None:
        """Leadership figures live in `sim.leadership`."""

    def finish(self) -> None:
        """Close the books at the end of the run."""
        now_s = self.world.env.now
        for since_s in self._running_since.values():
            self.member_seconds += now_s - since_s
        self._running_since.clear()
        self.undetected += len(self._open)
        self._open.clear()

    def percentile_s(self, fraction: float) -> float | None:
        """Nearest-rank percentile of detection times (None without any detection)."""
        if not self.detections_s:
            return None
        ordered = sorted(self.detections_s)
        rank = max(1, math.ceil(fraction * len(ordered)))
        return ordered[rank - 1]

    def _open_crash(self, now_s: float, node: SimNode) -> None:
        subnet = node.info.subnet
        pending: dict[NodeId, None] = {}
        for other in self.world.members.values():
            if other is node or not other.running or other.info.subnet != subnet:
                continue
            if (other.node_id, node.node_id) not in self._believed_dead:
                pending[other.node_id] = None
        if not pending:
            return
        self.crashes += 1
        self._open[node.node_id] = _Crash(node.node_id, now_s, pending)

    def _resolve(self, crash: _Crash, observer_id: NodeId, now_s: float) -> None:
        if observer_id not in crash.pending:
            return
        del crash.pending[observer_id]
        if not crash.pending:
            self.detections_s.append(now_s - crash.at_s)
            del self._open[crash.subject]

    def _judge(self, now_s: float, observer: SimNode, subject: SimNode) -> None:
        if not subject.running:
            self.dead_true += 1
            return
        recent = max(subject.started_at_s, self._topology_changed_s)
        reachable = observer.port.side == subject.port.side
        if reachable and now_s - recent >= self.grace_s:
            self.false_dead += 1
            self.world.trace.record(now_s, observer.node_id, "false_dead", subject.node_id)
        else:
            self.dead_ambiguous += 1
