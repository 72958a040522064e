"""TFTP and ProxyDHCP serving speed: peerpxe against tftpd-hpa and dnsmasq, same client, same run.

    .venv/bin/python bench/tftp.py [--json] [--repeat 5] [--size-mib 64] [--clients 100]
        [--concurrent-mib 30] [--dhcp-requests 20000] [--skip-concurrent] [--skip-dhcp]

When run as root with `ip` available, the bench re-executes itself inside a fresh network
namespace (`ppxb` + random suffix, only loopback, deleted afterwards): dnsmasq's TFTP server
only listens on port 69, and the namespace keeps that port and the load away from anything
else on the machine. Without root, dnsmasq is skipped and the rest runs on the host's
loopback with ephemeral ports.

Figures (loopback, 127.0.0.1):
- lockstep: curl (`--tftp-blksize`) fetches a `--size-mib` file from each server; server and
  client pinned to CPU 0 (`taskset -c 0`, benchmarking.md: unpinned lock-step figures are
  bimodal); the servers are fetched in turns, `--repeat` times, and the median is quoted;
  `ratio_vs_tftpd_hpa` = peerpxe MB/s / tftpd-hpa MB/s at the same blksize. One untimed
  fetch per server and blksize is compared byte for byte first.
- windowed: atftp (the Debian client with RFC 7440 windowsize) fetches the same file from
  peerpxe with `windowsize 16` and from tftpd-hpa lock-step (windowsize 1), both pinned;
  `ratio_vs_tftpd_hpa_lockstep` = peerpxe windowed MB/s / tftpd-hpa lock-step MB/s.
- concurrent: `--clients` curl processes start at once and each fetch a `--concurrent-mib`
  file (blksize 1468, nothing pinned); aggregate MB/s = bytes of all clients / wall time from
  the first start to the last exit; a failure is a non-zero exit or a wrong size; the first
  three clients' files are compared byte for byte.
- proxydhcp: `actors.boot.proxy_dhcp.answer_datagram` behind a plain UDP socket loop in a
  separate process on 127.0.0.1, answering BIOS DISCOVERs (67 path) and OVMF 4011 REQUESTs
  crafted once with scapy (`tests/unit/pxe_clients.py`); a client keeps `--dhcp-inflight`
  requests outstanding (each with its own xid) and times every reply; answers/s and the
  p50/p99 latency. dnsmasq in proxy mode is not compared (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MIB = 1024 * 1024
PIN = ["taskset", "-c", "0"]
READY_FILE = "ready.txt"
LOCKSTEP_BLKSIZES = (1468, 8192)
WINDOWSIZE = 16
WINDOW_BLKSIZE = 1468
CONCURRENT_BLKSIZE = 1468
VERIFIED_CLIENTS = 3
SERVER_START_S = 10.0
FETCH_TIMEOUT_S = 120.0
DHCP_SERVER = "192.0.2.10"


# --------------------------------------------------------------------------- servers


@dataclass(frozen=True)
class ServerKind:
    name: str
    port: int


def server_command(kind: ServerKind, root: Path) -> list[str]:
    """The command line that serves `root` over TFTP on `kind.port` (all addresses)."""
    if kind.name == "peerpxe":
        return [sys.executable, __file__, "--serve-peerpxe", str(root), str(kind.port)]
    if kind.name == "tftpd-hpa":
        return ["in.tftpd", "-L", "-a", f":{kind.port}", "-s", str(root)]
    assert kind.name == "dnsmasq"
    assert kind.port == 69
    return [
        "dnsmasq", "-k", "-C", "/dev/null", "--port=0", "--enable-tftp",
        f"--tftp-root={root}", "--edns-packet-max=65535", "--tftp-max=1000",
        "--quiet-tftp", "--pid-file=", "--log-facility=-",
    ]  # fmt: skip


@contextlib.contextmanager
def running(kind: ServerKind, root: Path, *, pinned: bool) -> Iterator[None]:
    """Run one server for the duration of the block; wait until it answers an RRQ."""
    command = (PIN if pinned else []) + server_command(kind, root)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(kind.port, process)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    """Poll with an RRQ until the server sends DATA 1 (then abort the transfer)."""
    deadline = time.monotonic() + SERVER_START_S
    rrq = b"\0\1" + READY_FILE.encode() + b"\0octet\0"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.1)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            sock.sendto(rrq, ("127.0.0.1", port))
            try:
                reply, source = sock.recvfrom(2048)
            except TimeoutError:
                continue
            if reply[:2] == b"\0\3":
                sock.sendto(b"\0\5\0\0done\0", source)
                return
    raise RuntimeError(f"no TFTP answer on port {port} within {SERVER_START_S} s")


def serve_peerpxe(root: Path, port: int) -> int:
    """Internal: run peerpxe's server until SIGTERM (the bench starts it in a process)."""
    import signal  # noqa: PLC0415

    from actors.core import Address  # noqa: PLC0415
    from transport.tftp_server import TftpServer  # noqa: PLC0415

    server = TftpServer(root, Address("0.0.0.0", port))  # noqa: S104 - loopback namespace
    server.start()
    signal.sigwait([signal.SIGTERM, signal.SIGINT])
    server.stop()
    return 0


