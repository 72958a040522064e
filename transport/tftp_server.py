"""Read-only TFTP server: port 69, one ephemeral socket per transfer, one event-loop thread.

Theory of operation
-------------------
`TftpServer(root, listen).start()` binds the listening socket (port 69 unless told
otherwise) and starts one thread that waits on an epoll set holding the listening socket,
every transfer's socket and a wake-up socket for `stop()`. There is no thread per transfer:
the protocol work is the pure `actors.boot.tftp_transfer.ReadTransfer`, and this module only
moves its datagrams and keeps its timers.

A read request (RRQ) on the listening socket goes through:

1. **Decode and admit** (`tftp_packet.decode`, `tftp_transfer.admit_request`): malformed
   datagrams are counted (`tftp.malformed`) and dropped; WRQ (read-only server), unknown
   modes and names refused by `validate_read_path` (`..`, UNC, `:`, control characters,
   ...) get an ERROR (2 or 4) from the listening socket. DATA, ACK, OACK or ERROR sent to
   port 69 are counted (`tftp.unexpected`) and never answered (no error loops).
2. **Repeat detection.** A client address and port with a running transfer is the same
   transfer (RFC 1350 §4: the client's TID): an RRQ with the same bytes is the client's
   retransmission and is dropped (our own timer resends), after reading anything already
   waiting on the transfer's socket, so the UEFI probe's ERROR 8 that raced the next RRQ
   ends the probe first. A different RRQ from the same address and port replaces it.
3. **Confinement on the filesystem** (`open_confined`): the validated root-relative name is
   resolved with every symlink (`os.path.realpath`) and must stay inside the real root
   (a link inside the root to a file inside it is fine; one that leads out is refused);
   the resolved path is then walked component by component from the root's directory fd
   with `O_NOFOLLOW`, so a symlink swapped in after the check fails instead of being
   followed. Only regular files are opened (`lstat` first, so FIFOs and devices are never
   opened; `O_NONBLOCK` in case of a race). Missing: ERROR 1; refused: ERROR 2.
4. **The transfer.** A new UDP socket is bound to the address the RRQ arrived at
   (`IP_PKTINFO`), so replies leave from the address the client talked to, on a fresh port
   (the server's TID), and is `connect()`ed to the client: sends are cheaper and the kernel
   drops datagrams from any other address or port (another TID) before they reach us
   (RFC 1350 asks for an ERROR 5 reply to those; with connected sockets they never arrive;
   the kernel answers ICMP port unreachable unless another socket takes them). `blksize`
   is clamped to the MTU of the interface the RRQ came in on (`blksize_max_for_mtu`, 1468
   on Ethernet) as well as to `TransferConfig.blksize_max`.

Each readable transfer socket yields one datagram per wake-up, given to
`ReadTransfer.receive`; what it returns is sent as is.

**One transfer alone** (the solo lane, `_serve_alone`). In lock-step every microsecond the
server spends per packet adds to the round trip, and `epoll_wait` is a third system call
per packet next to `recv` and `send` (measured: a blocking-`recv` loop ran a 64 MiB
transfer ~10 % faster than the same loop behind `epoll_wait`). So when a wake-up handled a
datagram of the only running transfer, the loop turns that transfer's socket blocking and
waits on it directly, the way tftpd-hpa's process per transfer does: `recv`, the state
machine, `send`, again. The lane hands back to the event loop every `SOLO_STINT_S`
(2 ms: requests on port 69, timers, `stop()`), after `SOLO_WAIT_S` (10 ms, the socket's
`SO_RCVTIMEO`) without a datagram, and when the transfer ends; so a request that arrives
meanwhile waits at most SOLO_STINT_S + SOLO_WAIT_S (12 ms), the worst case being a lone
transfer whose client has just fallen silent.
With two or more transfers the event loop alone serves them all: a thread per transfer
was tried and halved the throughput of 100 concurrent clients (GIL hand-offs).

**Windows in one system call.** A windowed transfer's socket gets UDP GSO (`UDP_SEGMENT`
= the DATA datagram's size, `_gso_batch`), and `_send_all` sends a window as its
datagrams joined, up to 64 per `send`; the kernel splits them again. Only the file's last
block is short and it ends its window, so every window has the shape GSO needs.

Timers: one heap entry per transfer, keyed by the deadline it had when pushed; deadlines
only move later, so when an entry pops early it is pushed again at `next_deadline_s` (no
heap work per packet). File data is read with `os.pread` on a descriptor shared by the
concurrent transfers of one file (refcounted: a PXE storm of 100 clients fetching one NBP
holds one descriptor for it, not 100).

Every transfer ends with one log line: client, file, blksize, windowsize, bytes, seconds and
outcome (`completed`, `probe` for the UEFI tsize probe, `client_error`, `timed_out`,
`read_failed`, `unreachable` when the client's port went away, `replaced`, `shutdown`).
Counters (`SharedCounters`, added once per request or transfer, never per packet):
`tftp.requests`, `tftp.repeated_requests`, `tftp.refused`, `tftp.not_found`, `tftp.busy`,
`tftp.malformed`, `tftp.unexpected`, `tftp.transfers.<outcome>`, `tftp.bytes_sent`,
`tftp.retransmitted`, `tftp.ignored` (bad datagrams on transfer sockets),
`tftp.send_failed`, `tftp.socket_error`, `tftp.internal_error`. Nothing a client sends can
end the thread: an unexpected exception is logged and counted, and only the transfer it
happened in is dropped.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import heapq
import logging
import os
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from actors.boot.tftp_packet import (
    Error,
    ErrorCode,
    ReadRequest,
    TftpDecodeError,
    WriteRequest,
    decode,
    encode_error,
)
from actors.boot.tftp_transfer import (
    BLKSIZE_MAX,
    Negotiation,
    Outcome,
    Reader,
    ReadTransfer,
    TransferConfig,
    admit_request,
    blksize_max_for_mtu,
)
from actors.core import Address
from transport.dhcp_socket import bind_error
from transport.metrics import SharedCounters

__all__ = [
    "TFTP_PORT",
    "Missing",
    "OpenedFile",
    "Refused",
    "TftpServer",
    "TftpServerConfig",
    "boot_component",
    "open_confined",
]

_LOG = logging.getLogger(__name__)

TFTP_PORT: Final = 69
RECEIVE_BYTES_MAX: Final = 65536
REQUESTS_PER_WAKE: Final = 64
"""Requests read from port 69 per wake-up, before the transfers get their turn."""
"""Larger than any datagram a client may send (requests are short, ACKs 4-5 bytes)."""
SOLO_WAIT_S: Final = 0.01
"""Longest blocking wait in the solo lane: what a request on port 69 may wait, at worst,
while one transfer runs alone and its client is silent (SO_RCVTIMEO)."""
SOLO_STINT_S: Final = 0.002
"""The solo lane returns to the event loop this often (requests, timers, stop)."""
_SOLO_WAIT_TIMEVAL: Final = struct.pack("@ll", 0, int(SOLO_WAIT_S * 1e6))  # struct timeval
_UDP_SEGMENT: Final = getattr(socket, "UDP_SEGMENT", 103)  # linux/udp.h: the GSO size
_GSO_SEGMENTS_MAX: Final = 64  # UDP_MAX_SEGMENTS, linux/udp.h
_IP_PACKET_BYTES_MAX: Final = 65535  # RFC 791 total length (RFC 8200 payload length)
_IPV4_HEADER_BYTES: Final = 20
_IPV6_HEADER_BYTES: Final = 40
_UDP_HEADER_BYTES: Final = 8  # RFC 768
_DATA_HEADER_BYTES: Final = 4  # opcode + block number, RFC 1350 §5
_IP_PKTINFO: Final = getattr(socket, "IP_PKTINFO", 8)
_IN_PKTINFO: Final = struct.Struct("=i4s4s")  # ifindex, spec_dst (local address), addr
_SIOCGIFMTU: Final = 0x8921
_IFREQ: Final = struct.Struct("16si12x")
_ANCILLARY_BYTES: Final = socket.CMSG_SPACE(_IN_PKTINFO.size)
_STOP_JOIN_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class TftpServerConfig:
    """Limits of the TFTP server; `transfer` holds the per-transfer protocol limits."""

    #: protocol limits; blksize_max is further clamped to the receiving interface's MTU
    transfer: TransferConfig = field(default_factory=lambda: TransferConfig(BLKSIZE_MAX))
    #: clamp blksize to the MTU of the interface the request came in on
    clamp_blksize_to_mtu: bool = True
    #: concurrent transfers; requests beyond are dropped (the client retries its RRQ)
    transfers_max: int = 1000
    #: receive buffer of the listening socket (a PXE storm sends hundreds of RRQs at once)
    listen_receive_buffer_bytes: int = 1 << 20
    #: bytes read from the file at once per transfer (one pread(2) serves many blocks)
    read_ahead_bytes: int = 64 * 1024
    #: send each window with UDP GSO, one system call for many datagrams, where the
    #: kernel has it (Linux 4.18+); False: one send(2) per datagram
    udp_gso: bool = True

    def __post_init__(self) -> None:
        assert self.transfers_max >= 1
        assert self.listen_receive_buffer_bytes > 0
        assert self.read_ahead_bytes > 0


# --------------------------------------------------------------------------- confinement


@dataclass(frozen=True, slots=True)
class OpenedFile:
    """A regular file opened for reading inside the root."""

    fd: int
    size_bytes: int
    #: (st_dev, st_ino): transfers of the same file share the descriptor
    identity: tuple[int, int]


@dataclass(frozen=True, slots=True)
class Missing:
    """The file does not exist (ERROR 1)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Refused:
    """The file may not be served (ERROR 2): outside the root, not a regular file, ..."""

    reason: str


