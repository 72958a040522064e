"""HTTP boot file serving on loopback, checked with curl: bytes, ranges, confinement.

The server runs in this process (`HttpFileServer` on 127.0.0.1, a free port); curl is the
client, so what is checked is what a real HTTP client sees on the wire.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from actors.core import Address
from transport.dhcp_socket import BindError
from transport.http_server import HttpFileServer, RangeNotSatisfiable, parse_range
from transport.metrics import SharedCounters

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl (apt install curl)"),
]

SCRIPT = b"#!ipxe\nkernel http://192.0.2.10/linux\nboot\n"
BIG_BYTES = 300_000


@dataclass
class Served:
    root: Path
    outside: Path
    base: str
    counters: SharedCounters
    server: HttpFileServer


@dataclass
class Fetched:
    status: int
    headers: dict[str, str]
    body: bytes


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    root = tmp_path / "root"
    (root / "sub" / "dir").mkdir(parents=True)
    (root / "ipxe.efi").write_bytes(os.urandom(BIG_BYTES))
    (root / "sub" / "dir" / "file.bin").write_bytes(b"nested file\n")
    (root / "empty.bin").write_bytes(b"")
    outside = tmp_path / "secret"
    outside.write_bytes(b"not for clients\n")
    (root / "escape").symlink_to(outside)
    (root / "escape-dir").symlink_to(tmp_path)
    (root / "alias.efi").symlink_to("ipxe.efi")
    counters = SharedCounters()
    scripts = {"/boot.ipxe": SCRIPT, "menu two.ipxe": SCRIPT}
    server = HttpFileServer(root, Address("127.0.0.1", 0), counters=counters, scripts=scripts)
    server.start()
    try:
        yield Served(root, outside, f"http://127.0.0.1:{server.address.port}", counters, server)
    finally:
        server.stop()


def curl(url: str, *options: str) -> Fetched:
    """One request with curl: status, headers (lowercase names) and body."""
    done = subprocess.run(
        ["curl", "-s", "-S", "--path-as-is", "-D", "/dev/stderr", "-o", "-", "--max-time", "10",
         *options, url],
        capture_output=True, check=True, timeout=20,
    )  # fmt: skip
    head = done.stderr.partition(b"\r\n\r\n")[0]
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Fetched(int(status_line.split()[1]), headers, done.stdout)


def test_get_is_byte_identical(served: Served) -> None:
    """A full GET returns the file byte for byte, with its length and range support."""
    fetched = curl(f"{served.base}/ipxe.efi")
    assert fetched.status == 200
    assert fetched.body == (served.root / "ipxe.efi").read_bytes()
    assert fetched.headers["content-length"] == str(BIG_BYTES)
    assert fetched.headers["accept-ranges"] == "bytes"
    assert served.counters.get("http.bytes_sent") == BIG_BYTES


def test_nested_path_and_symlink_inside_root(served: Served) -> None:
    """Sub-directories are served, and so is a symlink that stays inside the root."""
    assert curl(f"{served.base}/sub/dir/file.bin").body == b"nested file\n"
    alias = curl(f"{served.base}/alias.efi")
    assert alias.status == 200
    assert alias.body == (served.root / "ipxe.efi").read_bytes()


def test_head_has_length_and_no_body(served: Served) -> None:
    """HEAD answers the GET headers (Content-Length of the file) without a body: the next
    response on the same connection starts right after the HEAD's headers."""
    fetched = curl(f"{served.base}/ipxe.efi", "-I")
    assert fetched.status == 200
    assert fetched.headers["content-length"] == str(BIG_BYTES)
    connection = http.client.HTTPConnection("127.0.0.1", served.server.address.port, timeout=5)
    try:
        connection.request("HEAD", "/ipxe.efi")
        head = connection.getresponse()
        assert head.getheader("Content-Length") == str(BIG_BYTES)
        assert head.read() == b""
        connection.request("GET", "/sub/dir/file.bin")
        assert connection.getresponse().read() == b"nested file\n"
    finally:
        connection.close()
    assert served.counters.get("http.bytes_sent") == len(b"nested file\n")


def test_double_slash_stays_in_root(served: Served) -> None:
    """`//etc/passwd` (collapsed to `/etc/passwd` by the stdlib) is looked up in the root."""
    fetched = curl(f"{served.base}//etc/passwd")
    assert fetched.status == 404
    assert b"root:" not in fetched.body


@pytest.mark.parametrize(
    ("spec", "start", "stop"),
    [
        ("0-99", 0, 100),
        ("100-", 100, BIG_BYTES),
        ("-50", BIG_BYTES - 50, BIG_BYTES),
        ("299990-999999999", 299_990, BIG_BYTES),
        (f"{BIG_BYTES - 1}-{BIG_BYTES - 1}", BIG_BYTES - 1, BIG_BYTES),
    ],
)
def test_single_range(served: Served, spec: str, start: int, stop: int) -> None:
    """One range: 206, Content-Range and exactly those bytes (clipped to the file end)."""
    fetched = curl(f"{served.base}/ipxe.efi", "-r", spec)
    assert fetched.status == 206
    assert fetched.body == (served.root / "ipxe.efi").read_bytes()[start:stop]
    assert fetched.headers["content-range"] == f"bytes {start}-{stop - 1}/{BIG_BYTES}"
    assert fetched.headers["content-length"] == str(stop - start)


@pytest.mark.parametrize(("path", "spec"), [("ipxe.efi", f"{BIG_BYTES}-"), ("empty.bin", "0-")])
def test_unsatisfiable_range_is_416(served: Served, path: str, spec: str) -> None:
    """A range starting at or past the end: 416 with `bytes */size`."""
    fetched = curl(f"{served.base}/{path}", "-r", spec)
    size = (served.root / path).stat().st_size
    assert fetched.status == 416
    assert fetched.headers["content-range"] == f"bytes */{size}"
    assert fetched.body == b""