# --------------------------------------------------------------------------- clients


def curl_fetch(port: int, name: str, blksize: int, out: str, *, pinned: bool) -> float:
    """Seconds for one curl fetch; raises on failure."""
    command = (PIN if pinned else []) + [
        "curl", "-s", "-S", "--tftp-blksize", str(blksize),
        f"tftp://127.0.0.1:{port}/{name}", "-o", out,
    ]  # fmt: skip
    return timed_run(command)


def atftp_fetch(port: int, name: str, blksize: int, windowsize: int, out: str) -> float:
    """Seconds for one pinned atftp fetch with the given options; raises on failure."""
    options = ["--option", f"blksize {blksize}"]
    if windowsize > 1:
        options += ["--option", f"windowsize {windowsize}"]
    command = [*PIN, "atftp", *options, "-g", "-r", name, "-l", out, "127.0.0.1", str(port)]
    return timed_run(command, quiet=True)


def timed_run(command: list[str], *, quiet: bool = False) -> float:
    """Seconds from start to exit of `command`; raises on failure or after FETCH_TIMEOUT_S.

    Not `subprocess.run(timeout=...)`: with a timeout, `Popen.wait` polls with sleeps of up
    to 50 ms, which put a 0-50 ms step into every sample (seen as samples 50 ms apart). A
    blocking wait with a watchdog timer that kills a hung client costs nothing.
    """
    output = subprocess.DEVNULL if quiet else None
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=output, stderr=output)
    watchdog = threading.Timer(FETCH_TIMEOUT_S, process.kill)
    watchdog.start()
    try:
        code = process.wait()
    finally:
        watchdog.cancel()
    elapsed_s = time.perf_counter() - started
    if code != 0:
        raise subprocess.CalledProcessError(code, command)
    return elapsed_s


def same_file(left: Path, right: Path) -> bool:
    with left.open("rb") as one, right.open("rb") as other:
        while True:
            a, b = one.read(MIB), other.read(MIB)
            if a != b:
                return False
            if not a:
                return True


# --------------------------------------------------------------------------- scenarios


@dataclass
class Setup:
    root: Path
    scratch: Path
    servers: list[ServerKind]
    size_mib: int
    repeat: int


def lockstep(setup: Setup) -> dict[str, Any]:
    """curl, pinned, each blksize: median MB/s per server and the ratio vs tftpd-hpa."""
    name = "big.bin"
    size = setup.size_mib * MIB
    results: dict[str, Any] = {}
    for blksize in LOCKSTEP_BLKSIZES:
        times: dict[str, list[float]] = {kind.name: [] for kind in setup.servers}
        with contextlib.ExitStack() as stack:
            for kind in setup.servers:
                stack.enter_context(running(kind, setup.root, pinned=True))
                out = setup.scratch / f"{kind.name}.{blksize}"
                curl_fetch(kind.port, name, blksize, str(out), pinned=True)
                if not same_file(out, setup.root / name):
                    raise RuntimeError(f"{kind.name} blksize {blksize}: content differs")
                out.unlink()
            for _ in range(setup.repeat):
                for kind in setup.servers:
                    seconds = curl_fetch(kind.port, name, blksize, "/dev/null", pinned=True)
                    times[kind.name].append(seconds)
        results[str(blksize)] = summarise(times, size)
    return results


