"""ProxyDHCP decisions: every branch, per firmware, per port, per policy.

Requests are crafted with scapy (`tests/unit/pxe_clients.py`); the golden answers are read
back with scapy, the branch tests with our decoder.
"""

from __future__ import annotations

import timeit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.boot.dhcp_packet import (
    BOOTREPLY,
    ZERO_ADDRESS,
    DhcpPacket,
    MessageType,
    decode_packet,
    encode_sub_options,
    ipv4_bytes,
)
from actors.boot.events import SendDhcpReply
from actors.boot.proxy_dhcp import (
    ArchClass,
    ClientKind,
    DhcpReply,
    Ignore,
    IgnoreReason,
    ProxyPolicy,
    answer,
    answer_datagram,
    normalize_mac,
)
from actors.core import Address
from tests.unit import pxe_clients
from tests.unit.pxe_clients import (
    CLIENT_IP,
    CLIENT_MAC,
    MACHINE_ID,
    OTHER_SERVER,
    RELAY,
    SERVER,
    XID,
    craft,
    scapy_reply,
)

SCRIPT_URL = "http://192.0.2.10:8080/boot.ipxe"
HTTP_BASE = "http://192.0.2.10:8080/nbp/"
BOOT_FILES = {
    ArchClass.BIOS: "undionly.kpxe",
    ArchClass.EFI_IA32: "ipxe-i386.efi",
    ArchClass.EFI_X64: "ipxe.efi",
    ArchClass.EFI_ARM64: "ipxe-arm64.efi",
    ArchClass.HTTP_IA32: "ipxe-i386.efi",
    ArchClass.HTTP_X64: "ipxe.efi",
    ArchClass.HTTP_ARM64: "ipxe-arm64.efi",
}
POLICY = ProxyPolicy(
    boot_files=BOOT_FILES, ipxe_script_url=SCRIPT_URL, http_boot_url_base=HTTP_BASE
)
BROADCAST_SOURCE = Address("0.0.0.0", 68)
UNICAST_SOURCE = Address(CLIENT_IP, 68)
SERVER_BYTES = ipv4_bytes(SERVER)
UEFI_PXE_ARCHES = {6: "ipxe-i386.efi", 7: "ipxe.efi", 9: "ipxe.efi", 11: "ipxe-arm64.efi"}


def respond(
    data: bytes,
    port: int = 67,
    policy: ProxyPolicy = POLICY,
    source: Address | None = None,
) -> DhcpReply | Ignore:
    if source is None:
        source = BROADCAST_SOURCE if port == 67 else UNICAST_SOURCE
    return answer_datagram(data, local_port=port, source=source, server=SERVER, policy=policy)


def replied(result: DhcpReply | Ignore) -> tuple[DhcpReply, DhcpPacket]:
    assert isinstance(result, DhcpReply), result
    return result, decode_packet(result.payload)


def ignored(result: DhcpReply | Ignore) -> IgnoreReason:
    assert isinstance(result, Ignore), result
    return result.reason


def request_4011(arch: int = 7, message_type: int = 3, **options: bytes) -> bytes:
    values = pxe_clients.ovmf_options(arch, message_type)
    values.update({int(code.removeprefix("o")): value for code, value in options.items()})
    return craft(values, ciaddr=CLIENT_IP, flags=0)


def assert_proxy_basics(packet: DhcpPacket, kind: MessageType) -> None:
    """The parts every answer shares (pxe-protocol-notes.md §2.1)."""
    assert packet.op == BOOTREPLY
    assert packet.xid == XID
    assert packet.mac == CLIENT_MAC
    assert packet.yiaddr == ZERO_ADDRESS
    assert packet.siaddr == SERVER_BYTES
    assert packet.message_type() is kind
    assert packet.server_identifier() == SERVER_BYTES
    assert tuple(packet.options)[:3] == (53, 54, 60)


# --------------------------------------------------------------------------- golden answers


def test_bios_pxe_rom_gets_offer_with_file_on_67() -> None:
    """BIOS on 67: OFFER, 54, 60 PXEClient, 97 echo, 43 = 06 01 08 ff, siaddr, file; broadcast."""
    reply, packet = replied(respond(pxe_clients.bios_discover()))
    assert packet.options[43] == b"\x06\x01\x08\xff"
    assert reply.target == Address("255.255.255.255", 68)
    assert reply.source == Address(SERVER, 67)
    assert reply.boot_file == "undionly.kpxe"
    assert reply.client.kind is ClientKind.PXE
    assert reply.client.arch_class is ArchClass.BIOS
    header, options = scapy_reply(reply.payload)
    assert header["op"] == 2
    assert header["xid"] == XID
    assert header["yiaddr"] == "0.0.0.0"
    assert header["siaddr"] == SERVER
    assert header["giaddr"] == "0.0.0.0"
    assert header["flags"] == 0x8000
    assert header["file"] == b"undionly.kpxe"
    assert header["sname"] == b""
    assert options == {
        "message-type": 2,
        "server_id": SERVER,
        "vendor_class_id": b"PXEClient",
        "pxe_client_machine_identifier": MACHINE_ID,
        "vendor_specific": b"\x06\x01\x08\xff",
    }


