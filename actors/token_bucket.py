"""A token bucket on host time: the site's WAN bandwidth cap as pure arithmetic on `now_s`.

The committed bucket of RFC 2697's single rate meter, without its excess bucket: tokens
(bytes) accrue at `rate_bytes_per_s` up to `capacity_bytes` (RFC 2697 §2: CIR and CBS),
and a transfer of `B` bytes may start only while the bucket holds `B` tokens, which it then
spends (RFC 2697 §3: green when `Tc(t) - B >= 0`, and `Tc` is decremented by `B`). Hence
over any window of `w` seconds at most `capacity_bytes + rate_bytes_per_s * w` bytes start
(Tanenbaum & Wetherall, *Computer Networks*, 5th ed., §5.4.2 "Traffic Shaping"). Nothing
reads a clock: every method takes `now_s`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

WAIT_S_MIN: Final = 0.001
"""Shortest wait `ready_at_s` suggests: float rounding must not spin a timer at one instant."""


@dataclass(slots=True)
class TokenBucket:
    """Bytes that may start now; refills at `rate_bytes_per_s` up to `capacity_bytes`."""

    rate_bytes_per_s: float
    capacity_bytes: float
    tokens_bytes: float = 0.0
    updated_s: float = 0.0

    def __post_init__(self) -> None:
        assert self.rate_bytes_per_s > 0
        assert self.capacity_bytes > 0
        assert 0 <= self.tokens_bytes <= self.capacity_bytes

    def refill(self, now_s: float) -> None:
        """Add the tokens earned since the last call (none if the clock went back)."""
        elapsed_s = max(0.0, now_s - self.updated_s)
        earned = elapsed_s * self.rate_bytes_per_s
        self.tokens_bytes = min(self.capacity_bytes, self.tokens_bytes + earned)
        self.updated_s = max(self.updated_s, now_s)

    def try_take(self, amount_bytes: int, now_s: float) -> bool:
        """Spend `amount_bytes` tokens if the bucket holds them now; else change nothing."""
        assert 0 <= amount_bytes <= self.capacity_bytes, "a chunk larger than the bucket"
        self.refill(now_s)
        if self.tokens_bytes < amount_bytes:
            return False
        self.tokens_bytes -= amount_bytes
        return True

    def ready_at_s(self, amount_bytes: int, now_s: float) -> float:
        """When the bucket will hold `amount_bytes` if nothing is spent meanwhile."""
        self.refill(now_s)
        deficit = amount_bytes - self.tokens_bytes
        if deficit <= 0:
            return now_s
        return now_s + max(deficit / self.rate_bytes_per_s, WAIT_S_MIN)

    def empty(self, now_s: float) -> None:
        """Spend every token (a new downloader starts empty: a handover never doubles a burst)."""
        self.tokens_bytes = 0.0
        self.updated_s = now_s
