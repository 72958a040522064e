"""The simulated world: clock, network, mDNS, nodes, trace, and who watches them.

`World` owns the SimPy environment and every `SimNode`, in creation order (the order in which
anything is ever iterated). Faults go through it (`start`, `crash`, `stop`, `partition`,
`heal`, `set_slow`) so that each one is traced and reported to the listeners (checkers,
metrics) at the simulated time it happens; so do the membership and leadership changes the
nodes' actors tell each other. DHCP replies of the boot actors go to `dhcp_clients`, the
simulated PXE clients, when there are any; chunk fetches of the replication actors go to
`chunk_service` (`sim.replication_host`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import simpy

from actors.core import (
    ActorName,
    Address,
    Counters,
    FetchChunk,
    FetchManifest,
    FetchPolicy,
    LeadershipChanged,
    Log,
    MemberChanged,
    MemberInfo,
    NodeId,
    PolicyFetchFailed,
    SendDhcpReply,
)
from sim.host import ActorBuilder, SimNode
from sim.mdns import Mdns
from sim.network import MAIN_SIDE, Network, NetworkSpec
from sim.trace import Trace

if TYPE_CHECKING:
    from collections.abc import Callable


class Listener(Protocol):
    """Something that watches the run (invariant checkers, metrics)."""

    def member_changed(self, now_s: float, observer: SimNode, event: MemberChanged) -> None:
        """`observer`'s discovery changed its view of `event.member`."""
        ...

    def lifecycle(self, now_s: float, node: SimNode | None, what: str) -> None:
        """`node` started, crashed, stopped, was partitioned or made slow; None: healed."""
        ...

    def leadership_changed(self, now_s: float, node: SimNode, event: LeadershipChanged) -> None:
        """`node`'s election told its siblings that its standing in `event.scope` changed."""
        ...


class DhcpClients(Protocol):
    """Where the boot actors' DHCP replies go (the simulated PXE clients)."""

    def on_reply(self, node: SimNode, command: SendDhcpReply) -> None:
        """`node`'s boot actor sent `command` (a broadcast offer or a unicast 4011 answer)."""
        ...


class ChunkService(Protocol):
    """Where the replication actors' `FetchChunk` commands go (`sim.replication_host`)."""

    def fetch(self, node: SimNode, command: FetchChunk) -> None:
        """`node`'s replication actor asks for a chunk."""
        ...

    def fetch_manifest(self, node: SimNode, command: FetchManifest) -> None:
        """`node`'s replication actor asks for a signed manifest."""
        ...


