"""Clocks for hosts: the only place in transport/ that reads real time.

Actors take time as an argument (`now_s`); hosts get it from a `Clock`. Production uses
`MonotonicClock` (`time.monotonic()`, immune to wall-clock steps); tests use `ManualClock`,
which moves only when told to (Twisted's `task.Clock`, trio's `MockClock`) and notifies
listeners, so a waiting timer thread re-checks its deadlines at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    """Monotonic seconds, plus a way to learn that time jumped (manual clocks only)."""

    def now_s(self) -> float:
        """Seconds on a monotonic scale with an arbitrary origin."""
        ...

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback` whenever time moves in a jump (never for a real clock)."""
        ...


class MonotonicClock:
    """The real clock: `time.monotonic()`."""

    def now_s(self) -> float:
        """Seconds since an arbitrary point, never going backwards."""
        return time.monotonic()

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Real time flows continuously; nothing to notify."""


class ManualClock:
    """A clock for tests that stands still until `advance()` (thread-safe)."""

    def __init__(self, start_s: float = 0.0) -> None:
        self._lock = threading.Lock()
        self._now_s = start_s
        self._listeners: list[Callable[[], None]] = []

    def now_s(self) -> float:
        """The current manual time."""
        with self._lock:
            return self._now_s

    def advance(self, delta_s: float) -> None:
        """Move time forward by `delta_s` and wake every listener."""
        assert delta_s >= 0, "a monotonic clock never goes back"
        with self._lock:
            self._now_s += delta_s
            listeners = list(self._listeners)
        for callback in listeners:
            callback()

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback` after every `advance()`."""
        with self._lock:
            self._listeners.append(callback)
