"""Network namespaces joined by bridges, and `peerpxe agent` processes running inside them.

Everything created here carries a unique prefix (`ppx` + random hex) and is removed in
`close()`, also after a failed test; nothing outside the lab's own namespaces is touched
(the bridges live in a namespace of their own, not in the host's). `br0` always exists;
`add_bridge` makes more (one per subnet). `socket_in` opens a socket inside a namespace
for the test process itself (a thread enters the namespace with setns(2); the socket stays
in it), so a test can send and receive without starting a process per datagram.
`launch_agent` and `socket_in` are plain functions too, for labs built elsewhere
(tests/e2e/qemu_lab.py puts agents next to a QEMU guest).
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
AGENT = [sys.executable, "-m", "peerpxe.cli", "agent"]
CLONE_NEWNET = 0x40000000  # linux/sched.h
_T = TypeVar("_T")


def skip_reason() -> str | None:
    """Why netns tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "netns tests need root (CI runs them as root)"
    if shutil.which("ip") is None:
        return "netns tests need ip(8) from iproute2"
    return None


def run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=20)


@dataclass
class AgentProcess:
    """One agent subprocess and the files it reads and writes."""

    node_id: str
    process: subprocess.Popen[bytes]
    status_file: Path
    log_file: Path

    def status(self) -> dict[str, Any]:
        try:
            document: dict[str, Any] = json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return {}
        return document

    def states(self) -> dict[str, str]:
        return {member["node_id"]: member["state"] for member in self.status().get("members", [])}

    def live_status(self) -> dict[str, Any]:
        """The status if this very process wrote it and still runs; else {} (a killed agent's
        file keeps its last words, e.g. `role: leader`)."""
        if self.process.poll() is not None:
            return {}
        status = self.status()
        if status.get("pid") != self.process.pid or not status.get("running"):
            return {}
        return status

    def responder(self) -> dict[str, Any]:
        """The live `responder` standing (`role`, `leader`, `standby_rank`, ...), or {}."""
        standing: dict[str, Any] = self.live_status().get("responder", {})
        return standing

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


def agreed_responder(agents: Iterable[AgentProcess]) -> str | None:
    """The node id of the one running agent whose status says `leader`, when every other
    running agent follows it; else None (no leader yet, two, or a follower elsewhere)."""
    standings = {agent.node_id: agent.responder() for agent in agents}
    running = {node_id: standing for node_id, standing in standings.items() if standing}
    leaders = sorted(node for node, standing in running.items() if standing["role"] == "leader")
    if len(leaders) != 1:
        return None
    if any(standing.get("leader") != leaders[0] for standing in running.values()):
        return None
    return leaders[0]


@dataclass
class LabProcess:
    """Any long-running process started in a namespace (dnsmasq, `peerpxe serve`)."""

    label: str
    process: subprocess.Popen[bytes]
    log_file: Path

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