def summarise(times: dict[str, list[float]], size: int) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for server, samples in times.items():
        median_s = statistics.median(samples)
        figures[server] = {
            "mb_per_s": round(size / median_s / 1e6, 1),
            "median_s": round(median_s, 4),
            "samples_s": [round(sample, 4) for sample in samples],
        }
    reference = figures.get("tftpd-hpa")
    if reference is not None:
        for figure in figures.values():
            figure["ratio_vs_tftpd_hpa"] = round(figure["mb_per_s"] / reference["mb_per_s"], 2)
    return figures


def windowed(setup: Setup) -> dict[str, Any]:
    """atftp, pinned: peerpxe windowsize 16 (and 1) against tftpd-hpa lock-step."""
    name = "big.bin"
    size = setup.size_mib * MIB
    peerpxe = next(kind for kind in setup.servers if kind.name == "peerpxe")
    hpa = next(kind for kind in setup.servers if kind.name == "tftpd-hpa")
    runs = {
        f"peerpxe_windowsize_{WINDOWSIZE}": (peerpxe, WINDOWSIZE),
        "peerpxe_lockstep": (peerpxe, 1),
        "tftpd-hpa_lockstep": (hpa, 1),
    }
    times: dict[str, list[float]] = {label: [] for label in runs}
    with running(peerpxe, setup.root, pinned=True), running(hpa, setup.root, pinned=True):
        out = setup.scratch / "windowed.bin"
        atftp_fetch(peerpxe.port, name, WINDOW_BLKSIZE, WINDOWSIZE, str(out))
        if not same_file(out, setup.root / name):
            raise RuntimeError("peerpxe windowed: content differs")
        out.unlink()
        for _ in range(setup.repeat):
            for label, (kind, window) in runs.items():
                times[label].append(
                    atftp_fetch(kind.port, name, WINDOW_BLKSIZE, window, "/dev/null")
                )
    figures = summarise(times, size)
    reference = figures["tftpd-hpa_lockstep"]["mb_per_s"]
    for label in runs:
        figures[label].pop("ratio_vs_tftpd_hpa", None)
        figures[label]["ratio_vs_tftpd_hpa_lockstep"] = round(
            figures[label]["mb_per_s"] / reference, 2
        )
    return {"blksize": WINDOW_BLKSIZE, "client": "atftp", **figures}


def concurrent(setup: Setup, clients: int, size_mib: int) -> dict[str, Any]:
    """`clients` curl fetches at once per server, unpinned: aggregate MB/s and failures."""
    name = "concurrent.bin"
    size = size_mib * MIB
    results: dict[str, Any] = {}
    for kind in setup.servers:
        with running(kind, setup.root, pinned=False):
            results[kind.name] = concurrent_run(setup, kind, name, clients, size)
    return results


def concurrent_run(
    setup: Setup, kind: ServerKind, name: str, clients: int, size: int
) -> dict[str, Any]:
    outputs = [
        str(setup.scratch / f"c{index}.bin") if index < VERIFIED_CLIENTS else "/dev/null"
        for index in range(clients)
    ]
    url = f"tftp://127.0.0.1:{kind.port}/{name}"
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            [
                "curl",
                "-s",
                "--tftp-blksize",
                str(CONCURRENT_BLKSIZE),
                "-w",
                "%{size_download}",
                url,
                "-o",
                out,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        for out in outputs
    ]
    failures = 0
    for process in processes:
        stdout, _ = process.communicate(timeout=FETCH_TIMEOUT_S * 3)
        if process.returncode != 0 or stdout.strip() != str(size).encode():
            failures += 1
    elapsed_s = time.perf_counter() - started
    for out in outputs[:VERIFIED_CLIENTS]:
        path = Path(out)
        if not path.exists() or not same_file(path, setup.root / name):
            failures += 1
        path.unlink(missing_ok=True)
    return {
        "clients": clients,
        "file_mib": size // MIB,
        "aggregate_mb_per_s": round(clients * size / elapsed_s / 1e6, 1),
        "seconds": round(elapsed_s, 2),
        "failures": failures,
    }


