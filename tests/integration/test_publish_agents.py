"""`peerpxe publish` to one agent; the package spreads to every agent, one WAN copy per site.

Four real agents (`peerpxe agent`'s composition, in-process, loopback, free ports) with
`[replication]` enabled: `hq1` and `hq2` at site `hq`, `br1` and `br2` at site `branch`,
whose WAN sources are the hq agents. `peerpxe publish` (the real command) checks a signed
package and offers it to `hq1` only; `hq1` pulls it from the publisher's seed, `hq2` from
`hq1` over the LAN, and the branch's elected downloader pulls it across the "WAN" once,
`br`'s other agent from it. Each agent then serves the verified tree and may be elected
responder. Knobs are shortened so the whole run takes seconds.

Refusals: a tampered package is refused by `publish` itself; a manifest signed by another
key, and an older version (rollback), offered by a rogue seed, are refused by the agent and
counted; an offer sealed with the wrong cluster key is refused and gets nothing.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from actors.core import ActorName, Address
from actors.discovery import DiscoveryKnobs
from actors.election import ElectionKnobs
from actors.envelope import WireSecurity
from actors.messages import SeedOffer
from actors.package import Manifest, entry_from_bytes, sign_manifest
from actors.policy import Policy, ServeRule, sign_policy
from actors.replication import ReplicationKnobs
from actors.signing import public_key
from peerpxe.agent_command import Agent, responder_status
from peerpxe.cli import main
from peerpxe.config import AgentConfig, BootConfig, ReplicationConfig
from tests.integration.waiting import wait_until
from transport.chunk_fetcher import request_once
from transport.chunk_service import (
    REPLY_OVERHEAD_BYTES_MAX,
    ChunkServer,
    chunk_sender_id,
)
from transport.content_store import ContentStore
from transport.metrics import SharedCounters
from transport.shared_store import SharedStore

pytestmark = pytest.mark.integration

KEY = bytes(range(32))
LOOPBACK = "127.0.0.1"
CHUNK = 64 * 1024
SECRET = bytes(SigningKey.generate())
PUBLIC = public_key(SECRET)
DISCOVERY = DiscoveryKnobs(
    probe_interval_s=0.1,
    probe_timeout_s=0.05,
    gossip_interval_s=0.05,
    suspicion_timeout_s_min=0.5,
    suspicion_timeout_s_max=1.0,
    push_pull_interval_s=2.0,
)
ELECTION = ElectionKnobs(
    heartbeat_interval_s=0.1,
    lease_timeout_s=0.5,
    claim_wait_s=0.06,
    claim_stagger_s=0.12,
    startup_grace_s=0.5,
)
REPLICATION = ReplicationKnobs(
    have_interval_s=0.5,
    have_debounce_s=0.05,
    wan_settle_s=0.3,
    source_backoff_s=0.5,
    manifest_poll_s=0.5,
    manifest_fetch_timeout_s=3.0,
)
LOOPBACK_BOOT = {"dhcp_ports": (0, 0), "dhcp_bind_67": LOOPBACK, "http_port": 0, "tftp_port": 0}
SPREAD_TIMEOUT_S = 60.0
DENIED_MAC = "52:54:00:12:34:56"


def content(seed: str, size_bytes: int) -> bytes:
    blocks = (hashlib.sha256(f"{seed}:{n}".encode()).digest() for n in range(size_bytes // 32 + 1))
    return b"".join(blocks)[:size_bytes]


FILES = {
    "undionly.kpxe": content("bios", 3 * CHUNK + 100),
    "ipxe.efi": content("efi", 2 * CHUNK),
    "images/boot.wim": content("wim", 12 * CHUNK + 7),
}
TOTAL_BYTES = sum(len(data) for data in FILES.values())


def manifest_of(version: tuple[int, ...]) -> Manifest:
    return Manifest(
        name="winpe",
        version=version,
        created_s=1_700_000_000 + version[0],
        files=tuple(entry_from_bytes(path, data, CHUNK) for path, data in FILES.items()),
        boot_files={"bios": "undionly.kpxe", "efi64": "ipxe.efi"},
        chunk_bytes=CHUNK,
    )


class Lab:
    """The publisher's files and four agents; every agent is stopped at teardown."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.agents: dict[str, Agent] = {}
        self.package = root / "package"
        for path, data in FILES.items():
            (self.package / path).parent.mkdir(parents=True, exist_ok=True)
            (self.package / path).write_bytes(data)
        self.manifest = manifest_of((2,))
        self.manifest_file = root / "winpe-2.manifest"
        self.manifest_file.write_bytes(sign_manifest(self.manifest, SECRET))
        self.public_file = root / "publisher.pub"
        self.public_file.write_text(PUBLIC.hex() + "\n")
        self.key_file = root / "cluster.key"
        self.key_file.write_text(KEY.hex() + "\n")

    def config(self, node_id: str, site: str, seeds: tuple[Address, ...]) -> AgentConfig:
        wan = tuple(self.address(name) for name in self.agents if name.startswith("hq"))
        return AgentConfig(
            path=self.root / f"{node_id}.toml",
            node_id=node_id,
            site=site,
            subnet="127.0.0.0/8",
            interface="lo",
            address=LOOPBACK,
            port=0,
            weight=50,
            capabilities=(),
            cluster_key=KEY,
            cluster_key_file=self.key_file,
            seeds=seeds,
            mdns=False,
            knobs=DISCOVERY,
            log_level="info",
            election=ELECTION,
            boot=BootConfig(enabled=True, interface="", server=LOOPBACK),
            replication=ReplicationConfig(
                enabled=True,
                store=self.root / f"store-{node_id}",
                publisher_key=PUBLIC,
                quota_bytes=64 << 20,
                wan_sources=wan if site != "hq" else (),
                knobs=REPLICATION,
            ),
        )

    def start(self, node_id: str, site: str) -> Agent:
        # Discovery is per site (members of other sites are not admitted): seed the site's
        # first agent, as mDNS would find it on the LAN.
        first = next((name for name in self.agents if name.startswith(node_id[:2])), None)
        seeds = (self.address(first),) if first is not None else ()
        config = self.config(node_id, site, seeds)
        agent = Agent(
            config, self.root / f"{node_id}.status.json", 1.0, boot_overrides=LOOPBACK_BOOT
        )
        agent.start()
        self.agents[node_id] = agent
        return agent

    def address(self, node_id: str) -> Address:
        peer = self.agents[node_id].peer
        assert peer is not None
        return peer.address

    def counter(self, node_id: str, name: str) -> int:
        peer = self.agents[node_id].peer
        assert peer is not None
        return peer.counters.snapshot().get(name, 0)

    def holders(self, package_id: str) -> list[str]:
        """Agents whose store holds `package_id` complete (each one's report() runs too)."""
        held = []
        for node_id, agent in self.agents.items():
            assert agent.peer is not None
            assert agent.store is not None
            agent.report(agent.peer)
            current = agent.store.current()
            if current is not None and current.package_id == package_id:
                held.append(node_id)
        return held

    def publish(self, *extra: str, manifest: Path | None = None, to: str = "hq1") -> int:
        target = self.address(to)
        return main(
            [
                "publish",
                str(manifest or self.manifest_file),
                "--dir",
                str(self.package),
                "--to",
                f"{target.host}:{target.port}",
                "--cluster-key",
                str(self.key_file),
                "--pub",
                str(self.public_file),
                "--timeout-s",
                "30",
                *extra,
            ]
        )

    def stop_all(self) -> None:
        for agent in self.agents.values():
            agent.stop(clean=False)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    made = Lab(tmp_path)
    for node_id, site in (("hq1", "hq"), ("hq2", "hq"), ("br1", "branch"), ("br2", "branch")):
        made.start(node_id, site)
    yield made
    made.stop_all()


