"""ProxyDHCP decisions: which PXE requests to answer and with what, as pure functions.

Theory of operation (pixiecore's validate/offer split, `pixiecore/dhcp.go`):

1. `classify(request, local_port, server, policy)` decides whether a decoded packet is a
   boot request this port handles and describes the client (`PxeClient`), or returns
   `Ignore(reason)`. Nothing here depends on what we would boot.
2. `choose_boot(client, local_port, policy)` applies the policy (MAC deny list, allow list,
   known/unknown computers) and the per-firmware recipe (`BootRecipe`), or `Ignore`.
3. `answer(...)` builds the reply bytes and says where to send them (`DhcpReply`);
   `answer_datagram(...)` decodes first. Neither ever raises for remote input: a malformed
   packet or option is `Ignore(IgnoreReason.MALFORMED)`.

There is no state: the same request, port, server address and policy always give the same
answer. Timing (standbys answering only retries, `secs`) is the boot actor's business.

Which requests are boot requests (pxe-protocol-notes.md §2.1):
- op BOOTREQUEST with option 53, and option 60 starting `PXEClient` or `HTTPClient`
  (dnsmasq `is_pxe_client()`, smee); everything else on 67 is the DHCP server's traffic.
- On 67 only DHCPDISCOVER: the client's DHCPREQUEST/DHCPINFORM on 67 go to the real DHCP
  server. On 4011 only DHCPREQUEST and DHCPINFORM (the BINL / boot-server path), and not
  when option 54 names another server.
- Ethernet only (`htype` 1, `hlen` 6): policy is keyed by MAC.
- The architecture comes from option 93 (first entry, RFC 4578 §2.1). **Decision on a
  missing 93:** fall back to the `Arch:xxxxx` field of option 60, which every PXE 2.1 client
  sends (`PXEClient:Arch:00000:UNDI:002001`), and ignore the request if neither is there. No
  default to BIOS: both pixiecore (`isBootDHCP`: "not a PXE boot request (missing option
  93)") and smee require option 93, and a UEFI machine handed a BIOS NBP fails obscurely,
  while an ignored request fails with a clear log line. pixiecore's leniency is about option
  97 only, which we share: 97 may be absent or empty, else it must be 17 bytes of type 0.

What each client gets (pxe-protocol-notes.md §2.3; all replies: yiaddr 0, 54 and siaddr =
us, 60, 97 echoed only if sent):
- BIOS PXE ROM on 67: OFFER + 43 `06 01 08 ff` (bypass discovery, boot the file) + file.
- UEFI PXE on 67: the ProxyBinl offer, no 43 and no file, so the client asks again on 4011
  after its DHCP lease; unless the arch class is in `policy.file_on_67`, then as for BIOS
  (smee does this; pixiecore found firmware that ignores it, hence a switch).
- Any PXE client on 4011: ACK with sname = our address as text and file = the NBP; a boot
  item (43.71) in the request is echoed (dnsmasq), PXE BIS layers are refused.
- UEFI HTTP boot (60 `HTTPClient`): 60 `HTTPClient` and file = full `http://` URL.
- iPXE (user class in `policy.ipxe_user_classes`, `iPXE` by default): the iPXE script URL
  with siaddr, so it skips 4011 (`dhcp_has_pxeopts()`) and never chain-loads itself again.
- A file name of 128 bytes or more does not fit the `file` field (RFC 2131 §2); it goes in
  option 67 (RFC 2132 §9.5), which iPXE and EDK II HTTP boot read.

Where replies go (pxe-protocol-notes.md §2.1): 67 offers to 255.255.255.255:68 with the
broadcast flag set, or to giaddr:67 when relayed (smee `replyDestination`); 4011 replies to
the request's source, from port 4011.

Windows (pxe-protocol-notes.md §2.3d): a boot file path is sent exactly as configured, so
WDS-style backslash paths (`Boot\\x64\\wdsmgfw.efi`) reach bootmgr as it expects them; option
252 (the BCD store path) goes with every TFTP boot file whose arch class has one in
`policy.bcd_files`. WDSNBP and wdsmgfw come back on 4011 with option 250: they get an ACK that
approves them at once (250 = next action APPROVAL, action done, their request id echoed),
the boot file for the architecture they detected (250.1, Windows `PROCESSOR_ARCHITECTURE_*`
values) from `policy.wds_boot_files`, and that architecture's BCD path. Microsoft does not
publish 250; its layout follows interoperable servers (Namiono-Server's
`Handle_WDS_Options`), and no Windows client runs in this project's tests.

Not yet handled: PXE menus (43.8/9/10), WDS pending-device approval (always approved).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from actors.boot.dhcp_packet import (
    BOOTREQUEST,
    BROADCAST_FLAG,
    ETHERNET_ADDRESS_BYTES,
    FILE_BYTES,
    HTYPE_ETHERNET,
    PXE_BOOT_ITEM,
    PXE_DISCOVERY_CONTROL,
    USER_CLASS_IPXE,
    ZERO_ADDRESS,
    DhcpDecodeError,
    DhcpPacket,
    MessageType,
    Option,
    build_reply,
    decode_packet,
    encode_sub_options,
    ipv4_bytes,
    ipv4_text,
)
from actors.boot.events import SendDhcpReply
from actors.core import Address

DHCP_SERVER_PORT: Final = 67  # RFC 2131 §4.1
DHCP_CLIENT_PORT: Final = 68
PXE_PORT: Final = 4011  # PXE 2.1 boot server port (the BINL path)
LIMITED_BROADCAST: Final = "255.255.255.255"  # PyPXE PR #190: not the subnet broadcast
VENDOR_CLASS_PXE: Final = b"PXEClient"  # PXE 2.1 spec; dnsmasq is_pxe_client()
VENDOR_CLASS_HTTP: Final = b"HTTPClient"  # UEFI spec, HTTP Boot chapter; smee
# 43 = {6: 8} + END: discovery control bit 3, "boot file present: download it, no boot server
# discovery" (pixiecore, dnsmasq and PyPXE send this to BIOS ROMs)
PXE_BYPASS_DISCOVERY: Final = bytes((PXE_DISCOVERY_CONTROL, 1, 8, 255))
PXE_BIS_LAYER_BIT: Final = 0x8000  # PXE 2.1: layer bit 15 asks for BIS (dnsmasq refuses)
VENDOR_ARCH_FIELD: Final = b":Arch:"  # PXE 2.1: "PXEClient:Arch:xxxxx:UNDI:yyyzzz"
VENDOR_ARCH_DIGITS: Final = 5

# Option 250 sub-options (WDSNBP; unpublished by Microsoft, values from Namiono-Server).
WDS_ARCHITECTURE: Final = 1  # uint16: what wdsnbp detected, Windows PROCESSOR_ARCHITECTURE_*
WDS_NEXT_ACTION: Final = 2  # uint8: 1 approval, 3 referral, 5 abort
WDS_POLL_INTERVAL: Final = 3  # uint16 seconds between polls while pending
WDS_POLL_RETRY_COUNT: Final = 4  # uint16 polls before giving up
WDS_REQUEST_ID: Final = 5  # uint32, echoed
WDS_ACTION_DONE: Final = 14  # uint8: 1 = go on booting now
WDS_ACTION_APPROVAL: Final = 1
WDS_POLL_INTERVAL_S: Final = 10
WDS_POLL_RETRIES: Final = 3
WDS_ARCHITECTURES: Final[Mapping[int, str]] = {0: "x86", 6: "ia64", 9: "x64", 12: "arm64"}
"""Windows `PROCESSOR_ARCHITECTURE_*` values as the names `policy.wds_boot_files` uses."""


class ArchClass(StrEnum):
    """Client architecture classes that get their own boot file."""

    #: x86 BIOS PXE ROM (93 = 0)
    BIOS = "bios"
    #: 32-bit x86 UEFI (6)
    EFI_IA32 = "efi-ia32"
    #: x64 UEFI (7, and 9 which x64 firmware sends in the wild)
    EFI_X64 = "efi-x64"
    #: ARM64 UEFI (11)
    EFI_ARM64 = "efi-arm64"
    #: 32-bit x86 UEFI HTTP boot (15)
    HTTP_IA32 = "http-ia32"
    #: x64 UEFI HTTP boot (16)
    HTTP_X64 = "http-x64"
    #: ARM64 UEFI HTTP boot (19)
    HTTP_ARM64 = "http-arm64"


ARCH_CLASSES: Final[Mapping[int, ArchClass]] = {
    0: ArchClass.BIOS,  # RFC 4578 §2.1 and the IANA processor architecture registry
    6: ArchClass.EFI_IA32,
    7: ArchClass.EFI_X64,
    9: ArchClass.EFI_X64,  # registered as EBC; x64 firmware sends it (pixiecore EFIBC)
    11: ArchClass.EFI_ARM64,
    15: ArchClass.HTTP_IA32,
    16: ArchClass.HTTP_X64,
    19: ArchClass.HTTP_ARM64,
}


class ClientKind(StrEnum):
    """How a client boots, which decides the shape of the answer."""

    #: firmware PXE (BIOS ROM or UEFI): TFTP, 67 offer and maybe 4011
    PXE = "pxe"
    #: iPXE already running: give it the script URL, never the NBP again
    IPXE = "ipxe"
    #: UEFI HTTP boot: a full URL as the boot file
    HTTP = "http"


class IgnoreReason(StrEnum):
    """Why a request got no answer; short, stable keys for counters and logs."""

    MALFORMED = "malformed"
    NOT_BOOTREQUEST = "not_bootrequest"
    BOOTP = "bootp"
    NOT_PXE = "not_pxe"
    WRONG_PORT = "wrong_port"
    NOT_ETHERNET = "not_ethernet"
    NO_ARCH = "no_arch"
    UNSUPPORTED_ARCH = "unsupported_arch"
    OTHER_SERVER = "other_server"
    BIS_UNSUPPORTED = "bis_unsupported"
    DENIED = "denied"
    NOT_ALLOWED = "not_allowed"
    UNKNOWN_COMPUTER = "unknown_computer"
    NO_BOOT_FILE = "no_boot_file"
    NO_IPXE_SCRIPT = "no_ipxe_script"
    NO_HTTP_BASE = "no_http_base"
    UNSUPPORTED_WDS_ARCH = "unsupported_wds_arch"


@dataclass(frozen=True, slots=True)
class Ignore:
    """No answer: `reason` for counting, `detail` for the log line."""

    reason: IgnoreReason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class PxeClient:
    """What a valid boot request says about its client."""

    mac: str
    message_type: MessageType
    arch: int
    arch_class: ArchClass
    kind: ClientKind
    #: raw option 97 to echo; None when the client did not send it
    machine_id: bytes | None
    #: 43.71 (boot server type, layer) of a boot server request, if any
    boot_item: tuple[int, int] | None
    #: WDSNBP/wdsmgfw on 4011 (option 250): the architecture it detected, by name
    wds_arch: str | None = None
    #: 250.5 to echo; None when the request sent none
    wds_request_id: bytes | None = None


@dataclass(frozen=True, slots=True)
class BootRecipe:
    """The per-firmware shape of the answer (before addressing and encoding)."""

    vendor_class: bytes
    #: NBP name or URL; empty for the ProxyBinl offer (the client comes back on 4011)
    boot_file: str
    #: send 43 = {6: 8}: bypass boot server discovery, boot `boot_file` now
    bypass_discovery: bool
    #: option 252, the BCD store bootmgr reads; empty for none
    bcd_path: str = ""


def normalize_mac(text: str) -> str:
    """`AA-BB-CC-DD-EE-FF`, `aabb.ccdd.eeff`, ... as `aa:bb:cc:dd:ee:ff`; else ValueError."""
    digits = text.strip().lower().replace(":", "").replace("-", "").replace(".", "")
    if len(digits) != 2 * ETHERNET_ADDRESS_BYTES or not all(
        c in "0123456789abcdef" for c in digits
    ):
        raise ValueError(f"not a MAC address: {text!r}")
    return ":".join(digits[index : index + 2] for index in range(0, len(digits), 2))


@dataclass(frozen=True, slots=True)
class ProxyPolicy:
    """Who gets answered and with which file; MACs normalized, `boot_files` copied read-only."""

    #: NBP per architecture class (TFTP path, or path under `http_boot_url_base`)
    boot_files: Mapping[ArchClass, str] = field(default_factory=dict)
    #: what iPXE gets instead of the NBP (http(s):// or tftp:// URL)
    ipxe_script_url: str = ""
    #: base URL for UEFI HTTP boot clients, e.g. `http://192.0.2.10:8080/boot`
    http_boot_url_base: str = ""
    #: option 252 (BCD store path) sent with the TFTP boot file of these arch classes
    bcd_files: Mapping[ArchClass, str] = field(default_factory=dict)
    #: boot file for WDSNBP's re-request on 4011, by detected architecture (`x86`, `x64`, ...)
    wds_boot_files: Mapping[str, str] = field(default_factory=dict)
    #: option 252 for WDSNBP's re-request, by detected architecture
    wds_bcd_files: Mapping[str, str] = field(default_factory=dict)
    #: UEFI classes that take 43 = {6: 8} + file on 67 instead of the 4011 path
    file_on_67: frozenset[ArchClass] = frozenset({ArchClass.BIOS})
    #: answer computers not in `known_macs`
    serve_unknown: bool = True
    known_macs: frozenset[str] = frozenset()
    #: when non-empty, only these MACs are answered
    allowed_macs: frozenset[str] = frozenset()
    #: never answered, whatever the other lists say
    denied_macs: frozenset[str] = frozenset()
    #: option 77 values that mean "iPXE is running" (pixiecore adds its own class)
    ipxe_user_classes: tuple[bytes, ...] = (USER_CLASS_IPXE,)

    def __post_init__(self) -> None:
        for name in ("boot_files", "bcd_files", "wds_boot_files", "wds_bcd_files"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))
        for name in ("known_macs", "allowed_macs", "denied_macs"):
            macs = frozenset(normalize_mac(mac) for mac in getattr(self, name))
            object.__setattr__(self, name, macs)
        names = [
            *self.boot_files.values(),
            *self.bcd_files.values(),
            *self.wds_boot_files.values(),
            *self.wds_bcd_files.values(),
            self.ipxe_script_url,
            self.http_boot_url_base,
        ]
        if not all(name.isascii() and "\x00" not in name for name in names):
            raise ValueError("boot file names and URLs must be ASCII without NUL")


@dataclass(frozen=True, slots=True)
class DhcpReply:
    """An answer: the datagram, where it goes from and to, and whom it boots how."""

    payload: bytes
    source: Address
    target: Address
    client: PxeClient
    boot_file: str

    def command(self) -> SendDhcpReply:
        """The host command that sends this reply."""
        return SendDhcpReply(self.payload, self.source, self.target)


# --------------------------------------------------------------------------- entry points


def answer_datagram(
    payload: bytes, *, local_port: int, source: Address, server: str, policy: ProxyPolicy
) -> DhcpReply | Ignore:
    """Decode one datagram received on `local_port` and decide the answer; never raises."""
    try:
        request = decode_packet(payload)
    except DhcpDecodeError as error:
        return Ignore(IgnoreReason.MALFORMED, str(error))
    return answer(request, local_port=local_port, source=source, server=server, policy=policy)


def answer(
    request: DhcpPacket,
    *,
    local_port: int,
    source: Address,
    server: str,
    policy: ProxyPolicy,
    file_server: str | None = None,
) -> DhcpReply | Ignore:
    """The ProxyDHCP answer to `request`, which came from `source` to `server:local_port`.

    `file_server` (default `server`) goes into `siaddr` and, on 4011, `sname`: the TFTP
    server the firmware downloads the boot file from (RFC 2131 §2 "next server"). Option 54
    stays `server`, where a UEFI client sends its 4011 request.
    """
    assert local_port in (DHCP_SERVER_PORT, PXE_PORT), local_port
    server_address = ipv4_bytes(server)
    client = classify(request, local_port, server_address, policy)
    if isinstance(client, Ignore):
        return client
    recipe = choose_boot(client, local_port, policy)
    if isinstance(recipe, Ignore):
        return recipe
    payload = _encode_answer(
        request, client, recipe, local_port, server, file_server=file_server or server
    )
    if local_port == PXE_PORT:
        target = source
    elif request.giaddr != ZERO_ADDRESS:
        target = Address(ipv4_text(request.giaddr), DHCP_SERVER_PORT)
    else:
        target = Address(LIMITED_BROADCAST, DHCP_CLIENT_PORT)
    return DhcpReply(payload, Address(server, local_port), target, client, recipe.boot_file)


def classify(
    request: DhcpPacket, local_port: int, server: bytes, policy: ProxyPolicy
) -> PxeClient | Ignore:
    """Is `request` a boot request for this port and server, and from what client?"""
    try:
        return _classify(request, local_port, server, policy)
    except DhcpDecodeError as error:
        return Ignore(IgnoreReason.MALFORMED, str(error))


def choose_boot(client: PxeClient, local_port: int, policy: ProxyPolicy) -> BootRecipe | Ignore:
    """Apply the MAC policy, then the recipe for the client's kind, arch and port."""
    refusal = _policy_refusal(client.mac, policy)
    if refusal is not None:
        return refusal
    if client.kind is ClientKind.IPXE:
        if not policy.ipxe_script_url:
            return Ignore(IgnoreReason.NO_IPXE_SCRIPT, "iPXE client, no script URL configured")
        return BootRecipe(VENDOR_CLASS_PXE, policy.ipxe_script_url, bypass_discovery=False)
    if client.wds_arch is not None:
        return _wds_recipe(client, policy)
    boot_file = policy.boot_files.get(client.arch_class)
    if not boot_file:
        return Ignore(IgnoreReason.NO_BOOT_FILE, f"no boot file for {client.arch_class}")
    bcd_path = policy.bcd_files.get(client.arch_class, "")
    if client.kind is ClientKind.HTTP:
        if not policy.http_boot_url_base:
            return Ignore(IgnoreReason.NO_HTTP_BASE, "HTTP boot client, no URL base configured")
        url = f"{policy.http_boot_url_base.rstrip('/')}/{boot_file.lstrip('/')}"
        return BootRecipe(VENDOR_CLASS_HTTP, url, bypass_discovery=False)
    if local_port == PXE_PORT:
        return BootRecipe(VENDOR_CLASS_PXE, boot_file, bypass_discovery=False, bcd_path=bcd_path)
    if client.arch_class in policy.file_on_67:
        return BootRecipe(VENDOR_CLASS_PXE, boot_file, bypass_discovery=True, bcd_path=bcd_path)
    return BootRecipe(VENDOR_CLASS_PXE, "", bypass_discovery=False)  # ProxyBinl


