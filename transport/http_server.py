"""HTTP file serving for iPXE and UEFI HTTP boot: GET and HEAD, one byte range, no listings.

Theory of operation
-------------------
A `ThreadingHTTPServer` (one thread per connection, HTTP/1.1 keep-alive) serves the files
under one root directory plus optional in-memory documents (`scripts`: an iPXE script
generated or read at start). Each request goes through:

1. **Confinement.** The URL path (of an origin-form or absolute-form target, without the
   query) is percent-decoded (so `%2e%2e` is `..`) and checked by the same pure validator
   as TFTP names (`actors.boot.tftp_paths.validate_read_path`: no `..` or dots-only
   components, no NUL or control characters, no `:`, no UNC, backslashes are separators).
   Then the filesystem check the validator cannot do: the real path (`os.path.realpath`,
   every symlink resolved) must still be inside the real root, so a symlink that points
   out of the root is refused too. Refused: 403. Missing, or not a regular file (a
   directory: no listings): 404. In-memory documents are looked up by the validated path,
   before the filesystem.
2. **Range** (RFC 9110 §14): one range `bytes=a-b`, `bytes=a-` or `bytes=-n` gets 206 with
   `Content-Range`; a range that starts past the end (or any range of an empty file) gets
   416 with `Content-Range: bytes */size`. Several ranges, a syntactically invalid `Range`
   or an `If-Range` that does not match `Last-Modified` are ignored (RFC 9110 §14.2 allows
   it): the whole file, 200.
3. **Body** by `socket.sendfile` (the kernel's sendfile(2): no copy through Python), with
   `Content-Length` always set so connections can be kept alive.

Anything else (POST, PUT, ...) is 501 from the standard library. One log line per request:
client, method, path, status, bytes sent and seconds. Counters: `http.requests`,
`http.refused`, `http.not_found`, `http.bytes_sent`, `http.aborted` (client went away).
"""

from __future__ import annotations

import email.utils
import logging
import os
import socketserver
import stat
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO, Final

from actors.boot.tftp_paths import PathRefusal, validate_read_path
from actors.core import Address
from transport.dhcp_socket import bind_error
from transport.metrics import SharedCounters

_LOG = logging.getLogger(__name__)

CONNECTION_IDLE_S: Final = 60.0
"""A kept-alive connection idle this long is closed (and its thread ends)."""
POLL_S: Final = 0.2
"""How often the accept loop checks for `stop()`."""
CONTENT_TYPES: Final = {
    ".ipxe": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".cfg": "text/plain; charset=utf-8",
}
DEFAULT_CONTENT_TYPE: Final = "application/octet-stream"


class RangeNotSatisfiable(Exception):
    """The `Range` header asks for bytes the file does not have (answer 416)."""


@dataclass(frozen=True, slots=True)
class Refused:
    """A request path that may not be served: why, for the log."""

    reason: str


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """`(start, stop)` (stop exclusive) for a single-range `Range` header, or None for the
    whole file; `RangeNotSatisfiable` when no byte of the range exists (RFC 9110 §14.1.2)."""
    if header is None:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = (part.strip() for part in spec.partition("-"))
    if not dash or not (first or last) or not all(_digits(part) for part in (first, last) if part):
        return None
    if not first:  # suffix range: the last `last` bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - suffix), size
    start = int(first)
    if last and int(last) < start:
        return None  # invalid range-spec: ignore the header
    if start >= size:
        raise RangeNotSatisfiable
    stop = size if not last else min(int(last) + 1, size)
    return start, stop