def test_ovmf_discover_gets_proxybinl_offer() -> None:
    """OVMF x64 on 67: OFFER with 53, 54, 60, 97 and siaddr, but no 43 and no file."""
    reply, _ = replied(respond(pxe_clients.ovmf_discover()))
    header, options = scapy_reply(reply.payload)
    assert header["siaddr"] == SERVER
    assert header["file"] == b""
    assert header["flags"] == 0x8000
    assert options == {
        "message-type": 2,
        "server_id": SERVER,
        "vendor_class_id": b"PXEClient",
        "pxe_client_machine_identifier": MACHINE_ID,
    }
    assert reply.boot_file == ""


def test_ovmf_request_on_4011_gets_ack_with_sname_and_file() -> None:
    """OVMF on 4011: ACK from port 4011 to the source, sname = IP text, file = the NBP."""
    source = Address(CLIENT_IP, 4011)
    reply, _ = replied(respond(pxe_clients.ovmf_request_4011(), port=4011, source=source))
    assert reply.target == source
    assert reply.source == Address(SERVER, 4011)
    header, options = scapy_reply(reply.payload)
    assert header["ciaddr"] == CLIENT_IP
    assert header["yiaddr"] == "0.0.0.0"
    assert header["siaddr"] == SERVER
    assert header["sname"] == SERVER.encode()
    assert header["file"] == b"ipxe.efi"
    assert header["flags"] == 0
    assert options == {
        "message-type": 5,
        "server_id": SERVER,
        "vendor_class_id": b"PXEClient",
        "pxe_client_machine_identifier": MACHINE_ID,
    }


def test_ipxe_gets_script_url_and_siaddr_so_it_never_loops() -> None:
    """iPXE on 67 gets the script URL (not an NBP) with siaddr, so it skips 4011 and stops."""
    reply, _ = replied(respond(pxe_clients.ipxe_discover()))
    header, options = scapy_reply(reply.payload)
    assert header["file"] == SCRIPT_URL.encode()
    assert header["siaddr"] == SERVER
    assert SCRIPT_URL not in BOOT_FILES.values()
    assert options == {
        "message-type": 2,
        "server_id": SERVER,
        "vendor_class_id": b"PXEClient",
        "pxe_client_machine_identifier": MACHINE_ID,
    }
    assert reply.client.kind is ClientKind.IPXE


def test_uefi_http_boot_gets_httpclient_and_url() -> None:
    """UEFI HTTP boot (arch 16): 60 HTTPClient and a full http:// URL as the file, no 43."""
    reply, _ = replied(respond(pxe_clients.http_boot_discover()))
    header, options = scapy_reply(reply.payload)
    assert header["file"] == b"http://192.0.2.10:8080/nbp/ipxe.efi"
    assert options == {
        "message-type": 2,
        "server_id": SERVER,
        "vendor_class_id": b"HTTPClient",
        "pxe_client_machine_identifier": MACHINE_ID,
    }
    assert reply.client.kind is ClientKind.HTTP


# --------------------------------------------------------------------------- per arch and port


@pytest.mark.parametrize("arch", sorted(UEFI_PXE_ARCHES))
def test_uefi_arches_get_proxybinl_on_67(arch: int) -> None:
    """Every UEFI PXE arch (6, 7, 9, 11) gets the ProxyBinl offer on 67: no 43, no file."""
    reply, packet = replied(respond(craft(pxe_clients.ovmf_options(arch))))
    assert_proxy_basics(packet, MessageType.OFFER)
    assert 43 not in packet.options
    assert 67 not in packet.options
    assert packet.file == packet.sname == b""
    assert packet.vendor_class() == b"PXEClient"
    assert reply.client.arch == arch


