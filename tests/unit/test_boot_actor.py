"""The boot actor answers ProxyDHCP only as the elected responder (or rank-1 standby on retries)."""

from __future__ import annotations

from actors.boot.actor import Boot, BootKnobs
from actors.boot.proxy_dhcp import ArchClass, ProxyPolicy
from actors.core import (
    Address,
    Command,
    CountMetric,
    DhcpPacketReceived,
    LeadershipChanged,
    MemberChanged,
    MemberInfo,
    MemberState,
    SendDhcpReply,
)
from actors.election import RESPONDER_CAPABILITY
from tests.unit import pxe_clients

SUBNET = "192.0.2.0/24"
SCOPE = f"subnet:{SUBNET}"
CLIENT = Address("0.0.0.0", 68)


def _boot(knobs: BootKnobs | None = None) -> Boot:
    info = MemberInfo("p1", "s1", SUBNET, Address(pxe_clients.SERVER, 7947), 50)
    policy = ProxyPolicy(
        boot_files={ArchClass.BIOS: "undionly.kpxe", ArchClass.EFI_X64: "ipxe.efi"},
        ipxe_script_url=f"http://{pxe_clients.SERVER}:8080/boot.ipxe",
    )
    return Boot(info, policy, pxe_clients.SERVER, knobs or BootKnobs())


def _standing(leading: bool, rank: int = 0, term: int = 3) -> LeadershipChanged:
    return LeadershipChanged(SCOPE, RESPONDER_CAPABILITY, leading, term, "p1", rank)


def _discover(secs: int = 0, mac: str = pxe_clients.CLIENT_MAC) -> DhcpPacketReceived:
    payload = pxe_clients.craft(pxe_clients.bios_pxe_rom_options(), secs=secs, mac=mac)
    return DhcpPacketReceived(payload, CLIENT, Address(pxe_clients.SERVER, 67))


def _replies(commands: list[Command]) -> list[SendDhcpReply]:
    return [c for c in commands if isinstance(c, SendDhcpReply)]


def test_silent_until_elected_then_answers_every_discover() -> None:
    """No lease, no answer; once leading, a first DISCOVER is answered at once."""
    boot = _boot()
    assert _replies(boot.handle(_discover(), 0.0)) == []
    boot.handle(_standing(leading=True), 1.0)
    replies = _replies(boot.handle(_discover(), 1.1))
    assert len(replies) == 1
    assert replies[0].target == Address("255.255.255.255", 68)


def test_stepping_down_stops_answers_immediately() -> None:
    """A responder that loses its lease answers nothing more."""
    boot = _boot()
    boot.handle(_standing(leading=True), 1.0)
    boot.handle(_standing(leading=False), 2.0)
    commands = boot.handle(_discover(), 2.1)
    assert _replies(commands) == []
    assert CountMetric("boot.silent_not_leader") in commands


def test_first_standby_answers_only_repeated_retries() -> None:
    """Rank-1 standby: silent on a first DISCOVER and on the first retry (the new leader's
    turn); answers a client's third DISCOVER, or one with secs >= 12 (a ROM's second retry)."""
    boot = _boot()
    boot.handle(_standing(leading=False, rank=1), 0.0)
    first = boot.handle(_discover(secs=0), 1.0)
    assert _replies(first) == []
    assert CountMetric("boot.silent_standby") in first
    assert _replies(boot.handle(_discover(secs=4), 5.0)) == []  # the first retry: not yet
    assert len(_replies(boot.handle(_discover(secs=4), 13.0))) == 1  # the third DISCOVER
    other = "52:54:00:aa:bb:cc"
    assert _replies(boot.handle(_discover(secs=11, mac=other), 5.0)) == []
    third = "52:54:00:aa:bb:cd"
    assert len(_replies(boot.handle(_discover(secs=12, mac=third), 5.0))) == 1


def test_standby_forgets_old_discovers_after_the_retry_window() -> None:
    """DISCOVERs older than retry_window_s do not count towards a retry."""
    boot = _boot(BootKnobs(retry_window_s=10.0))
    boot.handle(_standing(leading=False, rank=1), 0.0)
    for now_s in (1.0, 5.0):
        assert _replies(boot.handle(_discover(secs=0), now_s)) == []
    assert _replies(boot.handle(_discover(secs=0), 20.0)) == []  # counting starts again
    assert _replies(boot.handle(_discover(secs=0), 21.0)) == []
    assert len(_replies(boot.handle(_discover(secs=0), 22.0))) == 1


def test_second_standby_and_others_never_answer_discovers() -> None:
    """Only the first standby steps in; rank 2 stays silent even on retries."""
    boot = _boot()
    boot.handle(_standing(leading=False, rank=2), 0.0)
    assert _replies(boot.handle(_discover(secs=8), 1.0)) == []


