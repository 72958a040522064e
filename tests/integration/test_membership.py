"""Three real peers (pykka actors, UDP on 127.0.0.1, seeds) find and monitor each other."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from actors.core import ActorName, Address, MemberInfo, MemberState
from actors.discovery import Discovery, DiscoveryKnobs
from tests.integration.waiting import wait_until
from transport.host import Peer, PeerSettings

pytestmark = pytest.mark.integration

KEY = bytes(range(32))
FAST = DiscoveryKnobs(
    probe_interval_s=0.1,
    probe_timeout_s=0.05,
    gossip_interval_s=0.05,
    suspicion_timeout_s_min=0.3,
    suspicion_timeout_s_max=0.8,
    push_pull_interval_s=5.0,
)


class Cluster:
    """Peers started on loopback; every one is stopped at teardown."""

    def __init__(self) -> None:
        self.peers: dict[str, Peer] = {}

    def start(self, node_id: str, seeds: tuple[Address, ...] = (), key: bytes = KEY) -> Peer:
        settings = PeerSettings(node_id, key, epoch=1, bind=Address("127.0.0.1", 0))
        peer = Peer(settings)
        info = MemberInfo(node_id, "lab", "127.0.0.0/8", peer.address, weight=10)
        discovery = Discovery(info, random.Random(f"test:{node_id}"), FAST, seeds)
        peer.start([discovery])
        self.peers[node_id] = peer
        return peer

    def states(self, node_id: str) -> dict[str, MemberState]:
        views = self.peers[node_id].inspect(ActorName.DISCOVERY, lambda logic: logic.members())
        assert isinstance(views, list)
        return {view.member.node_id: view.state for view in views}

    def everyone_sees(self, observers: list[str], node_id: str, state: MemberState) -> bool:
        return all(self.states(observer).get(node_id) == state for observer in observers)

    def stop_all(self) -> None:
        for peer in self.peers.values():
            peer.stop()


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    made = Cluster()
    yield made
    made.stop_all()


def start_three(cluster: Cluster) -> None:
    first = cluster.start("a")
    cluster.start("b", seeds=(first.address,))
    cluster.start("c", seeds=(first.address,))
    names = ["a", "b", "c"]

    def all_alive() -> bool:
        return all(
            cluster.everyone_sees([o for o in names if o != node_id], node_id, MemberState.ALIVE)
            for node_id in names
        )

    assert wait_until(all_alive, timeout_s=5.0), [cluster.states(name) for name in names]


def test_three_peers_find_each_other_and_detect_a_crash(cluster: Cluster) -> None:
    """A peer stopped without leaving is declared dead by both others."""
    start_three(cluster)
    cluster.peers["c"].stop()  # no leave: looks like a crash to the others
    assert wait_until(
        lambda: cluster.everyone_sees(["a", "b"], "c", MemberState.DEAD), timeout_s=5.0
    ), [cluster.states("a"), cluster.states("b")]
    assert cluster.states("a")["b"] == MemberState.ALIVE


def test_a_peer_that_leaves_is_seen_as_left(cluster: Cluster) -> None:
    """A clean stop (leave first) shows as LEFT, not DEAD."""
    start_three(cluster)
    cluster.peers["b"].stop(leave=True)
    assert wait_until(
        lambda: cluster.everyone_sees(["a", "c"], "b", MemberState.LEFT), timeout_s=3.0
    ), [cluster.states("a"), cluster.states("c")]


def test_a_peer_with_the_wrong_key_is_never_admitted(cluster: Cluster) -> None:
    """An intruder seeding itself into the cluster is dropped as bad_mac and never listed."""
    honest = cluster.start("a")
    cluster.start("b", seeds=(honest.address,))
    cluster.start("mallory", seeds=(honest.address,), key=b"not the cluster key!")
    assert wait_until(lambda: cluster.states("a").get("b") == MemberState.ALIVE, timeout_s=5.0)
    assert wait_until(lambda: honest.counters.get("dropped.bad_mac") >= 1, timeout_s=3.0)
    for observer in ("a", "b"):
        assert "mallory" not in cluster.states(observer)
    assert cluster.states("mallory") == {}
