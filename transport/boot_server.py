"""The boot serving loop: ProxyDHCP + TFTP + HTTP composed into one start/stop unit.

Theory of operation
-------------------
`build_boot_server(settings, counters)` turns validated settings into a `BootServer`, an
ordered list of components that each have `start()` and `stop()` and run their own threads:

1. TFTP (when `transport/tftp_server.py` exists: see `_tftp_component`),
2. HTTP (`HttpFileServer`: files under the root, plus the in-memory iPXE script if any),
3. ProxyDHCP (`ProxyDhcpServer`, unless `dhcp_interface` is None): answering inline
   (`peerpxe serve`), or, given `on_dhcp_packet`, forwarding every datagram to it
   (`peerpxe agent`: the boot actor decides, and only the elected responder answers).

File servers start first and ProxyDHCP last, so a client is never pointed at a server that
is not listening yet; `stop()` goes in reverse order, so ProxyDHCP falls silent before the
file servers close. If a component fails to start, the ones already started are stopped
and the error (a `BindError` with advice) propagates.

What each firmware is told (the ProxyPolicy built by `boot_policy`): BIOS PXE ROMs get
`bios_file` over TFTP from the 67 offer; x64 and ARM64 UEFI PXE get `efi64_file` /
`arm64_file` over TFTP from the 4011 ACK; UEFI HTTP boot gets the same files as
`http://server:port/<file>`; iPXE (user class `iPXE`) gets the iPXE script URL, so it never
chain-loads itself again.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from actors.boot.proxy_dhcp import ArchClass, ProxyPolicy
from actors.core import Address, DhcpPacketReceived
from transport.dhcp_socket import DhcpListen, ProxyDhcpServer
from transport.http_server import HttpFileServer
from transport.metrics import SharedCounters

_LOG = logging.getLogger(__name__)

TFTP_MODULE = "transport.tftp_server"
TFTP_FACTORY = "boot_component"


class Component(Protocol):
    """A server the boot loop starts and stops; it runs its own threads."""

    @property
    def name(self) -> str: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class BootSettings:
    """Validated settings of `peerpxe serve` (paths relative to `root`, already checked)."""

    root: Path
    #: the address clients are given (option 54, siaddr, URLs)
    server: str
    #: the address the HTTP and TFTP servers bind (may be 0.0.0.0)
    bind: str
    #: the interface ProxyDHCP answers on; None = no ProxyDHCP; "" = any (loopback tests)
    dhcp_interface: str | None
    bios_file: str | None = None
    efi64_file: str | None = None
    arm64_file: str | None = None
    #: URL path (no leading `/`) of the iPXE script; None = iPXE clients get no answer
    ipxe_script: str | None = None
    #: in-memory documents served over HTTP, URL path -> bytes (a script from outside root)
    documents: Mapping[str, bytes] = field(default_factory=dict)
    http_port: int = 80
    tftp_port: int = 69
    dhcp_ports: tuple[int, int] = (67, 4011)
    #: the address port 67 binds (a wildcard: broadcasts only reach that); tests use loopback
    dhcp_bind_67: str = "0.0.0.0"  # noqa: S104


def boot_policy(settings: BootSettings) -> ProxyPolicy:
    """The ProxyDHCP policy: per-arch boot files, the HTTP boot base, the iPXE script URL."""
    http_base = f"http://{settings.server}:{settings.http_port}/"
    boot_files: dict[ArchClass, str] = {}
    if settings.bios_file:
        boot_files[ArchClass.BIOS] = settings.bios_file
    if settings.efi64_file:
        boot_files[ArchClass.EFI_X64] = settings.efi64_file
        boot_files[ArchClass.HTTP_X64] = settings.efi64_file
    if settings.arm64_file:
        boot_files[ArchClass.EFI_ARM64] = settings.arm64_file
        boot_files[ArchClass.HTTP_ARM64] = settings.arm64_file
    script_url = ""
    if settings.ipxe_script:
        script_url = http_base + urllib.parse.quote(settings.ipxe_script)
    return ProxyPolicy(
        boot_files={arch: path.lstrip("/") for arch, path in boot_files.items()},
        ipxe_script_url=script_url,
        http_boot_url_base=http_base,
    )


class BootServer:
    """Components started in order and stopped in reverse; `counters` shared by all."""

    def __init__(self, components: Sequence[Component], counters: SharedCounters) -> None:
        self.components = list(components)
        self.counters = counters
        self._started: list[Component] = []

    def start(self) -> None:
        """Start every component; on failure stop those started and re-raise."""
        for component in self.components:
            try:
                component.start()
            except BaseException:
                self.stop()
                raise
            self._started.append(component)

    def stop(self) -> None:
        """Stop the started components, newest first (idempotent)."""
        while self._started:
            component = self._started.pop()
            try:
                component.stop()
            except Exception:  # noqa: BLE001 - one failing stop must not keep the rest running
                _LOG.exception("stopping %s failed", component.name)

    def component(self, name: str) -> Component | None:
        """The component called `name`, if any."""
        return next((item for item in self.components if item.name == name), None)


def build_boot_server(
    settings: BootSettings,
    counters: SharedCounters,
    *,
    on_dhcp_packet: Callable[[DhcpPacketReceived], None] | None = None,
) -> BootServer:
    """TFTP (if built), HTTP and ProxyDHCP (if an interface is given), ready to start;
    ProxyDHCP forwards datagrams to `on_dhcp_packet` when it is given."""
    components: list[Component] = []
    tftp = _tftp_component(settings, counters)
    if tftp is not None:
        components.append(tftp)
    components.append(
        HttpFileServer(
            settings.root,
            Address(settings.bind, settings.http_port),
            counters=counters,
            scripts=settings.documents,
        )
    )
    if settings.dhcp_interface is not None:
        port_67, port_4011 = settings.dhcp_ports
        listen = DhcpListen(
            settings.server,
            settings.dhcp_interface or None,
            port_67,
            port_4011,
            settings.dhcp_bind_67,
        )
        proxy = ProxyDhcpServer(
            listen, boot_policy(settings), counters=counters, on_packet=on_dhcp_packet
        )
        components.append(proxy)
    return BootServer(components, counters)


def _tftp_component(settings: BootSettings, counters: SharedCounters) -> Component | None:
    """The TFTP server, once `transport/tftp_server.py` exists.

    Contract for that module: `boot_component(root: Path, bind: Address, *, counters:
    SharedCounters) -> Component`. Until it exists, PXE firmware gets its offer but cannot
    download the boot program; iPXE and UEFI HTTP boot work over HTTP.
    """
    if importlib.util.find_spec(TFTP_MODULE) is None:
        _LOG.warning("no TFTP server in this build (%s): serving ProxyDHCP + HTTP", TFTP_MODULE)
        return None
    factory = getattr(importlib.import_module(TFTP_MODULE), TFTP_FACTORY, None)
    if factory is None:
        _LOG.warning("%s has no %s(): TFTP not started", TFTP_MODULE, TFTP_FACTORY)
        return None
    component: Component = factory(
        settings.root, Address(settings.bind, settings.tftp_port), counters=counters
    )
    return component