def test_multiple_ranges_get_the_whole_file(served: Served) -> None:
    """Multi-range requests are not supported: the whole file, 200 (RFC 9110 allows it)."""
    fetched = curl(f"{served.base}/ipxe.efi", "-r", "0-9,20-29")
    assert fetched.status == 200
    assert len(fetched.body) == BIG_BYTES


def test_stale_if_range_gets_the_whole_file(served: Served) -> None:
    """An If-Range that does not match Last-Modified: the whole file, 200."""
    fetched = curl(
        f"{served.base}/ipxe.efi", "-r", "0-9", "-H", "If-Range: Mon, 01 Jan 2001 00:00:00 GMT"
    )
    assert fetched.status == 200
    assert len(fetched.body) == BIG_BYTES


def test_missing_file_and_directory_are_404(served: Served) -> None:
    """Missing files are 404; so are directories (no listings)."""
    assert curl(f"{served.base}/nope.efi").status == 404
    listing = curl(f"{served.base}/sub/")
    assert listing.status == 403  # a trailing separator names a directory: refused
    assert b"file.bin" not in listing.body
    directory = curl(f"{served.base}/sub")
    assert directory.status == 404
    assert b"dir" not in directory.body.replace(b"<!DOCTYPE", b"")


@pytest.mark.parametrize(
    "path",
    [
        "/../secret",
        "/sub/../../secret",
        "/%2e%2e/secret",
        "/%2E%2E/secret",
        "/sub/%2e%2e/%2e%2e/secret",
        "/%2e%2e%2fsecret",
        "/..%5csecret",
        "/escape",
        "/escape-dir/secret",
        "/%5c%5chost/share/secret",
        "/C:/secret",
        "/ipxe.efi%00.txt",
    ],
)
def test_traversal_is_refused(served: Served, path: str) -> None:
    """`..` in any spelling, symlinks out of the root, UNC, drive letters, NUL: 403."""
    fetched = curl(served.base + path)
    assert fetched.status == 403
    assert b"not for clients" not in fetched.body
    assert served.counters.get("http.refused") == 1


def test_raw_request_target_without_slash_is_refused(served: Served) -> None:
    """A request line curl would never send (`GET ../secret`) is refused too."""
    with socket.create_connection(("127.0.0.1", served.server.address.port), timeout=5) as sock:
        sock.sendall(b"GET ../secret HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 403")
    assert b"not for clients" not in answer


def test_script_endpoint(served: Served) -> None:
    """An in-memory document (the iPXE script) is served at its path, as text."""
    fetched = curl(f"{served.base}/boot.ipxe")
    assert fetched.status == 200
    assert fetched.body == SCRIPT
    assert fetched.headers["content-type"].startswith("text/plain")
    assert curl(f"{served.base}/menu%20two.ipxe?x=1").body == SCRIPT


def test_other_methods_are_501(served: Served) -> None:
    """Read-only: POST and PUT are not implemented."""
    assert curl(f"{served.base}/ipxe.efi", "-X", "POST", "-d", "x").status == 501


def test_idle_connection_does_not_block_others(served: Served) -> None:
    """Threaded: a client holding an idle connection does not stall the next one."""
    with socket.create_connection(("127.0.0.1", served.server.address.port), timeout=5):
        results: list[int] = []
        workers = [
            threading.Thread(target=lambda: results.append(curl(f"{served.base}/ipxe.efi").status))
            for _ in range(4)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=20)
    assert results == [200, 200, 200, 200]


def test_keep_alive_serves_several_requests(served: Served) -> None:
    """Two URLs in one curl run reuse one connection (HTTP/1.1, Content-Length set)."""
    done = subprocess.run(
        ["curl", "-s", "-v", "-o", "/dev/null", "-o", "/dev/null",
         f"{served.base}/sub/dir/file.bin", f"{served.base}/ipxe.efi"],
        capture_output=True, check=True, timeout=20,
    )  # fmt: skip
    assert b"Re-using existing connection" in done.stderr or b"Reusing existing" in done.stderr


def test_port_in_use_is_a_bind_error(served: Served) -> None:
    """A second server on the same port fails with a clear BindError."""
    second = HttpFileServer(served.root, served.server.address, counters=SharedCounters())
    with pytest.raises(BindError, match="in use"):
        second.start()


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 10, None),
        ("bytes=0-4", 10, (0, 5)),
        ("bytes=5-", 10, (5, 10)),
        ("bytes=-3", 10, (7, 10)),
        ("bytes=-30", 10, (0, 10)),
        ("bytes=2-100", 10, (2, 10)),
        ("BYTES = 1-1", 10, (1, 2)),
        ("bytes=5-4", 10, None),  # invalid: ignored
        ("bytes=0-1,3-4", 10, None),  # several ranges: ignored
        ("items=0-1", 10, None),
        ("bytes=a-b", 10, None),
        ("bytes=-", 10, None),
        ("bytes=\u00b2-", 10, None),  # a Unicode digit is not a digit here
        ("bytes=0-0", 1, (0, 1)),
    ],
)
def test_parse_range(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    """RFC 9110 §14.1.2 byte ranges; anything unusual means the whole file."""
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"), [("bytes=10-", 10), ("bytes=-0", 10), ("bytes=0-", 0), ("bytes=-5", 0)]
)
def test_parse_range_unsatisfiable(header: str, size: int) -> None:
    """Ranges with no byte in the file raise RangeNotSatisfiable (416)."""
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, size)
