"""Real firmware in QEMU network-boots from `peerpxe serve`, the only PXE responder on a bridge.

Lab (tests/e2e/qemu_lab.py): a bridge and the VM's tap in one namespace, dnsmasq as the
site's plain DHCP server (addresses only) in another, `peerpxe serve` in a third. What each
test exercises, and why it is built this way: docs/e2e.md.

- BIOS: SeaBIOS runs the iPXE option ROM (Debian ipxe-qemu), whose DHCP carries user class
  `iPXE`; peerpxe's offer on 67 hands it the iPXE script URL; the script (over HTTP) echoes
  a marker and chain-loads `marker.0` by TFTP, a 35-byte real-mode NBP that writes a second
  marker straight to COM1. That marker proves the file peerpxe served ran on the guest CPU.
- UEFI: OVMF with no NIC option ROM, so its own EDK II PXE stack boots: ProxyBinl offer on
  67, DHCPREQUEST/ACK on 4011, TFTP of `snponly.efi` (with the tsize probe, error 8), then
  iPXE asks again with user class `iPXE`, gets the script URL, and the script echoes the
  marker to the UEFI console, which OVMF mirrors on the serial port.

Each test checks the serial console (the marker), the wire (QEMU's pcap of the VM's NIC:
who answered what) and peerpxe's log. `PEERPXE_E2E_RESPONDER=dnsmasq` swaps in the dnsmasq
stand-in responder to debug the VM side; CI never sets it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.capture import DHCP_ACK, DHCP_OFFER, Capture, read_capture
from tests.e2e.qemu_lab import (
    DHCP_ADDRESS,
    EFI64_FILE,
    NBP_FILE,
    PXE_ADDRESS,
    SCRIPT_FILE,
    SUBNET_PREFIX,
    TFTP_PORT,
    BootContent,
    DnsmasqProxy,
    Guest,
    Lab,
    PeerpxeServe,
    Responder,
    build_content,
    script_url,
    skip_reason,
    start_dhcp_server,
    start_guest,
    wait_for,
)

pytestmark = [pytest.mark.qemu, pytest.mark.timeout(360)]

#: generous for TCG on 2 busy cores; a boot takes ~19 s (BIOS) and ~27 s (UEFI) here
MARKER_TIMEOUT_S = 180.0
READY_TIMEOUT_S = 30.0


@dataclass
class Boot:
    """One finished boot: what the guest printed, what crossed its NIC, the servers' logs."""

    guest: Guest
    content: BootContent
    responder: Responder
    capture: Capture
    responder_log: str
    dhcp_log: str
    marker_s: float | None

    def explain(self) -> str:
        serial = self.guest.serial().replace("\r", "")[-2500:]
        return (
            f"\n--- serial console (tail)\n{serial}\n--- {self.responder.name} log (tail)\n"
            f"{self.responder_log[-4000:]}\n--- wire: DHCP replies\n"
            + "\n".join(str(reply) for reply in self.capture.dhcp_replies)
            + f"\n--- wire: TFTP {self.capture.tftp}\n--- wire: HTTP {self.capture.http_requests}"
        )


def chosen_responder() -> Responder:
    if os.environ.get("PEERPXE_E2E_RESPONDER") == "dnsmasq":
        return DnsmasqProxy()
    return PeerpxeServe()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    made = Lab(tmp_path)
    try:
        yield made
    finally:
        made.close()


def boot(lab: Lab, firmware: str, marker_of: str) -> Boot:
    """Start the servers, boot `firmware`, wait for the marker, stop the VM, read the wire."""
    content = build_content(lab.workdir)
    dhcp_log = start_dhcp_server(lab)
    responder = chosen_responder()
    responder.start(lab, content)
    if wait_for(lambda: responder.ready(lab), READY_TIMEOUT_S) is None:
        pytest.fail(
            f"{responder.name} did not listen on UDP 67, 4011, {TFTP_PORT} and the HTTP port "
            f"within {READY_TIMEOUT_S:.0f} s:\n{lab.read_log(responder.log_name)[-3000:]}"
        )
    guest = start_guest(lab, firmware)
    marker = content.nbp_marker if marker_of == "nbp" else content.script_marker
    marker_s = guest.wait_for(marker, MARKER_TIMEOUT_S)
    guest.stop()
    return Boot(
        guest=guest,
        content=content,
        responder=responder,
        capture=read_capture(guest.capture, guest.mac),
        responder_log=lab.read_log(responder.log_name),
        dhcp_log=lab.read_log(dhcp_log),
        marker_s=marker_s,
    )


def guest_address(result: Boot) -> str:
    """The address the DHCP server (and only it) leased to the guest."""
    acks = [reply for reply in result.capture.dhcp_replies
            if reply.source == DHCP_ADDRESS and reply.message_type == DHCP_ACK]  # fmt: skip
    assert acks, "the DHCP server never acknowledged an address" + result.explain()
    return acks[-1].yiaddr