def _wds_recipe(client: PxeClient, policy: ProxyPolicy) -> BootRecipe | Ignore:
    """WDSNBP's re-request: the file for the architecture it detected, else the arch class's."""
    assert client.wds_arch is not None
    boot_file = policy.wds_boot_files.get(client.wds_arch) or policy.boot_files.get(
        client.arch_class
    )
    if not boot_file:
        return Ignore(IgnoreReason.NO_BOOT_FILE, f"no boot file for WDS {client.wds_arch}")
    bcd_path = policy.wds_bcd_files.get(client.wds_arch) or policy.bcd_files.get(
        client.arch_class, ""
    )
    return BootRecipe(VENDOR_CLASS_PXE, boot_file, bypass_discovery=False, bcd_path=bcd_path)


# --------------------------------------------------------------------------- classify


def _classify(
    request: DhcpPacket, local_port: int, server: bytes, policy: ProxyPolicy
) -> PxeClient | Ignore:
    if request.op != BOOTREQUEST:
        return Ignore(IgnoreReason.NOT_BOOTREQUEST, f"op {request.op}")
    message_type = request.message_type()
    if message_type is None:
        return Ignore(IgnoreReason.BOOTP, "no option 53")
    vendor_class = request.vendor_class() or b""
    if not vendor_class.startswith((VENDOR_CLASS_PXE, VENDOR_CLASS_HTTP)):
        return Ignore(IgnoreReason.NOT_PXE, f"option 60 is {vendor_class[:32]!r}")
    refusal = _port_refusal(request, message_type, local_port, server)
    if refusal is not None:
        return refusal
    if request.htype != HTYPE_ETHERNET or request.hlen != ETHERNET_ADDRESS_BYTES:
        return Ignore(IgnoreReason.NOT_ETHERNET, f"htype {request.htype} hlen {request.hlen}")
    arch = _client_arch(request, vendor_class)
    if arch is None:
        return Ignore(IgnoreReason.NO_ARCH, "no option 93 and no Arch field in option 60")
    arch_class = ARCH_CLASSES.get(arch)
    if arch_class is None:
        return Ignore(IgnoreReason.UNSUPPORTED_ARCH, f"architecture {arch}")
    boot_item = request.pxe_boot_item() if local_port == PXE_PORT else None
    if boot_item is not None and boot_item[1] & PXE_BIS_LAYER_BIT:
        return Ignore(IgnoreReason.BIS_UNSUPPORTED, f"boot item {boot_item}")
    request.client_uuid()  # validates option 97 (raises DhcpDecodeError)
    wds = request.wds_options() if local_port == PXE_PORT else None
    wds_arch = _wds_arch(wds) if wds is not None else None
    if isinstance(wds_arch, Ignore):
        return wds_arch
    return PxeClient(
        mac=request.mac,
        message_type=message_type,
        arch=arch,
        arch_class=arch_class,
        kind=_client_kind(request, vendor_class, policy),
        machine_id=request.options.get(Option.CLIENT_MACHINE_ID),
        boot_item=boot_item,
        wds_arch=wds_arch,
        wds_request_id=_wds_request_id(wds) if wds is not None else None,
    )


