"""Self-healing PXE responders for real: `peerpxe agent` processes in network namespaces.

Layout: two bridges (two links, two subnets), each with three agents (one namespace each,
every agent binding UDP 67 on its own eth0), dnsmasq as the plain DHCP server (addresses
only, no boot options) and a client namespace whose eth0 has no address, like a booting
machine. Agents find each other by real mDNS and run the default election knobs (lease
1.5 s, claim wait 0.3 s); only `reconnect_interval_s` is shortened (2 s) so a healed
partition merges in seconds. Boot is enabled with a tiny root of dummy boot files.

The PXE clients are scapy-built DISCOVERs (`tests/unit/pxe_clients.py`) broadcast from
0.0.0.0:68 on the client's eth0, from a socket the test opens inside the client namespace.
A proxy offer is a reply with yiaddr 0 and option 60 `PXEClient`; dnsmasq's offers carry an
address.

The lab is built once for the module (starting six agents costs ~10 s); every test starts
by waiting until each subnet has converged on one responder.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from actors.boot.dhcp_packet import DhcpDecodeError, DhcpPacket, decode_packet
from tests.netns.netlab import AgentProcess, LabProcess, NetLab, skip_reason
from tests.unit import pxe_clients

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        skip_reason() is not None or shutil.which("dnsmasq") is None,
        reason=skip_reason() or "needs dnsmasq (apt: dnsmasq-base)",
    ),
]

SUBNETS = {"a": "10.231.20", "b": "10.231.21"}
AGENTS_PER_SUBNET = 3
KILLS = int(os.environ.get("PEERPXE_FAILOVER_KILLS", "10"))
POLL_S = 0.25
FIRMWARE_RETRIES_S = (0.0, 4.0, 12.0, 28.0)
"""When PXE firmware sends DISCOVER (waits 4, 8, 16 s between them), `secs` set to match."""
FAILOVER_P99_TARGET_S = 4.0


@dataclass
class Subnet:
    """One link: its agents (by node id), dnsmasq, and a client namespace's socket."""

    name: str
    prefix: str
    configs: dict[str, tuple[str, str]] = field(default_factory=dict)
    """node id -> (namespace, agent.toml text)."""
    agents: dict[str, AgentProcess] = field(default_factory=dict)
    client: str = ""
    dnsmasq: LabProcess | None = None

    def address_of(self, node_id: str) -> str:
        return f"{self.prefix}.{10 + int(node_id[1:])}"


@dataclass
class Lab:
    net: NetLab
    subnets: dict[str, Subnet]
    root: Path

    def logs(self) -> str:
        return self.net.logs()

    def restart(self, subnet: Subnet, node_id: str) -> AgentProcess:
        namespace, config = subnet.configs[node_id]
        subnet.agents[node_id] = self.net.start_agent(namespace, node_id, config)
        return subnet.agents[node_id]


def agent_config(node_id: str, subnet: Subnet, root: Path) -> str:
    return (
        f'[agent]\nnode_id = "{node_id}"\nsite = "lab"\nsubnet = "{subnet.prefix}.0/24"\n'
        f'interface = "eth0"\naddress = "{subnet.address_of(node_id)}"\nweight = 50\n'
        "[discovery]\nmdns = true\nreconnect_interval_s = 2.0\n"
        f'[boot]\nenabled = true\nroot = "{root}"\nbios = "undionly.kpxe"\n'
        'efi64 = "ipxe.efi"\nhttp_port = 8080\n'
    )


def boot_root(parent: Path) -> Path:
    root = parent / "root"
    root.mkdir()
    (root / "undionly.kpxe").write_bytes(os.urandom(2048))
    (root / "ipxe.efi").write_bytes(os.urandom(2048))
    return root


