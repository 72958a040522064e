"""A QEMU guest network-booting on a bridge in network namespaces, with a pluggable responder.

Layout (all names carry a unique prefix `ppx` + random hex; everything is removed in
`close()`, also after a failed test; the host's own network is never touched):

    ns <p>net   bridge br0, tap <p>tap (QEMU's NIC), veths to the server namespaces;
                QEMU itself runs here (`ip netns exec`), so it can open the tap
    ns <p>pxe   eth0 10.77.0.1/24: the PXE responder (ProxyDHCP 67/4011, TFTP, HTTP)
    ns <p>dhcp  eth0 10.77.0.2/24: dnsmasq as the site's plain DHCP server, addresses only
    ns <p>n1..  eth0 10.77.0.11.. (`PeerpxeAgents`, instead of <p>pxe): one `peerpxe agent`
                each, electing the subnet's responder among themselves over real mDNS

The single responder is pluggable (`Responder`): `PeerpxeServe` runs `peerpxe serve`, the
thing under test; `DnsmasqProxy` is a stand-in built from dnsmasq in proxy mode plus a Python
HTTP server, used to prove the VM side (firmware, network, payload, serial capture)
independently. `PeerpxeAgents` replaces both with self-healing agents (failover tests).

QEMU writes everything its NIC sends and receives to a pcap file (`-object filter-dump`), so
the tests judge the exchange from the wire (`Capture`), not only from the responder's word;
`send_note` puts a test's own actions (a kill) into that pcap.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tests.e2e.capture import DISCARD_PORT
from tests.netns.netlab import AgentProcess, agreed_responder, launch_agent, socket_in

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "e2e"
SUBNET_PREFIX = "10.77.0"
PXE_ADDRESS = f"{SUBNET_PREFIX}.1"
DHCP_ADDRESS = f"{SUBNET_PREFIX}.2"
HTTP_PORT = 8080
TFTP_PORT = 69
IPXE_ROM_DIR = Path("/usr/lib/ipxe")
QEMU_ROM_DIR = IPXE_ROM_DIR / "qemu"
OVMF_DIR = Path("/usr/share/OVMF")
OVMF_CODE = OVMF_DIR / "OVMF_CODE_4M.fd"
OVMF_VARS = OVMF_DIR / "OVMF_VARS_4M.fd"
BIOS_ROM = QEMU_ROM_DIR / "pxe-virtio.rom"
SNPONLY_EFI = IPXE_ROM_DIR / "snponly.efi"
UNDIONLY_KPXE = IPXE_ROM_DIR / "undionly.kpxe"
BIOS_FILE = "undionly.kpxe"
EFI64_FILE = "snponly.efi"
SCRIPT_FILE = "boot.ipxe"
NBP_FILE = "marker.0"
#: the BIOS boot order for firmware retries: SeaBIOS reboots 1 s after every boot device
#: failed (QEMU's fw_cfg `etc/boot-fail-wait`), instead of printing "No bootable device"
BOOT_ORDER_RETRYING = "order=n,reboot-timeout=1000"


def run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=20)


def skip_reason(firmware: str) -> str | None:
    """Why a QEMU boot test with `firmware` ("bios" or "uefi") cannot run here, or None."""
    if os.geteuid() != 0:
        return "QEMU e2e tests need root for namespaces and tap devices (CI runs as root)"
    tools = {
        "ip": "iproute2",
        "ss": "iproute2",
        "qemu-system-x86_64": "qemu-system-x86",
        "dnsmasq": "dnsmasq-base",
        "as": "binutils",
        "ld": "binutils",
    }
    for tool, package in tools.items():
        if shutil.which(tool) is None:
            return f"{tool} not found: install the Debian package {package}"
    files = {BIOS_ROM: "ipxe-qemu", SNPONLY_EFI: "ipxe", UNDIONLY_KPXE: "ipxe"}
    if firmware == "uefi":
        files |= {OVMF_CODE: "ovmf", OVMF_VARS: "ovmf"}
    for path, package in files.items():
        if not path.exists():
            return f"{path} not found: install the Debian package {package}"
    return None


def accelerator() -> str:
    """QEMU accelerator: `PEERPXE_E2E_ACCEL` (e.g. `kvm`) if set, else the TCG emulator.

    Not KVM by default, although /dev/kvm opens on the project's machines: they are nested
    guests (AMD EPYC) where KVM cannot run firmware code. OVMF dies in its SEC phase and
    iPXE's BIOS ROM when switching between real and protected mode ("KVM internal error.
    Suberror: 1 ... emulation failure", or a silent hang), also with -cpu host or max.
    TCG boots both, a few seconds slower.
    """
    return os.environ.get("PEERPXE_E2E_ACCEL") or "tcg"


# ------------------------------------------------------------------------------ boot content


@dataclass(frozen=True)
class BootContent:
    """The served root and the markers the guest prints when each stage runs."""

    root: Path
    #: printed by the iPXE script (iPXE's `echo`, after variable expansion)
    script_marker: str
    #: printed by the BIOS NBP `marker.0` straight to COM1
    nbp_marker: str


def build_content(workdir: Path) -> BootContent:
    """Root with the iPXE binaries, the marker NBP and the iPXE script, fresh markers."""
    nonce = secrets.token_hex(4).upper()
    root = workdir / "root"
    root.mkdir()
    shutil.copyfile(UNDIONLY_KPXE, root / BIOS_FILE)
    shutil.copyfile(SNPONLY_EFI, root / EFI64_FILE)
    nbp_marker = f"PEERPXE-NBP-{nonce}"
    (root / NBP_FILE).write_bytes(assemble_nbp(workdir) + nbp_marker.encode() + b"\r\n\0")
    # The marker is assembled from variables, so its text appears on the console only when
    # iPXE really ran the script (it is never in the script verbatim). The NBP comes from
    # the `next-server` (siaddr) of the ProxyDHCP answer iPXE used: the peer that answered,
    # whichever of several agents that was, not a fixed address.
    script = (
        "#!ipxe\n"
        "set stage SCRIPT\n"
        f"echo PEERPXE-${{stage}}-{nonce}\n"
        "iseq ${platform} pcbios || goto done\n"
        f"chain tftp://${{proxydhcp/next-server}}/{NBP_FILE} || echo chain failed\n"
        ":done\n"
    )
    (root / SCRIPT_FILE).write_text(script)
    return BootContent(root, f"PEERPXE-SCRIPT-{nonce}", nbp_marker)


def assemble_nbp(workdir: Path) -> bytes:
    """Assemble tests/fixtures/e2e/marker_nbp.s into a flat binary linked at 0x7C00."""
    obj, binary = workdir / "marker_nbp.o", workdir / "marker_nbp.bin"
    run("as", "--32", "-o", str(obj), str(FIXTURES / "marker_nbp.s"))
    run("ld", "-m", "elf_i386", "-Ttext=0x7c00", "-e", "_start", "--oformat=binary",
        "-o", str(binary), str(obj))  # fmt: skip
    return binary.read_bytes()


# ------------------------------------------------------------------------------ the lab


@dataclass
class Lab:
    """Namespaces, a bridge and a tap; every process started here is stopped in close().

    `with_pxe_host=False` leaves out the `pxe` namespace (agents bring their own hosts).
    """

    workdir: Path
    with_pxe_host: bool = True
    prefix: str = field(default_factory=lambda: "ppx" + secrets.token_hex(3))
    namespaces: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        self.net_ns = self._add_namespace("net")
        run("ip", "-n", self.net_ns, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.net_ns, "link", "set", "br0", "up")
        self.tap = f"{self.prefix}tap"
        run("ip", "-n", self.net_ns, "tuntap", "add", "dev", self.tap, "mode", "tap")
        run("ip", "-n", self.net_ns, "link", "set", self.tap, "master", "br0", "up")
        self.pxe_ns = self.add_host("pxe", PXE_ADDRESS) if self.with_pxe_host else ""
        self.dhcp_ns = self.add_host("dhcp", DHCP_ADDRESS)

    def spawn(self, namespace: str, command: list[str], log_name: str) -> subprocess.Popen[bytes]:
        """Run `command` in `namespace`, stdout and stderr to workdir/log_name."""
        with (self.workdir / log_name).open("wb") as log:
            process = subprocess.Popen(
                ["ip", "netns", "exec", namespace, *command],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
            )  # fmt: skip
        self.processes.append(process)
        return process

    def read_log(self, log_name: str) -> str:
        path = self.workdir / log_name
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for namespace in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", namespace], check=False, capture_output=True)

    def add_host(self, label: str, address: str) -> str:
        """Namespace `<prefix><label>` with eth0 at `address`/24 on the bridge, multicast
        routed out of eth0 (mDNS)."""
        namespace = self._add_namespace(label)
        outside = f"{self.prefix}{label}"[:15]
        run("ip", "link", "add", "eth0", "netns", namespace, "type", "veth",
            "peer", "name", outside, "netns", self.net_ns)  # fmt: skip
        run("ip", "-n", self.net_ns, "link", "set", outside, "master", "br0", "up")
        run("ip", "-n", namespace, "link", "set", "lo", "up")
        run("ip", "-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        run("ip", "-n", namespace, "link", "set", "eth0", "up", "multicast", "on")
        run("ip", "-n", namespace, "route", "add", "224.0.0.0/4", "dev", "eth0")
        return namespace

    def _add_namespace(self, label: str) -> str:
        namespace = f"{self.prefix}{label}"
        run("ip", "netns", "add", namespace)
        self.namespaces.append(namespace)
        return namespace


def start_dhcp_server(lab: Lab) -> str:
    """dnsmasq in the dhcp namespace as a plain DHCP server: addresses, no boot options.

    Returns the log file name once it listens. `--log-dhcp` logs every option it sends,
    which the tests read.
    """
    log_name = "dhcp-server.log"
    lab.spawn(lab.dhcp_ns, [
        "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
        "--user=root", "--group=root", f"--pid-file={lab.workdir / 'dhcp-server.pid'}",
        "--log-dhcp", "--log-facility=-", "--interface=eth0", "--bind-interfaces",
        f"--dhcp-range={SUBNET_PREFIX}.100,{SUBNET_PREFIX}.199,255.255.255.0,1h",
        f"--dhcp-leasefile={lab.workdir / 'dhcp-server.leases'}",
    ], log_name)  # fmt: skip
    listening = wait_for(lambda: _listening(lab, lab.dhcp_ns, (67,), None), 10.0)
    assert listening is not None, f"dnsmasq did not start: {lab.read_log(log_name)}"
    return log_name


def send_note(lab: Lab, text: str) -> None:
    """Broadcast `text` from the dhcp namespace to the discard port: a mark in the guest's
    pcap (`Capture.notes`), between the frames that crossed its NIC before and after."""

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        return sock

    sock = socket_in(lab.dhcp_ns, make)
    with sock:
        sock.sendto(text.encode(), (f"{SUBNET_PREFIX}.255", DISCARD_PORT))


# ------------------------------------------------------------------------------ responders


class Responder(Protocol):
    """The only PXE responder on the bridge: ProxyDHCP on 67 and 4011, TFTP and HTTP."""

    name: str
    log_name: str

    def start(self, lab: Lab, content: BootContent) -> None: ...

    def ready(self, lab: Lab) -> bool: ...


def script_url() -> str:
    return f"http://{PXE_ADDRESS}:{HTTP_PORT}/{SCRIPT_FILE}"


def _listening(lab: Lab, namespace: str, udp_ports: tuple[int, ...], tcp_port: int | None) -> bool:
    """Whether every port in `udp_ports` (and `tcp_port`) has a listening socket in `namespace`."""
    result = subprocess.run(
        ["ip", "netns", "exec", namespace, "ss", "-H", "-l", "-n", "-u", "-t"],
        capture_output=True, text=True, check=False, timeout=10,
    )  # fmt: skip
    local = [line.split()[4] for line in result.stdout.splitlines() if len(line.split()) > 4]
    ports = {entry.rsplit(":", 1)[-1] for entry in local}
    wanted = (*udp_ports, tcp_port) if tcp_port is not None else udp_ports
    return {str(port) for port in wanted} <= ports


@dataclass
class PeerpxeServe:
    """`peerpxe serve` in the pxe namespace: the thing under test."""

    name: str = "peerpxe serve"
    log_name: str = "peerpxe-serve.log"

    def start(self, lab: Lab, content: BootContent) -> None:
        lab.spawn(lab.pxe_ns, [
            sys.executable, "-m", "peerpxe.cli", "serve", "--interface", "eth0",
            "--root", str(content.root), "--bios", BIOS_FILE, "--efi64", EFI64_FILE,
            "--ipxe-script", SCRIPT_FILE, "--listen", PXE_ADDRESS,
            "--http-port", str(HTTP_PORT), "--tftp-port", str(TFTP_PORT),
        ], self.log_name)  # fmt: skip

    def ready(self, lab: Lab) -> bool:
        return _listening(lab, lab.pxe_ns, (67, 4011, TFTP_PORT), HTTP_PORT)


@dataclass
class DnsmasqProxy:
    """Stand-in responder: dnsmasq in proxy mode with its TFTP server, plus `http.server`.

    It answers like peerpxe does: firmware PXE gets the iPXE binary by TFTP, iPXE (user class
    `iPXE`) gets the script URL.
    """

    name: str = "dnsmasq proxy (stand-in)"
    log_name: str = "dnsmasq-proxy.log"

    def start(self, lab: Lab, content: BootContent) -> None:
        lab.spawn(lab.pxe_ns, [
            "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
            "--user=root", "--group=root", f"--pid-file={lab.workdir / 'proxy.pid'}",
            "--log-dhcp", "--log-facility=-", "--interface=eth0", "--bind-interfaces",
            f"--dhcp-range={SUBNET_PREFIX}.0,proxy,255.255.255.0",
            "--dhcp-userclass=set:ipxe,iPXE",
            f"--pxe-service=tag:!ipxe,x86PC,peerpxe,{BIOS_FILE}",
            f"--pxe-service=tag:!ipxe,x86-64_EFI,peerpxe,{EFI64_FILE}",
            f"--pxe-service=tag:ipxe,x86PC,peerpxe,{script_url()}",
            f"--pxe-service=tag:ipxe,x86-64_EFI,peerpxe,{script_url()}",
            "--enable-tftp", f"--tftp-root={content.root}",
        ], self.log_name)  # fmt: skip
        lab.spawn(lab.pxe_ns, [
            sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind", PXE_ADDRESS,
            "--directory", str(content.root),
        ], "http-server.log")  # fmt: skip

    def ready(self, lab: Lab) -> bool:
        return _listening(lab, lab.pxe_ns, (67, 4011, TFTP_PORT), HTTP_PORT)


@dataclass
class PeerpxeAgents:
    """`peerpxe agent` on hosts of their own (node id -> address), boot enabled, same root.

    They find each other by real mDNS, elect one responder, and every one of them serves
    TFTP and HTTP. Each agent is started in its namespace and stopped by the lab's close().
    """

    addresses: dict[str, str]
    weight: int = 50
    key_hex: str = field(default_factory=lambda: secrets.token_hex(32))
    agents: dict[str, AgentProcess] = field(default_factory=dict)
    namespaces: dict[str, str] = field(default_factory=dict)

    def start(self, lab: Lab, content: BootContent) -> None:
        for node_id, address in self.addresses.items():
            namespace = lab.add_host(node_id, address)
            config = agent_config(node_id, address, content.root, self.weight)
            agent = launch_agent(lab.workdir, namespace, node_id, config, self.key_hex)
            lab.processes.append(agent.process)
            self.agents[node_id] = agent
            self.namespaces[node_id] = namespace

    def ready(self, lab: Lab) -> bool:
        """Every agent serves (67, 4011, TFTP, HTTP) and all agree on one responder."""
        serving = all(_listening(lab, namespace, (67, 4011, TFTP_PORT), HTTP_PORT)
                      for namespace in self.namespaces.values())  # fmt: skip
        return serving and self.responder() is not None

    def responder(self) -> str | None:
        """The responder every running agent agrees on (status files), or None."""
        return agreed_responder(self.agents.values())

    def first_standby(self) -> str | None:
        """The running agent next in line (status `standby_rank` 1), or None."""
        ranked = [node for node, agent in self.agents.items()
                  if agent.responder().get("standby_rank") == 1]  # fmt: skip
        return ranked[0] if len(ranked) == 1 else None

    def node_at(self, address: str) -> str | None:
        return next((node for node, at in self.addresses.items() if at == address), None)

    def logs(self, tail_chars: int = 3000) -> str:
        return "".join(f"\n--- agent {node_id} log (tail)\n{agent.log()[-tail_chars:]}"
                       for node_id, agent in self.agents.items())  # fmt: skip


def agent_config(node_id: str, address: str, root: Path, weight: int) -> str:
    """agent.toml for one lab agent (docs/agent-config.md), without [security]; every knob
    not named here keeps its default (lease 1.5 s, claim wait 0.3 s, standby answers retries)."""
    return (
        f'[agent]\nnode_id = "{node_id}"\nsite = "lab"\nsubnet = "{SUBNET_PREFIX}.0/24"\n'
        f'interface = "eth0"\naddress = "{address}"\nweight = {weight}\n'
        "[discovery]\nmdns = true\n"
        f'[boot]\nenabled = true\nroot = "{root}"\nbios = "{BIOS_FILE}"\n'
        f'efi64 = "{EFI64_FILE}"\nipxe_script = "{SCRIPT_FILE}"\n'
        f"http_port = {HTTP_PORT}\ntftp_port = {TFTP_PORT}\n"
    )


# ------------------------------------------------------------------------------ the guest


@dataclass
class Guest:
    """One QEMU VM network-booting from the lab's tap; serial console and pcap in workdir."""

    firmware: str
    serial_log: Path
    capture: Path
    mac: str
    process: subprocess.Popen[bytes] | None = None

    def serial(self) -> str:
        return self.serial_log.read_text(errors="replace") if self.serial_log.exists() else ""

    def wait_for(self, text: str, timeout_s: float) -> float | None:
        """Seconds until `text` appeared on the serial console, or None."""
        return wait_for(lambda: text in self.serial(), timeout_s)

    def stop(self) -> None:
        """Power the VM off (SIGTERM), so its pcap and serial log are complete."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_guest(lab: Lab, firmware: str, *, retry_boot: bool = False) -> Guest:
    """Boot a QEMU VM with `firmware` "bios" (SeaBIOS + iPXE ROM) or "uefi" (OVMF's own PXE).

    By default a failed boot powers the VM off (`-no-reboot`). `retry_boot` (BIOS only)
    makes a failed boot retry like a real machine: SeaBIOS reboots 1 s after the network
    boot failed (`BOOT_ORDER_RETRYING`) and QEMU resets the VM instead of exiting.
    """
    assert not retry_boot or firmware == "bios", "retry_boot needs SeaBIOS's reboot-timeout"
    mac = "52:54:00:" + ":".join(f"{byte:02x}" for byte in secrets.token_bytes(3))
    guest = Guest(firmware, lab.workdir / f"{firmware}-serial.log",
                  lab.workdir / f"{firmware}.pcap", mac)  # fmt: skip
    command = [
        "qemu-system-x86_64", "-accel", accelerator(), "-m", "256", "-nodefaults",
        "-display", "none", "-monitor", "none", *([] if retry_boot else ["-no-reboot"]),
        "-serial", f"file:{guest.serial_log}",
        # vnet_hdr=off: else filter-dump writes virtio-net headers in front of each frame
        "-netdev", f"tap,id=n0,ifname={lab.tap},script=no,downscript=no,vnet_hdr=off",
        "-object", f"filter-dump,id=d0,netdev=n0,file={guest.capture}",
        *_firmware_arguments(lab.workdir, firmware, mac, retry_boot=retry_boot),
    ]  # fmt: skip
    guest.process = lab.spawn(lab.net_ns, command, f"qemu-{firmware}.log")
    return guest


def _firmware_arguments(workdir: Path, firmware: str, mac: str, *, retry_boot: bool) -> list[str]:
    nic = f"virtio-net-pci,netdev=n0,mac={mac},bootindex=1"
    if firmware == "bios":
        # SeaBIOS runs the NIC's option ROM: iPXE (Debian ipxe-qemu), user class "iPXE".
        # Debian's virtio ROMs carry PCI ID 1af4:1041 (virtio 1.0 only) and QEMU patches the
        # ID only into its default ROM, so a named ROM needs a modern-only device to be run.
        rom = f"{nic},disable-legacy=on,romfile={BIOS_ROM}"
        order = BOOT_ORDER_RETRYING if retry_boot else "order=n"
        return ["-device", rom, "-boot", order, *_serial_console_for_bios(workdir)]
    assert firmware == "uefi", firmware
    # No option ROM: OVMF drives the NIC with its own VirtioNetDxe and boots with its own
    # EDK II PXE stack (PxeBcDxe), the PXE client most real UEFI machines run.
    variables = workdir / "OVMF_VARS.fd"
    shutil.copyfile(OVMF_VARS, variables)
    return [
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
        "-drive", f"if=pflash,format=raw,unit=1,file={variables}",
        "-device", f"{nic},romfile=",
    ]  # fmt: skip


def _serial_console_for_bios(workdir: Path) -> list[str]:
    """Ask SeaBIOS to mirror the text console (what iPXE prints) to COM1 (`etc/sercon-port`)."""
    port_file = workdir / "sercon-port"
    port_file.write_bytes((0x3F8).to_bytes(2, "little"))
    return ["-fw_cfg", f"name=etc/sercon-port,file={port_file}"]


def wait_for(predicate: Callable[[], bool], timeout_s: float) -> float | None:
    """Seconds until `predicate()` held, or None after `timeout_s`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.1)
    return None
