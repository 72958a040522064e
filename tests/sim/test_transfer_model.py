"""The chunk transfer model alone: shares, completion times, slots, failures, WAN metering."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from actors.core import Actor, Address, FetchChunk, MemberInfo
from actors.replication import BUSY
from sim.host import SimNode
from sim.transfer_model import (
    PARTITIONED,
    SOURCE_DOWN,
    Capacities,
    Transfer,
    TransferModel,
)
from sim.world import World
from tests.sim.helpers import world as empty_world

pytestmark = pytest.mark.sim

ORIGIN = Address("192.0.2.1", 8443)
RATE = 1000.0
"""Bytes per second of every peer's upload and download in these tests."""


class Lab:
    """A world of idle nodes and a transfer model that records what it reports."""

    def __init__(self, nodes: int, *, slots: int = 8, backlog: int = 0, sites: int = 1) -> None:
        self.world: World = empty_world()
        self.world.network.attach(ORIGIN, "origin", "origin")
        self.nodes: list[SimNode] = []
        for index in range(nodes):
            site = f"s{index % sites + 1}"
            info = MemberInfo(f"n{index}", site, "10.0.0.0/24", Address(f"10.0.0.{index + 1}", 1))
            node = self.world.add_node(info, _no_actors)
            self.world.start(node, announce=False)
            self.nodes.append(node)
        self.finished: list[tuple[float, str, int]] = []
        self.failed: list[tuple[float, str, int, str]] = []
        capacities = Capacities(RATE * 10, RATE, slots, backlog)
        self.model = TransferModel(
            self.world, ORIGIN, capacities, on_finished=self._finished, on_failed=self._failed
        )
        for index in range(sites):
            self.model.add_site(f"s{index + 1}", RATE * 2)

    def fetch(self, receiver: int, source: int | None, chunk: int, size: int = 1000) -> str | None:
        node = self.nodes[receiver]
        origin = source is None
        address = ORIGIN if source is None else self.nodes[source].address
        command = FetchChunk(address, "p-1", 0, chunk, "f", size, wan=origin)
        return self.model.request(command, node, None if source is None else self.nodes[source])

    def at(self, time_s: float, action: Callable[[], None]) -> None:
        timeout = self.world.env.timeout(time_s - self.world.env.now)
        timeout.callbacks.append(lambda _event: action())

    def run(self, until_s: float = 100.0) -> None:
        self.world.env.run(until=until_s)

    def _finished(self, transfer: Transfer) -> None:
        now_s = self.world.env.now
        self.finished.append(
            (round(now_s, 6), transfer.receiver.node_id, transfer.command.chunk_index)
        )

    def _failed(self, command: FetchChunk, receiver: SimNode, reason: str) -> None:
        self.failed.append(
            (round(self.world.env.now, 6), receiver.node_id, command.chunk_index, reason)
        )


def _no_actors(info: MemberInfo, rng: random.Random, life: int) -> list[Actor]:
    return []


def test_an_upload_is_shared_equally_and_frees_up_when_one_ends() -> None:
    """Two 1000 B chunks from one source at 1000 B/s: 500 B/s each, both done at 2 s; a
    third of 500 B started with them takes a third of the upload until it ends at 1.5 s."""
    lab = Lab(4)
    assert lab.fetch(1, 0, 1) is None
    assert lab.fetch(2, 0, 2) is None
    assert lab.fetch(3, 0, 3, size=500) is None
    lab.run()
    # 3 sharing: 333 B/s each; the 500 B one ends at 1.5 s; the others have 500 B left at
    # 500 B/s: done at 2.5 s.
    assert lab.finished == [(1.5, "n3", 3), (2.5, "n1", 1), (2.5, "n2", 2)]
    assert lab.model.uploads["n0"].moved_bytes == pytest.approx(2500)


def test_a_transfer_gets_the_smallest_of_its_shares() -> None:
    """A receiver fetching from two idle sources is held by its own download: 500 B/s each."""
    lab = Lab(3)
    lab.fetch(0, 1, 1)
    lab.fetch(0, 2, 2)
    lab.run()
    assert lab.finished == [(2.0, "n0", 1), (2.0, "n0", 2)]
    busy_s = lab.model.downloads["n0"].busy_total_s(lab.world.env.now)
    assert busy_s == pytest.approx(2.0)


