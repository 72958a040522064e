"""Hosting sans-IO actors for real: one pykka thread per actor, and the `Peer` that owns them.

Theory of operation
-------------------
`LogicActor` wraps one `actors.core.Actor`. `on_start` runs `start(now_s)`; every told
event runs `handle(event, now_s)`; both return commands, which `_execute` carries out on the
actor's own thread:

- `SendMessage` -> `UdpEndpoint.send` (seal + `sendto`); an `OSError` is told back to the
  same actor as `SendFailed(address, reason)`;
- `StartTimer` / `CancelTimer` -> the peer's `TimerThread`, with a fresh generation per
  arming; a `TimerFire` whose generation is no longer armed is discarded here, so a fire
  that raced a cancel or re-arm never reaches the actor;
- `Tell` -> the sibling actor of the same peer, if hosted (otherwise counted and ignored);
- `Log` -> one `logging` line, `text key=value ...`;
- `CountMetric` -> the peer's `SharedCounters`;
- `SendDhcpReply` -> the peer's DHCP sender (`HostServices.dhcp`, the ProxyDHCP sockets in
  forwarding mode, attached with `Peer.attach_dhcp`); without one it is counted as
  `dhcp.no_sender` and dropped;
- `FetchChunk` -> the peer's chunk fetcher (`HostServices.chunks`, attached with
  `Peer.attach_chunks`), which queues it and later tells the outcome to the replication
  actor from its worker threads (`transport.chunk_fetcher`); without one it is counted as
  `chunks.no_fetcher` and told back at once as `ChunkFetchFailed(fetch, "no_fetcher")`;
- `FetchManifest` and `FetchPolicy` -> the same fetcher (`ManifestFetchFailed` /
  `PolicyFetchFailed` with "no_fetcher" without one).

Two transport-only messages let the composition root reach into an actor on its thread:
`Invoke(function)` runs `function(logic, now_s)` and executes the commands it returns (for
example `Discovery.leave`), `Inspect(function)` returns `function(logic)` to an `ask()`.

`Peer` composes one peer: the UDP endpoint (bound at construction, so its port is known
before the actors are built), the timer thread, the actors, the optional chunk service
(`attach_chunks`: a TCP `ChunkServer` on the UDP port's number, a `ChunkFetcher`, a
`SharedStore`) and the optional zeroconf adapter. `stop()` tears them down in an order
that loses nothing and leaks nothing: leave (optional, while everything still runs) -> stop
mDNS browsing and stop receiving (no more events: a departing peer must not hear, and
refute, gossip about its own departure) -> stop the chunk fetcher and server (no more
fetch results) -> stop the actors (no more sends or timers) -> mDNS goodbye and close ->
stop the timer thread -> close the socket.
"""

from __future__ import annotations

import errno
import itertools
import logging
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Protocol, cast

import pykka

from actors.codec import WIRE_VERSION
from actors.core import (
    Actor,
    ActorName,
    Address,
    CancelTimer,
    Command,
    CountMetric,
    Event,
    FetchChunk,
    FetchManifest,
    FetchPolicy,
    Log,
    LogLevel,
    MemberInfo,
    NodeId,
    SeedOffered,
    SendDhcpReply,
    SendFailed,
    SendMessage,
    StartTimer,
    Tell,
    TimerFired,
)
from actors.discovery import Discovery
from actors.election import Election
from actors.envelope import WireSecurity
from actors.messages import Message
from transport.chunk_fetcher import ChunkFetcher, FetchWork, failure_of
from transport.chunk_service import DEFAULT_KNOBS, ChunkServer, ChunkServiceKnobs, chunk_sender_id
from transport.clock import Clock, MonotonicClock
from transport.metrics import SharedCounters
from transport.policy_store import PolicyStore
from transport.shared_store import SharedStore
from transport.timers import Teller, TimerFire, TimerThread
from transport.udp import UdpEndpoint

_LOG = logging.getLogger(__name__)

EVENT_TYPES: Final[tuple[type, ...]] = typing.get_args(Event)
"""Every event an actor may be told (its host, siblings, adapters or chunk fetcher)."""
NO_FETCHER: Final = "no_fetcher"
_LOG_LEVELS: Final = {
    LogLevel.DEBUG: logging.DEBUG,
    LogLevel.INFO: logging.INFO,
    LogLevel.WARNING: logging.WARNING,
    LogLevel.ERROR: logging.ERROR,
}
ASK_TIMEOUT_S: Final = 5.0


