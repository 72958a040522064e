"""Modelled TFTP downloads of the boot program: bandwidth shared per peer, cut by faults.

Theory of operation
-------------------
A download moves `boot_file_bytes` from one serving peer to one PXE client. Each peer has
`bandwidth_bytes_per_s`, shared equally by its concurrent downloads (processor sharing: with
n downloads, each advances at bandwidth / n), so a boot storm on one peer slows every client
of that peer. Whenever a download starts or ends on a peer, the others' progress is brought
up to date and the next completion is scheduled again; a generation number per peer voids
the earlier schedule. Packet-level TFTP (RFC 1350 lock-step, windowsize) is not modelled:
`actors.boot.tftp_transfer` and the real-world tests cover it.

A download fails when its peer crashes or stops, or a partition separates it from its client,
and at once when it starts against a peer that is down or unreachable. The firmware only
notices after hearing nothing for `FAILURE_NOTICED_S`; the failure is reported then, with a
reason: `server down`, `server crashed`, `server stopped` or `partitioned`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from sim.host import Scheduled, schedule

if TYPE_CHECKING:
    from actors.core import Address, NodeId
    from sim.host import SimNode
    from sim.world import World

FAILURE_NOTICED_S: Final = 4.0
"""How long a firmware waits on a silent TFTP server (a few retransmissions) before giving up."""
DONE_BYTES_TOLERANCE: Final = 1e-3
"""Remaining bytes below this count as done (floating-point residue of the sharing)."""

DoneCallback = Callable[[int, bool, str], None]
"""(client id, succeeded, failure reason)"""


@dataclass(slots=True)
class _Download:
    client_id: int
    client: Address
    remaining_bytes: float


@dataclass(slots=True)
class _Server:
    node: SimNode
    downloads: dict[int, _Download] = field(default_factory=dict)
    updated_s: float = 0.0
    generation: int = 0


class TftpModel:
    """Every boot-program download of a run, grouped by serving peer."""

    def __init__(
        self, world: World, size_bytes: int, bandwidth_bytes_per_s: float, on_done: DoneCallback
    ) -> None:
        assert size_bytes > 0
        assert bandwidth_bytes_per_s > 0
        self._world = world
        self._size_bytes = size_bytes
        self._bandwidth_bytes_per_s = bandwidth_bytes_per_s
        self._on_done = on_done
        self._servers: dict[NodeId, _Server] = {}
        self._check_callbacks = (self._on_check,)
        self._failure_callbacks = (self._on_failure_noticed,)
        self.started = 0
        self.failed = 0

    def start(self, client_id: int, client: Address, server: SimNode | None) -> None:
        """Client `client_id` at `client` starts downloading from `server` (None: no peer)."""
        self.started += 1
        world = self._world
        if server is None or not server.running:
            self._fail(client_id, "server down")
            return
        if not world.network.reachable(client, server.address):
            self._fail(client_id, "partitioned")
            return
        entry = self._servers.get(server.node_id)
        if entry is None:
            entry = self._servers[server.node_id] = _Server(server)
        self._advance(entry)
        entry.downloads[client_id] = _Download(client_id, client, float(self._size_bytes))
        self._reschedule(entry)

    def node_lost(self, node: SimNode, reason: str) -> None:
        """`node` crashed or stopped: every download it serves fails."""
        entry = self._servers.get(node.node_id)
        if entry is None or not entry.downloads:
            return
        failed = list(entry.downloads)
        entry.downloads.clear()
        entry.generation += 1
        for client_id in failed:
            self._fail(client_id, reason)

    def topology_changed(self) -> None:
        """A partition: downloads whose client and server no longer reach each other fail."""
        reachable = self._world.network.reachable
        for entry in self._servers.values():
            cut = [
                download.client_id
                for download in entry.downloads.values()
                if not reachable(download.client, entry.node.address)
            ]
            if not cut:
                continue
            self._advance(entry)
            for client_id in cut:
                del entry.downloads[client_id]
                self._fail(client_id, "partitioned")
            self._reschedule(entry)

    # ----------------------------------------------------------------------- sharing

    def _advance(self, entry: _Server) -> None:
        """Bring every download of `entry` up to the current time."""
        now_s = self._world.env.now
        downloads = entry.downloads
        if downloads:
            moved_bytes = (now_s - entry.updated_s) * self._bandwidth_bytes_per_s / len(downloads)
            for download in downloads.values():
                download.remaining_bytes -= moved_bytes
        entry.updated_s = now_s

    def _reschedule(self, entry: _Server) -> None:
        entry.generation += 1
        downloads = entry.downloads
        if not downloads:
            return
        soonest_bytes = max(0.0, min(d.remaining_bytes for d in downloads.values()))
        delay_s = soonest_bytes * len(downloads) / self._bandwidth_bytes_per_s
        item = Scheduled(self._check_callbacks, entry.generation, entry, None)
        schedule(self._world.env, item, delay_s)

    def _on_check(self, item: Scheduled) -> None:
        entry: _Server = item.first
        if item.life != entry.generation:
            return
        self._advance(entry)
        done = [
            client_id
            for client_id, download in entry.downloads.items()
            if download.remaining_bytes <= DONE_BYTES_TOLERANCE
        ]
        for client_id in done:
            del entry.downloads[client_id]
        self._reschedule(entry)
        for client_id in done:
            self._on_done(client_id, True, "")

    # ----------------------------------------------------------------------- failures

    def _fail(self, client_id: int, reason: str) -> None:
        self.failed += 1
        item = Scheduled(self._failure_callbacks, 0, client_id, reason)
        schedule(self._world.env, item, FAILURE_NOTICED_S)

    def _on_failure_noticed(self, item: Scheduled) -> None:
        self._on_done(item.first, False, item.second)