def start_dnsmasq(net: NetLab, namespace: str, subnet: Subnet) -> LabProcess:
    work = net.workdir
    dnsmasq = net.spawn(namespace, f"dnsmasq-{subnet.name}", [
        "dnsmasq", "--no-daemon", "--port=0", "--interface=eth0", "--bind-interfaces",
        f"--dhcp-range={subnet.prefix}.100,{subnet.prefix}.200,255.255.255.0,1h",
        f"--dhcp-leasefile={work}/leases-{subnet.name}",
        f"--pid-file={work}/dnsmasq-{subnet.name}.pid",
        "--no-resolv", "--no-hosts", "--conf-file=/dev/null", "--no-ping", "--user=root",
    ])  # fmt: skip
    if net.wait_for(lambda: "DHCP, IP range" in dnsmasq.log(), 10) is None:
        pytest.fail(f"dnsmasq did not start:\n{dnsmasq.log()}")
    return dnsmasq


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    workdir = tmp_path_factory.mktemp("failover")
    net = NetLab(workdir)
    try:
        root = boot_root(workdir)
        subnets: dict[str, Subnet] = {}
        for index, (name, prefix) in enumerate(SUBNETS.items()):
            bridge = f"br{index}"
            if bridge != "br0":
                net.add_bridge(bridge)
            subnet = Subnet(name, prefix)
            dhcp = net.add_host(f"d{name}", f"{prefix}.1/24", bridge)
            subnet.dnsmasq = start_dnsmasq(net, dhcp, subnet)
            subnet.client = net.add_host(f"c{name}", None, bridge)
            for number in range(1, AGENTS_PER_SUBNET + 1):
                node_id = f"{name}{number}"
                namespace = net.add_host(node_id, f"{subnet.address_of(node_id)}/24", bridge)
                subnet.configs[node_id] = (namespace, agent_config(node_id, subnet, root))
            subnets[name] = subnet
        made = Lab(net, subnets, root)
        for subnet in subnets.values():
            for node_id in subnet.configs:
                made.restart(subnet, node_id)
        yield made
    finally:
        net.close()


# --------------------------------------------------------------------------- observation


def live(agent: AgentProcess) -> dict[str, Any]:
    """The agent's status if it is this process's and it runs; else {}."""
    if agent.process.poll() is not None:
        return {}
    status = agent.status()
    if status.get("pid") != agent.process.pid or not status.get("running"):
        return {}
    return status


def leaders(subnet: Subnet) -> list[str]:
    return sorted(
        node_id
        for node_id, agent in subnet.agents.items()
        if live(agent).get("responder", {}).get("role") == "leader"
    )


def converged(subnet: Subnet) -> str | None:
    """The one responder every running agent of the subnet follows, and sees all alive."""
    found = leaders(subnet)
    if len(found) != 1:
        return None
    for node_id, agent in subnet.agents.items():
        status = live(agent)
        if status.get("responder", {}).get("leader") != found[0]:
            return None
        others = set(subnet.agents) - {node_id}
        if {m["node_id"]: m["state"] for m in status["members"]} != dict.fromkeys(others, "alive"):
            return None
    return found[0]


def wait_converged(lab: Lab, subnet: Subnet, timeout_s: float = 30.0) -> str:
    if lab.net.wait_for(lambda: converged(subnet) is not None, timeout_s) is None:
        statuses = {n: live(a).get("responder") for n, a in subnet.agents.items()}
        pytest.fail(f"subnet {subnet.name} did not converge: {statuses}\n{lab.logs()}")
    leader = converged(subnet)
    assert leader is not None
    return leader


@dataclass
class Offer:
    arrived_s: float
    source: str
    packet: DhcpPacket

    @property
    def is_proxy(self) -> bool:
        vendor = self.packet.options.get(60, b"")
        return self.packet.yiaddr == bytes(4) and vendor.startswith(b"PXEClient")


class Client:
    """A PXE client's UDP 68 socket on the client namespace's eth0 (no address)."""

    def __init__(self, lab: Lab, subnet: Subnet) -> None:
        def make() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
            sock.bind(("0.0.0.0", 68))
            return sock

        self.sock = lab.net.socket_in(subnet.client, make)

    def close(self) -> None:
        self.sock.close()

    def discover(self, *, mac: str, secs: int = 0, xid: int = 0x1234) -> None:
        payload = pxe_clients.craft(pxe_clients.ovmf_options(7), mac=mac, secs=secs, xid=xid)
        self.sock.sendto(payload, ("255.255.255.255", 67))

    def collect(self, listen_s: float, xid: int | None = None) -> list[Offer]:
        offers: list[Offer] = []
        deadline = time.monotonic() + listen_s
        while (left_s := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left_s)
            try:
                payload, (host, _port) = self.sock.recvfrom(65535)
            except TimeoutError:
                break
            try:
                packet = decode_packet(payload)
            except DhcpDecodeError:
                continue
            if xid is None or packet.xid == xid:
                offers.append(Offer(time.monotonic(), host, packet))
        return offers