@pytest.mark.parametrize(("arch", "nbp"), sorted(UEFI_PXE_ARCHES.items()))
def test_uefi_arches_get_ack_on_4011(arch: int, nbp: str) -> None:
    """Every UEFI PXE arch gets ACK + sname + its own NBP on 4011."""
    reply, packet = replied(respond(request_4011(arch), port=4011))
    assert_proxy_basics(packet, MessageType.ACK)
    assert packet.file == nbp.encode()
    assert packet.sname == SERVER.encode()
    assert packet.ciaddr == ipv4_bytes(CLIENT_IP)
    assert 43 not in packet.options
    assert reply.boot_file == nbp


def test_bios_on_4011_gets_ack_too() -> None:
    """A BIOS client that asks on 4011 (pixiecore #132) gets its NBP, not a refusal."""
    options = pxe_clients.bios_pxe_rom_options()
    options[53] = b"\x03"
    _, packet = replied(respond(craft(options, ciaddr=CLIENT_IP), port=4011))
    assert_proxy_basics(packet, MessageType.ACK)
    assert packet.file == b"undionly.kpxe"
    assert 43 not in packet.options


def test_file_on_67_switch_sends_bypass_and_file_to_listed_uefi_classes() -> None:
    """With EFI_X64 in `file_on_67`, x64 gets 43 {6: 8} + file on 67; ARM64 stays ProxyBinl."""
    policy = ProxyPolicy(
        boot_files=BOOT_FILES, file_on_67=frozenset({ArchClass.BIOS, ArchClass.EFI_X64})
    )
    _, x64 = replied(respond(craft(pxe_clients.ovmf_options(9)), policy=policy))
    assert x64.options[43] == b"\x06\x01\x08\xff"
    assert x64.file == b"ipxe.efi"
    _, arm64 = replied(respond(craft(pxe_clients.ovmf_options(11)), policy=policy))
    assert 43 not in arm64.options
    assert arm64.file == b""


def test_bios_without_file_on_67_gets_proxybinl() -> None:
    """`file_on_67` really decides: BIOS removed from it gets the 4011 path as well."""
    policy = ProxyPolicy(boot_files=BOOT_FILES, file_on_67=frozenset())
    _, packet = replied(respond(pxe_clients.bios_discover(), policy=policy))
    assert 43 not in packet.options
    assert packet.file == b""


def test_inform_on_4011_gets_ack() -> None:
    """DHCPINFORM on 4011 is answered like DHCPREQUEST."""
    _, packet = replied(respond(request_4011(7, message_type=8), port=4011))
    assert packet.message_type() is MessageType.ACK
    assert packet.file == b"ipxe.efi"


@pytest.mark.parametrize(
    ("port", "message_type"),
    [(67, 3), (67, 8), (67, 4), (67, 7), (4011, 1), (4011, 4), (4011, 7), (4011, 2)],
    ids=[
        "67-request",
        "67-inform",
        "67-decline",
        "67-release",
        "4011-discover",
        "4011-decline",
        "4011-release",
        "4011-offer",
    ],
)
def test_other_message_types_and_ports_are_ignored(port: int, message_type: int) -> None:
    """Only DISCOVER on 67 and REQUEST/INFORM on 4011: the client's DHCPREQUEST on 67 is
    for the real DHCP server."""
    options = pxe_clients.ovmf_options(7, message_type)
    assert ignored(respond(craft(options), port=port)) is IgnoreReason.WRONG_PORT


def test_4011_request_naming_this_server_is_answered() -> None:
    """Option 54 equal to our address on 4011 is fine."""
    replied(respond(request_4011(o54=SERVER_BYTES), port=4011))


def test_4011_request_naming_another_server_is_ignored() -> None:
    """Option 54 naming another server on 4011 means it is not ours to answer."""
    result = respond(request_4011(o54=ipv4_bytes(OTHER_SERVER)), port=4011)
    assert ignored(result) is IgnoreReason.OTHER_SERVER


def test_4011_boot_item_is_echoed() -> None:
    """A boot server request's 43.71 (type, layer) comes back in the ACK (dnsmasq)."""
    item = encode_sub_options({71: b"\x80\x00\x00\x00"})
    reply, packet = replied(respond(request_4011(o43=item), port=4011))
    assert packet.pxe_boot_item() == (0x8000, 0)
    assert reply.client.boot_item == (0x8000, 0)
    assert packet.file == b"ipxe.efi"


def test_4011_bis_layer_is_refused() -> None:
    """A boot item asking for PXE BIS credentials (layer bit 15) is not supported."""
    item = encode_sub_options({71: b"\x80\x00\x80\x00"})
    assert ignored(respond(request_4011(o43=item), port=4011)) is IgnoreReason.BIS_UNSUPPORTED


