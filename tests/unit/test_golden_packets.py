"""Packets real firmware sent (tests/fixtures/golden, cut from the QEMU e2e captures).

Each one must decode, re-encode byte for byte, and get the answer that firmware needs:
the iPXE ROM and iPXE `snponly.efi` get the script URL (so iPXE never loops on its own
binary), EDK II gets the ProxyBinl offer on 67 and the boot file from 4011, and every
REQUEST meant for the site's DHCP server is left alone. Mutations of the golden bytes are
dropped or answered, never raised on.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.boot.dhcp_packet import (
    ZERO_ADDRESS,
    DhcpPacket,
    MessageType,
    decode_packet,
    encode_packet,
)
from actors.boot.proxy_dhcp import (
    ArchClass,
    ClientKind,
    DhcpReply,
    Ignore,
    IgnoreReason,
    ProxyPolicy,
    answer_datagram,
)
from actors.core import Address

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden"
SERVER = "10.77.0.1"
VM_ADDRESS = "10.77.0.149"
SCRIPT_URL = f"http://{SERVER}:8080/boot.ipxe"
POLICY = ProxyPolicy(
    boot_files={ArchClass.BIOS: "undionly.kpxe", ArchClass.EFI_X64: "snponly.efi"},
    ipxe_script_url=SCRIPT_URL,
)
FROM_BROADCAST_CLIENT = Address("0.0.0.0", 68)
FROM_VM_4011 = Address(VM_ADDRESS, 4011)


def golden(name: str) -> bytes:
    return (GOLDEN / f"{name}.bin").read_bytes()


def all_golden() -> list[str]:
    return sorted(path.stem for path in GOLDEN.glob("*.bin"))


def reply_to(name: str, port: int = 67, source: Address = FROM_BROADCAST_CLIENT) -> DhcpReply:
    result = answer_datagram(
        golden(name), local_port=port, source=source, server=SERVER, policy=POLICY
    )
    assert isinstance(result, DhcpReply), f"{name}: {result}"
    return result


def test_the_golden_set_is_complete() -> None:
    assert len(all_golden()) == 7


@pytest.mark.parametrize("name", all_golden())
def test_decodes_and_reencodes_byte_for_byte(name: str) -> None:
    data = golden(name)
    assert encode_packet(decode_packet(data)) == data


@pytest.mark.parametrize(
    ("name", "arch", "message_type", "ipxe"),
    [
        ("ipxe-rom-bios-discover", 0, MessageType.DISCOVER, True),
        ("ipxe-rom-bios-request", 0, MessageType.REQUEST, True),
        ("edk2-x64-discover", 7, MessageType.DISCOVER, False),
        ("edk2-x64-request", 7, MessageType.REQUEST, False),
        ("edk2-x64-request-4011", 7, MessageType.REQUEST, False),
        ("ipxe-snponly-x64-discover", 7, MessageType.DISCOVER, True),
        ("ipxe-snponly-x64-request", 7, MessageType.REQUEST, True),
    ],
)
def test_what_each_firmware_says(name: str, arch: int, message_type: int, ipxe: bool) -> None:
    packet = decode_packet(golden(name))
    assert packet.options[53] == bytes([message_type])
    assert packet.options[93] == arch.to_bytes(2, "big")
    assert packet.options[60].startswith(b"PXEClient:Arch:%05d:UNDI:" % arch)
    assert len(packet.options[97]) == 17  # type 0 + GUID (PXE spec, RFC 4578 §2.3)
    assert (packet.options.get(77) == b"iPXE") is ipxe


def test_ipxe_rom_gets_the_script_url_on_67() -> None:
    reply = reply_to("ipxe-rom-bios-discover")
    assert reply.client.kind is ClientKind.IPXE
    assert reply.client.arch_class is ArchClass.BIOS
    assert reply.boot_file == SCRIPT_URL
    offer = decode_packet(reply.payload)
    assert_proxy_offer(offer, golden("ipxe-rom-bios-discover"))
    assert offer.file.rstrip(b"\0") == SCRIPT_URL.encode()


def test_edk2_gets_a_proxybinl_offer_then_the_file_from_4011() -> None:
    offer_reply = reply_to("edk2-x64-discover")
    assert offer_reply.client.kind is ClientKind.PXE
    assert offer_reply.boot_file == ""  # ProxyBinl: come back on 4011
    assert_proxy_offer(decode_packet(offer_reply.payload), golden("edk2-x64-discover"))
    ack_reply = reply_to("edk2-x64-request-4011", port=4011, source=FROM_VM_4011)
    assert ack_reply.target == FROM_VM_4011
    ack = decode_packet(ack_reply.payload)
    assert ack.options[53] == bytes([MessageType.ACK])
    assert ack.file.rstrip(b"\0") == b"snponly.efi"
    assert ack.siaddr == bytes(int(part) for part in SERVER.split("."))


def test_ipxe_on_uefi_gets_the_script_url_not_its_own_binary_again() -> None:
    reply = reply_to("ipxe-snponly-x64-discover")
    assert reply.client.kind is ClientKind.IPXE
    assert reply.boot_file == SCRIPT_URL


@pytest.mark.parametrize(
    "name", ["ipxe-rom-bios-request", "edk2-x64-request", "ipxe-snponly-x64-request"]
)
def test_requests_for_the_dhcp_server_are_left_alone(name: str) -> None:
    result = answer_datagram(
        golden(name), local_port=67, source=FROM_BROADCAST_CLIENT, server=SERVER, policy=POLICY
    )
    assert isinstance(result, Ignore)
    assert result.reason is IgnoreReason.WRONG_PORT


def assert_proxy_offer(offer: DhcpPacket, request_bytes: bytes) -> None:
    request = decode_packet(request_bytes)
    assert offer.options[53] == bytes([MessageType.OFFER])
    assert offer.yiaddr == ZERO_ADDRESS  # a proxy never offers an address
    assert offer.xid == request.xid
    assert offer.chaddr == request.chaddr
    assert offer.options[60] == b"PXEClient"
    assert offer.options[97] == request.options[97]  # machine id echoed


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(all_golden()),
    flips=st.lists(st.tuples(st.integers(0, 411), st.integers(1, 255)), min_size=1, max_size=8),
    cut=st.integers(0, 412),
)
def test_mutated_golden_packets_never_raise(
    name: str, flips: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(golden(name))
    for index, mask in flips:
        if index < len(data):
            data[index] ^= mask
    for port in (67, 4011):
        result = answer_datagram(
            bytes(data[:cut] if cut < len(data) else data),
            local_port=port, source=FROM_VM_4011, server=SERVER, policy=POLICY,
        )  # fmt: skip
        assert isinstance(result, DhcpReply | Ignore)
