"""Thread-safe counters shared by a peer's actors, endpoint and adapters."""

from __future__ import annotations

import threading


class SharedCounters:
    """Named integer counters that any thread may add to; snapshots keep first-seen order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = {}

    def add(self, name: str, amount: int = 1) -> None:
        """Add `amount` to counter `name`."""
        with self._lock:
            self._values[name] = self._values.get(name, 0) + amount

    def get(self, name: str) -> int:
        """The value of `name` (0 when never counted)."""
        with self._lock:
            return self._values.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        """A copy of every counter."""
        with self._lock:
            return dict(self._values)
