"""The timer thread fires armed timers in deadline order and never fires stale ones."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator

import pytest

from transport.clock import ManualClock, MonotonicClock
from transport.timers import TimerFire, TimerThread

pytestmark = pytest.mark.integration


class Inbox:
    """A `Teller` that queues what it is told."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[object] = queue.SimpleQueue()

    def tell(self, message: object) -> None:
        self.queue.put(message)

    def drain(self, wait_s: float = 0.05) -> list[object]:
        time.sleep(wait_s)
        items: list[object] = []
        while not self.queue.empty():
            items.append(self.queue.get())
        return items


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start_s=100.0)


@pytest.fixture
def timers(clock: ManualClock) -> Iterator[TimerThread]:
    thread = TimerThread(clock)
    thread.start()
    yield thread
    thread.stop()


def test_fires_due_timers_in_deadline_order(clock: ManualClock, timers: TimerThread) -> None:
    """Timers fire only once the clock passes their deadline, earliest first, ties by arming."""
    inbox = Inbox()
    timers.arm(inbox, "late", 103.0, 1)
    timers.arm(inbox, "early", 101.0, 2)
    timers.arm(inbox, "tie", 101.0, 3)
    assert inbox.drain() == []
    clock.advance(1.0)
    assert inbox.drain() == [TimerFire("early", 2), TimerFire("tie", 3)]
    clock.advance(5.0)
    assert inbox.drain() == [TimerFire("late", 1)]
    assert timers.armed_count() == 0


def test_rearm_replaces_and_cancel_disarms(clock: ManualClock, timers: TimerThread) -> None:
    """Re-arming a name leaves only the newest generation live; cancel removes it entirely."""
    inbox = Inbox()
    timers.arm(inbox, "probe", 101.0, 1)
    timers.arm(inbox, "probe", 102.0, 2)
    timers.arm(inbox, "gone", 101.0, 3)
    timers.cancel(inbox, "gone")
    clock.advance(1.5)
    assert inbox.drain() == []
    clock.advance(1.0)
    assert inbox.drain() == [TimerFire("probe", 2)]


def test_same_name_of_two_owners_is_independent(clock: ManualClock, timers: TimerThread) -> None:
    """Timers are keyed by owner and name: cancelling one owner's timer spares the other's."""
    first, second = Inbox(), Inbox()
    timers.arm(first, "tick", 101.0, 1)
    timers.arm(second, "tick", 101.0, 1)
    timers.cancel_all(first)
    clock.advance(2.0)
    assert first.drain() == []
    assert second.drain() == [TimerFire("tick", 1)]


def test_many_rearms_keep_the_heap_small(clock: ManualClock, timers: TimerThread) -> None:
    """Stale entries left by re-arming are compacted away."""
    inbox = Inbox()
    for generation in range(10_000):
        timers.arm(inbox, "probe", 200.0 + generation, generation)
    assert timers.armed_count() == 1
    assert len(timers._heap) <= 4 * 1 + 64 + 1
    clock.advance(200.0 + 10_000)
    assert inbox.drain() == [TimerFire("probe", 9_999)]


def test_real_clock_fires_close_to_the_deadline() -> None:
    """With the monotonic clock a 50 ms timer fires after 50 ms and well before 250 ms."""
    clock = MonotonicClock()
    thread = TimerThread(clock)
    thread.start()
    try:
        inbox = Inbox()
        armed_s = clock.now_s()
        thread.arm(inbox, "t", armed_s + 0.05, 7)
        fire = inbox.queue.get(timeout=1.0)
        elapsed_s = clock.now_s() - armed_s
    finally:
        thread.stop()
    assert fire == TimerFire("t", 7)
    assert 0.05 <= elapsed_s < 0.25