def test_boot_item_on_67_is_not_echoed() -> None:
    """43 from a DISCOVER on 67 plays no part: the offer is the plain ProxyBinl one."""
    options = pxe_clients.ovmf_options(7)
    options[43] = encode_sub_options({71: b"\x80\x00\x80\x00"})
    _, packet = replied(respond(craft(options)))
    assert 43 not in packet.options


# --------------------------------------------------------------------------- HTTP boot, iPXE


@pytest.mark.parametrize(
    ("arch", "nbp"), [(15, "ipxe-i386.efi"), (16, "ipxe.efi"), (19, "ipxe-arm64.efi")]
)
def test_http_boot_arches_get_url(arch: int, nbp: str) -> None:
    """HTTP boot arches 15/16/19 get 60 HTTPClient and base URL + their file, no 43."""
    reply, packet = replied(respond(craft(pxe_clients.http_boot_options(arch))))
    assert_proxy_basics(packet, MessageType.OFFER)
    assert packet.vendor_class() == b"HTTPClient"
    assert packet.file == f"http://192.0.2.10:8080/nbp/{nbp}".encode()
    assert 43 not in packet.options
    assert reply.client.arch_class.value.startswith("http-")


def test_http_boot_without_url_base_is_ignored() -> None:
    """No HTTP base URL configured: HTTP boot clients get no answer (not a TFTP path)."""
    policy = ProxyPolicy(boot_files=BOOT_FILES)
    assert ignored(respond(pxe_clients.http_boot_discover(), policy=policy)) is (
        IgnoreReason.NO_HTTP_BASE
    )


def test_http_boot_on_4011_gets_ack_with_url() -> None:
    """An HTTP boot client on 4011 gets the same URL in an ACK."""
    options = pxe_clients.http_boot_options(16)
    options[53] = b"\x03"
    _, packet = replied(respond(craft(options, ciaddr=CLIENT_IP), port=4011))
    assert packet.message_type() is MessageType.ACK
    assert packet.vendor_class() == b"HTTPClient"
    assert packet.file.startswith(b"http://")


@pytest.mark.parametrize("arch", [0, 7, 11])
def test_ipxe_on_any_arch_gets_script_on_67(arch: int) -> None:
    """iPXE on BIOS or UEFI gets the script on 67 (never ProxyBinl, never 43)."""
    reply, packet = replied(respond(craft(pxe_clients.ipxe_options(arch))))
    assert_proxy_basics(packet, MessageType.OFFER)
    assert packet.file == SCRIPT_URL.encode()
    assert 43 not in packet.options
    assert reply.boot_file == SCRIPT_URL


def test_ipxe_on_4011_gets_script_in_ack() -> None:
    """iPXE asking on 4011 anyway still gets the script, not the NBP."""
    options = pxe_clients.ipxe_options(7)
    options[53] = b"\x03"
    _, packet = replied(respond(craft(options, ciaddr=CLIENT_IP), port=4011))
    assert packet.message_type() is MessageType.ACK
    assert packet.file == SCRIPT_URL.encode()


def test_ipxe_user_class_in_rfc_3004_form() -> None:
    """An RFC 3004-framed user class list containing iPXE is recognized too."""
    options = pxe_clients.ipxe_options(0)
    options[77] = b"\x04iPXE\x07custom1"
    _, packet = replied(respond(craft(options)))
    assert packet.file == SCRIPT_URL.encode()


def test_own_user_class_from_policy() -> None:
    """A user class set by our embedded script (policy) is the loop-break key; plain
    `iPXE` then counts as a firmware PXE client and gets the NBP."""
    policy = ProxyPolicy(
        boot_files=BOOT_FILES, ipxe_script_url=SCRIPT_URL, ipxe_user_classes=(b"peerpxe",)
    )
    options = pxe_clients.ipxe_options(0)
    options[77] = b"peerpxe"
    _, ours = replied(respond(craft(options), policy=policy))
    assert ours.file == SCRIPT_URL.encode()
    _, rom = replied(respond(pxe_clients.ipxe_discover(), policy=policy))
    assert rom.file == b"undionly.kpxe"


def test_ipxe_without_script_url_is_ignored() -> None:
    """Without a script URL iPXE is ignored rather than handed the NBP again (a loop)."""
    policy = ProxyPolicy(boot_files=BOOT_FILES)
    assert ignored(respond(pxe_clients.ipxe_discover(), policy=policy)) is (
        IgnoreReason.NO_IPXE_SCRIPT
    )


# --------------------------------------------------------------------------- policy


OTHER_MAC = "aa:bb:cc:dd:ee:ff"