# --------------------------------------------------------------------------- ProxyDHCP


def serve_dhcp(port: int) -> int:
    """Internal: answer every datagram with `answer_datagram`, replying to its sender."""
    from actors.boot.proxy_dhcp import (  # noqa: PLC0415
        ArchClass,
        DhcpReply,
        ProxyPolicy,
        answer_datagram,
    )
    from actors.core import Address  # noqa: PLC0415

    policy = ProxyPolicy(
        boot_files={ArchClass.BIOS: "undionly.kpxe", ArchClass.EFI_X64: "ipxe.efi"}
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    while True:
        payload, source = sock.recvfrom(2048)
        if payload == b"stop":
            return 0
        # the first byte of the payload after the BOOTP header cannot carry the local port,
        # so the client tells it: requests whose xid is odd came "to 4011"
        local_port = 4011 if payload[7] & 1 else 67
        reply = answer_datagram(
            payload, local_port=local_port, source=Address(*source), server=DHCP_SERVER,
            policy=policy,
        )  # fmt: skip
        if isinstance(reply, DhcpReply):
            sock.sendto(reply.payload, source)


def proxydhcp(requests: int, inflight: int) -> dict[str, Any]:
    """Answers per second and latency of the ProxyDHCP decision behind a UDP socket."""
    from tests.unit.pxe_clients import bios_discover, ovmf_request_4011  # noqa: PLC0415

    templates = [bytearray(bios_discover()), bytearray(ovmf_request_4011())]
    port = free_udp_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve-dhcp", str(port)], stdout=subprocess.DEVNULL
    )
    try:
        time.sleep(0.5)  # import and bind; the first requests are retried below anyway
        latencies_s, elapsed_s, lost = dhcp_client(port, templates, requests, inflight)
    finally:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"stop", ("127.0.0.1", port))
        server.wait(timeout=5)
    latencies_s.sort()
    return {
        "requests": requests,
        "inflight": inflight,
        "answers_per_s": round(len(latencies_s) / elapsed_s),
        "p50_ms": round(latencies_s[len(latencies_s) // 2] * 1e3, 3),
        "p99_ms": round(latencies_s[int(len(latencies_s) * 0.99)] * 1e3, 3),
        "lost": lost,
    }


def dhcp_client(
    port: int, templates: list[bytearray], requests: int, inflight: int
) -> tuple[list[float], float, int]:
    """Closed loop: `inflight` requests outstanding; (latencies, elapsed, unanswered)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(1.0)
    warm = templates[0][:]
    for _ in range(50):  # wait until the server answers
        sock.send(bytes(warm))
        with contextlib.suppress(TimeoutError):
            sock.recv(2048)
            break
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    next_xid = 2

    def send_one() -> None:
        nonlocal next_xid
        packet = templates[next_xid & 1]
        struct.pack_into(">I", packet, 4, next_xid)
        sent_at[next_xid] = time.perf_counter()
        sock.send(packet)
        next_xid += 1

    started = time.perf_counter()
    for _ in range(min(inflight, requests)):
        send_one()
    lost = 0
    while sent_at:
        try:
            reply = sock.recv(2048)
        except TimeoutError:
            lost += len(sent_at)
            break
        (xid,) = struct.unpack_from(">I", reply, 4)
        sent = sent_at.pop(xid, None)
        if sent is None:
            continue
        latencies.append(time.perf_counter() - sent)
        if next_xid - 2 < requests:
            send_one()
    elapsed_s = time.perf_counter() - started
    sock.close()
    return latencies, elapsed_s, lost


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------- main


def make_root(base: Path, size_mib: int, concurrent_mib: int) -> Path:
    """World-readable root (tftpd-hpa and dnsmasq drop privileges) with the test files."""
    root = base / "root"
    root.mkdir()
    for name, mib in (("big.bin", size_mib), ("concurrent.bin", concurrent_mib)):
        with (root / name).open("wb") as file:
            for _ in range(mib):
                file.write(os.urandom(MIB))
    (root / READY_FILE).write_bytes(b"ready\n")
    os.chmod(base, 0o755)  # noqa: S103 - the peers read as `nobody`
    os.chmod(root, 0o755)  # noqa: S103
    for path in root.iterdir():
        os.chmod(path, 0o644)
    return root


def missing_tools(args: argparse.Namespace) -> list[str]:
    needed = ["curl", "in.tftpd", "taskset", "atftp"]
    return [tool for tool in needed if shutil.which(tool) is None]


def run_inside(args: argparse.Namespace) -> dict[str, Any]:
    in_namespace = args.in_netns is not None
    if in_namespace:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    servers = [ServerKind("peerpxe", 16901), ServerKind("tftpd-hpa", 16902)]
    notes: list[str] = []
    if in_namespace and shutil.which("dnsmasq"):
        servers.append(ServerKind("dnsmasq", 69))
    else:
        notes.append("dnsmasq skipped: its TFTP server needs port 69 (run as root for a netns)")
    with tempfile.TemporaryDirectory(prefix="ppxbench") as scratch_dir:
        base = Path(scratch_dir)
        root = make_root(base, args.size_mib, args.concurrent_mib)
        scratch = base / "out"
        scratch.mkdir()
        setup = Setup(root, scratch, servers, args.size_mib, args.repeat)
        result: dict[str, Any] = {
            "size_mib": args.size_mib,
            "repeat": args.repeat,
            "cpus": os.cpu_count(),
            "netns": in_namespace,
            "notes": notes,
        }
        result["lockstep_curl_pinned"] = lockstep(setup)
        result["windowed_atftp_pinned"] = windowed(setup)
        if not args.skip_concurrent:
            result["concurrent_curl"] = concurrent(setup, args.clients, args.concurrent_mib)
    if not args.skip_dhcp:
        result["proxydhcp"] = proxydhcp(args.dhcp_requests, args.dhcp_inflight)
    return result


def run_in_netns(argv: list[str]) -> int:
    """Re-run this bench inside a fresh network namespace; delete it afterwards."""
    name = "ppxb" + secrets.token_hex(3)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        command = ["ip", "netns", "exec", name, sys.executable, __file__, *argv]
        return subprocess.run([*command, "--in-netns", name], check=False).returncode
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def main() -> int:
    assert __doc__ is not None
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--concurrent-mib", type=int, default=30)
    parser.add_argument("--dhcp-requests", type=int, default=20_000)
    parser.add_argument("--dhcp-inflight", type=int, default=8)
    parser.add_argument("--skip-concurrent", action="store_true")
    parser.add_argument("--skip-dhcp", action="store_true")
    parser.add_argument("--no-netns", action="store_true", help="stay in this namespace")
    parser.add_argument("--in-netns", help=argparse.SUPPRESS)
    parser.add_argument("--serve-peerpxe", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--serve-dhcp", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_peerpxe:
        return serve_peerpxe(Path(args.serve_peerpxe[0]), int(args.serve_peerpxe[1]))
    if args.serve_dhcp is not None:
        return serve_dhcp(args.serve_dhcp)
    missing = missing_tools(args)
    if missing:
        print(f"missing tools: {', '.join(missing)}", file=sys.stderr)
        return 2
    can_netns = os.geteuid() == 0 and shutil.which("ip") is not None
    if args.in_netns is None and can_netns and not args.no_netns:
        return run_in_netns(sys.argv[1:])
    result = run_inside(args)
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
