"""The TFTP server against real clients on loopback: bytes, options, confinement, the probe.

The server (`transport.tftp_server.TftpServer`) runs in this process on 127.0.0.1 with an
ephemeral port; curl, tftp-hpa, atftp and busybox are the clients, so what is checked is what
each of them gets on the wire. A hand-made client (`RawClient`, built on the pure codec)
sends what the command-line clients cannot: traversal names byte for byte, the UEFI tsize
probe, repeated requests, stray TIDs, silence. A missing client binary skips its tests with
the package to install (CI installs them all and treats skips as failures).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from actors.boot.tftp_packet import (
    Ack,
    Data,
    Error,
    ErrorCode,
    OptionAck,
    Packet,
    ReadRequest,
    WriteRequest,
    decode,
    encode,
)
from actors.boot.tftp_transfer import TransferConfig
from actors.core import Address
from transport.metrics import SharedCounters
from transport.tftp_server import SOLO_WAIT_S, TftpServer, TftpServerConfig, boot_component

pytestmark = pytest.mark.integration

SIZES = (0, 1, 511, 512, 513, 1468, 8192, 3 * 1024 * 1024 + 7)
ROLLOVER_BYTES = 65536 * 512 + 1000  # more than 65535 blocks of 512: the counter wraps
SECRET = b"not for clients\n"
CLIENT_TIMEOUT_S = 60.0


def needs(binary: str, package: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        shutil.which(binary) is None, reason=f"needs {binary} (apt install {package})"
    )


needs_curl = needs("curl", "curl")
needs_tftp_hpa = needs("tftp", "tftp-hpa")
needs_atftp = needs("atftp", "atftp")
needs_busybox = needs("busybox", "busybox")


# --------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Tree:
    base: Path
    root: Path
    outside: Path
    files: dict[str, bytes]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    base = tmp_path_factory.mktemp("tftp")
    root = base / "root"
    (root / "sub" / "dir").mkdir(parents=True)
    generator = random.Random("tftp-interop")
    files = {f"size{size}.bin": generator.randbytes(size) for size in SIZES}
    files["sub/dir/nested.bin"] = generator.randbytes(3000)
    for name, content in files.items():
        (root / name).write_bytes(content)
    outside = base / "secret"
    outside.write_bytes(SECRET)
    (root / "escape").symlink_to(outside)
    (root / "escape-dir").symlink_to(base)
    (root / "alias.bin").symlink_to("size513.bin")
    os.mkfifo(root / "fifo")
    return Tree(base, root, outside, files)


@pytest.fixture(scope="module")
def rollover_file(tree: Tree) -> Path:
    path = tree.base / "rollover" / "big.bin"
    path.parent.mkdir()
    path.write_bytes(random.Random("rollover").randbytes(ROLLOVER_BYTES))
    return path


@dataclass
class Served:
    server: TftpServer
    counters: SharedCounters

    @property
    def port(self) -> int:
        return self.server.address.port


def serve(root: Path, config: TftpServerConfig | None = None) -> Served:
    counters = SharedCounters()
    server = TftpServer(root, Address("127.0.0.1", 0), config, counters=counters)
    server.start()
    return Served(server, counters)


@pytest.fixture
def served(tree: Tree) -> Iterator[Served]:
    running = serve(tree.root)
    try:
        yield running
    finally:
        running.server.stop()


def wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# --------------------------------------------------------------------------- a raw client


class RawClient:
    """A TFTP client socket on 127.0.0.1 that sends exactly what a test says."""

    def __init__(self, port: int) -> None:
        self.server = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(3.0)

    def close(self) -> None:
        self.sock.close()

    def request(self, packet: Packet | bytes) -> None:
        datagram = packet if isinstance(packet, bytes) else encode(packet)
        self.sock.sendto(datagram, self.server)

    def receive(self) -> tuple[Packet, tuple[str, int]]:
        datagram, source = self.sock.recvfrom(70000)
        return decode(datagram), source

    def send_to(self, packet: Packet, target: tuple[str, int]) -> None:
        self.sock.sendto(encode(packet), target)

    def fetch(self, tid: tuple[str, int], first: Packet) -> bytes:
        """Lock-step from the first packet the server's TID sent until the short block."""
        blksize = 512
        if isinstance(first, OptionAck):
            blksize = int(dict(first.options).get("blksize", "512"))
            self.send_to(Ack(0), tid)
            first, _ = self.receive()
        chunks = []
        packet = first
        while True:
            assert isinstance(packet, Data), packet
            chunks.append(packet.payload)
            self.send_to(Ack(packet.block), tid)
            if len(packet.payload) < blksize:
                return b"".join(chunks)
            packet, source = self.receive()
            assert source == tid