def rogue_seed(root: Path, signed: bytes, manifest: Manifest, key: bytes) -> ChunkServer:
    """A chunk service holding `manifest` (verified with `key`, whoever signed it)."""
    store = ContentStore(root, 64 << 20, key)
    store.begin(signed)
    for entry in manifest.files:
        data = FILES[entry.path]
        for index in range(len(entry.chunk_sha256)):
            store.write_chunk(entry.path, index, data[index * CHUNK : (index + 1) * CHUNK])
    assert store.complete()
    opener = WireSecurity(chunk_sender_id("rogue"), KEY, 1)
    server = ChunkServer(
        Address(LOOPBACK, 0), SharedStore(store), opener, counters=SharedCounters()
    )
    server.start()
    return server


def offer(lab: Lab, server: ChunkServer, to: str = "hq1", key: bytes = KEY) -> str:
    sealer = WireSecurity(chunk_sender_id(f"offer-{time.monotonic_ns()}"), key, 1)
    status, _ = request_once(
        lab.address(to), sealer, SeedOffer(port=server.address.port), REPLY_OVERHEAD_BYTES_MAX, 5.0
    )
    return status


def test_a_published_package_reaches_every_agent_with_one_wan_copy_per_site(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    package_id = lab.manifest.package_id
    assert lab.publish() == 0
    out = capsys.readouterr().out
    assert f"published {package_id}" in out
    assert wait_until(lambda: len(lab.holders(package_id)) == 4, SPREAD_TIMEOUT_S, 0.2), (
        lab.holders(package_id)
    )
    # The publisher's seed fed hq1 only: one copy (each chunk served once).
    assert f"served {lab.manifest.chunk_count} chunks, {TOTAL_BYTES} bytes" in out
    # hq got it over the LAN; branch across its WAN once, from its downloader only.
    wan = {node_id: lab.counter(node_id, "replication.bytes.wan") for node_id in lab.agents}
    assert wan["hq1"] == wan["hq2"] == 0
    assert wan["br1"] + wan["br2"] == TOTAL_BYTES, wan
    assert lab.counter("hq2", "replication.bytes.lan") == TOTAL_BYTES
    # Every agent serves the verified tree and is now eligible; one leads the subnet.
    for node_id, agent in lab.agents.items():
        assert agent.served_package == package_id, node_id
        assert agent.boot_server is not None, node_id
        assert agent.store is not None
        root = agent.store.served_root()
        assert root is not None
        assert (root / "images" / "boot.wim").read_bytes() == FILES["images/boot.wim"]

    def leaders() -> list[str]:
        standings = {}
        for node_id, agent in lab.agents.items():
            assert agent.peer is not None
            standings[node_id] = responder_status(agent.peer, eligible=agent.responder_eligible)
        assert all(standing["eligible"] for standing in standings.values()), standings
        return sorted(node_id[:2] for node_id, s in standings.items() if s["role"] == "leader")

    # Discovery is per site, so each site's share of the (loopback) subnet has one responder.
    assert wait_until(lambda: leaders() == ["br", "hq"], 10.0, 0.1), leaders()


def test_refused_packages_are_counted_and_change_nothing(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Tampered files: publish itself refuses before offering anything.
    wim = lab.package / "images" / "boot.wim"
    wim.write_bytes(b"X" + FILES["images/boot.wim"][1:])
    assert lab.publish() == 1
    assert "does not match the manifest" in capsys.readouterr().err
    wim.write_bytes(FILES["images/boot.wim"])

    # A manifest signed by another key, offered by a rogue seed: the agent refuses it.
    forger = bytes(SigningKey.generate())
    forged = manifest_of((9,))
    rogue = rogue_seed(
        tmp_path / "rogue", sign_manifest(forged, forger), forged, public_key(forger)
    )
    try:
        assert offer(lab, rogue) == "ok"
        assert wait_until(
            lambda: lab.counter("hq1", "chunks.manifest.refused.bad_signature") >= 1, 10.0
        )
    finally:
        rogue.stop()

    # The real package, then an older one: the rollback is refused.
    assert lab.publish() == 0
    older = manifest_of((1,))
    stale = rogue_seed(tmp_path / "stale", sign_manifest(older, SECRET), older, PUBLIC)
    try:
        assert offer(lab, stale, to="hq2") == "ok"
        assert wait_until(lambda: lab.counter("hq2", "chunks.manifest.refused.rollback") >= 1, 10.0)
    finally:
        stale.stop()
    for agent in lab.agents.values():
        assert agent.store is not None
        current = agent.store.current()
        assert current is None or current.package_id == lab.manifest.package_id

    # The wrong cluster key: the offer is refused, the connection closed.
    wrong = copy.copy(lab)
    wrong.key_file = tmp_path / "wrong.key"
    wrong.key_file.write_text(bytes(range(100, 132)).hex())
    before = lab.counter("hq1", "chunks.refused.auth")
    assert wrong.publish() == 1
    assert "did not take the offer" in capsys.readouterr().err
    assert lab.counter("hq1", "chunks.refused.auth") == before + 1


def test_a_published_policy_reaches_every_agent_and_is_applied(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`peerpxe policy publish` to hq1: every agent installs it (hq2 by gossip, the branch
    through its downloader's WAN poll, then gossip); the boot actors deny the listed MAC,
    and the branch, which the policy excludes, is never the responder."""
    assert lab.publish() == 0
    assert wait_until(lambda: len(lab.holders(lab.manifest.package_id)) == 4, SPREAD_TIMEOUT_S)
    policy = Policy(
        version=3,
        created_s=1_700_000_100,
        serve_rules=(ServeRule(serve=False, site="branch"),),
        serve_default=True,
        mac_deny=(DENIED_MAC,),
    )
    signed_file = tmp_path / "policy.signed"
    signed_file.write_bytes(sign_policy(policy, SECRET))
    hq1 = lab.address("hq1")
    started = time.monotonic()
    code = main(
        [
            "policy",
            "publish",
            str(signed_file),
            "--to",
            f"{hq1.host}:{hq1.port}",
            "--cluster-key",
            str(lab.key_file),
            "--pub",
            str(lab.public_file),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert "published policy version 3" in capsys.readouterr().out

    def versions() -> dict[str, int]:
        found = {}
        for node_id, agent in lab.agents.items():
            current = agent.policies.current() if agent.policies is not None else None
            found[node_id] = 0 if current is None else current.version
        return found

    assert wait_until(lambda: set(versions().values()) == {3}, 30.0, 0.1), versions()
    spread_s = time.monotonic() - started
    assert spread_s < 60.0  # the target: every live agent applies a new policy within 60 s
    for node_id, agent in lab.agents.items():
        assert agent.peer is not None
        denied: Any = agent.peer.inspect(ActorName.BOOT, lambda logic: logic.policy.denied_macs)
        assert DENIED_MAC in denied, node_id
        assert agent.store is not None
        assert (lab.root / f"store-{node_id}" / "policy.signed").read_bytes() == sign_policy(
            policy, SECRET
        )

    def responder(node_id: str) -> tuple[bool, str]:
        peer = lab.agents[node_id].peer
        assert peer is not None
        found: Any = peer.inspect(
            ActorName.ELECTION, lambda logic: (logic.responder.eligible, logic.responder.role.value)
        )
        return (bool(found[0]), str(found[1]))

    assert wait_until(
        lambda: all(responder(n) == (False, "follower") for n in ("br1", "br2")), 10.0, 0.1
    ), {n: responder(n) for n in lab.agents}
    assert wait_until(lambda: sum(responder(n)[1] == "leader" for n in ("hq1", "hq2")) == 1, 10.0)


def test_newer_versions_replace_the_served_one_and_old_ones_are_collected(
    lab: Lab, tmp_path: Path
) -> None:
    """v2, then v3 and v4 published: every agent serves v4 and keeps two versions."""
    for version in (2, 3, 4):
        manifest = manifest_of((version,))
        manifest_file = tmp_path / f"winpe-{version}.manifest"
        manifest_file.write_bytes(sign_manifest(manifest, SECRET))
        assert lab.publish(manifest=manifest_file) == 0
        package_id = manifest.package_id
        assert wait_until(lambda: len(lab.holders(package_id)) == 4, SPREAD_TIMEOUT_S)  # noqa: B023
    for node_id, agent in lab.agents.items():
        assert agent.served_package == "winpe-4", node_id
        packages = sorted(p.name for p in (lab.root / f"store-{node_id}" / "packages").iterdir())
        assert packages == ["winpe-3", "winpe-4"], (node_id, packages)