def assert_address_only_dhcp_and_single_responder(result: Boot) -> None:
    """dnsmasq gave addresses and nothing to boot; every PXE answer came from the responder."""
    replies = result.capture.dhcp_replies
    from_dhcp = [reply for reply in replies if reply.source == DHCP_ADDRESS]
    assert from_dhcp, "no reply from the DHCP server" + result.explain()
    for reply in from_dhcp:
        assert reply.yiaddr.startswith(f"{SUBNET_PREFIX}."), reply
        assert reply.boot_options() == [], f"DHCP server sent boot options: {reply}"
    address = guest_address(result)
    assert re.search(rf"DHCPACK\(eth0\) {re.escape(address)} {result.guest.mac}", result.dhcp_log)
    # its own log (--log-dhcp lists every option sent) agrees: nothing to boot
    sent_boot = re.search(r"bootfile name:|sent size: *\d+ option: *(43|60|66|67|150|175) ",
                          result.dhcp_log)  # fmt: skip
    assert sent_boot is None, sent_boot
    for reply in replies:
        assert reply.source in (DHCP_ADDRESS, PXE_ADDRESS), f"unexpected DHCP server: {reply}"
        if reply.source == PXE_ADDRESS:
            # a proxy answer: PXEClient, pointing at the responder, never an address on 67
            assert reply.source_port == 4011 or reply.yiaddr == "0.0.0.0", reply
            assert reply.options.get(60) == b"PXEClient", reply
            if isinstance(result.responder, PeerpxeServe):  # dnsmasq's menu offer has none
                assert reply.siaddr == PXE_ADDRESS, reply


def assert_peerpxe_log(result: Boot, patterns: list[str]) -> None:
    """Each regex in `patterns` matches a line of peerpxe's log (stand-in: not checked)."""
    if not isinstance(result.responder, PeerpxeServe):
        return
    missing = [pattern for pattern in patterns
               if not re.search(pattern, result.responder_log, re.MULTILINE)]  # fmt: skip
    assert not missing, f"peerpxe log lacks {missing}" + result.explain()


@pytest.mark.skipif(skip_reason("bios") is not None, reason=skip_reason("bios") or "")
def test_bios_boot(lab: Lab) -> None:
    """SeaBIOS + iPXE ROM: offer on 67 -> script over HTTP -> marker.0 over TFTP runs."""
    result = boot(lab, "bios", marker_of="nbp")
    assert result.marker_s is not None, "the NBP's marker never reached COM1" + result.explain()
    assert result.content.script_marker in result.guest.serial(), result.explain()
    assert_address_only_dhcp_and_single_responder(result)
    capture, mac, address = result.capture, result.guest.mac, guest_address(result)
    offers = [reply for reply in capture.dhcp_replies
              if reply.source == PXE_ADDRESS and reply.message_type == DHCP_OFFER]  # fmt: skip
    assert offers, "no proxy offer on 67" + result.explain()
    if isinstance(result.responder, PeerpxeServe):
        # the ROM is iPXE (user class iPXE): straight to the script, no 4011 round trip
        assert {reply.file for reply in offers} == {script_url()}, result.explain()
        assert all(reply.source_port == 67 for reply in offers), result.explain()
    assert f"GET /{SCRIPT_FILE} HTTP/1.1" in capture.request_lines(), result.explain()
    nbp_size = (result.content.root / NBP_FILE).stat().st_size
    assert capture.received(PXE_ADDRESS, NBP_FILE) == nbp_size, result.explain()
    assert_peerpxe_log(result, [
        rf"mac={mac} arch=0 \(bios\) port=67 DISCOVER: offer ipxe -> {re.escape(script_url())}",
        rf"http {re.escape(address)} GET '/{SCRIPT_FILE}' -> 200",
        rf"tftp {re.escape(address)}:\d+ '{re.escape(NBP_FILE)}' .*"
        rf"bytes={nbp_size}/{nbp_size} .*completed",
    ])  # fmt: skip


@pytest.mark.skipif(skip_reason("uefi") is not None, reason=skip_reason("uefi") or "")
def test_uefi_boot(lab: Lab) -> None:
    """OVMF's EDK II PXE: ProxyBinl offer on 67, ACK on 4011, TFTP snponly.efi, iPXE script."""
    result = boot(lab, "uefi", marker_of="script")
    assert result.marker_s is not None, "the script's marker never appeared" + result.explain()
    assert_address_only_dhcp_and_single_responder(result)
    capture, mac, address = result.capture, result.guest.mac, guest_address(result)
    from_responder = [reply for reply in capture.dhcp_replies if reply.source == PXE_ADDRESS]
    binl_offers = [reply for reply in from_responder
                   if reply.source_port == 67 and reply.message_type == DHCP_OFFER
                   and reply.file == "" and 43 not in reply.options]  # fmt: skip
    assert binl_offers, "no ProxyBinl offer (no 43, no file) on 67" + result.explain()
    acks_4011 = [reply for reply in from_responder
                 if reply.source_port == 4011 and reply.message_type == DHCP_ACK
                 and reply.file == EFI64_FILE and reply.sname == PXE_ADDRESS]  # fmt: skip
    assert acks_4011, "no ACK on 4011 naming the boot file" + result.explain()
    efi_size = (result.content.root / EFI64_FILE).stat().st_size
    assert capture.received(PXE_ADDRESS, EFI64_FILE) == efi_size, result.explain()
    assert 8 in capture.tftp_errors_sent, "EDK II's tsize probe (error 8) not seen"
    assert f"GET /{SCRIPT_FILE} HTTP/1.1" in capture.request_lines(), result.explain()
    assert_peerpxe_log(result, [
        rf"mac={mac} arch=7 \(efi-x64\) port=67 DISCOVER: offer pxe -> come back on 4011",
        rf"mac={mac} arch=7 \(efi-x64\) port=4011 REQUEST: ack pxe -> {re.escape(EFI64_FILE)}",
        rf"tftp {re.escape(address)}:\d+ '{re.escape(EFI64_FILE)}' .*"
        rf"bytes={efi_size}/{efi_size} .*completed",
        rf"mac={mac} arch=7 \(efi-x64\) port=67 DISCOVER: offer ipxe -> "
        rf"{re.escape(script_url())}",
        rf"http {re.escape(address)} GET '/{SCRIPT_FILE}' -> 200",
    ])  # fmt: skip
