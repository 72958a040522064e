"""`peerpxe agent`: run one peer in the foreground until SIGTERM or SIGINT.

This module is the composition root of the real agent: it reads `agent.toml`, draws the
only randomness seed (`os.urandom`), picks the envelope epoch (`time.time_ns() // 1000`, so
it grows across restarts and old envelopes of a previous run are refused as stale), builds
the discovery, election and boot actors and hands them to `transport.host.Peer`.

Self-healing PXE responder: when `[boot]` is enabled and the boot files are under
`boot.root` (and weight > 0), the agent is responder-eligible: it advertises the `responder`
capability, serves the files over TFTP and HTTP (every eligible peer does: one answerer,
many servers) and listens on UDP 67/4011 in forwarding mode, every datagram told to the boot
actor, which answers only while the election actor says this peer leads the subnet (or, as
rank-1 standby, a client's retry). Replies come back as `SendDhcpReply` commands, sent by
the same sockets.

While running it logs membership changes and, with `--status-file`, rewrites a JSON status
(members with their states, the responder standing, counters such as `dropped.bad_mac`)
atomically every `--status-interval-s`: write a temporary file, fsync, rename. On
SIGTERM/SIGINT it resigns leadership (`Resign`: a standby takes over at once instead of
waiting for the lease to lapse), stops answering ProxyDHCP, announces LEFT to the cluster,
sends the mDNS goodbye, stops every thread and exits 0. A configuration error is one line on
stderr and exit status 2; a runtime failure (cannot bind, mDNS name conflict, an actor died)
is logged and exits 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import random

    from actors.core import DhcpPacketReceived, MemberInfo
    from actors.discovery import MemberView
    from peerpxe.config import AgentConfig
    from transport.boot_server import BootServer, BootSettings
    from transport.host import Peer
    from transport.policy_store import PolicyStore
    from transport.shared_store import SharedStore

HELP = "run the peerpxe agent in the foreground (membership via mDNS and seeds)"

_LOG = logging.getLogger("peerpxe.agent")
EXIT_OK = 0
EXIT_RUNTIME_ERROR = 1
EXIT_CONFIG_ERROR = 2
POLICY_FILE = "policy.signed"
KEEP_PACKAGES = 2
"""Complete packages kept: the one served and the one before (a peer still fetching it when
the new one completed switches to the new one on its next Have; the old one is gone after
the next version)."""
"""The signed policy, kept next to the content store's packages."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `peerpxe agent`."""
    parser.add_argument("--config", required=True, type=Path, help="path of agent.toml")
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        help="override [log] level from the config file",
    )
    parser.add_argument(
        "--status-file",
        type=Path,
        help="rewrite this JSON file (members, states, counters) atomically while running",
    )
    parser.add_argument(
        "--status-interval-s",
        type=float,
        default=1.0,
        help="seconds between status updates and membership checks (default: 1.0)",
    )