@pytest.mark.parametrize(
    ("settings_", "expected"),
    [
        ({}, None),
        ({"denied_macs": frozenset({CLIENT_MAC})}, IgnoreReason.DENIED),
        (
            {"denied_macs": frozenset({CLIENT_MAC}), "allowed_macs": frozenset({CLIENT_MAC}),
             "known_macs": frozenset({CLIENT_MAC})},
            IgnoreReason.DENIED,
        ),
        ({"denied_macs": frozenset({OTHER_MAC})}, None),
        ({"allowed_macs": frozenset({OTHER_MAC})}, IgnoreReason.NOT_ALLOWED),
        ({"allowed_macs": frozenset({CLIENT_MAC, OTHER_MAC})}, None),
        ({"serve_unknown": False}, IgnoreReason.UNKNOWN_COMPUTER),
        ({"serve_unknown": False, "known_macs": frozenset({OTHER_MAC})},
         IgnoreReason.UNKNOWN_COMPUTER),
        ({"serve_unknown": False, "known_macs": frozenset({CLIENT_MAC})}, None),
        ({"serve_unknown": True, "known_macs": frozenset({OTHER_MAC})}, None),
        (
            {"serve_unknown": False, "known_macs": frozenset({CLIENT_MAC}),
             "allowed_macs": frozenset({OTHER_MAC})},
            IgnoreReason.NOT_ALLOWED,
        ),
    ],
    ids=["open", "denied", "deny-wins", "other-denied", "not-allowed", "allowed", "unknown",
         "unknown-other-known", "known", "serve-unknown", "known-but-not-allowed"],
)  # fmt: skip
def test_mac_policy(settings_: dict[str, object], expected: IgnoreReason | None) -> None:
    """Deny list first, then the allow list, then known/unknown computers."""
    policy = ProxyPolicy(boot_files=BOOT_FILES, **settings_)  # type: ignore[arg-type]
    for data, port in [(pxe_clients.bios_discover(), 67), (request_4011(), 4011)]:
        result = respond(data, port=port, policy=policy)
        if expected is None:
            replied(result)
        else:
            assert ignored(result) is expected


def test_policy_normalizes_mac_spellings() -> None:
    """MACs in any usual spelling match the client's chaddr."""
    for spelling in ["52-54-00-12-34-56", "52:54:00:12:34:56".upper(), "5254.0012.3456"]:
        policy = ProxyPolicy(boot_files=BOOT_FILES, denied_macs=frozenset({spelling}))
        assert ignored(respond(pxe_clients.bios_discover(), policy=policy)) is IgnoreReason.DENIED
    assert normalize_mac(" 525400123456 ") == CLIENT_MAC


@pytest.mark.parametrize("text", ["", "52:54:00:12:34", "52:54:00:12:34:5g", "x" * 12])
def test_bad_mac_in_policy_is_a_value_error(text: str) -> None:
    """A policy MAC that is not 12 hex digits is refused at construction."""
    with pytest.raises(ValueError, match="not a MAC address"):
        ProxyPolicy(allowed_macs=frozenset({text}))


def test_non_ascii_boot_file_is_a_value_error() -> None:
    """Boot file names and URLs must be ASCII (they go into a BOOTP field as bytes)."""
    with pytest.raises(ValueError, match="ASCII"):
        ProxyPolicy(boot_files={ArchClass.BIOS: "bööt.kpxe"})


def test_missing_boot_file_for_arch_is_ignored() -> None:
    """No boot file for the client's class: ignored on 67 (even ProxyBinl) and on 4011."""
    policy = ProxyPolicy(boot_files={ArchClass.BIOS: "undionly.kpxe"})
    assert ignored(respond(pxe_clients.ovmf_discover(), policy=policy)) is (
        IgnoreReason.NO_BOOT_FILE
    )
    assert ignored(respond(request_4011(), port=4011, policy=policy)) is (IgnoreReason.NO_BOOT_FILE)


