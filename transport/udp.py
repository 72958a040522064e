"""UDP endpoint for peer messages: one socket, one receive thread, sealed sends.

Theory of operation
-------------------
The endpoint binds one UDP socket. Its receive thread reads datagrams, opens each with
its own `WireSecurity` (MAC check, replay window, decode) and `tell()`s
`MessageReceived(source, address, message)` to the actor that owns the message type, per
`MESSAGE_ROUTES`. Anything wrong with a datagram is remote garbage: it is dropped and
counted as `dropped.<reason>` (`bad_mac`, `replayed`, `stale_epoch`, `own_message`,
`malformed`, `unrouted`, `no_actor`); the thread never dies of it.

Sending happens on the sending actor's thread (`send()`). Sealing numbers envelopes, so it
needs one counter per peer process: a second `WireSecurity` used only for sealing, under a
lock shared by every sending actor, keeps the counter unique and increasing. The receive
side's `WireSecurity` never seals, so the two never share mutable state.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Final

import pykka

from actors.core import ActorName, Address, MessageReceived, NodeId
from actors.envelope import WireSecurity
from actors.errors import AuthenticationError, DecodeError
from actors.messages import Message
from actors.routing import MESSAGE_ROUTES
from transport.metrics import SharedCounters
from transport.timers import Teller

_LOG = logging.getLogger(__name__)

RECEIVE_BYTES_MAX: Final = 65_535  # larger than any datagram, so oversize ones are seen whole
POLL_S: Final = 0.2
"""Receive timeout: how quickly the receive thread notices `stop()`."""


class UdpEndpoint:
    """A bound UDP socket that seals outgoing and opens incoming peer messages."""

    def __init__(
        self,
        bind: Address,
        node_id: NodeId,
        cluster_key: bytes,
        epoch: int,
        *,
        counters: SharedCounters,
        routes: dict[type[Message], ActorName] = MESSAGE_ROUTES,
    ) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind((bind.host, bind.port))
        self._socket.settimeout(POLL_S)
        host, port = self._socket.getsockname()
        self.address = Address(host, port)
        self._opener = WireSecurity(node_id, cluster_key, epoch)
        self._sealer = WireSecurity(node_id, cluster_key, epoch)
        self._send_lock = threading.Lock()
        self._counters = counters
        self._routes = dict(routes)
        self._targets: dict[ActorName, Teller] = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._receive_loop, name=f"peerpxe-udp-{node_id}", daemon=True
        )

    def attach(self, name: ActorName, target: Teller) -> None:
        """Route messages owned by actor `name` to `target` (call before `start`)."""
        self._targets[name] = target

    def start(self) -> None:
        """Start the receive thread."""
        self._thread.start()

    def send(self, address: Address, message: Message) -> None:
        """Seal `message` and send it to `address`; raises `OSError` when the send fails."""
        with self._send_lock:
            data = self._sealer.seal(message)
            self._socket.sendto(data, (address.host, address.port))

    def stop(self) -> None:
        """Stop receiving (returns within `POLL_S`); sends still work until `close()`."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def close(self) -> None:
        """Stop receiving and close the socket."""
        self.stop()
        self._socket.close()

    def _receive_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                data, (host, port) = self._socket.recvfrom(RECEIVE_BYTES_MAX)
            except TimeoutError:
                continue
            except OSError as error:
                if self._stopping.is_set():
                    return
                _LOG.warning("udp receive failed: %s", error)
                self._counters.add("receive.errors")
                continue
            self._deliver(data, Address(host, port))

    def _deliver(self, data: bytes, address: Address) -> None:
        try:
            source, message = self._opener.open(data)
        except AuthenticationError as error:
            self._drop(error.reason, address)
            return
        except DecodeError:
            self._drop("malformed", address)
            return
        owner = self._routes.get(type(message))
        if owner is None:
            self._drop("unrouted", address)
            return
        target = self._targets.get(owner)
        if target is None:
            self._drop("no_actor", address)
            return
        try:
            target.tell(MessageReceived(source, address, message))
        except pykka.ActorDeadError:
            self._drop("no_actor", address)

    def _drop(self, reason: str, address: Address) -> None:
        self._counters.add(f"dropped.{reason}")
        _LOG.debug("dropped datagram from %s:%d: %s", address.host, address.port, reason)