def _wds_arch(wds: Mapping[int, bytes]) -> str | Ignore:
    """The architecture WDSNBP detected (250.1, uint16), as a `WDS_ARCHITECTURES` name."""
    value = wds.get(WDS_ARCHITECTURE, b"\x00\x00")
    if len(value) != 2:
        raise DhcpDecodeError(f"option 250.1 has {len(value)} bytes, expected 2")
    number = int.from_bytes(value, "big")
    name = WDS_ARCHITECTURES.get(number)
    if name is None:
        return Ignore(IgnoreReason.UNSUPPORTED_WDS_ARCH, f"WDS architecture {number}")
    return name


def _wds_request_id(wds: Mapping[int, bytes]) -> bytes | None:
    value = wds.get(WDS_REQUEST_ID)
    if value is not None and len(value) != 4:
        raise DhcpDecodeError(f"option 250.5 has {len(value)} bytes, expected 4")
    return value


def _port_refusal(
    request: DhcpPacket, message_type: MessageType, local_port: int, server: bytes
) -> Ignore | None:
    if local_port == DHCP_SERVER_PORT:
        if message_type is MessageType.DISCOVER:
            return None
        return Ignore(IgnoreReason.WRONG_PORT, f"{message_type.name} on 67 is for the DHCP server")
    if message_type is not MessageType.REQUEST and message_type is not MessageType.INFORM:
        return Ignore(IgnoreReason.WRONG_PORT, f"{message_type.name} on 4011")
    named = request.server_identifier()
    if named is not None and named != server:
        return Ignore(IgnoreReason.OTHER_SERVER, f"option 54 is {ipv4_text(named)}")
    return None


