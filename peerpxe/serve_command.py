"""`peerpxe serve`: a standalone boot server (ProxyDHCP + TFTP + HTTP) in the foreground.

Like `dnsmasq --dhcp-range=IP,proxy` or pixiecore: the network's DHCP server keeps handing
out addresses; this command answers only PXE clients, with the boot file for their
architecture, and serves the files under `--root`. No agent, no election: one machine, one
interface. See docs/serve.md.

Exit status: 0 after SIGTERM/SIGINT; 2 for a usage or configuration error (missing root or
boot file, a file outside the root, an interface without IPv4), one line on stderr; 1 when a
server cannot start (port in use, no privilege for port 67), logged with advice.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transport.boot_server import BootSettings

HELP = "serve PXE boot (ProxyDHCP on 67/4011, TFTP, HTTP) from a directory, in the foreground"

_LOG = logging.getLogger("peerpxe.serve")
EXIT_OK = 0
EXIT_RUNTIME_ERROR = 1
EXIT_CONFIG_ERROR = 2


class ServeConfigError(Exception):
    """A command-line value that cannot work; the message is for the user."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `peerpxe serve`."""
    parser.add_argument(
        "--interface", help="answer ProxyDHCP on this interface (required unless --no-dhcp)"
    )
    parser.add_argument("--root", required=True, type=Path, help="directory served over TFTP/HTTP")
    parser.add_argument("--bios", help="boot file for BIOS PXE ROMs, relative to --root")
    parser.add_argument("--efi64", help="boot file for x64 UEFI (PXE and HTTP boot)")
    parser.add_argument("--arm64", help="boot file for ARM64 UEFI (PXE and HTTP boot)")
    parser.add_argument(
        "--ipxe-script",
        type=Path,
        help="iPXE script given to iPXE clients over HTTP: relative to --root, or an absolute "
        "path outside it (read once at start and served as /<its name>)",
    )
    parser.add_argument("--tftp-port", type=int, default=69, help="TFTP port (default: 69)")
    parser.add_argument("--http-port", type=int, default=80, help="HTTP port (default: 80)")
    parser.add_argument(
        "--listen",
        help="address the TFTP and HTTP servers bind and clients are sent to (default: the "
        "interface's IPv4 address; 0.0.0.0 with --no-dhcp)",
    )
    parser.add_argument(
        "--no-dhcp", action="store_true", help="serve TFTP and HTTP only (no ProxyDHCP)"
    )
    parser.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), default="info"
    )


def run(args: argparse.Namespace) -> int:
    """Validate the options, start the servers, serve until SIGTERM or SIGINT."""
    try:
        settings = settings_from_args(args)
    except ServeConfigError as error:
        print(f"peerpxe serve: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return serve(settings)


def serve(settings: BootSettings) -> int:
    """Run the boot server until a stop signal; the exit status."""
    from transport.boot_server import build_boot_server
    from transport.metrics import SharedCounters

    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        _LOG.info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    server = build_boot_server(settings, SharedCounters())
    try:
        server.start()
    except OSError as error:
        _LOG.error("cannot start: %s", error)
        return EXIT_RUNTIME_ERROR
    _log_started(settings)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.stop()
        _LOG.info("stopped; counters %s", server.counters.snapshot())
    return EXIT_OK


def settings_from_args(args: argparse.Namespace) -> BootSettings:
    """Check every option against the filesystem and interfaces; `ServeConfigError` if bad."""
    from transport.boot_server import BootSettings

    root = _check_root(args.root)
    for port, option in ((args.tftp_port, "--tftp-port"), (args.http_port, "--http-port")):
        if not 0 < port < 65536:
            raise ServeConfigError(f"{option} {port} is not a port number")
    server, bind = _addresses(args)
    files = {
        option: _boot_file(root, value, f"--{option}")
        for option, value in (("bios", args.bios), ("efi64", args.efi64), ("arm64", args.arm64))
        if value is not None
    }
    if not args.no_dhcp and not files:
        raise ServeConfigError("give at least one boot file (--bios, --efi64, --arm64)")
    script, documents = _ipxe_script(root, args.ipxe_script)
    return BootSettings(
        root=root,
        server=server,
        bind=bind,
        dhcp_interface=None if args.no_dhcp else args.interface,
        bios_file=files.get("bios"),
        efi64_file=files.get("efi64"),
        arm64_file=files.get("arm64"),
        ipxe_script=script,
        documents=documents,
        http_port=args.http_port,
        tftp_port=args.tftp_port,
    )


def _check_root(root: Path) -> Path:
    if not root.is_dir():
        raise ServeConfigError(f"--root {root}: not a directory")
    return root.resolve()


def _addresses(args: argparse.Namespace) -> tuple[str, str]:
    """(address given to clients, address the file servers bind)."""
    import ipaddress

    if args.listen is not None:
        try:
            ipaddress.IPv4Address(args.listen)
        except ValueError:
            raise ServeConfigError(f"--listen {args.listen}: not an IPv4 address") from None
    if args.no_dhcp:
        listen = args.listen or "0.0.0.0"  # noqa: S104 - serving every interface is the intent
        return listen, listen
    if not args.interface:
        raise ServeConfigError("--interface is required (or --no-dhcp to serve files only)")
    from peerpxe.config import LinuxNetworkInfo

    found = LinuxNetworkInfo().interface_ipv4(args.interface)
    if found is None:
        raise ServeConfigError(f"--interface {args.interface}: no such interface or no IPv4")
    if args.listen in (None, "0.0.0.0"):  # noqa: S104
        return found[0], args.listen or found[0]
    return args.listen, args.listen


def _boot_file(root: Path, value: str, option: str) -> str:
    """`value` as a validated root-relative path to a regular file inside `root`."""
    from actors.boot.tftp_paths import PathRefusal, validate_read_path

    relative = validate_read_path(value)
    if isinstance(relative, PathRefusal):
        raise ServeConfigError(f"{option} {value!r}: {relative.value}")
    real = Path(os.path.realpath(root / relative))
    if not real.is_relative_to(root):
        raise ServeConfigError(f"{option} {value!r}: resolves outside --root {root}")
    if not real.is_file():
        raise ServeConfigError(f"{option} {value!r}: no such file under --root {root}")
    return relative


def _ipxe_script(root: Path, script: Path | None) -> tuple[str | None, dict[str, bytes]]:
    """(URL path of the script, in-memory documents) for `--ipxe-script`."""
    if script is None:
        return None, {}
    if not script.is_absolute():
        return _boot_file(root, str(script), "--ipxe-script"), {}
    real = Path(os.path.realpath(script))
    if real.is_relative_to(root):
        return _boot_file(root, str(real.relative_to(root)), "--ipxe-script"), {}
    try:
        body = real.read_bytes()
    except OSError as error:
        raise ServeConfigError(f"--ipxe-script {script}: {error.strerror}") from None
    return real.name, {real.name: body}


def _log_started(settings: BootSettings) -> None:
    from transport.boot_server import boot_policy

    policy = boot_policy(settings)
    files = ", ".join(f"{arch.value}={path}" for arch, path in policy.boot_files.items())
    _LOG.info(
        "serving %s as %s: %s; iPXE script %s",
        settings.root,
        settings.server,
        files or "no boot files (--no-dhcp)",
        policy.ipxe_script_url or "none (iPXE clients are not answered)",
    )