class MessageSender(Protocol):
    """What the host needs to send: `send(address, message)`, raising `OSError` on failure."""

    def send(self, address: Address, message: Message) -> None:
        """Seal and send `message` to `address`."""
        ...


class ChunkFetcherLike(Protocol):
    """What the host needs to carry out `FetchChunk`: queue it, never block or raise."""

    def fetch(self, command: FetchWork) -> None:
        """Carry out `command` later; its outcome is told to the replication actor."""
        ...


class DhcpSender(Protocol):
    """What the host needs to carry out `SendDhcpReply`; never raises (counts failures)."""

    def send_reply(self, command: SendDhcpReply) -> None:
        """Send `command.payload` from `command.source` to `command.target`."""
        ...


@dataclass(frozen=True, slots=True)
class Invoke:
    """Run `function(logic, now_s)` on the actor's thread and execute the commands it returns."""

    function: Callable[[Any, float], list[Command]]


@dataclass(frozen=True, slots=True)
class Inspect:
    """Return `function(logic)` computed on the actor's thread (use with `ask`)."""

    function: Callable[[Any], object]


@dataclass(slots=True)
class HostServices:
    """What the actors of one peer share: identity, clock, timers, sockets, counters, siblings."""

    node_id: NodeId
    clock: Clock
    timers: TimerThread
    sender: MessageSender
    counters: SharedCounters
    siblings: dict[ActorName, Teller] = field(default_factory=dict)
    dhcp: DhcpSender | None = None
    chunks: ChunkFetcherLike | None = None


class LogicActor(pykka.ThreadingActor):
    """A pykka actor hosting one sans-IO actor and executing its commands."""

    def __init__(self, logic: Actor, services: HostServices) -> None:
        super().__init__()
        self.logic = logic
        self._services = services
        self._generations = itertools.count(1)
        self._armed: dict[str, int] = {}
        self._logger = logging.getLogger(f"peerpxe.{logic.NAME.value}")

    def on_start(self) -> None:
        self._execute(self.logic.start(self._services.clock.now_s()))

    def on_stop(self) -> None:
        self._services.timers.cancel_all(self.actor_ref)

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._services.timers.cancel_all(self.actor_ref)
        self._services.counters.add(f"actor_failed.{self.logic.NAME.value}")
        _LOG.error("actor %s failed: %r", self.logic.NAME.value, exception_value)

    def on_receive(self, message: Any) -> Any:
        now_s = self._services.clock.now_s()
        if isinstance(message, TimerFire):
            self._on_timer_fire(message, now_s)
        elif _is_event(message):
            self._execute(self.logic.handle(message, now_s))
        elif isinstance(message, Invoke):
            self._execute(message.function(self.logic, now_s))
        elif isinstance(message, Inspect):
            return message.function(self.logic)
        else:
            raise TypeError(f"{self.logic.NAME.value}: unexpected message {message!r}")
        return None

    def _on_timer_fire(self, fire: TimerFire, now_s: float) -> None:
        if self._armed.get(fire.name) != fire.generation:
            self._services.counters.add("timers.stale_fires")
            return
        del self._armed[fire.name]
        self._execute(self.logic.handle(TimerFired(fire.name), now_s))

    def _execute(self, commands: list[Command]) -> None:
        for command in commands:
            self._execute_one(command)

    def _execute_one(self, command: Command) -> None:
        match command:
            case SendMessage(address=address, message=message):
                self._send(address, message)
            case StartTimer(name=name, deadline_s=deadline_s):
                generation = next(self._generations)
                self._armed[name] = generation
                self._services.timers.arm(self.actor_ref, name, deadline_s, generation)
            case CancelTimer(name=name):
                self._armed.pop(name, None)
                self._services.timers.cancel(self.actor_ref, name)
            case Tell(target=target, event=event):
                self._tell_sibling(target, event)
            case Log():
                self._log(command)
            case CountMetric(name=name, amount=amount):
                self._services.counters.add(name, amount)
            case SendDhcpReply():
                self._send_dhcp(command)
            case FetchChunk() | FetchManifest() | FetchPolicy():
                self._fetch(command)

    def _send(self, address: Address, message: Message) -> None:
        try:
            self._services.sender.send(address, message)
        except OSError as error:
            self._services.counters.add("send.failed")
            self.actor_ref.tell(SendFailed(address, _os_error_reason(error)))

    def _send_dhcp(self, command: SendDhcpReply) -> None:
        sender = self._services.dhcp
        if sender is None:
            self._services.counters.add("dhcp.no_sender")
            return
        sender.send_reply(command)

    def _fetch(self, command: FetchWork) -> None:
        fetcher = self._services.chunks
        if fetcher is None:
            self._services.counters.add("chunks.no_fetcher")
            self.actor_ref.tell(failure_of(command, NO_FETCHER))
            return
        fetcher.fetch(command)

    def _tell_sibling(self, target: ActorName, event: Event) -> None:
        sibling = self._services.siblings.get(target)
        if sibling is None:
            self._services.counters.add(f"tell.unhosted.{target.value}")
            return
        try:
            sibling.tell(event)
        except pykka.ActorDeadError:
            self._services.counters.add(f"tell.dead.{target.value}")

    def _log(self, command: Log) -> None:
        fields = " ".join(f"{key}={_log_value(value)}" for key, value in command.fields)
        text = f"{command.text} {fields}" if fields else command.text
        self._logger.log(
            _LOG_LEVELS[command.level],
            "%s self=%s",
            text,
            self._services.node_id,
            extra={"peerpxe_fields": dict(command.fields), "node_id": self._services.node_id},
        )