def _client_arch(request: DhcpPacket, vendor_class: bytes) -> int | None:
    architectures = request.client_architectures()
    if architectures:
        return architectures[0]
    _, found, rest = vendor_class.partition(VENDOR_ARCH_FIELD)
    digits = rest[:VENDOR_ARCH_DIGITS]
    if not found or len(digits) != VENDOR_ARCH_DIGITS or not digits.isdigit():
        return None
    return int(digits)


def _client_kind(request: DhcpPacket, vendor_class: bytes, policy: ProxyPolicy) -> ClientKind:
    user_classes = request.user_classes()
    if any(user_class in policy.ipxe_user_classes for user_class in user_classes):
        return ClientKind.IPXE
    if vendor_class.startswith(VENDOR_CLASS_HTTP):
        return ClientKind.HTTP
    return ClientKind.PXE


def _policy_refusal(mac: str, policy: ProxyPolicy) -> Ignore | None:
    if mac in policy.denied_macs:
        return Ignore(IgnoreReason.DENIED, mac)
    if policy.allowed_macs and mac not in policy.allowed_macs:
        return Ignore(IgnoreReason.NOT_ALLOWED, mac)
    if not policy.serve_unknown and mac not in policy.known_macs:
        return Ignore(IgnoreReason.UNKNOWN_COMPUTER, mac)
    return None