def open_confined(root_fd: int, real_root: str, relative: str) -> OpenedFile | Missing | Refused:
    """Open `relative` (already validated) under the root, refusing any way out of it."""
    real = os.path.realpath(os.path.join(real_root, relative))
    prefix = real_root.rstrip(os.sep) + os.sep
    if not real.startswith(prefix):
        return Refused("resolves outside the served root")
    *directories, name = real[len(prefix) :].split(os.sep)
    directory_fd = root_fd
    try:
        for component in directories:
            next_fd = os.open(component, _DIRECTORY_FLAGS, dir_fd=directory_fd)
            if directory_fd != root_fd:
                os.close(directory_fd)
            directory_fd = next_fd
        return _open_regular(directory_fd, name)
    except OSError as error:
        return _open_failure(error)
    finally:
        if directory_fd != root_fd:
            os.close(directory_fd)


_DIRECTORY_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _open_regular(directory_fd: int, name: str) -> OpenedFile | Refused:
    if not stat.S_ISREG(os.stat(name, dir_fd=directory_fd, follow_symlinks=False).st_mode):
        return Refused("not a regular file")
    fd = os.open(name, _FILE_FLAGS, dir_fd=directory_fd)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # swapped between lstat and open
        os.close(fd)
        return Refused("not a regular file")
    return OpenedFile(fd, info.st_size, (info.st_dev, info.st_ino))


