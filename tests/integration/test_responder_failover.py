"""Three real agents (`peerpxe agent`'s composition, in-process, loopback) elect exactly one
PXE responder and replace it: at once after a clean resignation, within lease + claim time
after a crash.

Each agent is `peerpxe.agent_command.Agent` with discovery, election and boot actors, its
TFTP/HTTP servers and ProxyDHCP in forwarding mode on 127.0.0.1 (free ports). Knobs are
shortened (lease 0.3 s, claim wait 0.06 s) so the test takes seconds; the bounds asserted
are stated in those knobs plus `SLACK_S` for thread scheduling on a loaded 2-core machine.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.core import Address, DhcpPacketReceived, SendDhcpReply
from actors.discovery import DiscoveryKnobs
from actors.election import ElectionKnobs
from peerpxe.agent_command import Agent, responder_status
from peerpxe.config import AgentConfig, BootConfig
from tests.integration.waiting import wait_until
from tests.unit import pxe_clients
from transport.dhcp_socket import ProxyDhcpServer

pytestmark = pytest.mark.integration

KEY = bytes(range(32))
LOOPBACK = "127.0.0.1"
DISCOVERY = DiscoveryKnobs(
    probe_interval_s=0.1,
    probe_timeout_s=0.05,
    gossip_interval_s=0.05,
    suspicion_timeout_s_min=0.3,
    suspicion_timeout_s_max=0.8,
    push_pull_interval_s=5.0,
)
ELECTION = ElectionKnobs(
    heartbeat_interval_s=0.1,
    lease_timeout_s=0.3,
    claim_wait_s=0.06,
    claim_stagger_s=0.12,
    startup_grace_s=0.5,
)
SLACK_S = 0.3
LOOPBACK_BOOT = {"dhcp_ports": (0, 0), "dhcp_bind_67": LOOPBACK, "http_port": 0, "tftp_port": 0}


def boot_root(parent: Path) -> Path:
    root = parent / "root"
    root.mkdir()
    (root / "undionly.kpxe").write_bytes(b"\x90" * 512)
    (root / "ipxe.efi").write_bytes(b"MZ" + bytes(510))
    return root


class Lab:
    """Agents on loopback, started with seeds pointing at the first; stopped at teardown."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.agents: dict[str, Agent] = {}

    def config(self, node_id: str, seeds: tuple[Address, ...], weight: int = 50) -> AgentConfig:
        return AgentConfig(
            path=self.root / f"{node_id}.toml",
            node_id=node_id,
            site="lab",
            subnet="127.0.0.0/8",
            interface="lo",
            address=LOOPBACK,
            port=0,
            weight=weight,
            capabilities=(),
            cluster_key=KEY,
            cluster_key_file=Path("cluster.key"),
            seeds=seeds,
            mdns=False,
            knobs=DISCOVERY,
            log_level="info",
            election=ELECTION,
            boot=BootConfig(
                enabled=True,
                interface="",  # no SO_BINDTODEVICE on loopback
                server=LOOPBACK,
                root=self.root,
                files={"bios": "undionly.kpxe", "efi64": "ipxe.efi"},
            ),
        )

    def start(self, node_id: str, seeds: tuple[Address, ...] = ()) -> Agent:
        status_file = self.root.parent / f"{node_id}.status.json"
        config = self.config(node_id, seeds)
        agent = Agent(config, status_file, 1.0, boot_overrides=LOOPBACK_BOOT)
        agent.start()
        self.agents[node_id] = agent
        return agent

    def standing(self, node_id: str) -> dict[str, Any]:
        peer = self.agents[node_id].peer
        assert peer is not None
        return responder_status(peer, eligible=True)

    def leaders(self, among: list[str]) -> list[str]:
        return [node_id for node_id in among if self.standing(node_id)["role"] == "leader"]

    def stop_all(self) -> None:
        for agent in self.agents.values():
            agent.stop(clean=False)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    made = Lab(boot_root(tmp_path))
    yield made
    made.stop_all()


def start_three(lab: Lab) -> list[str]:
    first = lab.start("a")
    assert first.peer is not None
    lab.start("b", seeds=(first.peer.address,))
    lab.start("c", seeds=(first.peer.address,))
    names = ["a", "b", "c"]

    def one_leader_followed_by_all() -> bool:
        leaders = lab.leaders(names)
        return len(leaders) == 1 and all(
            lab.standing(name)["leader"] == leaders[0] for name in names
        )

    assert wait_until(one_leader_followed_by_all, timeout_s=5.0), [
        lab.standing(name) for name in names
    ]
    return names


