"""Simulated PXE clients on the simulated network: power-on, DHCP, TFTP, and what happened.

Theory of operation
-------------------
`BootClients` is the world's `dhcp_clients` and one of its listeners. It owns every
`sim.pxe_client.PxeClient` of a run and carries their datagrams:

- A client's broadcast DISCOVER (`SendDhcp` with no server) goes to UDP 67 of every running
  peer of the client's subnet, each copy through `Network.plan_dhcp` (the subnet's loss,
  latency and partitions apply; clients sit on the main side unless a switch failure took
  their whole subnet off it: `World.clients_side`). A unicast REQUEST to 4011 goes
  to the peer whose address the client names.
- A boot actor's `SendDhcpReply` reaches the client whose MAC the reply carries in `chaddr`
  (the firmware's own filter), again through the link model; a reply that names no known
  client, or is addressed neither to the broadcast address nor to the client, is counted and
  dropped.
- Each client has one timer; re-arming bumps a generation number, so a superseded fire is
  ignored.
- `FetchBootFile` starts a modelled TFTP download (`sim.tftp_model.TftpModel`) from the peer
  the offer named; a peer that does not hold the verified boot package answers "file not
  found" at once (a responder only points clients at itself, and only eligible peers lead,
  so this counts a real bug).

A machine whose attempt fails reboots after `REBOOT_S` and tries again, up to its
`reboots` (a fresh firmware run: new DISCOVERs, same MAC); its boot time runs from the first
power-on. `failed_attempts` counts every failed attempt, also those a reboot made good.

Serviceability: a client's boot is *servable* when, throughout its attempt, at least one
responder-eligible peer of its subnet was running on the clients' side of any partition.
The project target is that every servable boot succeeds; a boot that failed while its subnet
had no eligible peer is reported apart (`boots_failed_unservable`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from actors.core import Address, LeadershipChanged, MemberChanged, SendDhcpReply
from sim.host import Scheduled, schedule
from sim.pxe_client import (
    ArmTimer,
    ClientAction,
    FetchBootFile,
    Firmware,
    Phase,
    PxeClient,
    SendDhcp,
)
from sim.tftp_model import TftpModel

if TYPE_CHECKING:
    from sim.host import SimNode
    from sim.network import Port
    from sim.scenario import BootSpec, SubnetSpec, TftpSpec
    from sim.world import World

DHCP_CLIENT_PORT: Final = 68  # RFC 2131 §4.1
BROADCAST_HOST: Final = "255.255.255.255"
CHADDR_OFFSET: Final = 28  # RFC 2131 §2: chaddr follows op .. giaddr
MAC_BYTES: Final = 6
REBOOT_S: Final = 5.0
"""From a failed attempt to the next DISCOVER: SeaBIOS waits 1 s, then POST and ROM init."""
STEADY_AFTER_S: Final = 30.0
"""A DISCOVER counts as steady state when no fault happened in the `STEADY_AFTER_S` before it."""

Eligibility = Callable[["SimNode"], bool]


@dataclass(slots=True)
class _Client:
    machine: PxeClient
    subnet: str
    address: Address
    port: Port
    generation: int = 0
    servable: bool = True
    discovers_seen: int = 0
    """How many of `machine.offers_per_discover` have been judged (steady or not)."""
    ended: bool = False
    reboots_left: int = 0
    powered_on_s: float = 0.0


@dataclass(slots=True)
class BootFigures:
    """What the PXE clients of a run experienced."""

    attempted: int = 0
    succeeded: int = 0
    failed: int = 0
    unfinished: int = 0
    failed_unservable: int = 0
    failed_attempts: int = 0
    boot_s: list[float] = field(default_factory=list)
    discovers: int = 0
    dual_offers: int = 0
    steady_discovers: int = 0
    steady_dual_offers: int = 0
    tftp_failures: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    misaddressed_replies: int = 0


class BootClients:
    """Every simulated PXE client of a run (see the module docstring)."""

    def __init__(
        self, world: World, tftp: TftpSpec, eligible: Eligibility, rng: random.Random
    ) -> None:
        self._world = world
        self._eligible = eligible
        self._rng = rng
        self._clients: list[_Client] = []
        self._by_mac: dict[bytes, _Client] = {}
        self._peers_of: dict[str, list[SimNode]] = {}
        self._peer_at: dict[tuple[str, str], SimNode] = {}
        self._last_fault_s = -math.inf
        self.figures = BootFigures()
        self.tftp = TftpModel(
            world, tftp.boot_file_bytes, tftp.bandwidth_bytes_per_s, self._fetched
        )
        self._timer_callbacks = (self._on_timer,)
        self._reply_callbacks = (self._on_reply_arrival,)
        self._power_callbacks = (self._on_power_on,)
        world.dhcp_clients = self
        world.listeners.append(self)
        for node in world.members.values():
            self._peers_of.setdefault(node.info.subnet, []).append(node)
            self._peer_at[(node.info.subnet, node.address.host)] = node

    # ----------------------------------------------------------------------- setup

    def schedule(self, boot: BootSpec, subnet: SubnetSpec) -> None:
        """Power on `boot.count` machines of `boot.firmware` at `boot.at_s` (+ spread)."""
        for _ in range(boot.count):
            index = sum(1 for client in self._clients if client.subnet == subnet.cidr)
            client_id = len(self._clients)
            mac = bytes((0x52, 0x54, 0x00, client_id >> 16 & 0xFF, client_id >> 8 & 0xFF,
                         client_id & 0xFF))  # fmt: skip
            address = Address(subnet.client_host_of(index), DHCP_CLIENT_PORT)
            port = self._world.network.attach(address, subnet.site, subnet.cidr)
            machine = PxeClient(client_id=client_id, firmware=Firmware(boot.firmware), mac=mac)
            client = _Client(machine, subnet.cidr, address, port, reboots_left=boot.reboots)
            self._clients.append(client)
            self._by_mac[mac] = client
            power_on_s = boot.at_s + (
                self._rng.uniform(0.0, boot.spread_s) if boot.spread_s else 0.0
            )
            item = Scheduled(self._power_callbacks, 0, client, None)
            schedule(self._world.env, item, max(0.0, power_on_s - self._world.env.now))

    def _on_power_on(self, item: Scheduled) -> None:
        client: _Client = item.first
        now_s = self._world.env.now
        if item.life == 0:
            self.figures.attempted += 1
            client.servable = self._servable(client.subnet)
            client.powered_on_s = now_s
        self._world.trace.record(now_s, f"pxe{client.machine.client_id}", "pxe", "power on")
        self._act(client, client.machine.start(now_s))

    def _reboot(self, client: _Client) -> None:
        """A failed attempt: the same machine runs its firmware again after `REBOOT_S`."""
        old = client.machine
        client.machine = PxeClient(client_id=old.client_id, firmware=old.firmware, mac=old.mac)
        client.discovers_seen = 0
        client.reboots_left -= 1
        client.generation += 1  # the old firmware's timer is void
        item = Scheduled(self._power_callbacks, 1, client, None)
        schedule(self._world.env, item, REBOOT_S)

    # ----------------------------------------------------------------------- client side

    def _act(self, client: _Client, actions: list[ClientAction]) -> None:
        for action in actions:
            if type(action) is SendDhcp:
                self._send_from_client(client, action)
            elif type(action) is ArmTimer:
                client.generation += 1
                item = Scheduled(self._timer_callbacks, client.generation, client, None)
                schedule(self._world.env, item, max(0.0, action.deadline_s - self._world.env.now))
            else:
                assert type(action) is FetchBootFile
                self._fetch(client, action)
        self._judge_discovers(client)
        phase = client.machine.phase
        if client.ended or phase not in _ENDED:
            return
        if phase is Phase.FAILED:
            self.figures.failed_attempts += 1
            if client.reboots_left > 0:
                self._world.trace.record(
                    self._world.env.now, f"pxe{client.machine.client_id}", "pxe", "reboot"
                )
                self._reboot(client)
                return
        client.ended = True
        self._finished(client)

    def _send_from_client(self, client: _Client, action: SendDhcp) -> None:
        network = self._world.network
        if action.server is None:
            targets = [node for node in self._peers_of.get(client.subnet, ()) if node.running]
        else:
            node = self._peer_at.get((client.subnet, action.server))
            targets = [node] if node is not None and node.running else []
        for node in targets:
            for delay_s in network.plan_dhcp(client.port, node.port):
                node.receive_dhcp(action.payload, client.address, action.port, delay_s)

    def _on_timer(self, item: Scheduled) -> None:
        client: _Client = item.first
        if item.life != client.generation:
            return
        self._act(client, client.machine.on_timer(self._world.env.now))

    def _fetch(self, client: _Client, action: FetchBootFile) -> None:
        node = self._peer_at.get((client.subnet, action.server))
        if node is not None and node.running and not self._eligible(node):
            self.tftp.started += 1
            self._fetched(client.machine.client_id, False, "file not found")
            return
        self.tftp.start(client.machine.client_id, client.address, node)

    def _fetched(self, client_id: int, ok: bool, reason: str) -> None:
        client = self._clients[client_id]
        if not ok:
            self.figures.tftp_failures += 1
        self._act(client, client.machine.on_fetched(ok, reason, self._world.env.now))

    # ----------------------------------------------------------------------- replies

    def on_reply(self, node: SimNode, command: SendDhcpReply) -> None:
        """A boot actor's reply: carried to the client its `chaddr` names."""
        mac = command.payload[CHADDR_OFFSET : CHADDR_OFFSET + MAC_BYTES]
        client = self._by_mac.get(mac)
        host = command.target.host
        if client is None or host not in (BROADCAST_HOST, client.address.host):
            self.figures.misaddressed_replies += 1
            self._world.dropped.add("dhcp_misaddressed")
            return
        for delay_s in self._world.network.plan_dhcp(node.port, client.port):
            item = Scheduled(self._reply_callbacks, 0, client, command.payload)
            schedule(self._world.env, item, delay_s)

    def _on_reply_arrival(self, item: Scheduled) -> None:
        client: _Client = item.first
        self._act(client, client.machine.on_reply(item.second, self._world.env.now))

    # ----------------------------------------------------------------------- world events

    def member_changed(self, now_s: float, observer: SimNode, event: MemberChanged) -> None:
        """Membership does not concern the clients."""

    def leadership_changed(self, now_s: float, node: SimNode, event: LeadershipChanged) -> None:
        """Leadership does not concern the clients directly (they see only the answers)."""

    def lifecycle(self, now_s: float, node: SimNode | None, what: str) -> None:
        """Faults cut downloads and may leave a subnet without an eligible peer."""
        if what not in ("start", "restart") and not what.startswith("slow"):
            self._last_fault_s = now_s
        if node is not None and what in ("crash", "stop"):
            self.tftp.node_lost(node, "server crashed" if what == "crash" else "server stopped")
        if node is None or what.startswith("partition"):
            self.tftp.topology_changed()
        subnets = list(self._peers_of) if node is None else [node.info.subnet]
        for subnet in subnets:
            if not self._servable(subnet):
                for client in self._clients:
                    if client.subnet == subnet and not client.ended:
                        client.servable = False

    def _servable(self, subnet: str) -> bool:
        side = self._world.clients_side(subnet)
        return any(
            node.running and node.port.side == side and self._eligible(node)
            for node in self._peers_of.get(subnet, ())
        )

    # ----------------------------------------------------------------------- figures

    def _judge_discovers(self, client: _Client) -> None:
        """Score the DISCOVER windows that closed since the last look."""
        counts = client.machine.offers_per_discover
        steady = self._world.env.now - self._last_fault_s >= STEADY_AFTER_S
        figures = self.figures
        for servers in counts[client.discovers_seen :]:
            figures.discovers += 1
            figures.dual_offers += servers > 1
            if steady:
                figures.steady_discovers += 1
                figures.steady_dual_offers += servers > 1
        client.discovers_seen = len(counts)

    def _finished(self, client: _Client) -> None:
        machine = client.machine
        figures = self.figures
        detail = machine.phase.value if not machine.failure else f"failed: {machine.failure}"
        self._world.trace.record(self._world.env.now, f"pxe{machine.client_id}", "pxe", detail)
        if machine.phase is Phase.BOOTED:
            figures.succeeded += 1
            figures.boot_s.append(machine.finished_s - client.powered_on_s)
            return
        figures.failed += 1
        figures.failures[machine.failure] = figures.failures.get(machine.failure, 0) + 1
        if not client.servable:
            figures.failed_unservable += 1

    def finish(self) -> BootFigures:
        """Close the books: machines still booting at the end are `unfinished`."""
        figures = self.figures
        figures.unfinished = figures.attempted - figures.succeeded - figures.failed
        return figures

    def clients(self) -> list[PxeClient]:
        """Every client machine, in creation order (for tests and reports)."""
        return [client.machine for client in self._clients]


_ENDED: Final = (Phase.BOOTED, Phase.FAILED)


def failed_servable(figures: BootFigures) -> int:
    """Boots that failed although an eligible peer stayed alive in their subnet."""
    return figures.failed - figures.failed_unservable
