"""PXE client requests crafted with scapy, mirroring pxe-protocol-notes.md §2.2-2.3.

Each `*_options()` returns the options a firmware type sends, in its order, as an ordered
`dict[int, bytes]` that a test may edit before `craft()` turns it into a datagram with scapy.
These stand in for real captures (QEMU iPXE ROM, OVMF, a BIOS PXE ROM) until those land in
`tests/fixtures/`; the values follow the notes, the parameter lists are plausible, not copied.
"""

from __future__ import annotations

from scapy.layers.dhcp import BOOTP, DHCP

SERVER = "192.0.2.10"
OTHER_SERVER = "192.0.2.99"
CLIENT_IP = "192.0.2.100"
RELAY = "198.51.100.1"
CLIENT_MAC = "52:54:00:12:34:56"
CLIENT_UUID = bytes.fromhex("8f4b2a7c1d3e4f5a9b6c7d8e9fa0b1c2")
MACHINE_ID = b"\x00" + CLIENT_UUID  # RFC 4578 §2.3: type 0 + GUID
XID = 0x5EED1234

PXE_ROM_PARAMETERS = bytes([1, 2, 3, 5, 6, 11, 12, 13, 15, 16, 17, 18, 43, 54, 60, 67, 128])
PXE_ROM_PARAMETERS += bytes(range(129, 136))
EDK2_PARAMETERS = bytes([1, 2, 3, 4, 6, 12, 13, 15, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50])
EDK2_PARAMETERS += bytes([51, 54, 58, 59, 60, 66, 67, 97, *range(128, 136)])
IPXE_PARAMETERS = bytes([1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 119, *range(128, 136)])
IPXE_PARAMETERS += bytes([175, 203])
# iPXE 175 feature sub-options (HTTP, PXE, bzImage, EFI) and version 1.21.1 (`dhcp.h`)
IPXE_ENCAPSULATED = bytes([0x13, 1, 1, 0x11, 1, 1, 0x18, 1, 1, 0x24, 1, 1, 0xEB, 3, 1, 21, 1])


def vendor_class(prefix: str, arch: int, undi: str) -> bytes:
    """Option 60 as PXE 2.1 lays it out: `PXEClient:Arch:xxxxx:UNDI:yyyzzz`."""
    return f"{prefix}:Arch:{arch:05d}:UNDI:{undi}".encode()


def bios_pxe_rom_options() -> dict[int, bytes]:
    """A BIOS PXE 2.1 ROM's DHCPDISCOVER (arch 0, UNDI 2.1)."""
    return {
        53: b"\x01",
        57: (1260).to_bytes(2, "big"),
        55: PXE_ROM_PARAMETERS,
        97: MACHINE_ID,
        94: b"\x01\x02\x01",
        93: b"\x00\x00",
        60: vendor_class("PXEClient", 0, "002001"),
    }


def ovmf_options(arch: int = 7, message_type: int = 1) -> dict[int, bytes]:
    """OVMF / EDK II UEFI PXE: DISCOVER on 67, or (message_type 3) REQUEST to 4011."""
    return {
        53: bytes((message_type,)),
        57: (1472).to_bytes(2, "big"),
        55: EDK2_PARAMETERS,
        97: MACHINE_ID,
        94: b"\x01\x03\x00",
        93: arch.to_bytes(2, "big"),
        60: vendor_class("PXEClient", arch, "003000"),
    }


def ipxe_options(arch: int = 0) -> dict[int, bytes]:
    """iPXE's DHCPDISCOVER: user class `iPXE` (bare string, not RFC 3004 framed) and 175."""
    return {
        53: b"\x01",
        57: (1472).to_bytes(2, "big"),
        93: arch.to_bytes(2, "big"),
        94: b"\x01\x02\x01",
        60: vendor_class("PXEClient", arch, "002001"),
        77: b"iPXE",
        55: IPXE_PARAMETERS,
        175: IPXE_ENCAPSULATED,
        61: b"\x01" + bytes.fromhex(CLIENT_MAC.replace(":", "")),
        97: MACHINE_ID,
    }


def http_boot_options(arch: int = 16) -> dict[int, bytes]:
    """UEFI HTTP boot's DHCPDISCOVER: 60 `HTTPClient`, arch 15/16/19."""
    return {
        53: b"\x01",
        57: (1472).to_bytes(2, "big"),
        55: EDK2_PARAMETERS,
        97: MACHINE_ID,
        94: b"\x01\x03\x00",
        93: arch.to_bytes(2, "big"),
        60: vendor_class("HTTPClient", arch, "003000"),
    }


def craft(
    options: dict[int, bytes],
    *,
    op: int = 1,
    htype: int = 1,
    mac: str = CLIENT_MAC,
    xid: int = XID,
    secs: int = 0,
    flags: int = 0x8000,
    ciaddr: str = "0.0.0.0",
    giaddr: str = "0.0.0.0",
    hops: int = 0,
) -> bytes:
    """One BOOTP/DHCP datagram built by scapy (our codec is not involved)."""
    hardware = bytes.fromhex(mac.replace(":", ""))
    header = BOOTP(
        op=op,
        htype=htype,
        hlen=len(hardware),
        hops=hops,
        xid=xid,
        secs=secs,
        flags=flags,
        ciaddr=ciaddr,
        giaddr=giaddr,
        chaddr=hardware + bytes(16 - len(hardware)),
    )
    return bytes(header / DHCP(options=[*options.items(), "end"]))


def bios_discover() -> bytes:
    """A BIOS PXE ROM's broadcast DHCPDISCOVER on 67 (secs 4: its second try)."""
    return craft(bios_pxe_rom_options(), secs=4)


def ovmf_discover() -> bytes:
    """OVMF x64 UEFI's broadcast DHCPDISCOVER on 67."""
    return craft(ovmf_options(7))


def ovmf_request_4011() -> bytes:
    """OVMF x64 after its DHCP lease: unicast DHCPREQUEST to 4011, ciaddr set, no flags."""
    return craft(ovmf_options(7, message_type=3), ciaddr=CLIENT_IP, flags=0)


def ipxe_discover() -> bytes:
    """iPXE (as in QEMU's NIC ROM, BIOS) broadcasting DHCPDISCOVER with user class iPXE."""
    return craft(ipxe_options(0))


def http_boot_discover() -> bytes:
    """OVMF UEFI HTTP boot (x64, arch 16) broadcasting DHCPDISCOVER."""
    return craft(http_boot_options(16))


def scapy_reply(payload: bytes) -> tuple[dict[str, object], dict[object, object]]:
    """Dissect a reply with scapy: (header fields, NULs stripped; options by scapy name)."""
    packet = BOOTP(payload)
    header: dict[str, object] = {
        name: packet.getfieldval(name)
        for name in (
            "op", "htype", "hlen", "hops", "xid", "secs", "ciaddr", "yiaddr", "siaddr",
            "giaddr", "chaddr", "sname", "file",
        )
    }  # fmt: skip
    header["flags"] = int(packet.flags)
    header["chaddr"] = packet.chaddr[: packet.hlen]
    header["sname"] = packet.sname.rstrip(b"\x00")
    header["file"] = packet.file.rstrip(b"\x00")
    options = {
        option[0]: option[1] if len(option) == 2 else option[1:]
        for option in packet[DHCP].options
        if isinstance(option, tuple)
    }
    return header, options