@dataclass
class NetLab:
    """A bridge namespace plus one namespace per subnet host, each with a veth on the bridge."""

    workdir: Path
    prefix: str = field(default_factory=lambda: "ppx" + secrets.token_hex(3))
    namespaces: list[str] = field(default_factory=list)
    agents: list[AgentProcess] = field(default_factory=list)
    processes: list[LabProcess] = field(default_factory=list)
    key_hex: str = field(default_factory=lambda: secrets.token_hex(32))

    def __post_init__(self) -> None:
        self.bridge_ns = self._add_namespace("br")
        run("ip", "-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.bridge_ns, "link", "set", "br0", "up")

    def add_bridge(self, name: str) -> None:
        """Another bridge (another link, another subnet) in the bridge namespace."""
        run("ip", "-n", self.bridge_ns, "link", "add", name, "type", "bridge")
        run("ip", "-n", self.bridge_ns, "link", "set", name, "up")

    def add_host(self, label: str, address_cidr: str | None, bridge: str = "br0") -> str:
        """A namespace with lo up and a veth `eth0` at `address_cidr` on `bridge` (no
        address when None: a booting client's interface)."""
        namespace = self._add_namespace(label)
        outside = self.outside_link(label)
        run("ip", "link", "add", "eth0", "netns", namespace, "type", "veth",
            "peer", "name", outside, "netns", self.bridge_ns)  # fmt: skip
        run("ip", "-n", self.bridge_ns, "link", "set", outside, "master", bridge, "up")
        run("ip", "-n", namespace, "link", "set", "lo", "up")
        if address_cidr is not None:
            run("ip", "-n", namespace, "addr", "add", address_cidr, "dev", "eth0")
        run("ip", "-n", namespace, "link", "set", "eth0", "up", "multicast", "on")
        run("ip", "-n", namespace, "route", "add", "224.0.0.0/4", "dev", "eth0")
        return namespace

    def outside_link(self, label: str) -> str:
        """The bridge-side end of host `label`'s veth."""
        return f"{self.prefix}{label}"[:15]

    def set_link(self, label: str, *, up: bool) -> None:
        """Cut (`up=False`) or restore host `label`'s cable, at the bridge port."""
        state = "up" if up else "down"
        run("ip", "-n", self.bridge_ns, "link", "set", self.outside_link(label), state)

    def socket_in(self, namespace: str, make: Callable[[], _T]) -> _T:
        """`make()` run on a thread inside `namespace` (a socket made there stays there)."""
        return socket_in(namespace, make)

    def start_agent(
        self, namespace: str, node_id: str, config: str, key_hex: str = ""
    ) -> AgentProcess:
        """Run `peerpxe agent` in `namespace` with `config` ([security] is added here)."""
        agent = launch_agent(self.workdir, namespace, node_id, config, key_hex or self.key_hex)
        self.agents.append(agent)
        return agent

    def spawn(self, namespace: str, label: str, command: list[str]) -> LabProcess:
        """Run `command` in `namespace`, output to `<label>.log`; stopped by `close()`."""
        log_file = self.workdir / f"{label}.log"
        with log_file.open("wb") as log:
            process = subprocess.Popen(
                ["ip", "netns", "exec", namespace, *command],
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            )  # fmt: skip
        started = LabProcess(label, process, log_file)
        self.processes.append(started)
        return started

    def wait_for(self, predicate: Any, timeout_s: float) -> float | None:
        """Seconds until `predicate()` held, or None after `timeout_s`."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if predicate():
                return time.monotonic() - started
            time.sleep(0.05)
        return None

    def logs(self) -> str:
        return "\n".join(f"--- {agent.node_id}\n{agent.log()[-3000:]}" for agent in self.agents)

    def close(self) -> None:
        running = [agent.process for agent in self.agents]
        running += [started.process for started in self.processes]
        for process in running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in running:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for namespace in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", namespace], check=False, capture_output=True)

    def _add_namespace(self, label: str) -> str:
        namespace = f"{self.prefix}{label}"
        run("ip", "netns", "add", namespace)
        self.namespaces.append(namespace)
        return namespace


def launch_agent(
    workdir: Path, namespace: str, node_id: str, config: str, key_hex: str
) -> AgentProcess:
    """Start `peerpxe agent` in `namespace`: `config` plus a [security] section naming a key
    file holding `key_hex`; config, key, status (every 0.25 s) and log go to `workdir`. The
    caller owns the process (stop it)."""
    key_file = workdir / f"{node_id}.key"
    key_file.write_text(key_hex + "\n")
    key_file.chmod(0o600)
    config_file = workdir / f"{node_id}.toml"
    config_file.write_text(f'{config}\n[security]\ncluster_key_file = "{key_file}"\n')
    status_file = workdir / f"{node_id}.status.json"
    log_file = workdir / f"{node_id}.log"
    command = ["ip", "netns", "exec", namespace, *AGENT, "--config", str(config_file),
               "--status-file", str(status_file), "--status-interval-s", "0.25"]  # fmt: skip
    with log_file.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    return AgentProcess(node_id, process, status_file, log_file)


def socket_in(namespace: str, make: Callable[[], _T]) -> _T:
    """`make()` run on a thread inside `namespace` (a socket made there stays there)."""
    made: list[_T] = []
    failed: list[BaseException] = []

    def enter_and_make() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/run/netns/{namespace}", "rb") as handle:
                if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                    error = ctypes.get_errno()
                    raise OSError(error, f"setns {namespace}: {os.strerror(error)}")
            made.append(make())
        except BaseException as error:  # noqa: BLE001 - re-raised on the caller's thread
            failed.append(error)

    thread = threading.Thread(target=enter_and_make, name=f"setns-{namespace}")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]