def test_standby_answers_can_be_switched_off() -> None:
    """With answer_retries_as_standby off, only the leader ever answers."""
    boot = _boot(BootKnobs(answer_retries_as_standby=False))
    boot.handle(_standing(leading=False, rank=1), 0.0)
    assert _replies(boot.handle(_discover(secs=8), 1.0)) == []


def test_pxe_port_request_naming_us_is_answered_whatever_our_standing() -> None:
    """A 4011 request follows our own offer: it is answered even after stepping down."""
    boot = _boot()
    payload = pxe_clients.ovmf_request_4011()
    event = DhcpPacketReceived(
        payload, Address(pxe_clients.CLIENT_IP, 68), Address(pxe_clients.SERVER, 4011)
    )
    replies = _replies(boot.handle(event, 1.0))
    assert len(replies) == 1
    assert replies[0].source == Address(pxe_clients.SERVER, 4011)


def test_garbage_and_other_subnets_are_counted_not_raised() -> None:
    """Malformed datagrams are counted; leadership news of another scope is ignored."""
    boot = _boot()
    boot.handle(_standing(leading=True), 0.0)
    garbage = DhcpPacketReceived(b"\x01\x02", CLIENT, Address(pxe_clients.SERVER, 67))
    assert boot.handle(garbage, 1.0) == [CountMetric("boot.ignored.malformed")]
    other = LeadershipChanged("subnet:10.9.0.0/16", RESPONDER_CAPABILITY, False, 9, "x", 0)
    assert boot.handle(other, 1.0) == []
    assert boot.leading


def test_ipxe_gets_the_script_url_not_the_boot_program_again() -> None:
    """iPXE (user class iPXE) is sent to the script, so it never chain-loads itself."""
    boot = _boot()
    boot.handle(_standing(leading=True), 0.0)
    payload = pxe_clients.ipxe_discover()
    event = DhcpPacketReceived(payload, CLIENT, Address(pxe_clients.SERVER, 67))
    (reply,) = _replies(boot.handle(event, 1.0))
    assert b"boot.ipxe" in reply.payload


def _peer(index: int, *, eligible: bool = True, weight: int = 50) -> MemberInfo:
    capabilities = (RESPONDER_CAPABILITY,) if eligible else ()
    address = Address(f"192.0.2.{20 + index}", 7947)
    return MemberInfo(f"p{20 + index}", "s1", SUBNET, address, weight, capabilities)


def _siaddr(commands: list[Command]) -> str:
    (reply,) = _replies(commands)
    return ".".join(str(byte) for byte in reply.payload[20:24])


def test_answer_names_a_settled_eligible_peer_as_file_server() -> None:
    """One answerer, many servers: siaddr is another eligible peer that has been ALIVE for
    file_server_min_uptime_s, chosen per MAC; the answering responder keeps option 54."""
    boot = _boot()
    boot.handle(_standing(leading=True), 0.0)
    for index in range(3):
        boot.handle(MemberChanged(_peer(index), MemberState.ALIVE, 0), 0.0)
    boot.handle(MemberChanged(_peer(3, eligible=False), MemberState.ALIVE, 0), 0.0)
    boot.handle(MemberChanged(_peer(4, weight=0), MemberState.ALIVE, 0), 0.0)
    early = boot.handle(_discover(), 5.0)
    assert _siaddr(early) == pxe_clients.SERVER  # nobody settled yet: ourselves
    chosen = {
        _siaddr(boot.handle(_discover(mac=f"52:54:00:00:01:{index:02x}"), 20.0))
        for index in range(40)
    }
    assert chosen == {"192.0.2.20", "192.0.2.21", "192.0.2.22"}  # spread, never 23 or 24
    again = boot.handle(_discover(mac="52:54:00:00:01:05"), 21.0)
    assert _siaddr(again) == _siaddr(boot.handle(_discover(mac="52:54:00:00:01:05"), 22.0))


def test_dead_file_server_is_no_longer_named() -> None:
    """A peer discovery declares DEAD (or that leaves) is dropped from the file servers."""
    boot = _boot()
    boot.handle(_standing(leading=True), 0.0)
    boot.handle(MemberChanged(_peer(0), MemberState.ALIVE, 0), 0.0)
    assert _siaddr(boot.handle(_discover(), 20.0)) == "192.0.2.20"
    boot.handle(MemberChanged(_peer(0), MemberState.DEAD, 0), 21.0)
    assert _siaddr(boot.handle(_discover(), 22.0)) == pxe_clients.SERVER


def test_file_server_spreading_can_be_switched_off() -> None:
    """spread_file_servers=False: the responder names itself, as a one-machine server does."""
    boot = _boot(BootKnobs(spread_file_servers=False))
    boot.handle(_standing(leading=True), 0.0)
    boot.handle(MemberChanged(_peer(0), MemberState.ALIVE, 0), 0.0)
    assert _siaddr(boot.handle(_discover(), 20.0)) == pxe_clients.SERVER
