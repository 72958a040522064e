"""The real host executes every command kind, routes datagrams, and drops bad ones safely."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import pytest

from actors.core import (
    ActorName,
    Address,
    CancelTimer,
    Command,
    CountMetric,
    Log,
    LogLevel,
    MemberChanged,
    MemberInfo,
    MemberState,
    SendFailed,
    StartTimer,
    TimerFired,
)
from actors.envelope import WireSecurity
from actors.messages import Ack, Ping
from tests.integration.standins import PingPong, Recorder, tell_command
from tests.integration.waiting import wait_until
from transport.host import Peer, PeerSettings
from transport.timers import TimerFire

pytestmark = pytest.mark.integration

KEY = b"k" * 32
LOOPBACK = Address("127.0.0.1", 0)


def make_peer(node_id: str, key: bytes = KEY, epoch: int = 1) -> Peer:
    return Peer(PeerSettings(node_id=node_id, cluster_key=key, epoch=epoch, bind=LOOPBACK))


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    made: list[Peer] = []
    yield made
    for peer in made:
        peer.stop()


def test_two_peers_ping_and_ack_over_udp(peers: list[Peer]) -> None:
    """Timers drive sends, the endpoint seals and opens, and answers reach the right actor."""
    first, second = make_peer("a"), make_peer("b")
    peers += [first, second]
    pinger = PingPong("a", target=second.address)
    ponger = PingPong("b")
    first.start([pinger])
    second.start([ponger])
    assert wait_until(lambda: len(pinger.acks) >= 3, timeout_s=3.0)
    assert {source for source, _ in pinger.acks} == {"b"}
    assert ponger.pings[0] == ("a", first.address)
    assert second.counters.get("standin.pings") >= 3
    assert first.counters.snapshot().get("dropped.bad_mac") is None


def test_wrong_cluster_key_is_dropped_as_bad_mac(peers: list[Peer]) -> None:
    """Datagrams sealed with another key never reach an actor and are counted as bad_mac."""
    honest, intruder = make_peer("honest"), make_peer("intruder", key=b"x" * 32)
    peers += [honest, intruder]
    listener = PingPong("honest")
    honest.start([listener])
    intruder.start([PingPong("intruder", target=honest.address)])
    assert wait_until(lambda: honest.counters.get("dropped.bad_mac") >= 3, timeout_s=3.0)
    assert listener.pings == []


def test_garbage_and_replays_are_counted_and_the_endpoint_survives(peers: list[Peer]) -> None:
    """Malformed bytes and a replayed envelope are dropped by reason; later messages still land."""
    peer = make_peer("target")
    peers.append(peer)
    actor = PingPong("target")
    peer.start([actor])
    sealer = WireSecurity("sender", KEY, epoch=5)
    envelope = sealer.seal(Ping(seq=1, target="target"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        for data in (b"\xc1garbage", b"", b"\x00" * 2000, envelope, envelope):
            sock.sendto(data, (peer.address.host, peer.address.port))
        assert wait_until(lambda: peer.counters.get("dropped.replayed") == 1, timeout_s=2.0)
        assert peer.counters.get("dropped.malformed") == 3
        sock.sendto(
            sealer.seal(Ping(seq=2, target="target")), (peer.address.host, peer.address.port)
        )
        assert wait_until(lambda: len(actor.pings) == 2, timeout_s=2.0)
        sock.settimeout(2.0)
        answer, _ = sock.recvfrom(2048)
    source, message = WireSecurity("sender", KEY, epoch=5).open(answer)
    assert (source, message) == ("target", Ack(seq=1))


def test_send_failure_becomes_send_failed_event(peers: list[Peer]) -> None:
    """An OSError from sendto (broadcast without SO_BROADCAST: EACCES) is told back."""
    peer = make_peer("lonely")
    peers.append(peer)
    broadcast = Address("255.255.255.255", 9)
    actor = PingPong("lonely", target=broadcast)
    peer.start([actor])
    assert wait_until(lambda: bool(actor.failures), timeout_s=2.0)
    assert actor.failures[0] == SendFailed(broadcast, "EACCES")
    assert peer.counters.get("send.failed") >= 1


def test_tell_reaches_a_hosted_sibling_and_is_counted_otherwise(peers: list[Peer]) -> None:
    """`Tell` goes to the sibling actor of the same peer; an unhosted target is only counted."""
    peer = make_peer("p")
    peers.append(peer)
    member = MemberInfo("q", "site", "10.0.0.0/24", Address("10.0.0.2", 7947))
    change = MemberChanged(member, MemberState.ALIVE, 1)
    sender = PingPong("p")
    receiver = Recorder()
    peer.start([sender, receiver])
    peer.invoke(
        ActorName.DISCOVERY, lambda logic, now_s: [tell_command(ActorName.ELECTION, change)]
    )
    assert wait_until(lambda: receiver.events == [change], timeout_s=2.0)
    peer.invoke(ActorName.DISCOVERY, lambda logic, now_s: [tell_command(ActorName.BOOT, change)])
    assert peer.counters.get("tell.unhosted.boot") == 1


def test_cancelled_and_stale_timer_fires_never_reach_the_actor(peers: list[Peer]) -> None:
    """Cancel disarms; a fire with an old generation sitting in the inbox is discarded."""
    peer = make_peer("t")
    peers.append(peer)
    recorder = Recorder(
        start_commands=[StartTimer("cancelled", 0.0), CancelTimer("cancelled")],
        script={"first": [StartTimer("second", 0.0)]},
    )
    peer.start([recorder])
    peer.invoke(ActorName.ELECTION, lambda logic, now_s: [StartTimer("first", now_s + 0.02)])
    assert wait_until(lambda: TimerFired("second") in recorder.events, timeout_s=2.0)
    peer.invoke(ActorName.ELECTION, lambda logic, now_s: [StartTimer("armed", now_s + 60.0)])
    peer.tell(ActorName.ELECTION, TimerFire("first", 1))  # type: ignore[arg-type]
    peer.tell(ActorName.ELECTION, TimerFire("cancelled", 1))  # type: ignore[arg-type]
    peer.tell(ActorName.ELECTION, TimerFire("armed", 3))  # type: ignore[arg-type]
    assert wait_until(lambda: peer.counters.get("timers.stale_fires") == 3, timeout_s=2.0)
    assert recorder.events == [TimerFired("first"), TimerFired("second")]


def test_log_and_count_commands(peers: list[Peer], caplog: pytest.LogCaptureFixture) -> None:
    """`Log` becomes one structured line on the actor's logger; `CountMetric` adds up."""
    peer = make_peer("logger")
    peers.append(peer)
    peer.start([Recorder()])
    caplog.set_level(logging.INFO, logger="peerpxe")
    fields = (("member", "n 2"), ("incarnation", 3))
    commands: list[Command] = [Log(LogLevel.WARNING, "member suspect", fields), CountMetric("x", 2)]
    peer.invoke(ActorName.ELECTION, lambda logic, now_s: commands)
    assert peer.counters.get("x") == 2
    (record,) = [r for r in caplog.records if r.name == "peerpxe.election"]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == 'member suspect member="n 2" incarnation=3 self=logger'


def test_unexpected_message_stops_only_that_actor(peers: list[Peer]) -> None:
    """A host bug (an unknown message) fails its actor; the peer can still stop cleanly."""
    peer = make_peer("fragile")
    peers.append(peer)
    peer.start([Recorder()])
    peer.tell(ActorName.ELECTION, "not an event")  # type: ignore[arg-type]
    assert wait_until(lambda: not peer.is_hosting(ActorName.ELECTION), timeout_s=2.0)
    assert peer.counters.get("actor_failed.election") == 1


def test_message_for_an_unhosted_actor_is_counted(peers: list[Peer]) -> None:
    """Discovery messages reaching a peer without a discovery actor are dropped as no_actor."""
    target, sender = make_peer("no-discovery"), make_peer("sender")
    peers += [target, sender]
    target.start([Recorder()])
    sender.start([])
    sender.endpoint.send(target.address, Ping(seq=1, target="x"))
    assert wait_until(lambda: target.counters.get("dropped.no_actor") == 1, timeout_s=2.0)
