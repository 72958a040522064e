"""`peerpxe agent`: run one peer in the foreground until SIGTERM or SIGINT.

This module is the composition root of the real agent: it reads `agent.toml`, draws the
only randomness seed (`os.urandom`), picks the envelope epoch (`time.time_ns() // 1000`, so
it grows across restarts and old envelopes of a previous run are refused as stale), builds
the discovery actor and hands it to `transport.host.Peer`.

While running it logs membership changes and, with `--status-file`, rewrites a JSON status
(members with their states, counters such as `dropped.bad_mac`) atomically every
`--status-interval-s`: write a temporary file, fsync, rename. On SIGTERM/SIGINT it announces
LEFT to the cluster, sends the mDNS goodbye, stops every thread and exits 0. A configuration
error is one line on stderr and exit status 2; a runtime failure (cannot bind, mDNS name
conflict, the discovery actor died) is logged and exits 1.
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
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from actors.discovery import MemberView
    from peerpxe.config import AgentConfig
    from transport.host import Peer

HELP = "run the peerpxe agent in the foreground (membership via mDNS and seeds)"

_LOG = logging.getLogger("peerpxe.agent")
EXIT_OK = 0
EXIT_RUNTIME_ERROR = 1
EXIT_CONFIG_ERROR = 2


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
    """One running agent: a `Peer` hosting discovery, plus status reporting."""

    def __init__(self, config: AgentConfig, status_file: Path | None, interval_s: float) -> None:
        self.config = config
        self.status_file = status_file
        self.interval_s = interval_s
        self.epoch = time.time_ns() // 1000
        self._stop = threading.Event()
        self._states: dict[str, str] = {}

    def run(self) -> int:
        """Start, report until a stop signal, stop cleanly; the process exit status."""
        from zeroconf import Error as ZeroconfError

        try:
            peer = self._start_peer()
        except (OSError, ZeroconfError) as error:
            _LOG.error("cannot start: %s", error)
            return EXIT_RUNTIME_ERROR
        self._install_signal_handlers()
        status = EXIT_OK
        try:
            status = self._report_until_stopped(peer)
        finally:
            _LOG.info("stopping: leaving the cluster")
            peer.stop(leave=True)
            self._write_status(peer, members=[], running=False)
            _LOG.info("stopped")
        return status

    def _start_peer(self) -> Peer:
        import random

        from actors.core import Address, MemberInfo
        from actors.discovery import Discovery
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
        self_info = MemberInfo(
            node_id=config.node_id,
            site=config.site,
            subnet=config.subnet,
            address=peer.address,
            weight=config.weight,
            capabilities=config.capabilities,
        )
        # The one place real randomness enters: every logic object gets a seeded Random.
        rng = random.Random(int.from_bytes(os.urandom(16), "big"))  # noqa: S311 - not crypto
        # One seed list usually serves every machine: do not seed ourselves.
        seeds = tuple(seed for seed in config.seeds if seed != peer.address)
        discovery = Discovery(self_info, rng, config.knobs, seeds)
        try:
            peer.start([discovery], advertise=self_info)
        except BaseException:
            peer.stop()
            raise
        _LOG.info(
            "started node=%s address=%s:%d site=%s subnet=%s mdns=%s seeds=%d epoch=%d",
            config.node_id,
            peer.address.host,
            peer.address.port,
            config.site,
            config.subnet,
            config.mdns,
            len(config.seeds),
            self.epoch,
        )
        return peer

    def _install_signal_handlers(self) -> None:
        def request_stop(signum: int, _frame: object) -> None:
            _LOG.info("received %s", signal.Signals(signum).name)
            self._stop.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)

    def _report_until_stopped(self, peer: Peer) -> int:
        from actors.core import ActorName

        while True:
            if not peer.is_hosting(ActorName.DISCOVERY):
                _LOG.error("the discovery actor stopped; exiting")
                return EXIT_RUNTIME_ERROR
            members = _members(peer)
            self._log_changes(members)
            self._write_status(peer, members, running=True)
            if self._stop.wait(self.interval_s):
                return EXIT_OK

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
        try:
            write_atomically(self.status_file, json.dumps(status, indent=2, sort_keys=True))
        except OSError as error:
            _LOG.warning("cannot write status file %s: %s", self.status_file, error)


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