@pytest.fixture
def clients(lab: Lab) -> Iterator[dict[str, Client]]:
    made = {name: Client(lab, subnet) for name, subnet in lab.subnets.items()}
    yield made
    for client in made.values():
        client.close()


def fresh_mac() -> str:
    return "02:" + ":".join(f"{byte:02x}" for byte in secrets.token_bytes(5))


def proxy_offers(client: Client, listen_s: float = 1.0) -> list[Offer]:
    xid = secrets.randbits(32)
    client.discover(mac=fresh_mac(), xid=xid)
    return [offer for offer in client.collect(listen_s, xid) if offer.is_proxy]


def kill_9(agent: AgentProcess) -> float:
    os.kill(agent.process.pid, signal.SIGKILL)
    killed_s = time.monotonic()
    agent.process.wait()
    return killed_s


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    rank = max(1, -(-int(fraction * 100) * len(ordered) // 100))
    return ordered[rank - 1]


# --------------------------------------------------------------------------- tests


def test_one_responder_per_subnet_and_exactly_one_offer(
    lab: Lab, clients: dict[str, Client]
) -> None:
    """Each subnet converges on one responder; a DISCOVER gets exactly one proxy offer, from
    it, next to dnsmasq's address offer (10 DISCOVERs per subnet, fresh MACs)."""
    for name, subnet in lab.subnets.items():
        leader = wait_converged(lab, subnet)
        for _ in range(10):
            xid = secrets.randbits(32)
            clients[name].discover(mac=fresh_mac(), xid=xid)
            offers = clients[name].collect(0.5, xid)
            proxy = [offer.source for offer in offers if offer.is_proxy]
            assert proxy == [subnet.address_of(leader)], (proxy, lab.logs())
            assert any(offer.source == f"{subnet.prefix}.1" for offer in offers), offers


def test_firmware_retry_is_answered_by_the_new_responder(
    lab: Lab, clients: dict[str, Client]
) -> None:
    """kill -9 the responder of subnet A: a client retrying like firmware (DISCOVER at 0, 4,
    12, 28 s, `secs` to match) gets its offer from a survivor at its first retry."""
    subnet = lab.subnets["a"]
    victim = wait_converged(lab, subnet)
    victim_address = subnet.address_of(victim)
    kill_9(subnet.agents[victim])
    client, mac, xid = clients["a"], fresh_mac(), secrets.randbits(32)
    started = time.monotonic()
    answered: list[tuple[float, list[Offer]]] = []
    for index, at_s in enumerate(FIRMWARE_RETRIES_S):
        time.sleep(max(0.0, started + at_s - time.monotonic()))
        client.discover(mac=mac, secs=int(at_s), xid=xid)
        next_s = FIRMWARE_RETRIES_S[index + 1] if index + 1 < len(FIRMWARE_RETRIES_S) else 32.0
        offers = [o for o in client.collect(started + next_s - time.monotonic(), xid) if o.is_proxy]
        if offers:
            answered.append((at_s, offers))
            break
    assert answered, f"no proxy offer at any retry\n{lab.logs()}"
    at_s, offers = answered[0]
    assert at_s <= FIRMWARE_RETRIES_S[1], f"first answered DISCOVER was at {at_s} s"
    assert victim_address not in {offer.source for offer in offers}
    new_leader = wait_converged_without(lab, subnet, victim)
    assert subnet.address_of(new_leader) in {offer.source for offer in offers}
    lab.restart(subnet, victim)


def wait_converged_without(lab: Lab, subnet: Subnet, gone: str) -> str:
    """The responder the running agents agree on while `gone` is down."""

    def agreed() -> str | None:
        running = {n: live(a) for n, a in subnet.agents.items() if n != gone}
        found = {str(s.get("responder", {}).get("leader")) for s in running.values()}
        roles = [s.get("responder", {}).get("role") for s in running.values()]
        if len(found) == 1 and roles.count("leader") == 1:
            return found.pop()
        return None

    assert lab.net.wait_for(lambda: agreed() is not None, 10.0) is not None, lab.logs()
    leader = agreed()
    assert leader is not None
    return leader


def test_failover_time_over_repeated_kills(lab: Lab, clients: dict[str, Client]) -> None:
    """kill -9 the responder of subnet A `KILLS` times (restarting it between kills); poll
    with a first DISCOVER (fresh MAC, secs 0) every 0.25 s: time from the kill to the first
    offer from a new responder. p99 <= 4 s (the firmware's first retry)."""
    subnet = lab.subnets["a"]
    client = clients["a"]
    samples: list[float] = []
    doubled = 0
    for _ in range(KILLS):
        victim = wait_converged(lab, subnet)
        victim_address = subnet.address_of(victim)
        killed_s = kill_9(subnet.agents[victim])
        answered_s: float | None = None
        while answered_s is None and time.monotonic() - killed_s < 15.0:
            offers = proxy_offers(client, POLL_S)
            fresh = [offer for offer in offers if offer.source != victim_address]
            if fresh:
                answered_s = fresh[0].arrived_s
        assert answered_s is not None, f"no new responder within 15 s\n{lab.logs()}"
        samples.append(answered_s - killed_s)
        lab.restart(subnet, victim)
        doubled += rejoin_duplicates(lab, subnet, client)
    p50, p99 = statistics.median(samples), percentile(samples, 0.99)
    print(
        f"\nfailover over {len(samples)} kills: p50 {p50:.2f} s, p99 {p99:.2f} s, "
        f"min {min(samples):.2f} s, max {max(samples):.2f} s; samples "
        + " ".join(f"{sample:.2f}" for sample in samples)
    )
    assert p99 <= FAILOVER_P99_TARGET_S, samples
    assert doubled == 0, f"{doubled} DISCOVERs got two proxy offers while an agent rejoined"


def rejoin_duplicates(lab: Lab, subnet: Subnet, client: Client) -> int:
    """DISCOVERs (one per poll) answered by more than one responder until the restarted
    agent has rejoined and the subnet has converged again."""
    doubled = 0
    deadline_s = time.monotonic() + 30.0
    while converged(subnet) is None and time.monotonic() < deadline_s:
        if len(proxy_offers(client, POLL_S)) > 1:
            doubled += 1
    return doubled


def test_partition_and_heal_leave_one_responder(lab: Lab, clients: dict[str, Client]) -> None:
    """Cut subnet B's responder off the link: the others elect a new one (each side keeps a
    responder) and declare it dead; restore the link: exactly one responder again, one proxy
    offer per DISCOVER."""
    subnet = lab.subnets["b"]
    isolated = wait_converged(lab, subnet)
    lab.net.set_link(isolated, up=False)
    try:
        majority = wait_converged_without(lab, subnet, isolated)
        assert majority != isolated
        assert live(subnet.agents[isolated])["responder"]["role"] == "leader"
        offers = proxy_offers(clients["b"])
        assert [offer.source for offer in offers] == [subnet.address_of(majority)]
        # Long enough for the majority to declare it dead: the heal then needs discovery's
        # reconnect probes and a refutation, as after a real outage.
        others = [agent for node_id, agent in subnet.agents.items() if node_id != isolated]
        declared = lab.net.wait_for(
            lambda: all(agent.states().get(isolated) == "dead" for agent in others), 20.0
        )
        assert declared is not None, lab.logs()
    finally:
        lab.net.set_link(isolated, up=True)
    healed_s = time.monotonic()
    leader = wait_converged(lab, subnet, timeout_s=40.0)
    print(f"\npartition healed: one responder ({leader}) after {time.monotonic() - healed_s:.1f} s")
    for _ in range(5):
        offers = proxy_offers(clients["b"], 0.5)
        assert [offer.source for offer in offers] == [subnet.address_of(leader)], offers