def test_a_share_held_back_elsewhere_goes_to_the_others() -> None:
    """n0 uploads to n1 and n2; n1 also downloads from n3, n4 and n5, so its download holds
    each of its four transfers to 250 B/s. n0's upload gives n2 the 750 B/s that n1 cannot
    take (max-min, as TCP would) instead of leaving it idle: n2's 1000 B arrive at 4/3 s, not
    at 2 s (an equal half of n0's upload)."""
    lab = Lab(6)
    lab.fetch(1, 0, 1)
    lab.fetch(2, 0, 2)
    for source in (3, 4, 5):
        lab.fetch(1, source, source)
    lab.run()
    first_s, first_node, first_number = lab.finished[0]
    assert first_s == pytest.approx(4 / 3)
    assert (first_node, first_number) == ("n2", 2)
    assert [time_s for time_s, _, _ in lab.finished[1:]] == pytest.approx([4.0] * 4)
    assert lab.model.uploads["n0"].moved_bytes == pytest.approx(2000)


def test_source_crash_fails_its_uploads_and_receiver_crash_drops_its_downloads() -> None:
    """A crashed source's receivers hear `source down`; a crashed receiver's transfers just
    end; bytes moved before the crash are counted."""
    lab = Lab(4)
    lab.fetch(1, 0, 1)
    lab.fetch(2, 3, 2)

    def crash() -> None:
        for index in (0, 2):
            lab.nodes[index].crash()
            lab.model.node_lost(lab.nodes[index])

    lab.at(0.5, crash)
    lab.run()
    assert lab.failed == [(0.5, "n1", 1, SOURCE_DOWN)]
    assert lab.finished == []
    assert lab.model.in_flight() == 0
    assert lab.model.uploads["n0"].moved_bytes == pytest.approx(500)
    assert lab.model.uploads["n3"].moved_bytes == pytest.approx(500)


def test_full_slots_queue_then_refuse_and_serve_the_least_served_chunk_first() -> None:
    """One slot and a backlog of one: the second request waits, the third is busy; a waiting
    copy of a chunk the source already served yields to one it never served."""
    lab = Lab(5, slots=1, backlog=1)
    assert lab.fetch(1, 0, 7) is None
    assert lab.fetch(2, 0, 7) is None  # waits: chunk 7 served once already
    assert lab.fetch(3, 0, 8) is None  # never served: takes the waiting place of the copy
    assert lab.failed == [(0.0, "n2", 7, BUSY)]
    assert lab.fetch(4, 0, 7) == BUSY
    lab.run()
    assert lab.finished == [(1.0, "n1", 7), (2.0, "n3", 8)]


def test_partition_and_wan_outage_cut_transfers_off() -> None:
    """A partition fails the LAN transfer across it; a WAN outage the origin's transfer."""
    lab = Lab(3)
    lab.fetch(1, 0, 1)
    lab.fetch(2, None, 2)

    def cut() -> None:
        lab.world.network.partition([lab.nodes[0].address])
        lab.model.topology_changed()
        lab.model.set_link("s1", up=False)

    lab.at(0.25, cut)
    lab.run()
    assert sorted(lab.failed) == [(0.25, "n1", 1, PARTITIONED), (0.25, "n2", 2, PARTITIONED)]
    assert lab.fetch(2, None, 3) == PARTITIONED


def test_wan_bytes_are_metered_by_site_and_by_window() -> None:
    """Two origin transfers into site s1 share its 2000 B/s link; the meter sees the link's
    rate over time, and sliding 1 s windows never carry more than the link's rate allows."""
    lab = Lab(4, sites=2)  # n0, n2 in s1; n1, n3 in s2
    lab.fetch(0, None, 1, size=1000)
    lab.fetch(2, None, 2, size=1000)
    lab.fetch(1, None, 3, size=500)
    lab.run()
    end_s = lab.world.env.now
    assert lab.model.wan_bytes("s1") == pytest.approx(2000)
    assert lab.model.wan_bytes("s2") == pytest.approx(500)
    # Each s1 transfer gets min(1000 download, 2000 / 2 link) = 1000 B/s: both end at 1 s.
    assert lab.finished[:2] == [(0.5, "n1", 3), (1.0, "n0", 1)]
    assert lab.model.window_bytes_max("s1", 1.0, end_s) == pytest.approx(2000)
    assert lab.model.window_bytes_max("s1", 0.5, end_s) == pytest.approx(1000)
    assert lab.model.windows_over("s1", 1.0, 2000.0, end_s) == 0
    assert lab.model.windows_over("s1", 1.0, 1999.0, end_s) > 0
