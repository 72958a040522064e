"""The simulated firmware follows PXE timing and boots from a real Boot actor's answers."""

from __future__ import annotations

import pytest

from actors.boot.actor import Boot
from actors.boot.proxy_dhcp import ArchClass, ProxyPolicy
from actors.core import (
    Address,
    DhcpPacketReceived,
    LeadershipChanged,
    MemberInfo,
    SendDhcpReply,
)
from actors.election import RESPONDER_CAPABILITY
from sim.pxe_client import (
    ArmTimer,
    ClientAction,
    FetchBootFile,
    Firmware,
    Phase,
    PxeClient,
)

SERVER = "10.0.0.5"
SUBNET = "10.0.0.0/24"


def _boot(leading: bool) -> Boot:
    info = MemberInfo("p", "s", SUBNET, Address(SERVER, 7947), 50)
    policy = ProxyPolicy(
        boot_files={ArchClass.BIOS: "undionly.kpxe", ArchClass.EFI_X64: "snponly.efi"},
        ipxe_script_url=f"http://{SERVER}:8080/boot.ipxe",
    )
    boot = Boot(info, policy, SERVER)
    boot.handle(LeadershipChanged(f"subnet:{SUBNET}", RESPONDER_CAPABILITY, leading, 1, "p"), 0)
    return boot


def _run(client: PxeClient, boot: Boot, *, online_from_s: float = 0.0) -> float:
    """Drive client and boot actor until the client fetches or fails; returns the end time."""
    now_s, timer_s = 0.0, None
    queue: list[ClientAction] = client.start(now_s)
    while client.phase not in (Phase.BOOTED, Phase.FAILED):
        if not queue:
            if timer_s is None:
                break
            now_s, timer_s = timer_s, None
            queue = client.on_timer(now_s)
            continue
        action = queue.pop(0)
        if isinstance(action, ArmTimer):
            timer_s = action.deadline_s
        elif isinstance(action, FetchBootFile):
            queue.extend(client.on_fetched(True, "", now_s))
        elif now_s >= online_from_s:
            local = Address(SERVER, action.port)
            event = DhcpPacketReceived(action.payload, Address("0.0.0.0", 68), local)
            for command in boot.handle(event, now_s):
                if isinstance(command, SendDhcpReply):
                    queue.extend(client.on_reply(command.payload, now_s))
    return now_s


@pytest.mark.parametrize("firmware", list(Firmware))
def test_each_firmware_boots_from_a_leading_responder(firmware: Firmware) -> None:
    """BIOS boots from the 67 offer, UEFI via 4011, iPXE from the script URL."""
    client = PxeClient(1, firmware, bytes.fromhex("525400000001"))
    _run(client, _boot(leading=True))
    assert client.phase is Phase.BOOTED
    assert client.booted_from == SERVER
    assert client.offers_per_discover[0] == 1


def test_without_any_responder_the_rom_gives_up_after_four_discovers() -> None:
    """4 + 8 + 16 + 32 s of DISCOVERs, then PXE-E53."""
    client = PxeClient(2, Firmware.BIOS, bytes.fromhex("525400000002"))
    end_s = _run(client, _boot(leading=False))
    assert client.phase is Phase.FAILED
    assert end_s == pytest.approx(60.0)
    assert client.offers_per_discover == [0, 0, 0, 0]


def test_a_responder_elected_late_is_found_at_the_next_retry() -> None:
    """A responder answering from 5 s on is found by the DISCOVER sent at 4 s."""
    client = PxeClient(3, Firmware.UEFI, bytes.fromhex("525400000003"))
    end_s = _run(client, _boot(leading=True), online_from_s=3.0)
    assert client.phase is Phase.BOOTED
    assert 4.0 < end_s <= 12.0