class World:
    """Every simulated thing of one run."""

    def __init__(
        self, seed: int, network: NetworkSpec, cluster_key: bytes, trace: Trace | None = None
    ) -> None:
        self.seed = seed
        self.env = simpy.Environment()
        self.network = Network(network, seed)
        self.mdns = Mdns(self, seed)
        self.trace = trace if trace is not None else Trace()
        self.cluster_key = cluster_key
        self.nodes: dict[NodeId, SimNode] = {}
        self.by_address: dict[Address, SimNode] = {}
        self.members: dict[NodeId, SimNode] = {}
        """Nodes holding the cluster key (forged nodes are in `nodes` but not here)."""
        self.listeners: list[Listener] = []
        self.dropped = Counters()
        self.events = 0
        self.log_sink: Callable[[float, SimNode, Log], None] | None = None
        self.dhcp_clients: DhcpClients | None = None
        self.chunk_service: ChunkService | None = None
        self._sides: dict[str, int] = {}
        self.client_sides: dict[str, int] = {}
        """Subnets whose PXE clients a switch failure moved off the main side."""
        """Named partition sides (`partition_join`), until the next heal."""

    def add_node(
        self, info: MemberInfo, build: ActorBuilder, cluster_key: bytes | None = None
    ) -> SimNode:
        """Create a node (not started); a different `cluster_key` makes it a forged node."""
        assert info.node_id not in self.nodes, f"duplicate node id {info.node_id}"
        assert info.address not in self.by_address, f"duplicate address {info.address}"
        port = self.network.attach(info.address, info.site, info.subnet)
        key = self.cluster_key if cluster_key is None else cluster_key
        node = SimNode(self, info, port, key, build)
        self.nodes[info.node_id] = node
        self.by_address[info.address] = node
        if key == self.cluster_key:
            self.members[info.node_id] = node
        return node

    # ----------------------------------------------------------------------- faults

    def start(self, node: SimNode, announce: bool = True) -> None:
        """Start (or restart) `node`; mDNS announces it to its subnet unless told not to."""
        node.start()
        self._lifecycle(node, "start" if node.life == 1 else "restart")
        if announce:
            self.mdns.node_started(node)

    def crash(self, node: SimNode) -> None:
        """Kill `node` without a word (kill -9, power loss)."""
        node.crash()
        self.mdns.node_gone(node, clean=False)
        self._lifecycle(node, "crash")

    def stop(self, node: SimNode) -> None:
        """Stop `node` cleanly: it says goodbye by discovery and by mDNS."""
        node.stop()
        self.mdns.node_gone(node, clean=True)
        self._lifecycle(node, "stop")

    def partition(self, nodes: list[SimNode]) -> None:
        """Cut `nodes` off from everyone else."""
        side = self.network.partition([node.address for node in nodes])
        for node in nodes:
            self._lifecycle(node, f"partition {side}")

    def partition_join(
        self, nodes: list[SimNode], label: str, clients_of: str | None = None
    ) -> None:
        """Move `nodes` to the partition side named `label` (a new side on first use), and
        with them the PXE clients of subnet `clients_of` (a switch failure cuts a subnet's
        machines off together: they still reach each other)."""
        addresses = [node.address for node in nodes] + self._client_ports(clients_of)
        side = self._sides.get(label)
        if side is None:
            side = self._sides[label] = self.network.partition(addresses)
        else:
            self.network.move(addresses, side)
        if clients_of is not None:
            self.client_sides[clients_of] = side
        for node in nodes:
            self._lifecycle(node, f"partition {side}")

    def rejoin(self, nodes: list[SimNode], clients_of: str | None = None) -> None:
        """Bring `nodes` (and subnet `clients_of`'s PXE clients) back to the main network."""
        addresses = [node.address for node in nodes] + self._client_ports(clients_of)
        self.network.move(addresses, MAIN_SIDE)
        if clients_of is not None:
            self.client_sides.pop(clients_of, None)
        for node in nodes:
            self._lifecycle(node, f"partition {MAIN_SIDE}")

    def clients_side(self, subnet: str) -> int:
        """The partition side the PXE clients of `subnet` are on."""
        return self.client_sides.get(subnet, MAIN_SIDE)

    def _client_ports(self, subnet: str | None) -> list[Address]:
        if subnet is None:
            return []
        return [address for address, port in self.network.ports.items()
                if port.subnet == subnet and address not in self.by_address]  # fmt: skip

    def heal(self) -> None:
        """Remove every partition."""
        self._sides.clear()
        self.client_sides.clear()
        self.network.heal()
        self.trace.record(self.env.now, "-", "heal", "")
        for listener in self.listeners:
            listener.lifecycle(self.env.now, None, "heal")

    def set_slow(self, node: SimNode, delay_s: float) -> None:
        """Make `node` handle each incoming message `delay_s` late (0 restores it)."""
        self.network.set_slow(node.address, delay_s)
        self._lifecycle(node, f"slow {delay_s:.6f}")

    # ----------------------------------------------------------------------- from nodes

    def drop(self, node: SimNode, reason: str) -> None:
        """`node` dropped an incoming datagram for `reason`."""
        self.dropped.add(reason)
        node.counters.add(f"dropped.{reason}")
        self.trace.record(self.env.now, node.node_id, "drop", reason)

    def member_changed(self, observer: SimNode, event: MemberChanged) -> None:
        """`observer`'s discovery told its peers' actors that a member changed."""
        now_s = self.env.now
        member = event.member
        self.trace.record(
            now_s,
            observer.node_id,
            "member",
            f"{member.node_id} {event.state.value} {event.incarnation}",
        )
        for listener in self.listeners:
            listener.member_changed(now_s, observer, event)

    def leadership_changed(self, node: SimNode, event: LeadershipChanged) -> None:
        """`node`'s election actor told its siblings a new standing (leading, standby rank)."""
        now_s = self.env.now
        detail = (
            f"{event.scope} {int(event.leading)} {event.term} {event.leader} {event.standby_rank}"
        )
        self.trace.record(now_s, node.node_id, "lead", detail)
        for listener in self.listeners:
            listener.leadership_changed(now_s, node, event)

    def dhcp_reply(self, node: SimNode, command: SendDhcpReply) -> None:
        """`node`'s boot actor answered a PXE client: carry the reply to the client(s)."""
        if self.dhcp_clients is None:
            self.dropped.add("dhcp_no_client")
            return
        self.dhcp_clients.on_reply(node, command)

    def fetch_manifest(self, node: SimNode, command: FetchManifest) -> None:
        """`node`'s replication actor asks for a manifest: the chunk service answers."""
        assert self.chunk_service is not None, "a replication actor runs without a chunk service"
        self.chunk_service.fetch_manifest(node, command)

    def fetch_policy(self, node: SimNode, command: FetchPolicy) -> None:
        """`node`'s replication actor asks for the signed policy: the sim publishes none, so
        the answer is `not_held`, as a real chunk service without a policy says."""
        node.deliver(ActorName.REPLICATION, PolicyFetchFailed(command, "not_held"), 0.001)

    def fetch_chunk(self, node: SimNode, command: FetchChunk) -> None:
        """`node`'s replication actor asks for a chunk: the chunk service transfers it."""
        assert self.chunk_service is not None, "a replication actor runs without a chunk service"
        self.chunk_service.fetch(node, command)

    def log(self, node: SimNode, command: Log) -> None:
        """A `Log` command: handed to the optional sink, never part of the digest."""
        if self.log_sink is not None:
            self.log_sink(self.env.now, node, command)

    def _lifecycle(self, node: SimNode, what: str) -> None:
        self.trace.record(self.env.now, node.node_id, "life", what)
        for listener in self.listeners:
            listener.lifecycle(self.env.now, node, what)