# --------------------------------------------------------------------------- encode


def _encode_answer(
    request: DhcpPacket,
    client: PxeClient,
    recipe: BootRecipe,
    local_port: int,
    server: str,
    *,
    file_server: str,
) -> bytes:
    server_address = ipv4_bytes(server)
    on_pxe_port = local_port == PXE_PORT
    kind = MessageType.ACK if on_pxe_port else MessageType.OFFER
    options: dict[int, bytes] = {
        Option.MESSAGE_TYPE: bytes((kind,)),
        Option.SERVER_IDENTIFIER: server_address,
        Option.VENDOR_CLASS: recipe.vendor_class,
    }
    if client.machine_id is not None:
        options[Option.CLIENT_MACHINE_ID] = client.machine_id
    if recipe.bypass_discovery:
        options[Option.VENDOR_SPECIFIC] = PXE_BYPASS_DISCOVERY
    elif client.boot_item is not None:
        item = struct.pack("!HH", *client.boot_item)  # echoed as dnsmasq does
        options[Option.VENDOR_SPECIFIC] = encode_sub_options({PXE_BOOT_ITEM: item})
    if recipe.bcd_path:
        options[Option.BCD_PATH] = recipe.bcd_path.encode("ascii")
    if client.wds_arch is not None:
        options[Option.WDS_NBP] = _wds_approval(client.wds_request_id)
    file = recipe.boot_file.encode("ascii")
    if len(file) >= FILE_BYTES:
        options[Option.BOOTFILE_NAME] = file
        file = b""
    return build_reply(
        request,
        options,
        siaddr=ipv4_bytes(file_server),
        sname=file_server.encode("ascii") if on_pxe_port else b"",
        file=file,
        flags=None if on_pxe_port else request.flags | BROADCAST_FLAG,
        ciaddr=request.ciaddr if on_pxe_port else ZERO_ADDRESS,
    )


def _wds_approval(request_id: bytes | None) -> bytes:
    """Option 250 telling WDSNBP it is approved and may boot now (no pending-device wait)."""
    return encode_sub_options({
        WDS_NEXT_ACTION: bytes((WDS_ACTION_APPROVAL,)),
        WDS_REQUEST_ID: request_id if request_id is not None else (1).to_bytes(4, "big"),
        WDS_POLL_INTERVAL: WDS_POLL_INTERVAL_S.to_bytes(2, "big"),
        WDS_POLL_RETRY_COUNT: WDS_POLL_RETRIES.to_bytes(2, "big"),
        WDS_ACTION_DONE: b"\x01",
    })  # fmt: skip
