"""Network namespaces joined by a bridge, and `peerpxe agent` processes running inside them.

Everything created here carries a unique prefix (`ppx` + random hex) and is removed in
`close()`, also after a failed test; nothing outside the lab's own namespaces is touched
(the bridge lives in a namespace of its own, not in the host's).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
AGENT = [sys.executable, "-m", "peerpxe.cli", "agent"]


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

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


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

    def add_host(self, label: str, address_cidr: str | None) -> str:
        """A namespace with lo up and a veth `eth0` at `address_cidr` on the bridge (no
        address when None: a booting client's interface)."""
        namespace = self._add_namespace(label)
        outside = f"{self.prefix}{label}"[:15]
        run("ip", "link", "add", "eth0", "netns", namespace, "type", "veth",
            "peer", "name", outside, "netns", self.bridge_ns)  # fmt: skip
        run("ip", "-n", self.bridge_ns, "link", "set", outside, "master", "br0", "up")
        run("ip", "-n", namespace, "link", "set", "lo", "up")
        if address_cidr is not None:
            run("ip", "-n", namespace, "addr", "add", address_cidr, "dev", "eth0")
        run("ip", "-n", namespace, "link", "set", "eth0", "up", "multicast", "on")
        run("ip", "-n", namespace, "route", "add", "224.0.0.0/4", "dev", "eth0")
        return namespace

    def start_agent(
        self, namespace: str, node_id: str, config: str, key_hex: str = ""
    ) -> AgentProcess:
        """Run `peerpxe agent` in `namespace` with `config` ([security] is added here)."""
        key_file = self.workdir / f"{node_id}.key"
        key_file.write_text((key_hex or self.key_hex) + "\n")
        key_file.chmod(0o600)
        config_file = self.workdir / f"{node_id}.toml"
        config_file.write_text(f'{config}\n[security]\ncluster_key_file = "{key_file}"\n')
        status_file = self.workdir / f"{node_id}.status.json"
        log_file = self.workdir / f"{node_id}.log"
        command = ["ip", "netns", "exec", namespace, *AGENT, "--config", str(config_file),
                   "--status-file", str(status_file), "--status-interval-s", "0.25"]  # fmt: skip
        with log_file.open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        agent = AgentProcess(node_id, process, status_file, log_file)
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
