"""One timer thread for a peer: a heap of deadlines that `tell()`s fires to their owners.

Theory of operation
-------------------
Actors arm timers by name (`StartTimer(name, deadline_s)`) and disarm them by name
(`CancelTimer(name)`). The host gives every arming a fresh *generation* number and calls
`arm(target, name, deadline_s, generation)`; the thread keeps a heap of
`(deadline_s, seq, target, name, generation)` plus, per `(target, name)`, the generation
currently armed. When the head of the heap is due it is popped and, if its generation is
still the armed one, `TimerFire(name, generation)` is told to `target`; otherwise it is a
leftover of a re-arm or cancel and is dropped. Re-arming never searches the heap: old
entries simply become stale (the heap is compacted when stale entries dominate).

A fire can still race a cancel: it may already sit in the actor's inbox when the actor
re-arms or cancels. The host therefore checks the generation again when the fire is
handled (`transport.host`), so a stale fire never reaches an actor.

`seq` breaks deadline ties in arming order, so two timers due at once fire in the order
they were armed.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from dataclasses import dataclass
from typing import Protocol

import pykka

from transport.clock import Clock

_LOG = logging.getLogger(__name__)

WAIT_S_MAX = 1.0
"""Longest sleep between deadline checks (bounds the effect of a missed wake-up)."""


class Teller(Protocol):
    """Anything that accepts a message without blocking (a pykka `ActorRef`, a queue shim)."""

    def tell(self, message: object) -> None:
        """Deliver `message` asynchronously."""
        ...


@dataclass(frozen=True, slots=True)
class TimerFire:
    """Told to a timer's owner when it is due; the owner checks `generation` is current."""

    name: str
    generation: int


_Entry = tuple[float, int, Teller, str, int]


class TimerThread:
    """A daemon thread firing named timers of many owners at absolute clock deadlines."""

    def __init__(self, clock: Clock, thread_name: str = "peerpxe-timers") -> None:
        self._clock = clock
        self._condition = threading.Condition()
        self._heap: list[_Entry] = []
        self._armed: dict[tuple[Teller, str], int] = {}
        self._seq = itertools.count()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        clock.add_listener(self._wake)

    def start(self) -> None:
        """Start firing timers."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; pending timers never fire."""
        with self._condition:
            self._stopping = True
            self._condition.notify()
        if self._thread.is_alive():
            self._thread.join()

    def arm(self, target: Teller, name: str, deadline_s: float, generation: int) -> None:
        """Fire `TimerFire(name, generation)` at `target` at `deadline_s` (replaces any armed)."""
        with self._condition:
            self._armed[(target, name)] = generation
            heapq.heappush(self._heap, (deadline_s, next(self._seq), target, name, generation))
            self._compact_if_stale()
            self._condition.notify()

    def cancel(self, target: Teller, name: str) -> None:
        """Disarm `name` of `target`; its queued heap entry becomes stale."""
        with self._condition:
            self._armed.pop((target, name), None)

    def cancel_all(self, target: Teller) -> None:
        """Disarm every timer of `target` (used when an actor stops)."""
        with self._condition:
            for key in [key for key in self._armed if key[0] is target]:
                del self._armed[key]

    def armed_count(self) -> int:
        """How many timers are armed (for tests and status)."""
        with self._condition:
            return len(self._armed)

    def _wake(self) -> None:
        with self._condition:
            self._condition.notify()

    def _run(self) -> None:
        while True:
            due = self._wait_for_due()
            if due is None:
                return
            for target, name, generation in due:
                try:
                    target.tell(TimerFire(name, generation))
                except pykka.ActorDeadError:
                    _LOG.debug("timer %s fired for a stopped actor", name)

    def _wait_for_due(self) -> list[tuple[Teller, str, int]] | None:
        """Block until at least one live timer is due; None when stopping."""
        with self._condition:
            while not self._stopping:
                due = self._pop_due(self._clock.now_s())
                if due:
                    return due
                self._condition.wait(self._wait_s())
            return None

    def _pop_due(self, now_s: float) -> list[tuple[Teller, str, int]]:
        due: list[tuple[Teller, str, int]] = []
        while self._heap and self._heap[0][0] <= now_s:
            _, _, target, name, generation = heapq.heappop(self._heap)
            if self._armed.get((target, name)) == generation:
                del self._armed[(target, name)]
                due.append((target, name, generation))
        return due

    def _wait_s(self) -> float:
        if not self._heap:
            return WAIT_S_MAX
        return min(WAIT_S_MAX, max(0.0, self._heap[0][0] - self._clock.now_s()))

    def _compact_if_stale(self) -> None:
        # Re-arming leaves the old entry behind; rebuild when stale entries dominate so the
        # heap stays proportional to the number of armed timers.
        if len(self._heap) <= 4 * len(self._armed) + 64:
            return
        self._heap = [
            entry for entry in self._heap if self._armed.get((entry[2], entry[3])) == entry[4]
        ]
        heapq.heapify(self._heap)