# --------------------------------------------------------------------------- not for us


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({60: None}, IgnoreReason.NOT_PXE),
        ({60: b"MSFT 5.0"}, IgnoreReason.NOT_PXE),
        ({60: b"pxeclient:Arch:00000"}, IgnoreReason.NOT_PXE),  # prefix is case-sensitive
        ({53: None}, IgnoreReason.BOOTP),
        ({93: b"\x00\x0a"}, IgnoreReason.UNSUPPORTED_ARCH),  # ARM32 UEFI
        ({93: b"\x00\x02"}, IgnoreReason.UNSUPPORTED_ARCH),
        ({93: b"\x00\x19"}, IgnoreReason.UNSUPPORTED_ARCH),
        ({93: b"\x00"}, IgnoreReason.MALFORMED),
        ({97: b"\x00\x01\x02"}, IgnoreReason.MALFORMED),
        ({97: b"\x01" + MACHINE_ID[1:]}, IgnoreReason.MALFORMED),
        ({53: b"\x01\x01"}, IgnoreReason.MALFORMED),
        ({77: b""}, IgnoreReason.MALFORMED),
        ({93: None, 60: b"PXEClient"}, IgnoreReason.NO_ARCH),
        ({93: None, 60: b"PXEClient:Arch:0000x:UNDI:002001"}, IgnoreReason.NO_ARCH),
    ],
)
def test_requests_we_do_not_answer(change: dict[int, bytes | None], expected: IgnoreReason) -> None:
    """Non-PXE, plain BOOTP, unknown or malformed architecture and bad options: ignored."""
    options = pxe_clients.bios_pxe_rom_options()
    for code, value in change.items():
        if value is None:
            del options[code]
        else:
            options[code] = value
    assert ignored(respond(craft(options))) is expected


def test_bootreply_is_ignored() -> None:
    """A BOOTREPLY (another server's offer) is never answered."""
    result = respond(craft(pxe_clients.bios_pxe_rom_options(), op=2))
    assert ignored(result) is IgnoreReason.NOT_BOOTREQUEST


def test_non_ethernet_client_is_ignored() -> None:
    """Policy is keyed by Ethernet MAC: other hardware types are ignored."""
    result = respond(craft(pxe_clients.bios_pxe_rom_options(), htype=32))
    assert ignored(result) is IgnoreReason.NOT_ETHERNET
    long_mac = respond(craft(pxe_clients.bios_pxe_rom_options(), mac="01:02:03:04:05:06:07:08"))
    assert ignored(long_mac) is IgnoreReason.NOT_ETHERNET


def test_garbage_datagram_is_malformed() -> None:
    """Bytes that are not DHCP come back as Ignore(MALFORMED), never an exception."""
    result = respond(b"\x01" * 100)
    assert ignored(result) is IgnoreReason.MALFORMED
    assert isinstance(result, Ignore)
    assert "truncated" in result.detail


# --------------------------------------------------------------------------- details


def test_missing_93_falls_back_to_vendor_class_arch() -> None:
    """Without option 93 the Arch field of option 60 decides (BIOS here: file on 67)."""
    options = pxe_clients.bios_pxe_rom_options()
    del options[93]
    reply, packet = replied(respond(craft(options)))
    assert reply.client.arch_class is ArchClass.BIOS
    assert packet.file == b"undionly.kpxe"
    uefi = pxe_clients.ovmf_options(7)
    del uefi[93]
    reply, packet = replied(respond(craft(uefi)))
    assert reply.client.arch_class is ArchClass.EFI_X64
    assert packet.file == b""


def test_first_of_several_architectures_is_used() -> None:
    """Option 93 listing several types: the first decides (RFC 4578 §2.1 order)."""
    options = pxe_clients.ovmf_options(7)
    options[93] = b"\x00\x00\x00\x07"
    reply, packet = replied(respond(craft(options)))
    assert reply.client.arch_class is ArchClass.BIOS
    assert packet.file == b"undionly.kpxe"


@pytest.mark.parametrize("port", [67, 4011])
def test_option_97_echoed_only_if_sent(port: int) -> None:
    """97 absent: not in the reply; sent (17 bytes or empty): echoed byte for byte."""
    for value in [None, MACHINE_ID, b""]:
        options = pxe_clients.ovmf_options(7, 1 if port == 67 else 3)
        if value is None:
            del options[97]
        else:
            options[97] = value
        _, packet = replied(respond(craft(options, ciaddr=CLIENT_IP), port=port))
        assert packet.options.get(97) == value


def test_relayed_discover_goes_to_giaddr_port_67() -> None:
    """A relayed DISCOVER is answered to giaddr:67, giaddr copied into the offer."""
    data = craft(pxe_clients.bios_pxe_rom_options(), giaddr=RELAY, hops=1)
    reply, packet = replied(respond(data, source=Address(RELAY, 67)))
    assert reply.target == Address(RELAY, 67)
    assert reply.source == Address(SERVER, 67)
    assert packet.giaddr == ipv4_bytes(RELAY)