class Captured:
    """A DHCP sender that keeps replies (67 offers are broadcasts: not sent from loopback)."""

    def __init__(self) -> None:
        self.replies: list[SendDhcpReply] = []

    def send_reply(self, command: SendDhcpReply) -> None:
        self.replies.append(command)


def test_exactly_one_responder_answers(lab: Lab) -> None:
    """Three eligible agents: one leader that every agent follows, with ranked standbys;
    a first DISCOVER forwarded to each agent's socket is answered by the leader only."""
    names = start_three(lab)
    (leader,) = lab.leaders(names)
    ranks = sorted(lab.standing(name)["standby_rank"] for name in names if name != leader)
    assert ranks == [1, 2]
    captured = {name: Captured() for name in names}
    for name in names:
        agent = lab.agents[name]
        assert agent.peer is not None
        assert agent.boot_server is not None
        agent.peer.attach_dhcp(captured[name])
        proxy = agent.boot_server.component(ProxyDhcpServer.name)
        assert isinstance(proxy, ProxyDhcpServer)
        proxy.forward(pxe_clients.ovmf_discover(), 67, Address("0.0.0.0", 68))
    assert wait_until(lambda: len(captured[leader].replies) == 1, timeout_s=2.0)
    time.sleep(0.2)  # a wrong second answer would have arrived by now
    assert {name: len(c.replies) for name, c in captured.items()} == {
        name: int(name == leader) for name in names
    }
    assert captured[leader].replies[0].source == Address(LOOPBACK, 67)


def test_status_file_reports_the_responder_standing(lab: Lab) -> None:
    """The status file's `responder` is read on the election actor's thread."""
    names = start_three(lab)
    (leader,) = lab.leaders(names)
    documents = {}
    for name in names:
        agent = lab.agents[name]
        assert agent.peer is not None
        agent.report(agent.peer)
        assert agent.status_file is not None
        documents[name] = json.loads(agent.status_file.read_text())["responder"]
    term = documents[leader]["term"]
    assert documents[leader] == {
        "role": "leader",
        "term": term,
        "leader": leader,
        "standby_rank": 0,
        "eligible": True,
    }
    assert sorted(documents[name]["standby_rank"] for name in names if name != leader) == [1, 2]
    assert all(document["leader"] == leader for document in documents.values())
    assert all(document["term"] == term for document in documents.values())


def test_resignation_hands_over_within_one_second(lab: Lab) -> None:
    """A clean stop resigns first: another agent leads within 1 s (no lease wait)."""
    names = start_three(lab)
    (leader,) = lab.leaders(names)
    survivors = [name for name in names if name != leader]
    started = time.monotonic()
    lab.agents[leader].stop(clean=True)
    assert wait_until(lambda: len(lab.leaders(survivors)) == 1, timeout_s=3.0)
    handover_s = time.monotonic() - started
    assert handover_s <= 1.0, f"handover took {handover_s:.2f} s"
    (new_leader,) = lab.leaders(survivors)
    assert lab.standing(new_leader)["term"] > 0


def test_crash_is_replaced_within_lease_and_claim_time(lab: Lab) -> None:
    """A crash (no resign, no leave): another agent leads within lease + claim wait."""
    names = start_three(lab)
    (leader,) = lab.leaders(names)
    term = lab.standing(leader)["term"]
    survivors = [name for name in names if name != leader]
    started = time.monotonic()
    lab.agents[leader].stop(clean=False)
    assert wait_until(lambda: len(lab.leaders(survivors)) == 1, timeout_s=5.0)
    failover_s = time.monotonic() - started
    bound_s = ELECTION.lease_timeout_s + ELECTION.claim_wait_s + SLACK_S
    assert failover_s <= bound_s, f"failover took {failover_s:.2f} s > {bound_s:.2f} s"
    (new_leader,) = lab.leaders(survivors)
    assert lab.standing(new_leader)["term"] > term
    assert wait_until(
        lambda: all(lab.standing(name)["leader"] == new_leader for name in survivors), 2.0
    )


def test_forwarded_packet_after_stop_is_counted_not_raised(lab: Lab) -> None:
    """The ProxyDHCP callback survives a stopped boot actor (counted as dhcp.no_actor)."""
    agent = lab.start("solo")
    assert agent.peer is not None
    assert agent.boot_server is not None
    proxy = agent.boot_server.component(ProxyDhcpServer.name)
    assert isinstance(proxy, ProxyDhcpServer)
    assert proxy.on_packet is not None
    agent.stop(clean=False)
    proxy.on_packet(DhcpPacketReceived(b"x", Address("0.0.0.0", 68), Address(LOOPBACK, 67)))
    assert agent.peer.counters.get("dhcp.no_actor") == 1