def _open_failure(error: OSError) -> Missing | Refused:
    if error.errno in (errno.ENOENT, errno.ENOTDIR):
        return Missing("file not found")
    if error.errno == errno.ELOOP:  # a symlink appeared after realpath resolved the name
        return Refused("symbolic link changed during lookup")
    if error.errno in (errno.EACCES, errno.EPERM):
        return Refused("permission denied")
    return Refused(error.strerror or "cannot open")


def _reader(fd: int, read_ahead_bytes: int) -> Reader:
    """`read(offset, length)` by pread(2) of `read_ahead_bytes` at a time, served from that
    buffer while the blocks asked for fall inside it; an I/O error reads as a short block."""
    pread = os.pread
    buffer = b""
    buffer_start = 0

    def read(offset: int, length: int) -> bytes:
        nonlocal buffer, buffer_start
        start = offset - buffer_start
        if start >= 0 and start + length <= len(buffer):
            return buffer[start : start + length]
        try:
            chunk = pread(fd, max(length, read_ahead_bytes), offset)
        except OSError:
            return b""
        buffer, buffer_start = chunk, offset
        return chunk[:length]

    return read


class _SharedFile:
    __slots__ = ("fd", "identity", "users")

    def __init__(self, fd: int, identity: tuple[int, int]) -> None:
        self.fd = fd
        self.identity = identity
        self.users = 1


