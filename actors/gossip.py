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


class BroadcastQueue:
    """Updates to piggyback; one entry per member, the newest replacing older ones.

    Entries live in buckets by send count, each bucket a dict in insertion order, so `take`
    walks the least-sent buckets first and never sorts: O(taken + buckets), not O(queue). The
    order is exactly "fewest sends first, then oldest push first": an entry moves to the end
    of the next bucket when taken, and entries taken earlier were pushed earlier (one pushed
    later never overtakes one pushed before it, as it is always at a count at most as high).
    """

    __slots__ = ("_buckets", "_sent")

    def __init__(self) -> None:
        self._buckets: list[dict[str, MemberUpdate]] = []
        self._sent: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._sent)

    def push(self, update: MemberUpdate) -> None:
        """Queue `update`, replacing any older update about the same member."""
        node_id = update.node_id
        sent = self._sent.pop(node_id, None)
        if sent is not None:
            del self._buckets[sent][node_id]
        if not self._buckets:
            self._buckets.append({})
        self._buckets[0][node_id] = update
        self._sent[node_id] = 0

    def take(self, count_max: int, limit: int) -> tuple[MemberUpdate, ...]:
        """Up to `count_max` updates, least-sent first; each dropped after `limit` sends."""
        if not self._sent or count_max <= 0:
            return ()
        chosen: list[tuple[int, str, MemberUpdate]] = []
        for sent, bucket in enumerate(self._buckets):
            for node_id, update in bucket.items():
                chosen.append((sent, node_id, update))
                if len(chosen) == count_max:
                    break
            if len(chosen) == count_max:
                break
        for sent, node_id, update in chosen:
            self._promote(sent, node_id, update, limit)
        return tuple(update for _, _, update in chosen)

    def _promote(self, sent: int, node_id: str, update: MemberUpdate, limit: int) -> None:
        buckets = self._buckets
        del buckets[sent][node_id]
        sent += 1
        if sent >= limit:
            del self._sent[node_id]
            return
        if sent == len(buckets):
            buckets.append({})
        buckets[sent][node_id] = update
        self._sent[node_id] = sent