def request_path(target: str) -> str:
    """The still-encoded path of an HTTP request target (RFC 9112 §3.2): origin-form
    `/a/b?q` or absolute-form `http://host/a/b`. Not `urlsplit` on origin-form: it would
    read `//etc/passwd` as host `etc`, path `/passwd`."""
    if not target.startswith("/") and "://" in target:
        target = urllib.parse.urlsplit(target).path or "/"
    return target.partition("?")[0].partition("#")[0]


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def resolve_request_path(real_root: str, url_path: str) -> tuple[str, Path] | Refused:
    """(validated root-relative path, real file path) for an encoded URL path, inside
    `real_root` (already `realpath`ed), or why it is refused. The file may not exist."""
    decoded = urllib.parse.unquote(url_path, errors="surrogateescape")
    relative = validate_read_path(decoded)
    if isinstance(relative, PathRefusal):
        return Refused(relative.value)
    real = os.path.realpath(os.path.join(real_root, relative))
    if not real.startswith(real_root.rstrip(os.sep) + os.sep):
        return Refused("resolves outside the served root")
    return relative, Path(real)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for idle keep-alive connections

    def __init__(
        self,
        bind: Address,
        real_root: str,
        scripts: Mapping[str, bytes],
        counters: SharedCounters,
    ) -> None:
        self.real_root = real_root
        self.scripts = scripts
        self.counters = counters
        super().__init__((bind.host, bind.port), _Handler)

    def server_bind(self) -> None:
        """Bind without `HTTPServer`'s `getfqdn()`: a reverse DNS lookup can hang for
        seconds on a machine or namespace without a resolver."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "peerpxe"
    timeout = CONNECTION_IDLE_S
    server: _Server

    def do_GET(self) -> None:
        self._serve(with_body=True)

    def do_HEAD(self) -> None:
        self._serve(with_body=False)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Silenced: `_serve` logs one line per request, after the body."""

    def log_message(self, format: str, *args: object) -> None:
        _LOG.debug("%s: " + format, self.client_address[0], *args)

    def _serve(self, *, with_body: bool) -> None:
        started = time.monotonic()
        counters = self.server.counters
        counters.add("http.requests")
        status, sent = self._respond(with_body)
        _LOG.info(
            "http %s %s %r -> %d, %d bytes in %.3f s",
            self.client_address[0], self.command, self.path, status, sent,
            time.monotonic() - started,
        )  # fmt: skip

    def _respond(self, with_body: bool) -> tuple[int, int]:
        resolved = resolve_request_path(self.server.real_root, request_path(self.path))
        if isinstance(resolved, Refused):
            self.server.counters.add("http.refused")
            _LOG.warning(
                "http %s refused %r: %s", self.client_address[0], self.path, resolved.reason
            )
            self.send_error(HTTPStatus.FORBIDDEN)
            return HTTPStatus.FORBIDDEN, 0
        relative, target = resolved
        script = self.server.scripts.get(relative)
        if script is not None:
            return self._send_bytes(script, relative, with_body)
        try:
            file = target.open("rb")
        except OSError:
            return self._not_found()
        with file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode):
                return self._not_found()
            return self._send_file(file, info, target.name, with_body)

    def _not_found(self) -> tuple[int, int]:
        self.server.counters.add("http.not_found")
        self.send_error(HTTPStatus.NOT_FOUND)
        return HTTPStatus.NOT_FOUND, 0

    def _send_file(
        self, file: BinaryIO, info: os.stat_result, name: str, with_body: bool
    ) -> tuple[int, int]:
        size = info.st_size
        last_modified = email.utils.formatdate(info.st_mtime, usegmt=True)
        try:
            byte_range = self._requested_range(size, last_modified)
        except RangeNotSatisfiable:
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, 0
        start, stop = byte_range or (0, size)
        status = HTTPStatus.OK if byte_range is None else HTTPStatus.PARTIAL_CONTENT
        self.send_response(status)
        self._send_entity_headers(name, stop - start, last_modified)
        if byte_range is not None:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
        self.end_headers()
        if not with_body or stop == start:
            return status, 0
        return status, self._sendfile(file, start, stop - start)

    def _requested_range(self, size: int, last_modified: str) -> tuple[int, int] | None:
        if_range = self.headers.get("If-Range")
        if if_range is not None and if_range.strip() != last_modified:
            return None  # the client's copy is stale: send it all
        return parse_range(self.headers.get("Range"), size)

    def _send_bytes(self, body: bytes, url_path: str, with_body: bool) -> tuple[int, int]:
        self.send_response(HTTPStatus.OK)
        self._send_entity_headers(url_path, len(body), None)
        self.end_headers()
        if not with_body:
            return HTTPStatus.OK, 0
        self.wfile.write(body)
        self.server.counters.add("http.bytes_sent", len(body))
        return HTTPStatus.OK, len(body)

    def _send_entity_headers(self, name: str, length: int, last_modified: str | None) -> None:
        suffix = os.path.splitext(name)[1].lower()
        self.send_header("Content-Type", CONTENT_TYPES.get(suffix, DEFAULT_CONTENT_TYPE))
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if last_modified is not None:
            self.send_header("Last-Modified", last_modified)

    def _sendfile(self, file: BinaryIO, offset: int, count: int) -> int:
        try:
            sent: int = self.connection.sendfile(file, offset, count)
        except OSError as error:  # the client went away mid-transfer
            self.server.counters.add("http.aborted")
            _LOG.info("http %s aborted %s: %s", self.client_address[0], self.path, error)
            self.close_connection = True
            return 0
        self.server.counters.add("http.bytes_sent", sent)
        if sent != count:  # the file shrank under us: the response is broken, end it
            self.close_connection = True
        return sent


class HttpFileServer:
    """Serves `root` (and `scripts`, URL path -> bytes) on `bind`; `start()` / `stop()`."""

    name = "http"

    def __init__(
        self,
        root: Path,
        bind: Address,
        *,
        counters: SharedCounters,
        scripts: Mapping[str, bytes] | None = None,
    ) -> None:
        self.root = root
        self.bind = bind
        self.scripts = {path.lstrip("/"): body for path, body in (scripts or {}).items()}
        self._counters = counters
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> Address:
        """The bound address (the real port when `bind.port` was 0)."""
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return Address(str(host), int(port))

    def start(self) -> None:
        """Bind and start serving; `BindError` if the port cannot be had."""
        real_root = os.path.realpath(self.root)
        try:
            self._server = _Server(self.bind, real_root, self.scripts, self._counters)
        except OSError as error:
            raise bind_error(error, "HTTP", self.bind) from error
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(POLL_S,), name="peerpxe-http"
        )
        self._thread.start()
        _LOG.info("HTTP serving %s on %s:%d", real_root, self.address.host, self.address.port)

    def stop(self) -> None:
        """Stop accepting, close the listening socket (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