def test_offer_sets_broadcast_flag_and_ack_copies_flags() -> None:
    """Offers always carry the broadcast flag (dnsmasq); 4011 ACKs keep the request's flags."""
    _, offer = replied(respond(craft(pxe_clients.bios_pxe_rom_options(), flags=0)))
    assert offer.is_broadcast
    _, ack = replied(respond(request_4011(), port=4011))
    assert ack.flags == 0
    flagged = craft(pxe_clients.ovmf_options(7, 3), ciaddr=CLIENT_IP, flags=0x8000)
    _, ack = replied(respond(flagged, port=4011))
    assert ack.flags == 0x8000


def test_long_url_goes_into_option_67() -> None:
    """A URL of 128 bytes or more does not fit `file`: it is sent as option 67 instead."""
    url = "http://192.0.2.10:8080/" + "s" * 120 + "/boot.ipxe"
    policy = ProxyPolicy(boot_files=BOOT_FILES, ipxe_script_url=url)
    reply, packet = replied(respond(pxe_clients.ipxe_discover(), policy=policy))
    assert packet.file == b""
    assert packet.options[67] == url.encode()
    assert reply.boot_file == url


def test_reply_command_and_decoded_request_entry_point() -> None:
    """`answer` on a decoded packet equals `answer_datagram`; `command()` is SendDhcpReply."""
    data = pxe_clients.bios_discover()
    direct = answer(
        decode_packet(data), local_port=67, source=BROADCAST_SOURCE, server=SERVER, policy=POLICY
    )
    assert direct == respond(data)
    assert isinstance(direct, DhcpReply)
    assert direct.command() == SendDhcpReply(direct.payload, direct.source, direct.target)


# --------------------------------------------------------------------------- fuzz and speed

GOLDEN = [
    (pxe_clients.bios_discover(), 67),
    (pxe_clients.ovmf_discover(), 67),
    (pxe_clients.ovmf_request_4011(), 4011),
    (pxe_clients.ipxe_discover(), 67),
    (pxe_clients.http_boot_discover(), 67),
]


@st.composite
def damaged_requests(draw: st.DrawFn) -> tuple[bytes, int]:
    data, port = draw(st.sampled_from(GOLDEN))
    buffer = bytearray(data)
    for _ in range(draw(st.integers(0, 6))):
        position = draw(st.integers(0, len(buffer) - 1))
        buffer[position] = draw(st.integers(0, 255))
    tail = draw(st.binary(max_size=40))
    cut = draw(st.integers(236, len(buffer)))
    return bytes(buffer[:cut] + tail) if tail else bytes(buffer), draw(st.sampled_from([67, port]))


@settings(max_examples=400, deadline=None)
@given(damaged_requests())
def test_fuzz_answer_never_raises(case: tuple[bytes, int]) -> None:
    """Damaged firmware requests give an Ignore or a reply that decodes; nothing raises."""
    data, port = case
    result = respond(data, port=port)
    if isinstance(result, DhcpReply):
        packet = decode_packet(result.payload)
        assert packet.op == BOOTREPLY
        assert packet.server_identifier() == SERVER_BYTES
    else:
        assert isinstance(result.reason, IgnoreReason)


def test_answer_speed_budget() -> None:
    """Decode + decide + encode stays far under the 200 µs per answer that 5,000/s allows."""
    data = pxe_clients.ovmf_discover()
    runs = 1000
    seconds = min(timeit.repeat(lambda: respond(data), number=runs, repeat=3)) / runs
    assert seconds < 100e-6, seconds


def test_policy_copies_boot_files_read_only() -> None:
    """Changing the caller's dict later does not change a policy (frozen means frozen)."""
    files = {ArchClass.BIOS: "undionly.kpxe"}
    policy = ProxyPolicy(boot_files=files)
    files[ArchClass.BIOS] = "other.kpxe"
    assert policy.boot_files[ArchClass.BIOS] == "undionly.kpxe"
    with pytest.raises(TypeError):
        policy.boot_files[ArchClass.BIOS] = "x"  # type: ignore[index]


# --------------------------------------------------------------------------- Windows / WDS

WDS_POLICY = ProxyPolicy(
    boot_files={
        ArchClass.BIOS: "Boot\\x86\\wdsnbp.com",
        ArchClass.EFI_X64: "Boot\\x64\\wdsmgfw.efi",
    },
    bcd_files={
        ArchClass.BIOS: "Boot\\x86\\default.bcd",
        ArchClass.EFI_X64: "Boot\\x64\\default.bcd",
    },
    wds_boot_files={"x64": "Boot\\x64\\pxeboot.n12", "x86": "Boot\\x86\\pxeboot.n12"},
    wds_bcd_files={"x64": "Boot\\x64\\default.bcd"},
)