@pytest.fixture
def raw(served: Served) -> Iterator[RawClient]:
    client = RawClient(served.port)
    try:
        yield client
    finally:
        client.close()


def get_error(client: RawClient, filename: str) -> Error:
    client.request(ReadRequest(filename, "octet", (("blksize", "1468"),)))
    packet, _ = client.receive()
    assert isinstance(packet, Error), f"{filename!r} was served: {packet!r}"
    return packet


# --------------------------------------------------------------------------- real clients


def run_client(command: list[str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        command, cwd=cwd, capture_output=True, timeout=CLIENT_TIMEOUT_S, check=False
    )


# curl 7.88 fails every empty TFTP download ("getpeername() failed with errno 107" after
# the empty DATA 1), against tftpd-hpa as well: the other clients cover size 0.
CURL_SIZES = tuple(size for size in SIZES if size)


@needs_curl
@pytest.mark.parametrize("blksize", [512, 1468, 8192])
@pytest.mark.parametrize("size", CURL_SIZES)
def test_curl_fetches_identical_bytes(
    tree: Tree, served: Served, tmp_path: Path, blksize: int, size: int
) -> None:
    """curl gets every size byte for byte at each block size (OACK path)."""
    name = f"size{size}.bin"
    out = tmp_path / "out"
    done = run_client(
        ["curl", "-s", "-S", "--tftp-blksize", str(blksize),
         f"tftp://127.0.0.1:{served.port}/{name}", "-o", str(out)],
        tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == tree.files[name]
    wait_for(lambda: served.counters.get("tftp.transfers.completed") == 1)


@needs_tftp_hpa
@pytest.mark.parametrize("name", ["size0.bin", "size512.bin", "size513.bin", "sub/dir/nested.bin"])
def test_tftp_hpa_fetches_identical_bytes(
    tree: Tree, served: Served, tmp_path: Path, name: str
) -> None:
    """tftp-hpa (no options: plain RFC 1350, 512-byte blocks) gets the same bytes."""
    done = run_client(
        ["tftp", "127.0.0.1", str(served.port), "-m", "binary", "-c", "get", name, "out"],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out").read_bytes() == tree.files[name]


@needs_tftp_hpa
def test_rollover_past_65535_blocks(rollover_file: Path, tmp_path: Path) -> None:
    """A file of more than 65535 blocks of 512 bytes arrives whole: the block number wraps."""
    running = serve(rollover_file.parent)
    try:
        done = run_client(
            ["tftp", "127.0.0.1", str(running.port), "-m", "binary", "-c", "get", "big.bin",
             "out"],
            tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "out").read_bytes() == rollover_file.read_bytes()
        wait_for(lambda: running.counters.get("tftp.transfers.completed") == 1)
        assert running.counters.get("tftp.bytes_sent") == ROLLOVER_BYTES
    finally:
        running.server.stop()


@needs_atftp
@pytest.mark.parametrize("options", [(512, 1), (1468, 16), (8192, 4)], ids=str)
@pytest.mark.parametrize("size", [0, 512, 1468 * 16, 3 * 1024 * 1024 + 7])
def test_atftp_windowed_fetches_identical_bytes(
    tree: Tree, served: Served, tmp_path: Path, options: tuple[int, int], size: int
) -> None:
    """atftp with RFC 7440 windowsize gets the same bytes (windows end on and off a block)."""
    blksize, windowsize = options
    name = f"size{size}.bin" if size in SIZES else "window.bin"
    if name == "window.bin":
        (tmp_path / "root").mkdir()
        content = random.Random(size).randbytes(size)
        (tmp_path / "root" / name).write_bytes(content)
        running = serve(tmp_path / "root")
    else:
        content, running = tree.files[name], served
    try:
        done = run_client(
            ["atftp", "--option", f"blksize {blksize}", "--option", f"windowsize {windowsize}",
             "-g", "-r", name, "-l", "out", "127.0.0.1", str(running.port)],
            tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "out").read_bytes() == content
    finally:
        if running is not served:
            running.server.stop()


@needs_busybox
@pytest.mark.parametrize("blksize", [512, 1468, 8192])
@pytest.mark.parametrize("size", [1, 512, 3 * 1024 * 1024 + 7])
def test_busybox_fetches_identical_bytes(
    tree: Tree, served: Served, tmp_path: Path, blksize: int, size: int
) -> None:
    """busybox tftp (`-b`) gets the same bytes."""
    name = f"size{size}.bin"
    done = run_client(
        ["busybox", "tftp", "-g", "-r", name, "-l", "out", "-b", str(blksize), "127.0.0.1",
         str(served.port)],
        tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out").read_bytes() == tree.files[name]


@needs_curl
def test_concurrent_curl_clients(tree: Tree, served: Served, tmp_path: Path) -> None:
    """Twenty clients at once all get the whole file; one descriptor serves them all."""
    name = f"size{SIZES[-1]}.bin"
    url = f"tftp://127.0.0.1:{served.port}/{name}"
    outs = [tmp_path / f"out{index}" for index in range(20)]
    processes = [
        subprocess.Popen(["curl", "-s", "--tftp-blksize", "1468", url, "-o", str(out)])
        for out in outs
    ]
    for process in processes:
        assert process.wait(timeout=CLIENT_TIMEOUT_S) == 0
    for out in outs:
        assert out.read_bytes() == tree.files[name]
    wait_for(lambda: served.counters.get("tftp.transfers.completed") == 20)
    assert served.server.active_transfers == 0


@needs_curl
def test_symlink_inside_root_is_served(tree: Tree, served: Served, tmp_path: Path) -> None:
    """A link inside the root to a file inside it is followed (the HTTP server agrees)."""
    out = tmp_path / "out"
    done = run_client(
        ["curl", "-s", f"tftp://127.0.0.1:{served.port}/alias.bin", "-o", str(out)], tmp_path
    )
    assert done.returncode == 0
    assert out.read_bytes() == tree.files["size513.bin"]


@needs_curl
def test_curl_reports_missing_file(served: Served, tmp_path: Path) -> None:
    """curl sees the server's "file not found" (ERROR 1) as its TFTP not-found error."""
    done = run_client(
        ["curl", "-s", "-S", f"tftp://127.0.0.1:{served.port}/nope.efi", "-o", "out"], tmp_path
    )
    assert done.returncode == 68  # CURLE_TFTP_NOTFOUND
    assert served.counters.get("tftp.not_found") == 1


@needs_tftp_hpa
def test_tftp_hpa_refused_traversal(served: Served, tmp_path: Path) -> None:
    """tftp-hpa asking for `../secret` gets an error, and no file content."""
    done = run_client(
        ["tftp", "-v", "127.0.0.1", str(served.port), "-m", "binary", "-c", "get",
         "../secret", "out"],
        tmp_path,
    )  # fmt: skip
    assert b"Error code 2" in done.stdout + done.stderr
    assert not (tmp_path / "out").exists() or SECRET not in (tmp_path / "out").read_bytes()


# --------------------------------------------------------------------------- confinement


TRAVERSALS = [
    "../secret",
    "/../secret",
    "sub/../../secret",
    "sub/dir/../../../secret",
    "..\\secret",
    "\\..\\secret",
    "sub\\..\\..\\secret",
    "....//secret",
    "sub/.../secret",
    "//localhost/secret",
    "\\\\localhost\\secret",
    "C:\\secret",
    "C:secret",
    "size1.bin::$DATA",
    "..%2fsecret",
    "\uff0e\uff0e/secret",
    "..\u2215secret",
    "escape",
    "escape-dir/secret",
    "secret\x00.bin",
    "sub/",
    "sub",
    "fifo",
    ".",
    "",
]


@pytest.mark.parametrize("filename", TRAVERSALS)
def test_traversal_refused(tree: Tree, served: Served, raw: RawClient, filename: str) -> None:
    """Every way out of the root (or to a non-file) gets an ERROR, never content."""
    if "\x00" in filename:  # the codec refuses NUL in a name: hand-build the datagram
        raw.request(b"\0\1" + filename.encode() + b"\0octet\0")
        packet, _ = raw.receive()
        assert isinstance(packet, Error)
        return
    error = get_error(raw, filename)
    assert error.code in (ErrorCode.FILE_NOT_FOUND, ErrorCode.ACCESS_VIOLATION)
    assert error.message


@pytest.mark.parametrize("filename", ["escape", "escape-dir/secret", "fifo", "sub", "../x"])
def test_refusals_are_access_violations(served: Served, raw: RawClient, filename: str) -> None:
    """Symlinks out of the root, FIFOs, directories and `..`: ERROR 2, not a hang."""
    error = get_error(raw, filename)
    assert error.code == ErrorCode.ACCESS_VIOLATION, error


def test_absolute_path_outside_root_not_served(tree: Tree, served: Served, raw: RawClient) -> None:
    """An absolute name means root-relative (tftpd-hpa -s): the outside file is not found."""
    error = get_error(raw, str(tree.outside))
    assert error.code == ErrorCode.FILE_NOT_FOUND


def test_root_relative_absolute_name_served(tree: Tree, served: Served, raw: RawClient) -> None:
    """`/sub/dir/nested.bin` and `\\sub\\dir\\nested.bin` name the file under the root."""
    for name in ("/sub/dir/nested.bin", "\\sub\\dir\\nested.bin"):
        raw.request(ReadRequest(name))
        first, tid = raw.receive()
        assert raw.fetch(tid, first) == tree.files["sub/dir/nested.bin"]


def test_missing_file_is_error_1(served: Served, raw: RawClient) -> None:
    """A missing file: ERROR 1 with a message, counted."""
    error = get_error(raw, "missing.efi")
    assert error == Error(ErrorCode.FILE_NOT_FOUND, "file not found")
    assert served.counters.get("tftp.not_found") == 1


def test_write_request_refused(served: Served, raw: RawClient) -> None:
    """The server is read-only: WRQ gets ERROR 2."""
    raw.request(WriteRequest("upload.bin"))
    packet, _ = raw.receive()
    assert isinstance(packet, Error)
    assert packet.code == ErrorCode.ACCESS_VIOLATION


def test_unknown_mode_refused(served: Served, raw: RawClient) -> None:
    """A mode other than octet/netascii gets ERROR 4."""
    raw.request(ReadRequest("size1.bin", "mail"))
    packet, _ = raw.receive()
    assert isinstance(packet, Error)
    assert packet.code == ErrorCode.ILLEGAL_OPERATION


# --------------------------------------------------------------------------- protocol flows


def test_uefi_tsize_probe_then_download(tree: Tree, served: Served, raw: RawClient) -> None:
    """EDK II: RRQ tsize=0 -> OACK(tsize) -> ERROR 8 -> new RRQ at once from the same port;
    the probe is logged as `probe`, the second request is a new transfer and completes."""
    name = "size8192.bin"
    raw.request(ReadRequest(name, "octet", (("blksize", "1468"), ("tsize", "0"))))
    oack, probe_tid = raw.receive()
    assert oack == OptionAck((("blksize", "1468"), ("tsize", "8192")))
    raw.send_to(Error(ErrorCode.OPTION_REFUSED, "User aborted the transfer"), probe_tid)
    raw.request(ReadRequest(name, "octet", (("blksize", "1468"),)))
    oack, tid = raw.receive()
    assert tid != probe_tid
    assert raw.fetch(tid, oack) == tree.files[name]
    wait_for(lambda: served.counters.get("tftp.transfers.completed") == 1)
    assert served.counters.get("tftp.transfers.probe") == 1


def test_probe_retry_with_identical_request(tree: Tree, served: Served, raw: RawClient) -> None:
    """A retry byte-identical to the probe (tsize again) after ERROR 8 is a new transfer."""
    request = ReadRequest("size1468.bin", "octet", (("tsize", "0"), ("blksize", "512")))
    raw.request(request)
    _, probe_tid = raw.receive()
    raw.send_to(Error(ErrorCode.OPTION_REFUSED, "User aborted"), probe_tid)
    raw.request(request)
    oack, tid = raw.receive()
    assert raw.fetch(tid, oack) == tree.files["size1468.bin"]
    wait_for(lambda: served.counters.get("tftp.transfers.completed") == 1)
    assert served.counters.get("tftp.transfers.probe") == 1


def test_repeated_request_is_the_same_transfer(tree: Tree, served: Served, raw: RawClient) -> None:
    """The same RRQ again from the same port (our answer was slow) starts no second transfer."""
    request = ReadRequest("size513.bin", "octet", (("blksize", "512"),))
    raw.request(request)
    raw.request(request)
    # Both RRQs are handled before the first ACK: the transfer is still waiting for it.
    wait_for(lambda: served.counters.get("tftp.requests") == 2)
    oack, tid = raw.receive()
    assert raw.fetch(tid, oack) == tree.files["size513.bin"]
    wait_for(lambda: served.counters.get("tftp.transfers.completed") == 1)
    assert served.counters.get("tftp.repeated_requests") == 1
    assert served.counters.get("tftp.requests") == 2


def test_stray_tid_does_not_disturb_transfer(tree: Tree, served: Served, raw: RawClient) -> None:
    """Datagrams to a transfer's port from another port never reach the transfer."""
    raw.request(ReadRequest("size8192.bin"))
    first, tid = raw.receive()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stray:
        stray.sendto(encode(Error(ErrorCode.NOT_DEFINED, "go away")), tid)
        stray.sendto(encode(Ack(1)), tid)
    assert raw.fetch(tid, first) == tree.files["size8192.bin"]
    wait_for(lambda: served.counters.get("tftp.transfers.completed") == 1)


def test_malformed_datagrams_counted_and_survived(
    tree: Tree, served: Served, raw: RawClient
) -> None:
    """Garbage on port 69 and on a transfer port is counted; the server keeps serving."""
    for junk in (b"", b"\x00", b"\x00\x09xx", b"\x00\x01no-nul", b"\x00\x04\x00\x01"):
        raw.request(junk)
    raw.request(ReadRequest("size1468.bin"))
    first, tid = raw.receive()
    raw.sock.sendto(b"\xff\xff garbage", tid)
    assert raw.fetch(tid, first) == tree.files["size1468.bin"]
    wait_for(lambda: served.counters.get("tftp.transfers.completed") == 1)
    assert served.counters.get("tftp.malformed") == 4
    assert served.counters.get("tftp.unexpected") == 1
    assert served.counters.get("tftp.ignored") == 1


def first_answer_s(served: Served, tree: Tree, name: str) -> float:
    """Seconds from a new client's RRQ for `name` to the server's first answer; the file
    is then fetched and checked."""
    client = RawClient(served.port)
    try:
        started = time.monotonic()
        client.request(ReadRequest(name))
        packet, tid = client.receive()
        waited_s = time.monotonic() - started
        assert client.fetch(tid, packet) == tree.files[name]
    finally:
        client.close()
    return waited_s


def test_request_answered_while_a_lone_transfer_stalls(
    tree: Tree, served: Served, raw: RawClient
) -> None:
    """One transfer alone puts the server in its solo lane (a blocking recv on that
    transfer's socket); when its client falls silent, a request from another client is
    still answered within the lane's bounded wait (SOLO_WAIT_S), not after the stalled
    transfer's retransmission timer."""
    raw.request(ReadRequest("size8192.bin"))  # no options: DATA 1 at once
    first, tid = raw.receive()
    assert isinstance(first, Data)
    raw.send_to(Ack(1), tid)  # handled on the transfer's socket: the solo lane begins
    second, _ = raw.receive()
    assert isinstance(second, Data)
    assert second.block == 2  # ... and the client never ACKs it
    assert first_answer_s(served, tree, "size1.bin") < SOLO_WAIT_S + 0.2
    wait_for(lambda: served.counters.get("tftp.transfers.completed") == 1)


def test_request_answered_during_a_fast_lone_transfer(tree: Tree, served: Served) -> None:
    """A request that arrives while one transfer runs alone at full speed is taken up at
    the end of the lane's current stint; both transfers complete."""
    name = f"size{3 * 1024 * 1024 + 7}.bin"
    results: dict[str, bytes] = {}

    def fetch_big() -> None:
        client = RawClient(served.port)
        try:
            client.request(ReadRequest(name, "octet", (("blksize", "512"),)))
            first, tid = client.receive()
            results["big"] = client.fetch(tid, first)
        finally:
            client.close()

    big = threading.Thread(target=fetch_big)
    big.start()
    wait_for(lambda: served.server.active_transfers == 1)
    time.sleep(0.05)  # the big transfer is under way, alone
    waited_s = first_answer_s(served, tree, "size513.bin")
    big.join(timeout=30)
    assert results["big"] == tree.files[name]
    assert waited_s < SOLO_WAIT_S + 0.2


def fetch_windowed(client: RawClient, name: str, blksize: int, windowsize: int) -> bytes:
    """A windowed RFC 7440 client: ACK each full window (and the end); every datagram
    must be one DATA of at most blksize bytes, in order."""
    options = (("blksize", str(blksize)), ("windowsize", str(windowsize)))
    client.request(ReadRequest(name, "octet", options))
    oack, tid = client.receive()
    assert oack == OptionAck(options)
    client.send_to(Ack(0), tid)
    chunks: list[bytes] = []
    while True:
        packet, source = client.receive()
        assert source == tid
        assert isinstance(packet, Data), packet
        assert packet.block == (len(chunks) + 1) % 65536
        assert len(packet.payload) <= blksize
        chunks.append(packet.payload)
        last = len(packet.payload) < blksize
        if last or len(chunks) % windowsize == 0:
            client.send_to(Ack(packet.block), tid)
        if last:
            return b"".join(chunks)


@pytest.mark.parametrize("udp_gso", [True, False])
@pytest.mark.parametrize(("blksize", "windowsize"), [(512, 16), (1468, 64), (8192, 4)])
def test_windows_arrive_as_separate_datagrams(
    tree: Tree, udp_gso: bool, blksize: int, windowsize: int
) -> None:
    """With UDP GSO (one send per window) or without, the client gets each block as its own
    datagram, in order, and the file byte for byte (a last window cut short included)."""
    running = serve(tree.root, TftpServerConfig(udp_gso=udp_gso))
    client = RawClient(running.port)
    name = f"size{3 * 1024 * 1024 + 7}.bin"
    try:
        assert fetch_windowed(client, name, blksize, windowsize) == tree.files[name]
        wait_for(lambda: running.counters.get("tftp.transfers.completed") == 1)
        assert running.counters.get("tftp.retransmitted") == 0
    finally:
        client.close()
        running.server.stop()


def test_silent_client_times_out(tree: Tree) -> None:
    """A client that never ACKs gets retransmissions, then an ERROR, and the transfer ends."""
    config = TftpServerConfig(TransferConfig(retransmit_timeout_s=0.05, retries_max=2))
    running = serve(tree.root, config)
    client = RawClient(running.port)
    try:
        client.request(ReadRequest("size1.bin"))
        received = [client.receive()[0] for _ in range(4)]
        assert received[:3] == [Data(1, tree.files["size1.bin"])] * 3
        assert isinstance(received[3], Error)
        wait_for(lambda: running.counters.get("tftp.transfers.timed_out") == 1)
        assert running.server.active_transfers == 0
    finally:
        client.close()
        running.server.stop()


def test_blksize_clamped_to_config_and_mtu(tree: Tree) -> None:
    """blksize is granted up to the configured maximum and the interface MTU (lo: 65464)."""
    for configured, asked, granted in ((65464, 65464, 65464), (1468, 65464, 1468)):
        running = serve(tree.root, TftpServerConfig(TransferConfig(blksize_max=configured)))
        client = RawClient(running.port)
        try:
            client.request(ReadRequest("size8192.bin", "octet", (("blksize", str(asked)),)))
            oack, tid = client.receive()
            assert oack == OptionAck((("blksize", str(granted)),))
            assert client.fetch(tid, oack) == tree.files["size8192.bin"]
        finally:
            client.close()
            running.server.stop()


def test_stop_ends_running_transfers(tree: Tree) -> None:
    """stop() with a transfer in flight sends its client an ERROR and returns promptly."""
    running = serve(tree.root)
    client = RawClient(running.port)
    try:
        client.request(ReadRequest("size1468.bin"))
        client.receive()
        started = time.monotonic()
        running.server.stop()
        assert time.monotonic() - started < 2
        packet, _ = client.receive()
        assert isinstance(packet, Error)
        assert running.counters.get("tftp.transfers.shutdown") == 1
    finally:
        client.close()
        running.server.stop()  # idempotent


def test_boot_component_contract(tree: Tree) -> None:
    """`boot_component(root, bind, counters=)` is what transport.boot_server composes."""
    counters = SharedCounters()
    component = boot_component(tree.root, Address("127.0.0.1", 0), counters=counters)
    assert component.name == "tftp"
    component.start()
    client = RawClient(component.address.port)
    try:
        client.request(ReadRequest("size1.bin"))
        first, tid = client.receive()
        assert client.fetch(tid, first) == tree.files["size1.bin"]
        wait_for(lambda: counters.get("tftp.transfers.completed") == 1)
    finally:
        client.close()
        component.stop()


def test_bind_conflict_is_a_clear_error(tree: Tree) -> None:
    """A port in use raises the BindError with advice that `peerpxe serve` prints."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        server = TftpServer(tree.root, Address("127.0.0.1", port))
        with pytest.raises(OSError, match="in use"):
            server.start()


def test_server_thread_survives_many_short_transfers(tree: Tree, served: Served) -> None:
    """Two hundred short transfers from 20 threads: all complete, nothing leaks."""
    failures: list[str] = []

    def worker() -> None:
        client = RawClient(served.port)
        try:
            for _ in range(10):
                client.request(ReadRequest("size513.bin", "octet", (("blksize", "512"),)))
                first, tid = client.receive()
                if client.fetch(tid, first) != tree.files["size513.bin"]:
                    failures.append("content")
        except Exception as error:  # noqa: BLE001 - reported below
            failures.append(repr(error))
        finally:
            client.close()

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert failures == []
    wait_for(lambda: served.counters.get("tftp.transfers.completed") == 200)
    assert served.server.active_transfers == 0
    assert served.counters.get("tftp.internal_error") == 0
