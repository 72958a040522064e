"""Gossip building blocks shared by membership (and later election): pure and deterministic.

- `BroadcastQueue`: updates waiting to be piggybacked, each sent a bounded number of times
  (SWIM's infection-style dissemination; memberlist `TransmitLimitedQueue`), least-sent first,
  packed greedily under a byte budget.
- `retransmit_limit`: how many times one update is sent: `mult * ceil(log10(n + 1))`, which
  reaches 99.99% of n members with high probability (memberlist `retransmitLimit`).
- `suspicion_timeout_s`: Lifeguard's shrinking suspicion timeout: it starts at `max` and falls
  toward `min` as independent members confirm the suspicion, `max - (max - min) * log(c + 1) /
  log(k + 1)` (Dadgar et al. 2017 §IV-B; memberlist `suspicion.go`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from actors.messages import MemberUpdate

UPDATE_BYTES_MAX = 160
"""Upper bound on one encoded `MemberUpdate` (ids and subnet strings are short)."""


def retransmit_limit(multiplier: int, member_count: int) -> int:
    """Times one update is sent before it is dropped from the queue."""
    return multiplier * max(1, math.ceil(math.log10(member_count + 1)))


def suspicion_timeout_s(
    timeout_s_min: float, timeout_s_max: float, confirmations: int, expected: int
) -> float:
    """Lifeguard suspicion timeout after `confirmations` of `expected` independent reports."""
    assert timeout_s_min <= timeout_s_max
    if expected < 1:
        return timeout_s_min
    fraction = math.log(min(confirmations, expected) + 1) / math.log(expected + 1)
    return max(timeout_s_min, timeout_s_max - (timeout_s_max - timeout_s_min) * fraction)


@dataclass(slots=True)
class _Pending:
    update: MemberUpdate
    sent: int


class BroadcastQueue:
    """Updates to piggyback; one entry per member, the newest replacing older ones."""

    def __init__(self) -> None:
        self._pending: dict[str, _Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def push(self, update: MemberUpdate) -> None:
        """Queue `update`, replacing any older update about the same member."""
        self._pending.pop(update.node_id, None)
        self._pending[update.node_id] = _Pending(update=update, sent=0)

    def take(self, count_max: int, limit: int) -> tuple[MemberUpdate, ...]:
        """Up to `count_max` updates, least-sent first; each dropped after `limit` sends."""
        if not self._pending or count_max <= 0:
            return ()
        chosen = sorted(self._pending.values(), key=lambda pending: pending.sent)[:count_max]
        for pending in chosen:
            pending.sent += 1
            if pending.sent >= limit:
                del self._pending[pending.update.node_id]
        return tuple(pending.update for pending in chosen)