def run(args: argparse.Namespace) -> int:
    """Load the configuration and run the agent until a stop signal."""
    from peerpxe.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"peerpxe agent: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if not args.status_interval_s > 0:
        print("peerpxe agent: --status-interval-s must be positive", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    _configure_logging(args.log_level or config.log_level)
    for warning in config.warnings:
        _LOG.warning("%s", warning)
    return Agent(config, args.status_file, args.status_interval_s).run()


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


class Agent:
    """One running agent: a `Peer` hosting discovery, election and boot, plus the boot
    servers (TFTP, HTTP, ProxyDHCP) when it may serve, plus status reporting.

    `boot_overrides` replaces fields of the `BootSettings` built from the configuration
    (loopback tests move ports 67/4011 and skip `SO_BINDTODEVICE` with it).
    """

    def __init__(
        self,
        config: AgentConfig,
        status_file: Path | None,
        interval_s: float,
        *,
        boot_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        from peerpxe.config import responder_problems

        self.config = config
        self.status_file = status_file
        self.interval_s = interval_s
        self.epoch = time.time_ns() // 1000
        self.boot_overrides = dict(boot_overrides or {})
        self.responder_problems = responder_problems(config)
        self.peer: Peer | None = None
        self.boot_server: BootServer | None = None
        self.store: SharedStore | None = None
        self.policies: PolicyStore | None = None
        """The signed policy (with `[replication]`: it spreads the way packages do)."""
        self.served_package = ""
        """The package whose verified tree the boot servers serve ("" : `boot.root`)."""
        self._stop = threading.Event()
        self._wake = threading.Event()
        """Set by a stop request or a package completing: report (and serve) at once."""
        self._states: dict[str, str] = {}

    @property
    def responder_eligible(self) -> bool:
        """May this agent be elected the subnet's PXE responder?"""
        return not self.responder_problems

    def run(self) -> int:
        """Start, report until a stop signal, stop cleanly; the process exit status."""
        from zeroconf import Error as ZeroconfError

        try:
            peer = self.start()
        except (OSError, ZeroconfError) as error:
            _LOG.error("cannot start: %s", error)
            return EXIT_RUNTIME_ERROR
        self._install_signal_handlers()
        status = EXIT_OK
        try:
            status = self._report_until_stopped(peer)
        finally:
            self.stop()
            _LOG.info("stopped")
        return status

    def start(self) -> Peer:
        """Start the peer and its actors, then the boot servers; stop all on failure."""
        if self.config.replication.enabled:
            self.store = self._open_store()
            self.policies = self._open_policies()
            self.responder_problems = self._package_problems()
        self._log_eligibility()
        peer = self._start_peer()
        self.peer = peer
        try:
            self.boot_server = self._start_boot_server(peer)
        except BaseException:
            peer.stop()
            raise
        return peer

    def stop(self, *, clean: bool = True) -> None:
        """Resign, stop ProxyDHCP, leave, stop (`clean`); or just stop, like a crash."""
        peer = self.peer
        if peer is None:
            return
        if clean:
            _LOG.info("stopping: resigning and leaving the cluster")
            self._resign(peer)
        if self.boot_server is not None:
            self.boot_server.stop()
        peer.stop(leave=clean)
        self._write_status(peer, members=[], running=False)

    def _resign(self, peer: Peer) -> None:
        import pykka

        from actors.core import ActorName

        if not peer.is_hosting(ActorName.ELECTION):
            return
        try:
            peer.resign()
        except (pykka.ActorDeadError, pykka.Timeout) as error:
            _LOG.warning("resignation not sent: %r", error)

    def _open_store(self) -> SharedStore:
        """The content store of `[replication]` (raises `OSError`/`ContentStoreError`)."""
        from transport.content_store import ContentStore
        from transport.shared_store import SharedStore

        replication = self.config.replication
        assert replication.store is not None
        replication.store.mkdir(parents=True, exist_ok=True)
        store = ContentStore(replication.store, replication.quota_bytes, replication.publisher_key)
        return SharedStore(store)

    def _open_policies(self) -> PolicyStore:
        from transport.policy_store import PolicyStore

        replication = self.config.replication
        assert replication.store is not None
        return PolicyStore(replication.store / POLICY_FILE, replication.publisher_key)

    def _apply_policy(self, peer: Peer) -> None:
        """Apply the policy held: who may serve (election), who is answered and with which
        boot file (boot actor). Called at start and whenever a newer policy is installed."""
        from actors.core import ActorName, ServePermission
        from actors.policy import policy_allows_serving

        policy = self.policies.current() if self.policies is not None else None
        if policy is None:
            return
        config = self.config
        allowed = policy_allows_serving(
            policy, config.site, config.subnet, config.node_id, config.capabilities
        )
        peer.tell(ActorName.ELECTION, ServePermission(allowed))
        self._tell_boot_policy(peer)
        _LOG.info("policy %d applied: may serve PXE=%s", policy.version, allowed)

    def _tell_boot_policy(self, peer: Peer) -> None:
        """Tell the boot actor what it answers with: the served files, under the policy."""
        from actors.core import ActorName, BootPolicyChanged
        from actors.policy import proxy_policy_with
        from transport.boot_server import boot_policy

        proxy = boot_policy(self._boot_settings())
        policy = self.policies.current() if self.policies is not None else None
        if policy is not None:
            proxy = proxy_policy_with(policy, proxy)
        peer.tell(ActorName.BOOT, BootPolicyChanged(proxy))

    def _tell_eligible(self, peer: Peer, *, eligible: bool) -> None:
        from actors.core import ActorName, EligibilityChanged
        from actors.election import RESPONDER_CAPABILITY

        peer.tell(ActorName.ELECTION, EligibilityChanged(RESPONDER_CAPABILITY, eligible))

    def _package_problems(self) -> list[str]:
        """Why the store's package cannot be served (empty: it can), with replication."""
        from peerpxe.config import responder_problems

        problems = responder_problems(self.config)
        if problems or self.store is None:
            return problems
        manifest = self.store.current()
        if manifest is None:
            return ["no verified boot package yet (replication)"]
        if not any(manifest.boot_files.get(key) for key in ("bios", "efi64", "arm64")):
            return [f"package {manifest.package_id} names no bios, efi64 or arm64 boot file"]
        return []

    def _log_eligibility(self) -> None:
        if self.responder_eligible:
            _LOG.info("responder-eligible: boot files present under %s", self.config.boot.root)
        elif self.config.boot.enabled:
            _LOG.warning("not responder-eligible: %s", "; ".join(self.responder_problems))

    def _start_peer(self) -> Peer:
        from actors.boot.actor import Boot, BootKnobs
        from actors.core import Address
        from actors.discovery import Discovery
        from actors.election import DOWNLOADER_CAPABILITY, RESPONDER_CAPABILITY, Election
        from actors.replication import Replication
        from transport.boot_server import boot_policy
        from transport.host import Peer, PeerSettings

        config = self.config
        settings = PeerSettings(
            node_id=config.node_id,
            cluster_key=config.cluster_key,
            epoch=self.epoch,
            bind=Address(config.address, config.port),
            mdns_interfaces=(config.address,) if config.mdns else None,
        )
        peer = Peer(settings)
        self_info = self._member_info(peer.address)
        # The one place real randomness enters: every logic object gets its own seeded Random.
        seed = os.urandom(16).hex()
        names = ("discovery", "election", "replication")
        rngs = {name: _rng(f"{seed}:{config.node_id}:{name}") for name in names}
        # One seed list usually serves every machine: do not seed ourselves.
        seeds = tuple(seed for seed in config.seeds if seed != peer.address)
        discovery = Discovery(self_info, rngs["discovery"], config.knobs, seeds)
        election = Election(
            self_info,
            rngs["election"],
            config.election,
            responder_eligible=self.responder_eligible,
            downloader_eligible=DOWNLOADER_CAPABILITY in self_info.capabilities,
            never=() if config.boot.enabled else (RESPONDER_CAPABILITY,),
        )
        boot_knobs = BootKnobs(
            answer_retries_as_standby=config.boot.answer_retries_as_standby,
            spread_file_servers=config.boot.spread_file_servers,
        )
        policy = boot_policy(self._boot_settings())
        boot = Boot(self_info, policy, self._boot_settings().server, boot_knobs)
        actors: list[Any] = [discovery, election, boot]
        if self.store is not None:
            knobs, wan = config.replication.knobs, config.replication.wan_sources
            replication = Replication(
                self_info, rngs["replication"], knobs, wan, tells_eligibility=False
            )
            actors.append(replication)
        try:
            peer.start(actors, advertise=self_info)
            if self.store is not None:
                self._attach_store(peer, self.store)
        except BaseException:
            peer.stop()
            raise
        _LOG.info(
            "started node=%s address=%s:%d site=%s subnet=%s mdns=%s seeds=%d epoch=%d"
            " responder_eligible=%s",
            config.node_id,
            peer.address.host,
            peer.address.port,
            config.site,
            config.subnet,
            config.mdns,
            len(config.seeds),
            self.epoch,
            self.responder_eligible,
        )
        return peer

    def _attach_store(self, peer: Peer, store: SharedStore) -> None:
        """Serve and fetch chunks, and tell the replication actor what the store holds."""
        from actors.core import ActorName, PolicyInstalled

        policies = self.policies
        peer.attach_chunks(store, policies=policies)
        store.set_completion_listener(self._wake.set)  # serve a completed package at once
        for event in store.announce():
            peer.tell(ActorName.REPLICATION, event)
        if policies is not None:
            policies.set_listener(lambda _policy: self._apply_policy(peer))
            held = policies.current()
            if held is not None:
                self._apply_policy(peer)
                peer.tell(ActorName.REPLICATION, PolicyInstalled(held.version))
        current = store.current()
        _LOG.info(
            "replication: store=%s package=%s wan_sources=%d",
            self.config.replication.store,
            current.package_id if current is not None else "none",
            len(self.config.replication.wan_sources),
        )

    def _member_info(self, address: Any) -> MemberInfo:
        from actors.core import MemberInfo
        from actors.election import DOWNLOADER_CAPABILITY, RESPONDER_CAPABILITY

        config = self.config
        # "responder" is a claim others act on: it comes from eligibility, never from tags.
        claims = (RESPONDER_CAPABILITY, DOWNLOADER_CAPABILITY)
        capabilities = tuple(c for c in config.capabilities if c not in claims)
        if self.responder_eligible:
            capabilities += (RESPONDER_CAPABILITY,)
        if config.replication.enabled and config.weight > 0:
            capabilities += (DOWNLOADER_CAPABILITY,)
        return MemberInfo(
            node_id=config.node_id,
            site=config.site,
            subnet=config.subnet,
            address=address,
            weight=config.weight,
            capabilities=capabilities,
        )

    def _boot_settings(self) -> BootSettings:
        import dataclasses

        from transport.boot_server import BootSettings

        boot = self.config.boot
        root, files, ipxe_script = boot.root or Path(), boot.files, boot.ipxe_script
        manifest = self.store.current() if self.store is not None else None
        served_root = self.store.served_root() if self.store is not None else None
        if manifest is not None and served_root is not None:
            root, files, ipxe_script = served_root, manifest.boot_files, manifest.ipxe_script
        settings = BootSettings(
            root=root,
            server=boot.server,
            bind=boot.server,
            dhcp_interface=boot.interface if self.responder_eligible else None,
            bios_file=files.get("bios"),
            efi64_file=files.get("efi64"),
            arm64_file=files.get("arm64"),
            ipxe_script=ipxe_script,
            http_port=boot.http_port,
            tftp_port=boot.tftp_port,
        )
        return dataclasses.replace(settings, **self.boot_overrides)

    def _start_boot_server(self, peer: Peer) -> BootServer | None:
        """TFTP + HTTP (+ ProxyDHCP forwarding to the boot actor when eligible), or None when
        there is nothing to serve (boot disabled or files missing)."""
        from peerpxe.config import missing_boot_files
        from transport.boot_server import build_boot_server
        from transport.dhcp_socket import ProxyDhcpServer

        if not self.config.boot.enabled:
            return None
        if self.store is not None:
            current = self.store.current()
            if current is None or self.responder_problems:
                return None
            self.served_package = current.package_id
        elif missing_boot_files(self.config.boot):
            return None
        server = build_boot_server(
            self._boot_settings(), peer.counters, on_dhcp_packet=_teller_to_boot(peer)
        )
        proxy = server.component(ProxyDhcpServer.name)
        if isinstance(proxy, ProxyDhcpServer):
            peer.attach_dhcp(proxy)
        server.start()
        return server

    def _install_signal_handlers(self) -> None:
        def request_stop(signum: int, _frame: object) -> None:
            _LOG.info("received %s", signal.Signals(signum).name)
            self._stop.set()
            self._wake.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)

    def _report_until_stopped(self, peer: Peer) -> int:
        from actors.core import ActorName

        names = [ActorName.DISCOVERY, ActorName.ELECTION, ActorName.BOOT]
        if self.store is not None:
            names.append(ActorName.REPLICATION)
        while True:
            for name in names:
                if not peer.is_hosting(name):
                    _LOG.error("the %s actor stopped; exiting", name.value)
                    return EXIT_RUNTIME_ERROR
            self.report(peer)
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return EXIT_OK

    def report(self, peer: Peer) -> None:
        """Log membership changes and rewrite the status file (one status interval's work)."""
        members = _members(peer)
        self._log_changes(members)
        self._follow_package(peer)
        self._write_status(peer, members, running=True)

    def _follow_package(self, peer: Peer) -> None:
        """Serve the store's newest verified package once it is complete (and each later one):
        the boot servers restart on its tree; the election already heard of it."""
        if self.store is None or not self.config.boot.enabled:
            return
        current = self.store.current()
        if current is None or current.package_id == self.served_package:
            return
        self.responder_problems = self._package_problems()
        if self.responder_problems:
            _LOG.warning(
                "cannot serve %s: %s", current.package_id, "; ".join(self.responder_problems)
            )
            self.served_package = current.package_id
            self._tell_eligible(peer, eligible=False)
            return
        old = self.boot_server
        self.boot_server = None
        if old is not None:
            old.stop()
        try:
            self.boot_server = self._start_boot_server(peer)
        except OSError as error:
            _LOG.error("cannot serve package %s: %s", current.package_id, error)
            self.served_package = current.package_id
            return
        self._tell_boot_policy(peer)  # the new package's boot files (under the policy)
        self._tell_eligible(peer, eligible=True)  # only now: the boot servers serve its tree
        removed = self.store.collect(keep=KEEP_PACKAGES)
        if removed:
            _LOG.info("collected old packages: %s", ", ".join(removed))
        _LOG.info(
            "serving verified package %s from %s", current.package_id, self.store.served_root()
        )

    def _log_changes(self, members: list[MemberView]) -> None:
        for view in members:
            node_id, state = view.member.node_id, view.state.value
            before = self._states.get(node_id)
            if before == state:
                continue
            self._states[node_id] = state
            address = f"{view.member.address.host}:{view.member.address.port}"
            if before is None:
                _LOG.info("member %s appeared state=%s address=%s", node_id, state, address)
            else:
                _LOG.info("member %s %s -> %s", node_id, before, state)
        present = {view.member.node_id for view in members}
        for node_id in [node_id for node_id in self._states if node_id not in present]:
            _LOG.info("member %s forgotten", node_id)
            del self._states[node_id]

    def _write_status(self, peer: Peer, members: list[MemberView], *, running: bool) -> None:
        if self.status_file is None:
            return
        status = status_document(self.config, peer, members, running=running, epoch=self.epoch)
        status["responder"] = responder_status(peer, eligible=self.responder_eligible)
        if self.store is not None:
            status["replication"] = replication_status(peer, self.store, self.served_package)
            policy = self.policies.current() if self.policies is not None else None
            status["policy"] = {"version": 0 if policy is None else policy.version}
        try:
            write_atomically(self.status_file, json.dumps(status, indent=2, sort_keys=True))
        except OSError as error:
            _LOG.warning("cannot write status file %s: %s", self.status_file, error)


def _rng(seed: str) -> random.Random:
    import random

    return random.Random(seed)  # noqa: S311 - not crypto


def _teller_to_boot(peer: Peer) -> Any:
    """The ProxyDHCP callback: tell each datagram to the boot actor (counted if it is gone)."""
    import pykka

    from actors.core import ActorName

    def tell(event: DhcpPacketReceived) -> None:
        try:
            peer.tell(ActorName.BOOT, event)
        except pykka.ActorDeadError:
            peer.counters.add("dhcp.no_actor")

    return tell


def responder_status(peer: Peer, *, eligible: bool) -> dict[str, Any]:
    """This peer's standing in its subnet's responder election, read on the actor's thread.

    `role` is leader, candidate or follower; `leader` the node followed or held ("" when
    none is known); `standby_rank` the 1-based place in the line of succession (0: none).
    """
    import pykka

    from actors.core import ActorName

    def standing(logic: Any) -> dict[str, Any]:
        scope = logic.responder
        return {
            "role": scope.role.value,
            "term": scope.ballot[0],
            "leader": scope.leader,
            "standby_rank": scope.standby_rank(),
        }

    document: dict[str, Any] = {"role": "follower", "term": 0, "leader": "", "standby_rank": 0}
    if peer.is_hosting(ActorName.ELECTION):
        try:
            found: Any = peer.inspect(ActorName.ELECTION, standing)
            document = found
        except (pykka.ActorDeadError, pykka.Timeout):
            pass
    return {**document, "eligible": eligible}


def replication_status(peer: Peer, store: SharedStore, served: str) -> dict[str, Any]:
    """The replication actor's progress and role, and what the store holds and serves."""
    import pykka

    from actors.core import ActorName

    def progress(logic: Any) -> dict[str, Any]:
        held, total = logic.progress()
        target = logic.target_package()
        return {"target": target, "held": held, "total": total, "downloader": logic.downloader}

    document: dict[str, Any] = {"target": "", "held": 0, "total": 0, "downloader": False}
    if peer.is_hosting(ActorName.REPLICATION):
        try:
            found: Any = peer.inspect(ActorName.REPLICATION, progress)
            document = found
        except (pykka.ActorDeadError, pykka.Timeout):
            pass
    current = store.current()
    complete = "" if current is None else current.package_id
    return {**document, "complete": complete, "served": served}


def _members(peer: Peer) -> list[MemberView]:
    from actors.core import ActorName

    found: Any = peer.inspect(ActorName.DISCOVERY, lambda logic: logic.members())
    members: list[MemberView] = found
    return members


def status_document(
    config: AgentConfig, peer: Peer, members: list[MemberView], *, running: bool, epoch: int
) -> dict[str, Any]:
    """The JSON-ready status of a running agent."""
    return {
        "node_id": config.node_id,
        "address": f"{peer.address.host}:{peer.address.port}",
        "site": config.site,
        "subnet": config.subnet,
        "epoch": epoch,
        "running": running,
        "pid": os.getpid(),
        "members": [
            {
                "node_id": view.member.node_id,
                "state": view.state.value,
                "incarnation": view.incarnation,
                "address": f"{view.member.address.host}:{view.member.address.port}",
                "site": view.member.site,
                "subnet": view.member.subnet,
                "weight": view.member.weight,
            }
            for view in members
        ],
        "counters": peer.counters.snapshot(),
    }


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` so readers see the old or the new file, never a mix."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