def wds_request(arch: int, wds_arch: bytes, request_id: bytes | None = None) -> bytes:
    """WDSNBP's re-request on 4011: a PXE REQUEST carrying option 250 (architecture, id)."""
    sub_options = {1: wds_arch} if request_id is None else {1: wds_arch, 5: request_id}
    return request_4011(arch, o250=encode_sub_options(sub_options))


def test_windows_paths_go_out_verbatim_with_the_bcd_path() -> None:
    """Backslash paths reach bootmgr unchanged; 252 names the BCD store of that arch."""
    _, offer = replied(respond(pxe_clients.bios_discover(), policy=WDS_POLICY))
    assert offer.file.rstrip(b"\0") == b"Boot\\x86\\wdsnbp.com"
    assert offer.options[252] == b"Boot\\x86\\default.bcd"
    _, ack = replied(respond(request_4011(7), port=4011, policy=WDS_POLICY))
    assert ack.file.rstrip(b"\0") == b"Boot\\x64\\wdsmgfw.efi"
    assert ack.options[252] == b"Boot\\x64\\default.bcd"
    assert 250 not in ack.options  # only a WDSNBP re-request gets 250


def test_no_bcd_path_unless_configured() -> None:
    _, offer = replied(respond(pxe_clients.bios_discover()))
    assert 252 not in offer.options


def test_wdsnbp_rerequest_is_approved_with_the_file_for_its_detected_arch() -> None:
    """A BIOS machine whose wdsnbp detected x64 (9) gets x64 pxeboot.n12, approved at once."""
    request_id = (0x01020304).to_bytes(4, "big")
    reply, ack = replied(
        respond(wds_request(0, b"\x00\x09", request_id), port=4011, policy=WDS_POLICY)
    )
    assert reply.client.wds_arch == "x64"
    assert ack.message_type() is MessageType.ACK
    assert ack.file.rstrip(b"\0") == b"Boot\\x64\\pxeboot.n12"
    assert ack.options[252] == b"Boot\\x64\\default.bcd"
    wds = ack.wds_options()
    assert wds is not None
    assert wds[2] == b"\x01"  # next action: approval
    assert wds[5] == request_id  # echoed
    assert wds[14] == b"\x01"  # action done: boot now
    assert int.from_bytes(wds[3], "big") > 0  # poll interval
    assert len(wds[4]) == 2  # poll retry count


def test_wdsnbp_without_a_request_id_gets_one_and_falls_back_to_the_arch_bcd() -> None:
    _, ack = replied(respond(wds_request(0, b"\x00\x00"), port=4011, policy=WDS_POLICY))
    assert ack.file.rstrip(b"\0") == b"Boot\\x86\\pxeboot.n12"
    assert ack.options[252] == b"Boot\\x86\\default.bcd"  # no x86 entry in wds_bcd_files
    wds = ack.wds_options()
    assert wds is not None
    assert wds[5] == b"\x00\x00\x00\x01"


def test_wdsnbp_arch_without_a_wds_file_falls_back_to_the_arch_class_file() -> None:
    policy = ProxyPolicy(boot_files={ArchClass.BIOS: "Boot\\x86\\pxeboot.n12"})
    _, ack = replied(respond(wds_request(0, b"\x00\x09"), port=4011, policy=policy))
    assert ack.file.rstrip(b"\0") == b"Boot\\x86\\pxeboot.n12"


def test_wdsnbp_bad_values_are_refused_not_raised() -> None:
    assert ignored(respond(wds_request(0, b"\x00\x63"), port=4011, policy=WDS_POLICY)) is (
        IgnoreReason.UNSUPPORTED_WDS_ARCH
    )
    assert ignored(respond(wds_request(0, b"\x09"), port=4011, policy=WDS_POLICY)) is (
        IgnoreReason.MALFORMED
    )
    assert (
        ignored(respond(wds_request(0, b"\x00\x09", b"\x01\x02"), port=4011, policy=WDS_POLICY))
        is IgnoreReason.MALFORMED
    )
    truncated = request_4011(0, o250=b"\x01\x05\x00")
    assert ignored(respond(truncated, port=4011, policy=WDS_POLICY)) is IgnoreReason.MALFORMED


def test_option_250_on_67_is_not_a_wds_rerequest() -> None:
    """On 67 option 250 means nothing to us: the DISCOVER is answered as usual."""
    values = pxe_clients.bios_pxe_rom_options()
    values[250] = encode_sub_options({1: b"\x00\x09"})
    reply, offer = replied(respond(craft(values), policy=WDS_POLICY))
    assert reply.client.wds_arch is None
    assert 250 not in offer.options
