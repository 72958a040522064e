"""Replication driven by events and times alone: one actor by hand, or a site on a fake host.

`Solo` drives one actor and fires its timers; `SiteLab` wires several actors through an
in-memory host: messages cross the codec with a fixed latency, `FetchChunk` takes a fixed
time and is answered from the lab's own record of who holds what, WAN fetches are counted.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors import codec
from actors.bitfield import (
    CHUNKS_MAX,
    SEGMENT_BYTES,
    SEGMENT_CHUNKS,
    Bitfield,
    bitmap_from_missing,
    chunk_table,
)
from actors.core import (
    ActorName,
    Address,
    CancelTimer,
    ChunkFetchFailed,
    ChunkRefused,
    ChunksHeld,
    ChunkStored,
    Command,
    CountMetric,
    EligibilityChanged,
    Event,
    FetchChunk,
    FetchManifest,
    FetchPolicy,
    LeadershipChanged,
    Log,
    ManifestAccepted,
    ManifestFetched,
    ManifestFetchFailed,
    MemberChanged,
    MemberInfo,
    MemberState,
    MessageReceived,
    PackageComplete,
    PolicyFetchFailed,
    PolicyInstalled,
    SeedOffered,
    SendMessage,
    StartTimer,
    Tell,
    TimerFired,
    WanSourcesChanged,
)
from actors.election import DOWNLOADER_CAPABILITY, RESPONDER_CAPABILITY, Election, Role
from actors.envelope import MAX_BODY_BYTES, WireSecurity
from actors.messages import Have, Lease, Message, PolicyVersion
from actors.package import FileEntry, Manifest
from actors.replication import NOT_HELD, Replication, ReplicationKnobs
from actors.replication_state import Peer, Source, Target
from actors.token_bucket import TokenBucket

SITE = "s1"
SUBNET = "10.0.0.0/24"
SCOPE = f"site:{SITE}"
ORIGIN = Address("origin.example", 8443)
DIGEST = b"\x11" * 32
CAPABILITIES = (RESPONDER_CAPABILITY, DOWNLOADER_CAPABILITY)
DEFAULT_KNOBS = ReplicationKnobs()


def make_manifest(
    file_chunks: tuple[int, ...] = (8,), chunk_bytes: int = 1024, short_bytes: int = 100
) -> Manifest:
    """A manifest with `file_chunks[i]` chunks in file i (each file's last chunk is short)."""
    entries = tuple(
        FileEntry(
            f"f{index}.bin", max(count * chunk_bytes - short_bytes, 0), DIGEST, (DIGEST,) * count
        )
        for index, count in enumerate(file_chunks)
    )
    return Manifest(name="pkg", version=(1, 2), created_s=1, files=entries, chunk_bytes=chunk_bytes)


def member(index: int, node_id: str = "", site: str = SITE) -> MemberInfo:
    address = Address(f"10.0.0.{index}", 7946)
    return MemberInfo(node_id or f"p{index}", site, SUBNET, address, 50, CAPABILITIES)


def have_messages(
    manifest: Manifest, held: Iterable[int], *, complete: bool = False, reply: bool = False
) -> list[Have]:
    """The `Have`s a peer holding `held` sends (as the actor builds them)."""
    bits = Bitfield(manifest.chunk_count)
    for number in held:
        bits.set(number)
    firsts = (0,) if complete else range(0, max(manifest.chunk_count, 1), SEGMENT_CHUNKS)
    return [
        Have(
            package_id=manifest.package_id,
            version=manifest.version,
            site=SITE,
            chunk_count=manifest.chunk_count,
            first_chunk=first,
            bitmap=b"" if complete else bits.segment(first),
            complete=complete,
            reply=reply,
        )
        for first in firsts
    ]


def leading(node_id: str, term: int = 1, *, lead: bool = True) -> LeadershipChanged:
    return LeadershipChanged(SCOPE, DOWNLOADER_CAPABILITY, lead, term, node_id)


def fetches_in(commands: Iterable[Command]) -> list[FetchChunk]:
    return [command for command in commands if isinstance(command, FetchChunk)]


def metrics_in(commands: Iterable[Command]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for command in commands:
        if isinstance(command, CountMetric):
            totals[command.name] = totals.get(command.name, 0) + command.amount
    return totals


def number_of(manifest: Manifest, fetch: FetchChunk) -> int:
    return next(
        ref.number
        for ref in chunk_table(manifest)
        if (ref.file_index, ref.chunk_index) == (fetch.file_index, fetch.chunk_index)
    )


# --------------------------------------------------------------------------- one actor by hand


class Solo:
    """One replication actor ("me", 10.0.0.1) fed events by the test; timers fire on demand."""

    def __init__(
        self,
        manifest: Manifest,
        knobs: ReplicationKnobs = DEFAULT_KNOBS,
        *,
        seed: int = 1,
        held: Iterable[int] = (),
        wan_sources: tuple[Address, ...] = (ORIGIN,),
        inventory: bool = True,
    ) -> None:
        self.manifest = manifest
        self.info = member(1, "me")
        self.actor = Replication(self.info, random.Random(seed), knobs, wan_sources)
        self.now_s = 0.0
        self.timers: dict[str, float] = {}
        self.history: list[Command] = []
        self.feed_all(self.actor.start(self.now_s))
        self.feed(ManifestAccepted(manifest))
        self.held = list(held)
        if inventory:
            self.report_inventory()

    def report_inventory(self) -> list[Command]:
        """What the host does once its store is open: say which chunks it holds."""
        bits = Bitfield(self.manifest.chunk_count)
        for number in self.held:
            bits.set(number)
        return self.feed(ChunksHeld(self.manifest.package_id, bits.to_bytes()))

    def feed(self, event: Event) -> list[Command]:
        commands = self.actor.handle(event, self.now_s)
        self.feed_all(commands)
        return commands

    def feed_all(self, commands: list[Command]) -> None:
        self.history.extend(commands)
        for command in commands:
            if isinstance(command, StartTimer):
                self.timers[command.name] = command.deadline_s
            elif isinstance(command, CancelTimer):
                self.timers.pop(command.name, None)

    def add_peer(self, index: int, held: Iterable[int], *, complete: bool = False) -> MemberInfo:
        info = member(index)
        self.feed(MemberChanged(info, MemberState.ALIVE, 0))
        for have in have_messages(self.manifest, held, complete=complete):
            self.feed(MessageReceived(info.node_id, info.address, have))
        return info

    def advance(self, until_s: float) -> list[Command]:
        """Fire every timer due by `until_s`, in deadline order; return what they caused."""
        caused: list[Command] = []
        while True:
            due = sorted((deadline, name) for name, deadline in self.timers.items())
            if not due or due[0][0] > until_s:
                break
            deadline_s, name = due[0]
            del self.timers[name]
            self.now_s = max(self.now_s, deadline_s)
            caused.extend(self.feed(TimerFired(name)))
        self.now_s = max(self.now_s, until_s)
        return caused

    def store(self, fetch: FetchChunk) -> list[Command]:
        return self.feed(ChunkStored(fetch))

    def in_flight_by_source(self) -> dict[Address, int]:
        counts: dict[Address, int] = {}
        for fetch in self.actor.fetching():
            counts[fetch.source] = counts.get(fetch.source, 0) + 1
        return counts

    def fetch_timer(self, fetch: FetchChunk) -> str:
        """The timer the actor armed right after issuing `fetch`."""
        index = max(i for i, command in enumerate(self.history) if command == fetch)
        timer = self.history[index + 1]
        assert isinstance(timer, StartTimer)
        return timer.name


# --------------------------------------------------------------------------- rarest first


def test_rarest_chunks_are_fetched_first() -> None:
    """With one fetch at a time, chunks come in order of how few site peers hold them."""
    manifest = make_manifest((6,))
    knobs = ReplicationKnobs(fetches_max=1, fetches_per_source_max=1)
    solo = Solo(manifest, knobs, inventory=False)
    solo.add_peer(2, range(6))
    solo.add_peer(3, range(4))
    solo.add_peer(4, range(2))
    assert solo.actor.fetching() == []  # nothing before the store says what it holds
    solo.report_inventory()
    order: list[int] = []
    while len(order) < 6:
        (fetch,) = solo.actor.fetching()
        order.append(number_of(manifest, fetch))
        solo.store(fetch)
    assert sorted(order[:2]) == [4, 5]  # held by one peer
    assert sorted(order[2:4]) == [2, 3]  # by two
    assert sorted(order[4:]) == [0, 1]  # by three
    assert solo.actor.progress() == (6, 6)


def tie_order(seed: int) -> list[int]:
    manifest = make_manifest((12,))
    solo = Solo(manifest, ReplicationKnobs(fetches_max=1, fetches_per_source_max=1), seed=seed)
    solo.add_peer(2, range(12))
    order: list[int] = []
    while solo.actor.fetching():
        (fetch,) = solo.actor.fetching()
        order.append(number_of(manifest, fetch))
        solo.store(fetch)
    return order


def test_ties_are_broken_by_the_injected_random_and_reproducibly() -> None:
    """Equally rare chunks go in an order drawn from the actor's RNG: same seed, same order."""
    orders = [tie_order(seed) for seed in range(8)]
    assert tie_order(3) == orders[3]
    assert all(sorted(order) == list(range(12)) for order in orders)
    assert len({tuple(order) for order in orders}) > 1  # not index order, not fixed
    assert list(range(12)) not in orders


def test_a_newly_common_chunk_yields_to_a_rarer_one() -> None:
    """Availability is live: a chunk that becomes common is passed over for a rarer one."""
    manifest = make_manifest((3,))
    knobs = ReplicationKnobs(fetches_max=1, fetches_per_source_max=1)
    solo = Solo(manifest, knobs, inventory=False)
    solo.add_peer(2, [0, 1, 2])
    solo.add_peer(3, [0, 1])
    solo.report_inventory()
    (first,) = solo.actor.fetching()
    assert number_of(manifest, first) == 2
    solo.add_peer(4, [0])  # chunk 1 is now the rarest missing one (2 holders vs 3)
    solo.store(first)
    (second,) = solo.actor.fetching()
    assert number_of(manifest, second) == 1


# --------------------------------------------------------------------------- concurrency


def test_fetches_are_bounded_per_source_and_in_total() -> None:
    """Two holders: 4 each (per-source bound); six holders: 16 in all (total bound)."""
    manifest = make_manifest((100,))
    solo = Solo(manifest)
    solo.add_peer(2, range(100))
    solo.add_peer(3, range(100))
    assert len(solo.actor.fetching()) == 8
    assert set(solo.in_flight_by_source().values()) == {4}
    for index in range(4, 8):
        solo.add_peer(index, range(100))
    assert len(solo.actor.fetching()) == 16
    assert max(solo.in_flight_by_source().values()) <= 4
    assert (
        len({fetch.file_index * 1000 + fetch.chunk_index for fetch in solo.actor.fetching()}) == 16
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_bounds_hold_whatever_order_fetches_end_in(data: st.DataObject) -> None:
    """Random holdings and random ends (stored, failed, refused, timed out): bounds always hold."""
    manifest = make_manifest((30,))
    knobs = ReplicationKnobs(fetches_max=6, fetches_per_source_max=2, source_backoff_s=0.5)
    solo = Solo(manifest, knobs, seed=data.draw(st.integers(0, 99)))
    for index in range(2, 2 + data.draw(st.integers(1, 5))):
        held = data.draw(st.lists(st.integers(0, 29), min_size=1, max_size=30))
        solo.add_peer(index, held)
    for _step in range(200):
        in_flight = solo.actor.fetching()
        assert len(in_flight) <= 6
        assert all(count <= 2 for count in solo.in_flight_by_source().values())
        assert not [fetch for fetch in in_flight if fetch.wan]
        if not in_flight:
            solo.advance(solo.now_s + 1.0)
            if not solo.actor.fetching():
                break
            continue
        fetch = data.draw(st.sampled_from(in_flight))
        outcome = data.draw(st.sampled_from(["stored", "failed", "refused", "timeout"]))
        if outcome == "stored":
            solo.store(fetch)
        elif outcome == "failed":
            solo.feed(ChunkFetchFailed(fetch, "connection_refused"))
        elif outcome == "refused":
            solo.feed(ChunkRefused(fetch, "bad_hash"))
        else:
            solo.now_s += 0.001
            name = solo.fetch_timer(fetch)
            del solo.timers[name]
            solo.feed(TimerFired(name))


# --------------------------------------------------------------------------- LAN only, WAN


def test_a_peer_that_is_not_the_downloader_never_fetches_across_the_wan() -> None:
    """WAN sources known, nothing on the LAN: a non-downloader waits, then takes LAN chunks."""
    manifest = make_manifest((4,))
    solo = Solo(manifest)
    solo.add_peer(2, [])
    solo.advance(60.0)
    assert not fetches_in(solo.history)
    solo.add_peer(3, [1])
    (fetch,) = solo.actor.fetching()
    assert fetch.wan is False
    assert fetch.source == member(3).address
    assert not [f for f in fetches_in(solo.history) if f.wan]


def test_the_downloader_takes_from_the_wan_only_what_the_site_lacks() -> None:
    """After the settle time the downloader fetches WAN chunks nobody in the site holds."""
    manifest = make_manifest((10,))
    knobs = ReplicationKnobs(fetches_max=16, fetches_per_source_max=8, wan_fetches_max=16)
    solo = Solo(manifest, knobs)
    solo.add_peer(2, range(5))
    solo.feed(leading("me"))
    assert not [fetch for fetch in solo.actor.fetching() if fetch.wan]  # still settling
    solo.advance(2.0)
    in_flight = solo.actor.fetching()
    wan = sorted(number_of(manifest, fetch) for fetch in in_flight if fetch.wan)
    lan = sorted(number_of(manifest, fetch) for fetch in in_flight if not fetch.wan)
    assert wan == [5, 6, 7, 8, 9]
    assert lan == [0, 1, 2, 3, 4]
    assert all(fetch.source == ORIGIN for fetch in in_flight if fetch.wan)


def test_a_new_downloader_asks_every_peer_and_waits_before_using_the_wan() -> None:
    """Taking over: a `Have(reply=True)` to every site peer, whatever the fan-out, and no WAN
    fetch before the settle time, however fast the bucket refills."""
    manifest = make_manifest((6,))
    knobs = ReplicationKnobs(have_fanout=1, wan_bytes_per_s=1e9, fetches_per_source_max=8)
    solo = Solo(manifest, knobs)
    peers = [member(index) for index in (2, 3, 4)]
    for info in peers:
        solo.feed(MemberChanged(info, MemberState.ALIVE, 0))
    commands = solo.feed(leading("me"))
    asked = [c for c in commands if isinstance(c, SendMessage) and isinstance(c.message, Have)]
    assert sorted(c.address for c in asked) == sorted(info.address for info in peers)
    assert all(isinstance(c.message, Have) and c.message.reply for c in asked)
    solo.advance(0.5)
    assert solo.actor.fetching() == []
    for info, held in zip(peers, ([0], [1, 2], []), strict=True):
        for have in have_messages(manifest, held):
            solo.feed(MessageReceived(info.node_id, info.address, have))
    solo.advance(1.0)
    wan = sorted(number_of(manifest, fetch) for fetch in solo.actor.fetching() if fetch.wan)
    assert wan == [3, 4, 5]


def test_a_downloader_that_loses_the_role_starts_no_more_wan_fetches() -> None:
    """Leadership lost: fetches in flight finish, no new WAN fetch starts."""
    manifest = make_manifest((10,))
    solo = Solo(manifest, ReplicationKnobs(wan_fetches_max=1))
    solo.feed(leading("me"))
    solo.advance(2.0)
    (fetch,) = solo.actor.fetching()
    assert fetch.wan
    solo.feed(leading("other", term=2, lead=False))
    solo.store(fetch)
    solo.advance(30.0)
    assert solo.actor.fetching() == []
    assert len([f for f in fetches_in(solo.history) if f.wan]) == 1


def test_wan_fetches_wait_for_tokens_and_a_timer_wakes_them() -> None:
    """1 KiB chunks at 1 KiB/s: one WAN fetch per second, woken by the token timer."""
    manifest = make_manifest((4,), short_bytes=0)
    knobs = ReplicationKnobs(wan_bytes_per_s=1024.0, wan_burst_bytes=1024)
    solo = Solo(manifest, knobs)
    solo.feed(leading("me"))
    solo.advance(1.0)  # settle ends; the bucket started empty at t=0: 1 KiB now
    assert len(solo.actor.fetching()) == 1
    assert "wan_tokens" in solo.timers
    assert solo.timers["wan_tokens"] == pytest.approx(2.0)
    solo.advance(2.0)
    assert len(solo.actor.fetching()) == 2


@dataclass
class _Fake:
    """What a Hypothesis-drawn host does with one fetch."""

    fetch: FetchChunk
    outcome: str
    delay_s: float


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), seed=st.integers(0, 1000))
def test_wan_fetches_never_exceed_the_token_bucket_over_any_window(
    data: st.DataObject, seed: int
) -> None:
    """Bytes started across the WAN in any window [a, b] <= burst + rate * (b - a)."""
    manifest = make_manifest((13, 17), chunk_bytes=1024, short_bytes=300)
    rate, burst = 3000.0, 2048
    knobs = ReplicationKnobs(
        wan_bytes_per_s=rate, wan_burst_bytes=burst, wan_fetches_max=4, fetch_timeout_s_min=1.0
    )
    solo = Solo(manifest, knobs, seed=seed)
    solo.feed(leading("me"))
    pending: list[tuple[float, int, _Fake]] = []
    started: list[tuple[float, int]] = []
    attempts: dict[int, int] = {}
    serial = 0

    def schedule(commands: list[Command]) -> None:
        nonlocal serial
        for fetch in fetches_in(commands):
            started.append((solo.now_s, fetch.size_bytes))
            number = number_of(manifest, fetch)
            attempts[number] = attempts.get(number, 0) + 1
            outcome = "stored"
            if attempts[number] < 3:
                outcome = data.draw(st.sampled_from(["stored", "failed", "silent", "late"]))
            delay_s = data.draw(st.floats(0.0, 2.0, allow_nan=False))
            if outcome == "late":
                delay_s += 1.5  # answers after its timeout fired
            serial += 1
            heapq.heappush(pending, (solo.now_s + delay_s, serial, _Fake(fetch, outcome, delay_s)))

    schedule(solo.history)
    for _step in range(2000):
        if solo.actor.progress()[0] == manifest.chunk_count:
            break
        next_timer_s = min(solo.timers.values(), default=float("inf"))
        if pending and pending[0][0] <= next_timer_s:
            time_s, _, fake = heapq.heappop(pending)
            solo.now_s = max(solo.now_s, time_s)
            if fake.outcome in ("stored", "late"):
                schedule(solo.store(fake.fetch))
            elif fake.outcome == "failed":
                schedule(solo.feed(ChunkFetchFailed(fake.fetch, "connection_reset")))
        else:
            schedule(solo.advance(next_timer_s))
    assert solo.actor.progress() == (manifest.chunk_count, manifest.chunk_count)
    for i, (start_s, _) in enumerate(started):
        window_bytes = 0
        for end_s, size_bytes in started[i:]:
            window_bytes += size_bytes
            assert window_bytes <= burst + rate * (end_s - start_s) + 1e-6


# --------------------------------------------------------------------------- failures, retries


def two_holders() -> tuple[Solo, FetchChunk]:
    manifest = make_manifest((1,))
    solo = Solo(manifest, ReplicationKnobs(fetches_max=1))
    solo.add_peer(2, [0])
    solo.add_peer(3, [0])
    (fetch,) = solo.actor.fetching()
    return solo, fetch


def test_a_timed_out_fetch_is_retried_on_another_source() -> None:
    """No answer by the deadline: the chunk is asked of the other holder."""
    solo, first = two_holders()
    deadline_s = solo.timers[solo.fetch_timer(first)]
    assert deadline_s == pytest.approx(4.0)  # fetch_timeout_s_min for a 1 KiB chunk
    commands = solo.advance(deadline_s)
    assert metrics_in(commands)["replication.fetch_timeouts"] == 1
    (second,) = solo.actor.fetching()
    assert second.source != first.source
    assert (second.file_index, second.chunk_index) == (first.file_index, first.chunk_index)


def test_a_retry_prefers_an_untried_source_even_without_backoff() -> None:
    """With no backoff the timed-out source is usable at once, yet the other one is asked."""
    manifest = make_manifest((1,))
    solo = Solo(manifest, ReplicationKnobs(fetches_max=1, source_backoff_s=0.0))
    solo.add_peer(2, [0])
    solo.add_peer(3, [0])
    (first,) = solo.actor.fetching()
    solo.advance(solo.timers[solo.fetch_timer(first)])
    (second,) = solo.actor.fetching()
    assert second.source != first.source
    solo.advance(solo.timers[solo.fetch_timer(second)])
    (third,) = solo.actor.fetching()  # both tried: back to the least loaded, by rank
    assert third.source in (first.source, second.source)


def test_a_late_answer_after_a_timeout_still_counts() -> None:
    """The store verified it: a chunk stored after its fetch timed out is held."""
    solo, first = two_holders()
    solo.advance(solo.timers[solo.fetch_timer(first)])
    (second,) = solo.actor.fetching()
    commands = solo.store(first)
    assert metrics_in(commands)["replication.chunks_fetched.lan"] == 1
    assert solo.actor.progress() == (1, 1)
    assert metrics_in(solo.store(second)) == {"replication.duplicate_chunks": 1}


def test_a_failed_fetch_is_retried_on_another_source() -> None:
    """A transfer that fails makes its source back off; the other holder is asked."""
    solo, first = two_holders()
    commands = solo.feed(ChunkFetchFailed(first, "connection_refused"))
    assert metrics_in(commands)["replication.fetch_failed"] == 1
    (second,) = solo.actor.fetching()
    assert second.source != first.source


def test_not_held_clears_the_sources_bit() -> None:
    """A source that says it lacks a chunk no longer counts as a holder of it."""
    solo, first = two_holders()
    assert solo.actor.availability(0) == 2
    solo.feed(ChunkFetchFailed(first, NOT_HELD))
    assert solo.actor.availability(0) == 1
    (second,) = solo.actor.fetching()
    assert second.source != first.source


def test_a_refused_chunk_bans_its_source() -> None:
    """Bad data is counted, its source banned; after the ban it may be asked again."""
    solo, first = two_holders()
    commands = solo.feed(ChunkRefused(first, "bad_hash"))
    assert metrics_in(commands)["replication.chunks_refused"] == 1
    (second,) = solo.actor.fetching()
    assert second.source != first.source
    solo.feed(ChunkFetchFailed(second, "connection_refused"))
    assert solo.actor.fetching() == []  # one banned, one backing off
    solo.advance(3.0)  # backoff over: the second source again
    (third,) = solo.actor.fetching()
    assert third.source == second.source


def test_a_busy_source_is_asked_again_sooner_than_a_failing_one() -> None:
    """`busy` (slots and backlog full) backs the source off for `busy_backoff_s`; any other
    failure for `source_backoff_s`."""
    manifest = make_manifest((2,))
    knobs = ReplicationKnobs(fetches_max=1, busy_backoff_s=0.5, source_backoff_s=2.0)
    solo = Solo(manifest, knobs)
    solo.add_peer(2, [0, 1])
    (first,) = solo.actor.fetching()
    solo.feed(ChunkFetchFailed(first, "busy"))
    assert solo.actor.fetching() == []  # the only holder backs off
    solo.advance(0.5)
    (second,) = solo.actor.fetching()  # asked again once the busy backoff is over
    assert second.source == first.source
    solo.feed(ChunkFetchFailed(second, "connection_refused"))
    solo.advance(2.4)
    assert solo.actor.fetching() == []  # a failure backs off longer
    solo.advance(2.5)
    assert len(solo.actor.fetching()) == 1


def test_a_chunk_few_peers_hold_is_advertised_at_once() -> None:
    """A stored chunk fewer than `have_rare_holders` site peers hold is news: `Have`s go
    out with the `ChunkStored` itself; a common chunk waits for the debounce."""
    manifest = make_manifest((2,))
    knobs = ReplicationKnobs(fetches_max=1, have_rare_holders=2, have_fanout=3)
    solo = Solo(manifest, knobs)
    solo.add_peer(2, [0])  # chunk 0: one holder, so rare
    for index in (3, 4, 5):
        solo.add_peer(index, [1])  # chunk 1: three holders, common
    solo.advance(1.0)  # the advertisements of the first inventory are out
    (rare,) = solo.actor.fetching()
    assert number_of(manifest, rare) == 0
    commands = solo.store(rare)
    sent = [c for c in commands if isinstance(c, SendMessage) and isinstance(c.message, Have)]
    assert len({c.address for c in sent}) == 3
    assert metrics_in(commands)["replication.have_rare"] == 1
    (common,) = solo.actor.fetching()
    commands = solo.store(common)
    assert not any(isinstance(c, SendMessage) for c in commands)
    assert "replication.have_rare" not in metrics_in(commands)


def test_a_dead_sources_fetches_move_to_another_holder() -> None:
    """Discovery declares a source dead: its fetches are retried elsewhere at once."""
    solo, first = two_holders()
    dead = next(m for m in (member(2), member(3)) if m.address == first.source)
    commands = solo.feed(MemberChanged(dead, MemberState.DEAD, 1))
    assert CancelTimer(solo.fetch_timer(first)) in commands
    (second,) = solo.actor.fetching()
    assert second.source != first.source
    assert solo.actor.availability(0) == 1


def test_a_wan_fetch_failure_tries_the_next_wan_source() -> None:
    """The origin fails: the chunk is asked of the next WAN source."""
    manifest = make_manifest((1,))
    backup = Address("peer.other-site.example", 7946)
    solo = Solo(manifest, wan_sources=(ORIGIN, backup))
    solo.feed(leading("me"))
    solo.advance(1.1)
    (first,) = solo.actor.fetching()
    assert first.source == ORIGIN
    solo.feed(ChunkFetchFailed(first, "http_503"))
    solo.advance(3.0)  # tokens for the retry
    (second,) = solo.actor.fetching()
    assert second.source == backup
    assert second.wan


def test_wan_sources_can_change_at_run_time() -> None:
    """`WanSourcesChanged` replaces the WAN sources; none means no WAN fetch."""
    manifest = make_manifest((2,))
    solo = Solo(manifest, wan_sources=())
    solo.feed(leading("me"))
    solo.advance(5.0)
    assert solo.actor.fetching() == []
    mirror = Address("mirror.example", 443)
    solo.feed(WanSourcesChanged((mirror,)))
    assert {fetch.source for fetch in solo.actor.fetching()} == {mirror}


# --------------------------------------------------------------------------- completion, progress


def test_completion_tells_election_and_advertises_complete() -> None:
    """All chunks held and verified: election hears `EligibilityChanged`, peers `complete`."""
    manifest = make_manifest((3,))
    solo = Solo(manifest, held=range(3))
    peer = solo.add_peer(2, [])
    assert solo.actor.fetching() == []
    commands = solo.feed(PackageComplete(manifest.package_id))
    told = [c for c in commands if isinstance(c, Tell)]
    assert told == [Tell(ActorName.ELECTION, EligibilityChanged(RESPONDER_CAPABILITY, True))]
    sent = [c for c in commands if isinstance(c, SendMessage)]
    assert sent
    assert all(c.address == peer.address for c in sent)
    assert all(isinstance(c.message, Have) and c.message.complete for c in sent)
    assert metrics_in(commands)["replication.packages_completed"] == 1
    assert solo.feed(PackageComplete(manifest.package_id)) == []  # once


def test_progress_is_logged_every_ten_percent() -> None:
    """Twenty chunks fetched one by one: ten progress lines, 10% to 100%."""
    manifest = make_manifest((20,))
    solo = Solo(manifest)
    solo.add_peer(2, range(20))
    while solo.actor.fetching():
        for fetch in solo.actor.fetching():
            solo.store(fetch)
    lines = [c for c in solo.history if isinstance(c, Log) and c.text == "replication progress"]
    assert [dict(line.fields)["percent"] for line in lines] == list(range(10, 101, 10))
    assert solo.actor.progress() == (20, 20)
    totals = metrics_in(solo.history)
    assert totals["replication.chunks_fetched.lan"] == 20
    assert totals["replication.bytes.lan"] == manifest.total_bytes
    assert "replication.chunks_fetched.wan" not in totals


def test_nothing_is_fetched_before_the_store_reports_its_holdings() -> None:
    """Until `ChunksHeld`, nothing is fetched: chunks on disk are never fetched again."""
    manifest = make_manifest((4,))
    actor = Replication(member(1, "me"), random.Random(1), wan_sources=(ORIGIN,))
    actor.start(0.0)
    actor.handle(ManifestAccepted(manifest), 0.0)
    actor.handle(leading("me"), 0.0)
    assert fetches_in(actor.handle(TimerFired("wan_settle"), 5.0)) == []
    missing = [(ref.path, ref.chunk_index) for ref in chunk_table(manifest) if ref.number != 2]
    commands = actor.handle(
        ChunksHeld(manifest.package_id, bitmap_from_missing(manifest, missing)), 5.0
    )
    assert sorted(number_of(manifest, fetch) for fetch in fetches_in(commands)) == [0, 1, 3]
    assert actor.progress() == (1, 4)


def test_a_new_manifest_replaces_the_target_and_old_answers_are_stale() -> None:
    """A newer package restarts the plan; answers about the old one are dropped and counted."""
    old = make_manifest((2,))
    solo = Solo(old)
    solo.add_peer(2, range(2))
    (fetch, _) = solo.actor.fetching()
    timers = [solo.fetch_timer(f) for f in solo.actor.fetching()]
    new = replace(old, version=(1, 3))
    commands = solo.feed(ManifestAccepted(new))
    assert [c for c in commands if isinstance(c, CancelTimer)] == [CancelTimer(t) for t in timers]
    assert solo.actor.fetching() == []
    assert solo.actor.progress() == (0, 2)
    assert metrics_in(solo.store(fetch)) == {"replication.dropped.stale_result": 1}


def eligibility(election: Election) -> tuple[bool, bool]:
    """(responder scope eligible, downloader scope eligible)."""
    return (election.responder.eligible, election.downloader.eligible)


def test_election_becomes_eligible_when_told_and_then_leads() -> None:
    """`EligibilityChanged(responder)` makes a lone ineligible peer claim and lead its subnet."""
    info = member(1, "me")
    election = Election(info, random.Random(1), responder_eligible=False)
    timers = {c.name: c.deadline_s for c in election.start(0.0) if isinstance(c, StartTimer)}
    assert eligibility(election) == (False, False)
    commands = election.handle(EligibilityChanged(RESPONDER_CAPABILITY, True), 0.5)
    assert eligibility(election) == (True, False)  # only the scopes needing that capability
    timers.update({c.name: c.deadline_s for c in commands if isinstance(c, StartTimer)})
    now_s = 0.5
    for _ in range(10):
        name, deadline_s = min(timers.items(), key=lambda item: item[1])
        del timers[name]
        now_s = max(now_s, deadline_s)
        for c in election.handle(TimerFired(name), now_s):
            if isinstance(c, StartTimer):
                timers[c.name] = c.deadline_s
        if election.responder.role is Role.LEADER:
            break
    assert election.responder.role is Role.LEADER
    unknown = election.handle(EligibilityChanged("no-such-capability", True), now_s)
    assert CountMetric("election.unknown_capability") in unknown


def test_election_keeps_weight_zero_ineligible() -> None:
    """Weight 0 means never, whatever replication says."""
    info = replace(member(1, "me"), weight=0)
    election = Election(info, random.Random(1))
    election.handle(EligibilityChanged(RESPONDER_CAPABILITY, True), 0.0)
    assert eligibility(election) == (False, False)


# --------------------------------------------------------------------------- garbage


def test_unexpected_and_malformed_input_is_counted_and_dropped() -> None:
    """Foreign messages, bad `Have`s, stale host answers and unknown timers: counted, no effect."""
    manifest = make_manifest((10,))
    solo = Solo(manifest)
    peer = solo.add_peer(2, [])
    good = have_messages(manifest, [1])[0]
    lease = Lease(scope=SCOPE, term=1, leader="x", interval_s=0.5)

    def have(**changes: Any) -> MessageReceived:
        return MessageReceived(peer.node_id, peer.address, replace(good, **changes))

    cases: list[tuple[Event, str]] = [
        (MessageReceived(peer.node_id, peer.address, lease), "unexpected_message"),
        (MessageReceived("me", peer.address, good), "have_from_self"),
        (have(site="s2"), "have_other_site"),
        (have(package_id="x-1"), "have_other_package"),
        (have(version=(9,)), "have_malformed"),
        (have(chunk_count=11), "have_malformed"),
        (have(first_chunk=8), "have_malformed"),
        (have(first_chunk=-SEGMENT_CHUNKS), "have_malformed"),
        (have(first_chunk=SEGMENT_CHUNKS), "have_malformed"),
        (have(bitmap=b"\xff" * (SEGMENT_BYTES + 1)), "have_malformed"),
        (have(complete=True), "have_malformed"),
        (ChunkStored(replace(fetch_of(manifest), package_id="other-1")), "stale_result"),
        (ChunkStored(replace(fetch_of(manifest), file_index=5)), "stale_result"),
        (ChunkStored(replace(fetch_of(manifest), chunk_index=99)), "stale_result"),
        (ChunkRefused(replace(fetch_of(manifest), chunk_index=-1), "bad_hash"), "stale_result"),
        (ChunkFetchFailed(replace(fetch_of(manifest), file_index=-1), "x"), "stale_result"),
        (ChunksHeld("other-1", b""), "stale_inventory"),
        (ChunksHeld(manifest.package_id, b"\x00\x00\x00"), "malformed_inventory"),
        (PackageComplete("other-1"), "stale_completion"),
        (TimerFired("no-such-timer"), "unknown_timer"),
        (TimerFired("fetch:999"), "unknown_timer"),
    ]
    for event, reason in cases:
        commands = solo.feed(event)
        assert metrics_in(commands) == {f"replication.dropped.{reason}": 1}, event
        assert fetches_in(commands) == [], event
    assert solo.actor.progress() == (0, 10)
    assert all(solo.actor.availability(n) == 0 for n in range(10))


def fetch_of(manifest: Manifest) -> FetchChunk:
    ref = chunk_table(manifest)[0]
    return FetchChunk(member(2).address, manifest.package_id, 0, 0, ref.path, ref.size_bytes, False)


def test_a_have_asking_for_a_reply_gets_ours_at_most_once_per_debounce() -> None:
    """`reply=True` is answered with our holdings, to that peer only, rate-limited."""
    manifest = make_manifest((4,))
    solo = Solo(manifest, held=[2])
    peer = solo.add_peer(2, [])
    ask = have_messages(manifest, [0], reply=True)[0]

    def answers() -> list[SendMessage]:
        commands = solo.feed(MessageReceived(peer.node_id, peer.address, ask))
        return [c for c in commands if isinstance(c, SendMessage)]

    (answer,) = answers()
    assert answer.address == peer.address
    assert answer.message == have_messages(manifest, [2])[0]  # reply=False: no ping-pong
    assert answers() == []  # within `have_debounce_s`
    solo.now_s += 0.5
    assert len(answers()) == 1
    quiet = replace(ask, reply=False)
    commands = solo.feed(MessageReceived(peer.node_id, peer.address, quiet))
    assert [c for c in commands if isinstance(c, SendMessage)] == []


def test_a_have_from_a_site_peer_discovery_has_not_reported_is_taken_and_answered() -> None:
    """Actors hear of a peer in any order: its `Have` counts, and it gets ours back."""
    manifest = make_manifest((4,))
    solo = Solo(manifest, held=[3])
    stranger = member(9)
    have = have_messages(manifest, [0, 1])[0]
    commands = solo.feed(MessageReceived(stranger.node_id, stranger.address, have))
    assert [c.address for c in commands if isinstance(c, SendMessage)] == [stranger.address]
    assert {fetch.source for fetch in fetches_in(commands)} == {stranger.address}
    assert solo.actor.availability(0) == 1


def test_a_have_from_a_departed_peer_is_dropped() -> None:
    """A late `Have` from a peer declared dead does not bring its chunks back."""
    manifest = make_manifest((4,))
    solo = Solo(manifest)
    peer = solo.add_peer(2, [0])
    solo.feed(MemberChanged(peer, MemberState.DEAD, 1))
    have = have_messages(manifest, [0, 1])[0]
    commands = solo.feed(MessageReceived(peer.node_id, peer.address, have))
    assert metrics_in(commands) == {"replication.dropped.have_from_departed": 1}
    assert solo.actor.availability(0) == 0
    solo.feed(MemberChanged(peer, MemberState.ALIVE, 2))  # it came back: news again
    solo.feed(MessageReceived(peer.node_id, peer.address, have))
    assert solo.actor.availability(1) == 1


@settings(max_examples=150, deadline=None)
@given(
    haves=st.lists(
        st.tuples(
            st.integers(2, 4),
            st.builds(
                Have,
                package_id=st.sampled_from(["pkg-1.2", "pkg-1.3", ""]),
                version=st.sampled_from([(1, 2), (1,), ()]),
                site=st.sampled_from([SITE, "s2"]),
                chunk_count=st.integers(-2, 12),
                first_chunk=st.sampled_from([0, 1, 8, SEGMENT_CHUNKS, -SEGMENT_CHUNKS]),
                bitmap=st.binary(max_size=SEGMENT_BYTES + 2),
                complete=st.booleans(),
                reply=st.booleans(),
            ),
        ),
        max_size=30,
    )
)
def test_any_have_is_applied_or_counted_never_raised(haves: list[tuple[int, Have]]) -> None:
    """Arbitrary `Have` fields never raise; availability always equals what the peers hold."""
    manifest = make_manifest((10,))
    solo = Solo(manifest)
    peers = {index: solo.add_peer(index, []) for index in (2, 3, 4)}
    for index, have in haves:
        info = peers[index]
        commands = solo.feed(MessageReceived(info.node_id, info.address, have))
        dropped = [name for name in metrics_in(commands) if name.startswith("replication.dropped.")]
        assert len(dropped) <= 1
        for number in range(10):
            holders = [p for p in solo.actor._peers.values() if p.held and number in p.held]
            assert solo.actor.availability(number) == len(holders)
    for fetch in solo.actor.fetching():
        assert fetch.source in {info.address for info in peers.values()}
        assert not fetch.wan


# --------------------------------------------------------------------------- wire format


def test_have_golden_bytes() -> None:
    """The exact `Have` encoding is pinned: a framing or field-order change must be deliberate."""
    have = Have(
        package_id="pkg-1.2",
        version=(1, 2),
        site="s1",
        chunk_count=10,
        first_chunk=0,
        bitmap=b"\xa0\x40",
        complete=False,
        reply=True,
    )
    golden = (
        "9301a46861766588aa7061636b6167655f6964a7706b672d312e32a776657273696f6e920102"
        "a473697465a27331ab6368756e6b5f636f756e740aab66697273745f6368756e6b00a6626974"
        "6d6170c402a040a8636f6d706c657465c2a57265706c79c3"
    )
    assert codec.encode(have).hex() == golden
    assert codec.decode(bytes.fromhex(golden)) == have


def test_the_largest_have_fits_one_sealed_datagram() -> None:
    """A full segment with the longest name, version and site still fits the envelope."""
    version = (2**32 - 1,) * 8
    have = Have(
        package_id="n" * 64 + "-" + ".".join(str(part) for part in version),
        version=version,
        site="s" * 64,
        chunk_count=CHUNKS_MAX,
        first_chunk=CHUNKS_MAX - SEGMENT_CHUNKS,
        bitmap=b"\xff" * SEGMENT_BYTES,
        complete=False,
        reply=True,
    )
    assert len(codec.encode(have)) <= MAX_BODY_BYTES
    security = WireSecurity("n" * 64, b"k" * 32, 2**63)
    assert len(security.seal(have)) <= codec.MAX_DATAGRAM_BYTES


def test_a_large_package_is_advertised_in_segments_that_rebuild_the_bitfield() -> None:
    """65536 chunks: 16 `Have`s; a receiver rebuilds exactly the sender's holdings."""
    manifest = make_manifest((CHUNKS_MAX // 2, CHUNKS_MAX // 2))
    held = list(range(0, CHUNKS_MAX, 7))
    sender = Solo(manifest, held=held)
    receiver = Solo(manifest)
    info = receiver.add_peer(1, [])
    sent = sender.feed(MemberChanged(replace(receiver.info, node_id="r"), MemberState.ALIVE, 0))
    haves = [c.message for c in sent if isinstance(c, SendMessage)]
    assert len(haves) == CHUNKS_MAX // SEGMENT_CHUNKS
    for have in haves:
        assert isinstance(have, Have)
        decoded = codec.decode(codec.encode(have), max_bytes=MAX_BODY_BYTES)
        receiver.feed(MessageReceived(info.node_id, info.address, decoded))
    assert [n for n in range(CHUNKS_MAX) if receiver.actor.availability(n)] == held


def test_a_package_with_too_many_chunks_is_refused() -> None:
    """More chunks than `CHUNKS_MAX` is a logged error, not a crash nor a target."""
    manifest = make_manifest((CHUNKS_MAX + 1,))
    actor = Replication(member(1, "me"), random.Random(1))
    commands = actor.handle(ManifestAccepted(manifest), 0.0)
    assert metrics_in(commands) == {"replication.dropped.package_too_large": 1}
    assert actor.progress() == (0, 0)


# --------------------------------------------------------------------------- bitfield, bucket


def test_bitfield_uses_bep3_bit_order_and_ignores_spare_bits() -> None:
    """Chunk 0 is the high bit of byte 0 (BEP 3); bits past the size never become set."""
    bits = Bitfield.from_bytes(10, b"\x80\xff\xff")
    assert bits.numbers() == [0, 8, 9]
    assert bits.to_bytes() == b"\x80\xc0"
    assert bits.count() == 3
    assert bits.write_segment(0, b"\x40") == [(0, False), (1, True), (8, False), (9, False)]
    assert Bitfield.full(10).to_bytes() == b"\xff\xc0"
    assert Bitfield.full(10).segment(0) == b"\xff\xc0"
    assert Bitfield(10).segment(0) == b""


def test_bitmap_from_missing_marks_every_stored_chunk() -> None:
    """The host's `missing_chunks()` turns into the bitfield of what is held."""
    manifest = make_manifest((3, 2))
    missing = [("f0.bin", 1), ("f1.bin", 0)]
    assert Bitfield.from_bytes(5, bitmap_from_missing(manifest, missing)).numbers() == [0, 2, 4]


def test_token_bucket_arithmetic() -> None:
    """Refill at the rate up to the depth; take only what is there; say when it will be."""
    bucket = TokenBucket(rate_bytes_per_s=100.0, capacity_bytes=500.0)
    assert not bucket.try_take(1, 0.0)
    assert bucket.ready_at_s(300, 0.0) == pytest.approx(3.0)
    assert bucket.try_take(300, 3.0)
    assert not bucket.try_take(1, 3.0)
    bucket.refill(100.0)
    assert bucket.tokens_bytes == 500.0
    bucket.refill(50.0)  # the clock went back: nothing earned
    assert bucket.tokens_bytes == 500.0
    assert bucket.ready_at_s(500, 100.0) == 100.0
    bucket.empty(100.0)
    assert bucket.ready_at_s(1, 100.0) == pytest.approx(100.01)


def test_knobs_refuse_nonsense_with_a_reason() -> None:
    """Knobs come from configs and sweeps: a bad one is a ValueError that says why."""
    with pytest.raises(ValueError, match="fetches_per_source_max"):
        ReplicationKnobs(fetches_per_source_max=0)
    with pytest.raises(ValueError, match="wan_bytes_per_s"):
        ReplicationKnobs(wan_bytes_per_s=0.0)


# --------------------------------------------------------------------------- a site on a fake host


@dataclass
class _LabNode:
    actor: Replication
    info: MemberInfo
    up: bool = True
    generations: dict[str, int] = field(default_factory=dict)
    store: dict[int, None] = field(default_factory=dict)
    complete: bool = False
    told: list[Event] = field(default_factory=list)


@dataclass(frozen=True)
class _WanStart:
    time_s: float
    node_id: str
    number: int
    size_bytes: int


class SiteLab:
    """Replication actors of one site on an in-memory host with fixed transfer times."""

    def __init__(
        self,
        count: int,
        manifest: Manifest,
        knobs: ReplicationKnobs,
        *,
        lan_transfer_s: float = 0.05,
        wan_transfer_s: float = 0.2,
        latency_s: float = 0.001,
    ) -> None:
        self.manifest = manifest
        self.table = chunk_table(manifest)
        self.numbers = {(ref.file_index, ref.chunk_index): ref.number for ref in self.table}
        self.lan_transfer_s = lan_transfer_s
        self.wan_transfer_s = wan_transfer_s
        self.latency_s = latency_s
        self.now_s = 0.0
        self.nodes: dict[str, _LabNode] = {}
        self.by_address: dict[Address, str] = {}
        self.wan_starts: list[_WanStart] = []
        self.wan_fetches_by_chunk: dict[int, int] = {}
        self.violations: list[str] = []
        self._heap: list[tuple[float, int, str, Event, int]] = []
        self._seq = 0
        self.knobs = knobs
        for index in range(2, count + 2):
            info = member(index, f"n{index:02d}")
            actor = Replication(info, random.Random(f"7:{info.node_id}"), knobs, (ORIGIN,))
            self.nodes[info.node_id] = _LabNode(actor=actor, info=info)
            self.by_address[info.address] = info.node_id

    # ------------------------------------------------------------------ scenario steps

    def start_all(self) -> None:
        for node_id, node in self.nodes.items():
            self._execute(node_id, node.actor.start(self.now_s))
            self._handle(node_id, ManifestAccepted(self.manifest))
            self._handle(node_id, ChunksHeld(self.manifest.package_id, b""))
            for other_id, other in self.nodes.items():
                if other_id != node_id:
                    self._handle(node_id, MemberChanged(other.info, MemberState.ALIVE, 0))

    def lead(self, node_id: str, term: int) -> None:
        self._push(self.now_s, node_id, leading(node_id, term))

    def crash(self, node_id: str, detected_after_s: float) -> None:
        node = self.nodes[node_id]
        node.up = False
        dead = MemberChanged(node.info, MemberState.DEAD, 1)
        for other in self.nodes:
            if other != node_id:
                self._push(self.now_s + detected_after_s, other, dead)

    def live(self) -> list[_LabNode]:
        return [node for node in self.nodes.values() if node.up]

    def all_complete(self) -> bool:
        return all(node.complete for node in self.live())

    def run_until(self, until_s: float, *, stop_when_complete: bool = False) -> None:
        while self._heap and self._heap[0][0] <= until_s:
            if stop_when_complete and self.all_complete():
                return
            time_s, _, node_id, event, generation = heapq.heappop(self._heap)
            self.now_s = time_s
            node = self.nodes[node_id]
            if isinstance(event, TimerFired):
                if node.generations.get(event.name) != generation:
                    continue
                del node.generations[event.name]
            if node.up:
                self._handle(node_id, event)
        self.now_s = max(self.now_s, until_s)

    def wan_bytes(self) -> int:
        return sum(start.size_bytes for start in self.wan_starts)

    # ------------------------------------------------------------------ the fake host

    def _handle(self, node_id: str, event: Event) -> None:
        node = self.nodes[node_id]
        fetch = event.fetch if isinstance(event, ChunkStored) else None
        if fetch is not None and not fetch.wan and not self.nodes[self.by_address[fetch.source]].up:
            event = ChunkFetchFailed(fetch, "connection_reset")  # the source died mid-transfer
        if isinstance(event, ChunkStored):
            node.store[self.numbers[(event.fetch.file_index, event.fetch.chunk_index)]] = None
        self._execute(node_id, node.actor.handle(event, self.now_s))
        self._check(node)
        if len(node.store) == len(self.table) and not node.complete and node.up:
            node.complete = True  # what the host does: store.complete() succeeded
            self._execute(
                node_id, node.actor.handle(PackageComplete(self.manifest.package_id), self.now_s)
            )

    def _check(self, node: _LabNode) -> None:
        in_flight = node.actor.fetching()
        per_source: dict[Address, int] = {}
        for fetch in in_flight:
            per_source[fetch.source] = per_source.get(fetch.source, 0) + 1
        if len(in_flight) > self.knobs.fetches_max:
            self.violations.append(f"{node.info.node_id}: {len(in_flight)} fetches")
        if per_source and max(per_source.values()) > self.knobs.fetches_per_source_max:
            self.violations.append(f"{node.info.node_id}: per-source bound broken")

    def _push(self, time_s: float, node_id: str, event: Event, generation: int = 0) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (time_s, self._seq, node_id, event, generation))

    def _execute(self, node_id: str, commands: list[Command]) -> None:
        node = self.nodes[node_id]
        for command in commands:
            match command:
                case SendMessage(address, message):
                    self._send(node_id, address, message)
                case StartTimer(name, deadline_s):
                    self._seq += 1
                    node.generations[name] = self._seq
                    self._push(max(deadline_s, self.now_s), node_id, TimerFired(name), self._seq)
                case CancelTimer(name):
                    node.generations.pop(name, None)
                case FetchChunk():
                    self._fetch(node_id, command)
                case Tell(_, told):
                    node.told.append(told)
                case _:
                    pass

    def _send(self, source: str, address: Address, message: Message) -> None:
        data = codec.encode(message)
        assert len(data) <= MAX_BODY_BYTES
        target = self.by_address.get(address)
        if target is None:
            return
        event = MessageReceived(source, self.nodes[source].info.address, codec.decode(data))
        self._push(self.now_s + self.latency_s, target, event)

    def _fetch(self, node_id: str, fetch: FetchChunk) -> None:
        number = self.numbers[(fetch.file_index, fetch.chunk_index)]
        if fetch.wan:
            if not self.nodes[node_id].actor.downloader:
                self.violations.append(f"{node_id} fetched across the WAN without the role")
            holders = [n.info.node_id for n in self.live() if number in n.store]
            if holders:
                self.violations.append(f"{node_id} WAN-fetched chunk {number} held by {holders}")
            self.wan_starts.append(_WanStart(self.now_s, node_id, number, fetch.size_bytes))
            self.wan_fetches_by_chunk[number] = self.wan_fetches_by_chunk.get(number, 0) + 1
            self._push(self.now_s + self.wan_transfer_s, node_id, ChunkStored(fetch))
            return
        source = self.nodes[self.by_address[fetch.source]]
        done_s = self.now_s + self.lan_transfer_s
        if not source.up:
            self._push(done_s, node_id, ChunkFetchFailed(fetch, "connection_refused"))
        elif number not in source.store:
            self._push(done_s, node_id, ChunkFetchFailed(fetch, NOT_HELD))
        else:
            self._push(done_s, node_id, ChunkStored(fetch))  # unless the source dies meanwhile


LAB_KNOBS = ReplicationKnobs(wan_bytes_per_s=20_000.0, wan_burst_bytes=2048)
LAB_MANIFEST = make_manifest((40, 24), chunk_bytes=1024, short_bytes=37)


def test_a_site_of_ten_peers_completes_with_each_chunk_crossing_the_wan_once() -> None:
    """Ten peers, one downloader: all complete; WAN bytes == package size, exactly."""
    lab = SiteLab(10, LAB_MANIFEST, LAB_KNOBS)
    lab.start_all()
    lab.lead("n02", term=1)
    lab.run_until(120.0, stop_when_complete=True)
    assert lab.violations == []
    assert lab.all_complete()
    assert lab.wan_bytes() == LAB_MANIFEST.total_bytes
    assert sorted(lab.wan_fetches_by_chunk) == list(range(LAB_MANIFEST.chunk_count))
    assert set(lab.wan_fetches_by_chunk.values()) == {1}
    assert {start.node_id for start in lab.wan_starts} == {"n02"}
    eligible = EligibilityChanged(RESPONDER_CAPABILITY, True)
    assert all(node.told == [eligible] for node in lab.nodes.values())
    assert all(node.actor.progress() == (64, 64) for node in lab.nodes.values())
    # Rate: 64,960 bytes at 20,000 B/s after a 1 s settle, so ~4.2 s; LAN copies overlap.
    assert lab.now_s < 10.0


def test_a_site_run_is_deterministic() -> None:
    """Same seeds, same events: the same WAN fetches at the same times."""
    runs = []
    for _ in range(2):
        lab = SiteLab(6, LAB_MANIFEST, LAB_KNOBS)
        lab.start_all()
        lab.lead("n03", term=1)
        lab.run_until(60.0, stop_when_complete=True)
        runs.append((lab.wan_starts, lab.now_s))
    assert runs[0] == runs[1]


def test_a_new_downloader_resumes_without_refetching_what_the_site_holds() -> None:
    """The downloader dies mid-way; its successor fetches only chunks no live peer holds."""
    # Sparse advertisements: the successor has not heard every peer's holdings when it takes
    # over, so it must ask them all and wait for the answers before it fetches across the WAN.
    sparse = replace(LAB_KNOBS, have_fanout=1, have_debounce_s=0.5, have_interval_s=30.0)
    lab = SiteLab(8, LAB_MANIFEST, sparse)
    lab.start_all()
    lab.lead("n02", term=1)
    lab.run_until(3.0)
    first_wan = {start.number for start in lab.wan_starts}
    assert 10 < len(first_wan) < LAB_MANIFEST.chunk_count  # mid-way
    lab.crash("n02", detected_after_s=0.5)
    held_by_survivors = {n for node in lab.live() for n in node.store}
    only_dead_held = first_wan - held_by_survivors
    lab.run_until(lab.now_s + 0.5)
    successor = lab.nodes["n05"]
    known = {n for n in range(64) if successor.actor.availability(n) or n in successor.store}
    assert held_by_survivors - known  # the successor's view is stale
    lab.lead("n05", term=2)
    lab.run_until(120.0, stop_when_complete=True)
    assert lab.violations == []  # among them: no WAN fetch of a chunk a live peer held
    assert lab.all_complete()
    second_wan = [start.number for start in lab.wan_starts if start.node_id == "n05"]
    assert len(second_wan) == len(set(second_wan))
    assert not set(second_wan) & held_by_survivors
    assert set(second_wan) == set(range(LAB_MANIFEST.chunk_count)) - held_by_survivors
    refetched = [number for number, count in lab.wan_fetches_by_chunk.items() if count > 1]
    assert set(refetched) <= only_dead_held


def test_a_downloader_that_dies_after_spreading_everything_costs_no_more_wan() -> None:
    """Every chunk already reached a live peer: the successor fetches nothing across the WAN."""
    lab = SiteLab(5, LAB_MANIFEST, LAB_KNOBS)
    lab.start_all()
    lab.lead("n02", term=1)
    while len({n for node in lab.live() if node.info.node_id != "n02" for n in node.store}) < 64:
        lab.run_until(lab.now_s + 0.05)
        assert lab.now_s < 60.0
    lab.crash("n02", detected_after_s=1.0)
    lab.run_until(lab.now_s + 1.0)
    lab.lead("n03", term=2)
    lab.run_until(120.0, stop_when_complete=True)
    assert lab.violations == []
    assert lab.all_complete()
    assert lab.wan_bytes() == LAB_MANIFEST.total_bytes
    assert [s for s in lab.wan_starts if s.node_id == "n03"] == []


# --------------------------------------------------------------------------- manifests spreading


NEWER = replace(make_manifest((4,)), version=(1, 3))


def manifest_fetches_in(commands: Iterable[Command]) -> list[FetchManifest]:
    return [command for command in commands if isinstance(command, FetchManifest)]


def test_a_have_for_a_newer_package_fetches_its_manifest_from_that_peer_once() -> None:
    solo = Solo(make_manifest((4,)))
    peer = member(2)
    solo.feed(MemberChanged(peer, MemberState.ALIVE, 0))
    (have,) = have_messages(NEWER, range(4), complete=True)
    first = solo.feed(MessageReceived(peer.node_id, peer.address, have))
    assert manifest_fetches_in(first) == [FetchManifest(peer.address, NEWER.package_id)]
    again = solo.feed(MessageReceived(peer.node_id, peer.address, have))
    assert manifest_fetches_in(again) == []  # one in flight per source


def test_a_peer_without_a_target_fetches_the_manifest_it_hears_of() -> None:
    actor = Replication(member(1, "me"), random.Random(1), DEFAULT_KNOBS, (ORIGIN,))
    actor.start(0.0)
    peer = member(2)
    (have,) = have_messages(NEWER, range(4), complete=True)
    commands = actor.handle(MessageReceived(peer.node_id, peer.address, have), 1.0)
    assert manifest_fetches_in(commands) == [FetchManifest(peer.address, NEWER.package_id)]
    assert metrics_in(commands)["replication.dropped.have_no_target"] == 1


def test_a_peer_behind_gets_our_have_so_that_it_asks_us() -> None:
    solo = Solo(NEWER, held=range(4))
    peer = member(2)
    solo.feed(MemberChanged(peer, MemberState.ALIVE, 0))
    solo.now_s = 5.0
    (old,) = have_messages(make_manifest((4,)), range(4), complete=True)
    commands = solo.feed(MessageReceived(peer.node_id, peer.address, old))
    assert manifest_fetches_in(commands) == []
    sent = [c.message for c in commands if isinstance(c, SendMessage) and c.address == peer.address]
    assert sent
    assert all(isinstance(m, Have) and m.package_id == NEWER.package_id for m in sent)


def test_only_the_downloader_polls_wan_sources_round_robin() -> None:
    second = Address("hq2.example", 7946)
    solo = Solo(make_manifest((4,)), wan_sources=(ORIGIN, second))
    assert manifest_fetches_in(solo.advance(DEFAULT_KNOBS.manifest_poll_s * 3)) == []
    elected = solo.feed(leading("me"))
    (first,) = manifest_fetches_in(elected)
    assert first == FetchManifest(ORIGIN, wan=True)
    solo.feed(ManifestFetched(first, solo.manifest.package_id))
    polled = manifest_fetches_in(solo.advance(solo.now_s + DEFAULT_KNOBS.manifest_poll_s))
    assert polled == [FetchManifest(second, wan=True)]


def test_a_refused_manifest_is_logged_with_its_reason_and_not_retried_for_a_while() -> None:
    solo = Solo(make_manifest((4,)))
    peer = member(2)
    solo.feed(MemberChanged(peer, MemberState.ALIVE, 0))
    (have,) = have_messages(NEWER, range(4), complete=True)
    (fetch,) = manifest_fetches_in(solo.feed(MessageReceived(peer.node_id, peer.address, have)))
    refused = solo.feed(ManifestFetchFailed(fetch, "bad_signature", refused=True))
    assert metrics_in(refused)["replication.manifests_refused.bad_signature"] == 1
    assert any(isinstance(c, Log) and "bad_signature" in c.text for c in refused)
    solo.now_s += DEFAULT_KNOBS.manifest_retry_s / 2
    soon = solo.feed(MessageReceived(peer.node_id, peer.address, have))
    assert manifest_fetches_in(soon) == []
    solo.now_s += DEFAULT_KNOBS.manifest_retry_s
    later = solo.feed(MessageReceived(peer.node_id, peer.address, have))
    assert manifest_fetches_in(later) == [fetch]


def test_a_manifest_fetch_that_times_out_frees_its_source() -> None:
    solo = Solo(make_manifest((4,)))
    peer = member(2)
    solo.feed(MemberChanged(peer, MemberState.ALIVE, 0))
    (have,) = have_messages(NEWER, range(4), complete=True)
    solo.feed(MessageReceived(peer.node_id, peer.address, have))
    timed_out = solo.advance(solo.now_s + DEFAULT_KNOBS.manifest_fetch_timeout_s)
    assert metrics_in(timed_out)["replication.manifest_fetch_timeouts"] == 1
    retry = solo.feed(MessageReceived(peer.node_id, peer.address, have))
    assert manifest_fetches_in(retry) == [FetchManifest(peer.address, NEWER.package_id)]


def test_a_publishers_seed_feeds_a_non_downloader_over_the_lan_never_the_wan() -> None:
    """`SeedOffered`: the seed's manifest, then every chunk from the seed, LAN fetches."""
    solo = Solo(make_manifest((4,)))
    seed = Address("192.0.2.50", 40000)
    offered = solo.feed(SeedOffered(seed))
    (fetch,) = manifest_fetches_in(offered)
    assert fetch == FetchManifest(seed, seed=True)
    solo.feed(ManifestAccepted(NEWER))
    solo.feed(ChunksHeld(NEWER.package_id, Bitfield(NEWER.chunk_count).to_bytes()))
    fetched = solo.feed(ManifestFetched(fetch, NEWER.package_id))
    chunks = fetches_in(fetched)
    assert chunks
    assert all(c.source == seed and not c.wan for c in chunks)
    assert all(c.package_id == NEWER.package_id for c in chunks)


# --------------------------------------------------------------------------- policy spreading


def policy_fetches_in(commands: Iterable[Command]) -> list[FetchPolicy]:
    return [command for command in commands if isinstance(command, FetchPolicy)]


def test_a_newer_policy_version_is_fetched_from_the_peer_that_has_it_and_then_spread() -> None:
    solo = Solo(make_manifest((4,)))
    peer = member(2)
    solo.feed(MemberChanged(peer, MemberState.ALIVE, 0))
    heard = solo.feed(MessageReceived(peer.node_id, peer.address, PolicyVersion(version=4)))
    (fetch,) = policy_fetches_in(heard)
    assert fetch == FetchPolicy(peer.address, 4)
    again = solo.feed(MessageReceived(peer.node_id, peer.address, PolicyVersion(version=5)))
    assert policy_fetches_in(again) == []  # one policy fetch at a time
    installed = solo.feed(PolicyInstalled(4, fetch))
    assert solo.actor.policy_version == 4
    pushed = [c.message for c in installed if isinstance(c, SendMessage)]
    assert PolicyVersion(version=4) in pushed  # spread at once, not at the next round
    older = solo.feed(MessageReceived(peer.node_id, peer.address, PolicyVersion(version=2)))
    assert [c.message for c in older if isinstance(c, SendMessage)] == [PolicyVersion(version=4)]


def test_a_refused_policy_version_is_not_fetched_again_for_a_while() -> None:
    solo = Solo(make_manifest((4,)))
    peer = member(2)
    solo.feed(MemberChanged(peer, MemberState.ALIVE, 0))
    message = MessageReceived(peer.node_id, peer.address, PolicyVersion(version=7))
    (fetch,) = policy_fetches_in(solo.feed(message))
    refused = solo.feed(PolicyFetchFailed(fetch, "bad_signature", refused=True))
    assert metrics_in(refused)["replication.policies_refused.bad_signature"] == 1
    assert policy_fetches_in(solo.feed(message)) == []
    solo.now_s += DEFAULT_KNOBS.manifest_retry_s + 1
    assert policy_fetches_in(solo.feed(message)) == [fetch]


def test_the_downloader_polls_wan_sources_and_seeds_for_the_policy_too() -> None:
    solo = Solo(make_manifest((4,)))
    assert policy_fetches_in(solo.feed(leading("me"))) == [FetchPolicy(ORIGIN)]
    seed = Address("192.0.2.50", 40000)
    solo.feed(PolicyFetchFailed(FetchPolicy(ORIGIN), "not_held"))
    assert policy_fetches_in(solo.feed(SeedOffered(seed))) == [FetchPolicy(seed)]


def test_the_policy_version_rides_along_with_advertisements() -> None:
    solo = Solo(make_manifest((4,)))
    peer = member(2)
    solo.feed(MemberChanged(peer, MemberState.ALIVE, 0))
    solo.feed(PolicyInstalled(2))
    advertised = solo.advance(solo.now_s + DEFAULT_KNOBS.have_interval_s)
    assert SendMessage(peer.address, PolicyVersion(version=2)) in advertised


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(("have", "lose", "hold", "reset")),
            st.integers(0, 3),
            st.integers(0, 11),
        ),
        max_size=40,
    )
)
def test_the_cached_rarest_order_is_always_the_fresh_one(steps: list[tuple[str, int, int]]) -> None:
    """`Target.rarest` (kept between planning passes) equals sorting the missing chunks anew."""
    target = Target.of(make_manifest((5, 7)), random.Random(3))
    target.set_held(Bitfield(target.size))
    peers = [
        Peer(node_id=f"p{index}", source=Source(member(index).address, wan=False), rank=0.5)
        for index in range(4)
    ]
    for kind, index, number in steps:
        peer = peers[index]
        if peer.held is None:
            peer.held = Bitfield(target.size)
        if kind == "have" and peer.held.set(number):
            target.add_holder(peer, number)
        elif kind == "lose" and peer.held.clear(number):
            target.drop_holder(peer, number)
        elif kind == "hold":
            target.hold(number)
        elif kind == "reset":
            target.apply_have(peer, have_messages(target.manifest, [number])[0])
        fresh = [n for n in target.missing if target.availability[n] > 0]
        fresh.sort(key=target.availability.__getitem__)
        assert target.rarest() == fresh