def _installer(policies: PolicyStore) -> Callable[[bytes], int]:
    """Install a fetched signed policy; its version (`PackageError` if refused)."""

    def install(signed: bytes) -> int:
        return policies.install(signed).version

    return install


def _is_event(message: object) -> typing.TypeGuard[Event]:
    return isinstance(message, EVENT_TYPES)


def _log_value(value: str | int | float) -> str:
    text = str(value)
    if isinstance(value, str) and (not text or any(c.isspace() or c in '"=' for c in text)):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def _os_error_reason(error: OSError) -> str:
    if error.errno is not None and error.errno in errno.errorcode:
        return errno.errorcode[error.errno]
    return type(error).__name__


# --------------------------------------------------------------------------- the peer


@dataclass(frozen=True, slots=True)
class PeerSettings:
    """How one peer process is wired: identity, key, epoch, where to listen, mDNS or not."""

    node_id: NodeId
    cluster_key: bytes
    epoch: int
    bind: Address
    mdns_interfaces: tuple[str, ...] | None = None
    """IPv4 addresses zeroconf uses; None disables mDNS."""


class Peer:
    """One peer: endpoint, timer thread, hosted actors and (optionally) the zeroconf adapter."""

    def __init__(self, settings: PeerSettings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self.counters = SharedCounters()
        self.endpoint = UdpEndpoint(
            settings.bind,
            settings.node_id,
            settings.cluster_key,
            settings.epoch,
            counters=self.counters,
        )
        self.timers = TimerThread(self.clock, thread_name=f"peerpxe-timers-{settings.node_id}")
        self._services = HostServices(
            node_id=settings.node_id,
            clock=self.clock,
            timers=self.timers,
            sender=self.endpoint,
            counters=self.counters,
        )
        self._refs: dict[ActorName, Any] = {}
        self._mdns: Any = None
        self.chunk_server: ChunkServer | None = None
        self.chunk_fetcher: ChunkFetcher | None = None
        self._started = False
        self._stopped = False

    @property
    def address(self) -> Address:
        """Where this peer's UDP endpoint listens (the real port, also when bound to 0)."""
        return self.endpoint.address

    def start(self, logics: Sequence[Actor], advertise: MemberInfo | None = None) -> None:
        """Start timers, the actors, the receive thread and (if configured) mDNS."""
        assert not self._started, "a Peer starts once"
        self._started = True
        self.timers.start()
        for logic in logics:
            assert logic.NAME not in self._refs, f"two {logic.NAME.value} actors"
            ref = LogicActor.start(logic, self._services)
            self._refs[logic.NAME] = ref
            self._services.siblings[logic.NAME] = ref
            self.endpoint.attach(logic.NAME, ref)
        self.endpoint.start()
        if self.settings.mdns_interfaces is not None and advertise is not None:
            self._start_mdns(advertise, self.settings.mdns_interfaces)

    def tell(self, name: ActorName, event: Event) -> None:
        """Deliver `event` to the hosted actor `name`."""
        self._refs[name].tell(event)

    def invoke(self, name: ActorName, function: Callable[[Any, float], list[Command]]) -> None:
        """Run `function(logic, now_s)` on actor `name` and wait until its commands ran."""
        self._refs[name].ask(Invoke(function), timeout=ASK_TIMEOUT_S)

    def inspect(self, name: ActorName, function: Callable[[Any], object]) -> object:
        """`function(logic)` evaluated on actor `name`'s thread."""
        return self._refs[name].ask(Inspect(function), timeout=ASK_TIMEOUT_S)

    def attach_dhcp(self, sender: DhcpSender | None) -> None:
        """Carry out `SendDhcpReply` commands with `sender` from now on (None: count, drop)."""
        self._services.dhcp = sender

    def attach_chunks(
        self,
        store: SharedStore,
        *,
        serve: bool = True,
        knobs: ChunkServiceKnobs = DEFAULT_KNOBS,
        policies: PolicyStore | None = None,
    ) -> None:
        """Carry out `FetchChunk` into `store` and (with `serve`) serve its chunks over TCP.

        The server listens on the TCP port with the number of the UDP endpoint's port
        (`FetchChunk.source` is a peer's message address); `OSError` if it is taken. Both
        seal and open with `chunk_sender_id(node_id)`, never the UDP endpoint's identity
        (`transport.chunk_service`). Fetch results and inventory changes go to the
        replication actor. Call once, before or after `start`.
        """
        assert self.chunk_fetcher is None, "chunks are attached once"
        settings = self.settings
        identity = chunk_sender_id(settings.node_id)
        if serve:
            opener = WireSecurity(identity, settings.cluster_key, settings.epoch)
            server = ChunkServer(
                self.address,
                store,
                opener,
                counters=self.counters,
                knobs=knobs,
                on_seed=lambda source: self._tell_replication(SeedOffered(source)),
                policy=None if policies is None else policies.signed,
            )
            server.start()
            self.chunk_server = server
        sealer = WireSecurity(identity, settings.cluster_key, settings.epoch)
        fetcher = ChunkFetcher(
            sealer,
            store,
            self._tell_replication,
            counters=self.counters,
            knobs=knobs,
            name=settings.node_id,
            policy_installer=None if policies is None else _installer(policies),
        )
        fetcher.start()
        self.chunk_fetcher = fetcher
        store.set_listener(self._tell_replication)
        self._services.chunks = fetcher

    def resign(self) -> None:
        """Run `Election.resign` (hand over leadership at once) and wait until it is sent."""
        self.invoke(ActorName.ELECTION, _election_resign)

    def is_hosting(self, name: ActorName) -> bool:
        """Whether actor `name` is hosted and alive."""
        ref = self._refs.get(name)
        return ref is not None and bool(ref.is_alive())

    def leave(self) -> None:
        """Run `Discovery.leave` on the discovery actor and wait until its messages are sent."""
        self.invoke(ActorName.DISCOVERY, _discovery_leave)

    def stop(self, leave: bool = False) -> None:
        """Stop everything; with `leave`, announce a clean departure first."""
        if self._stopped:
            return
        self._stopped = True
        if leave and self.is_hosting(ActorName.DISCOVERY):
            try:
                self.leave()
            except (pykka.ActorDeadError, pykka.Timeout) as error:
                _LOG.warning("leave not sent: %r", error)
        if self._mdns is not None:
            self._mdns.stop_browsing()
        self.endpoint.stop()
        self._stop_chunks()
        for ref in reversed(list(self._refs.values())):
            ref.stop()
        if self._mdns is not None:
            self._mdns.close()
        self.timers.stop()
        self.endpoint.close()

    def _stop_chunks(self) -> None:
        self._services.chunks = None
        if self.chunk_fetcher is not None:
            self.chunk_fetcher.stop()
        if self.chunk_server is not None:
            self.chunk_server.stop()

    def _tell_replication(self, event: Event) -> None:
        """Deliver `event` to the replication actor from any thread (pykka `tell`)."""
        ref = self._refs.get(ActorName.REPLICATION)
        if ref is None:
            self.counters.add("tell.unhosted.replication")
            return
        try:
            ref.tell(event)
        except pykka.ActorDeadError:
            self.counters.add("tell.dead.replication")

    def _start_mdns(self, advertise: MemberInfo, interfaces: tuple[str, ...]) -> None:
        from transport.zeroconf_adapter import ZeroconfAdapter  # noqa: PLC0415 - optional

        target = self._refs.get(ActorName.DISCOVERY)
        assert target is not None, "mDNS needs a discovery actor to tell"
        self._mdns = ZeroconfAdapter(
            advertise, WIRE_VERSION, interfaces, target, counters=self.counters
        )
        self._mdns.start()


def _discovery_leave(logic: Any, now_s: float) -> list[Command]:
    return cast("Discovery", logic).leave(now_s)


def _election_resign(logic: Any, now_s: float) -> list[Command]:
    return cast("Election", logic).resign(now_s)