# --------------------------------------------------------------------------- sessions


class _Session:
    """One running transfer: its socket, state machine, file and bookkeeping."""

    __slots__ = (
        "batch",
        "client",
        "closed",
        "file",
        "filename",
        "receive",
        "recv",
        "request",
        "send",
        "sock",
        "started_s",
        "transfer",
    )

    def __init__(
        self,
        sock: socket.socket,
        client: tuple[str, int],
        transfer: ReadTransfer,
        *,
        file: _SharedFile,
        request: bytes,
        filename: str,
        now_s: float,
    ) -> None:
        self.sock = sock
        self.recv = sock.recv
        self.send = sock.send
        self.client = client
        self.transfer = transfer
        self.receive = transfer.receive
        self.file = file
        self.request = request
        self.filename = filename
        self.started_s = now_s
        self.closed = False
        #: datagrams per send(2) for windows (UDP GSO); 1: one each
        self.batch = 1


@dataclass(slots=True)
class _Arrival:
    """A datagram on the listening socket: payload, client, local address, MTU limit."""

    payload: bytes
    client: tuple[str, int]
    local_host: str
    blksize_max: int


# --------------------------------------------------------------------------- server


class TftpServer:
    """Serves the files under `root` over TFTP on `listen`; `start()` / `stop()`."""

    name = "tftp"

    def __init__(
        self,
        root: Path,
        listen: Address,
        config: TftpServerConfig | None = None,
        *,
        counters: SharedCounters | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = root
        self.listen = listen
        self.config = config or TftpServerConfig()
        self.counters = counters or SharedCounters()
        self._clock = clock
        self._family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
        self._listen_sock: socket.socket | None = None
        self._root_fd = -1
        self._real_root = ""
        self._poller: _Poller | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None  # (read, write)
        self._sessions: dict[int, _Session] = {}  # socket fd -> session
        self._by_client: dict[tuple[str, int], _Session] = {}
        self._files: dict[tuple[int, int], _SharedFile] = {}
        self._timers: list[tuple[float, int, _Session]] = []
        self._timer_seq = 0
        self._thread: threading.Thread | None = None
        self._stopping = False

    @property
    def address(self) -> Address:
        """The bound address (the real port when `listen.port` was 0)."""
        assert self._listen_sock is not None, "not started"
        host, port = self._listen_sock.getsockname()[:2]
        return Address(str(host), int(port))

    @property
    def active_transfers(self) -> int:
        """Transfers running now (read from another thread: a snapshot, maybe stale)."""
        return len(self._sessions)

    def start(self) -> None:
        """Bind port 69 (or `listen.port`) and start the event loop; `BindError` on failure."""
        assert self._thread is None, "already started"
        self._real_root = os.path.realpath(self.root)
        self._root_fd = os.open(self._real_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._listen_sock = self._open_listen_socket()
        except OSError:
            os.close(self._root_fd)
            raise
        self._wake = socket.socketpair()
        self._poller = _Poller(self._listen_sock.fileno(), self._wake[0].fileno())
        self._thread = threading.Thread(target=self._run, name="peerpxe-tftp", daemon=True)
        self._thread.start()
        address = self.address
        _LOG.info("TFTP serving %s on %s:%d", self._real_root, address.host, address.port)

    def stop(self) -> None:
        """End running transfers (ERROR 0 to their clients), close everything (idempotent)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping = True
        assert self._wake is not None
        self._wake[1].send(b"\0")
        thread.join(timeout=_STOP_JOIN_S)
        for session in list(self._sessions.values()):
            self._end(session, "shutdown", encode_error(ErrorCode.NOT_DEFINED, "server stopping"))
        assert self._poller is not None
        self._poller.close()
        if self._listen_sock is not None:
            self._listen_sock.close()
        os.close(self._root_fd)
        for end in self._wake:
            end.close()

    # ----------------------------------------------------------------------- event loop

    def _open_listen_socket(self) -> socket.socket:
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVBUF, self.config.listen_receive_buffer_bytes
            )
            if self._family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
            sock.bind((self.listen.host, self.listen.port))
        except OSError as error:
            sock.close()
            raise bind_error(error, "TFTP", self.listen) from error
        sock.setblocking(False)
        return sock

    def _run(self) -> None:
        assert self._poller is not None
        poll = self._poller.poll
        sessions = self._sessions
        timers = self._timers
        clock = self._clock
        listen_fd = self._poller.listen_fd
        now_s = clock()
        while not self._stopping:
            timeout_s = max(0.0, timers[0][0] - now_s) if timers else -1.0
            events = poll(timeout_s)
            now_s = clock()
            session = None
            for fd, _mask in events:
                session = sessions.get(fd)
                try:
                    if session is not None:  # hot path: one ACK in, one DATA out, inline
                        packets = session.receive(session.recv(RECEIVE_BYTES_MAX), now_s)
                        if len(packets) == 1 and session.transfer.outcome is None:
                            session.send(packets[0])
                        else:
                            self._after_receive(session, packets)
                    elif fd == listen_fd:
                        self._on_listen_readable(now_s)
                except OSError as error:
                    if session is not None:
                        self._on_socket_error(session, error)
                except Exception:  # noqa: BLE001 - one bad transfer must not end the service
                    self._internal_error(session)
            if timers and timers[0][0] <= now_s:
                try:
                    self._fire_timers(now_s)
                except Exception:  # noqa: BLE001
                    self._internal_error(None)
            if session is not None and len(sessions) == 1 and not session.closed:
                self._serve_alone(session)
                now_s = clock()

    def _internal_error(self, session: _Session | None) -> None:
        self.counters.add("tftp.internal_error")
        _LOG.exception("TFTP internal error")
        if session is not None and not session.closed:
            self._end(session, "internal_error")

    # ----------------------------------------------------------------------- transfers

    def _serve_alone(self, session: _Session) -> None:
        """The solo lane (docstring, "One transfer alone"): while `session` is the only
        transfer, wait for its datagrams in a blocking `recv` instead of `epoll_wait`;
        back to the event loop after `SOLO_STINT_S`, after `SOLO_WAIT_S` of silence, or when
        the transfer ends."""
        sock, recv, send, receive = session.sock, session.recv, session.send, session.receive
        transfer, clock = session.transfer, self._clock
        sock.setblocking(True)  # SO_RCVTIMEO (SOLO_WAIT_S) bounds every wait
        try:
            stint_ends_s = clock() + SOLO_STINT_S
            while not self._stopping:
                datagram = recv(RECEIVE_BYTES_MAX)
                now_s = clock()
                packets = receive(datagram, now_s)
                if len(packets) == 1 and transfer.outcome is None:
                    send(packets[0])
                else:  # a window, nothing (a duplicate, junk), or the end
                    self._after_receive(session, packets)
                    if session.closed:
                        return
                if now_s >= stint_ends_s:
                    return
        except OSError as error:  # BlockingIOError: SOLO_WAIT_S of silence
            self._on_socket_error(session, error)
        except Exception:  # noqa: BLE001 - one bad transfer must not end the service
            self._internal_error(session)
        finally:
            if not session.closed:
                sock.setblocking(False)

    def _after_receive(self, session: _Session, packets: list[bytes]) -> None:
        """The general case of a received datagram: a window, nothing, or the end."""
        if packets:
            self._send_all(session, packets)
        self._closed_when_done(session)

    def _on_socket_error(self, session: _Session, error: OSError) -> None:
        """A receive or send on a transfer socket failed."""
        if session.closed or isinstance(error, BlockingIOError):
            return  # nothing to read after all, or a send lost: the timer repairs it
        if _is_unreachable(error):  # ICMP port unreachable: the client is gone
            self._end(session, "unreachable")
        else:
            self.counters.add("tftp.socket_error")

    def _send_all(self, session: _Session, packets: list[bytes]) -> None:
        """Send `packets` in order: a window by UDP GSO, `session.batch` datagrams per
        system call, when the socket has it (every DATA of a window is `blksize` long but
        the file's last, which comes last: the shape UDP_SEGMENT asks for)."""
        send = session.send
        batch = session.batch
        try:
            if batch > 1 and len(packets) > 1:
                for first in range(0, len(packets), batch):
                    send(b"".join(packets[first : first + batch]))
                return
            for packet in packets:
                send(packet)
        except OSError as error:
            if _is_unreachable(error):
                self._end(session, "unreachable")
            else:  # ENOBUFS, EAGAIN: the packet is lost, the retransmission timer repairs it
                self.counters.add("tftp.send_failed")

    def _fire_timers(self, now_s: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now_s:
            _, _, session = heapq.heappop(timers)
            if session.closed:
                continue
            transfer = session.transfer
            deadline_s = transfer.next_deadline_s
            if deadline_s is not None and deadline_s > now_s:
                self._arm(session, deadline_s)
                continue
            packets = transfer.on_timeout(now_s)
            if packets:
                self._send_all(session, packets)
            if not self._closed_when_done(session) and transfer.next_deadline_s is not None:
                self._arm(session, transfer.next_deadline_s)

    def _closed_when_done(self, session: _Session) -> bool:
        """End `session` if its transfer has finished; True when it is (now) closed."""
        if session.closed:
            return True
        outcome = session.transfer.outcome
        if outcome is None:
            return False
        self._end(session, outcome.value)
        return True

    def _arm(self, session: _Session, deadline_s: float) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (deadline_s, self._timer_seq, session))

    def _end(self, session: _Session, outcome: str, farewell: bytes | None = None) -> None:
        """Close `session`: log its one line, count it, release its socket and file."""
        assert not session.closed
        session.closed = True
        if farewell is not None:
            with contextlib.suppress(OSError):
                session.send(farewell)
        fd = session.sock.fileno()
        assert self._poller is not None
        self._poller.unregister(fd)
        del self._sessions[fd]
        if self._by_client.get(session.client) is session:
            del self._by_client[session.client]
        session.sock.close()
        self._release(session.file)
        self._account(session, outcome)

    def _account(self, session: _Session, outcome: str) -> None:
        transfer = session.transfer
        negotiation = transfer.negotiation
        sent_bytes = min(transfer.size_bytes, transfer.blocks_acked * negotiation.blksize)
        counters = self.counters
        counters.add(f"tftp.transfers.{outcome}")
        counters.add("tftp.bytes_sent", sent_bytes)
        if transfer.retransmitted:
            counters.add("tftp.retransmitted", transfer.retransmitted)
        if transfer.ignored:
            counters.add("tftp.ignored", transfer.ignored)
        detail = ""
        if transfer.client_error is not None:
            detail = f" (client error {transfer.client_error.code}: "
            detail += f"{transfer.client_error.message[:80]!r})"
        level = logging.WARNING if outcome in _BAD_OUTCOMES else logging.INFO
        _LOG.log(
            level,
            "tftp %s:%d %r blksize=%d windowsize=%d bytes=%d/%d in %.3f s: %s%s",
            session.client[0], session.client[1], session.filename, negotiation.blksize,
            negotiation.windowsize, sent_bytes, transfer.size_bytes,
            self._clock() - session.started_s, outcome, detail,
        )  # fmt: skip

    # ----------------------------------------------------------------------- requests

    def _on_listen_readable(self, now_s: float) -> None:
        """Take every request already queued (up to `REQUESTS_PER_WAKE`), in arrival order,
        so a client's retransmitted RRQ is seen while its first transfer is still running."""
        for _ in range(REQUESTS_PER_WAKE):
            arrival = self._receive_request()
            if arrival is None:
                return
            self._on_request(arrival, now_s)

    def _on_request(self, arrival: _Arrival, now_s: float) -> None:
        try:
            packet = decode(arrival.payload)
        except TftpDecodeError:
            self.counters.add("tftp.malformed")
            return
        if not isinstance(packet, ReadRequest | WriteRequest):
            self.counters.add("tftp.unexpected")
            return
        self.counters.add("tftp.requests")
        if self._is_repeat(arrival, now_s):
            self.counters.add("tftp.repeated_requests")
            return
        admitted = admit_request(packet)
        if isinstance(admitted, Error):
            self._refuse(arrival, packet.filename, admitted, "tftp.refused")
            return
        assert isinstance(packet, ReadRequest)
        self._start_transfer(arrival, packet, admitted, now_s)

    def _receive_request(self) -> _Arrival | None:
        sock = self._listen_sock
        assert sock is not None
        try:
            payload, ancillary, _, source = sock.recvmsg(RECEIVE_BYTES_MAX, _ANCILLARY_BYTES)
        except OSError:  # BlockingIOError, or an ICMP error reported on the socket
            return None
        local_host, blksize_max = self.listen.host, self.config.transfer.blksize_max
        for level, kind, data in ancillary:
            if level == socket.IPPROTO_IP and kind == _IP_PKTINFO:
                ifindex, local, _ = _IN_PKTINFO.unpack_from(data)
                local_host = socket.inet_ntoa(local)
                blksize_max = self._blksize_max_on(ifindex)
        return _Arrival(payload, (str(source[0]), int(source[1])), local_host, blksize_max)

    def _blksize_max_on(self, ifindex: int) -> int:
        configured = self.config.transfer.blksize_max
        if not self.config.clamp_blksize_to_mtu:
            return configured
        mtu = _interface_mtu(self._listen_sock, ifindex)
        return configured if mtu is None else min(configured, blksize_max_for_mtu(mtu))

    def _is_repeat(self, arrival: _Arrival, now_s: float) -> bool:
        """True when `arrival` repeats the RRQ of a running transfer (step 2, docstring)."""
        session = self._by_client.get(arrival.client)
        if session is None:
            return False
        self._drain(session, now_s)
        if session.closed:
            return False
        if session.request == arrival.payload:
            return True
        self._end(session, "replaced")
        return False

    def _drain(self, session: _Session, now_s: float) -> None:
        """Handle the datagrams already waiting on a transfer's socket."""
        while not session.closed:
            try:
                datagram = session.recv(RECEIVE_BYTES_MAX)
            except OSError:
                return
            packets = session.receive(datagram, now_s)
            if packets:
                self._send_all(session, packets)
            self._closed_when_done(session)

    def _refuse(self, arrival: _Arrival, filename: str, error: Error, counter: str) -> None:
        self.counters.add(counter)
        _LOG.info(
            "tftp %s:%d %r refused: error %d %s",
            arrival.client[0], arrival.client[1], filename[:200], error.code, error.message,
        )  # fmt: skip
        sock = self._listen_sock
        assert sock is not None
        try:
            sock.sendto(encode_error(error.code, error.message), arrival.client)
        except OSError:
            self.counters.add("tftp.send_failed")

    def _start_transfer(
        self, arrival: _Arrival, request: ReadRequest, relative: str, now_s: float
    ) -> None:
        if len(self._sessions) >= self.config.transfers_max:
            self.counters.add("tftp.busy")
            return  # dropped: the client retries its RRQ, maybe after others finished
        opened = open_confined(self._root_fd, self._real_root, relative)
        if isinstance(opened, Missing):
            error = Error(ErrorCode.FILE_NOT_FOUND, opened.reason)
            self._refuse(arrival, request.filename, error, "tftp.not_found")
            return
        if isinstance(opened, Refused):
            error = Error(ErrorCode.ACCESS_VIOLATION, opened.reason)
            self._refuse(arrival, request.filename, error, "tftp.refused")
            return
        shared = self._share(opened)
        try:
            sock = self._transfer_socket(arrival)
        except OSError as error:  # EMFILE and friends: like busy, the client may retry
            self._release(shared)
            self.counters.add("tftp.busy")
            _LOG.warning("tftp %s:%d: no socket: %s", *arrival.client, error)
            return
        config = self.config.transfer
        if arrival.blksize_max < config.blksize_max:
            config = replace(config, blksize_max=arrival.blksize_max)
        read = _reader(shared.fd, self.config.read_ahead_bytes)
        transfer = ReadTransfer(request, opened.size_bytes, read, config)
        session = _Session(
            sock,
            arrival.client,
            transfer,
            file=shared,
            request=arrival.payload,
            filename=relative,
            now_s=now_s,
        )
        if self.config.udp_gso:
            session.batch = _gso_batch(
                sock, transfer.negotiation, ipv6=self._family != socket.AF_INET
            )
        self._sessions[sock.fileno()] = session
        self._by_client[arrival.client] = session
        assert self._poller is not None
        self._poller.register(sock.fileno())
        self._send_all(session, transfer.start(now_s))
        if not self._closed_when_done(session) and transfer.next_deadline_s is not None:
            self._arm(session, transfer.next_deadline_s)

    def _transfer_socket(self, arrival: _Arrival) -> socket.socket:
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        try:
            sock.bind((arrival.local_host, 0))
            sock.connect(arrival.client)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _SOLO_WAIT_TIMEVAL)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def _share(self, opened: OpenedFile) -> _SharedFile:
        """The shared descriptor for this file (closing `opened.fd` when one exists)."""
        shared = self._files.get(opened.identity)
        if shared is None:
            shared = _SharedFile(opened.fd, opened.identity)
            self._files[opened.identity] = shared
            return shared
        os.close(opened.fd)
        shared.users += 1
        return shared

    def _release(self, shared: _SharedFile) -> None:
        shared.users -= 1
        if shared.users == 0:
            del self._files[shared.identity]
            os.close(shared.fd)


_BAD_OUTCOMES: Final = frozenset(
    {
        Outcome.TIMED_OUT.value,
        Outcome.READ_FAILED.value,
        "internal_error",
    }
)


def _gso_batch(sock: socket.socket, negotiation: Negotiation, *, ipv6: bool) -> int:
    """Datagrams per `send` for a windowed transfer: UDP GSO (Linux 4.18+: `UDP_SEGMENT`
    set to the DATA datagram's size lets one `send` of several concatenated datagrams
    leave as that many datagrams) cuts a window of 16 from 16 system calls to one. 1 (one
    datagram per send) for lock-step, or when the kernel lacks it."""
    if negotiation.windowsize == 1 and not negotiation.msftwindow:
        return 1
    segment_bytes = _DATA_HEADER_BYTES + negotiation.blksize
    headers_bytes = _UDP_HEADER_BYTES + (_IPV6_HEADER_BYTES if ipv6 else _IPV4_HEADER_BYTES)
    batch = min(_GSO_SEGMENTS_MAX, (_IP_PACKET_BYTES_MAX - headers_bytes) // segment_bytes)
    if batch < 2:
        return 1
    try:
        sock.setsockopt(socket.IPPROTO_UDP, _UDP_SEGMENT, segment_bytes)
    except OSError:
        return 1
    return batch


def _is_unreachable(error: OSError) -> bool:
    return error.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH)


def _interface_mtu(sock: socket.socket | None, ifindex: int) -> int | None:
    """The MTU of interface `ifindex` (SIOCGIFMTU), or None if it cannot be read."""
    if sock is None or ifindex <= 0:
        return None
    try:
        name = socket.if_indextoname(ifindex).encode()
        answer = fcntl.ioctl(sock.fileno(), _SIOCGIFMTU, _IFREQ.pack(name, 0))
    except OSError:
        return None
    mtu: int = _IFREQ.unpack(answer)[1]
    return mtu


class _Poller:
    """epoll over the listening socket, the wake-up socket and every transfer socket."""

    def __init__(self, listen_fd: int, wake_fd: int) -> None:
        import select  # noqa: PLC0415 - Linux-only module, imported where it is needed

        self._epoll = select.epoll()
        self._readable = select.EPOLLIN
        self.listen_fd = listen_fd
        self._epoll.register(listen_fd, self._readable)
        self._epoll.register(wake_fd, self._readable)
        self.poll = self._epoll.poll

    def register(self, fd: int) -> None:
        self._epoll.register(fd, self._readable)

    def unregister(self, fd: int) -> None:
        self._epoll.unregister(fd)

    def close(self) -> None:
        self._epoll.close()


def boot_component(root: Path, bind: Address, *, counters: SharedCounters) -> TftpServer:
    """The TFTP server as `transport.boot_server` composes it (its `Component` protocol)."""
    return TftpServer(root, bind, counters=counters)
