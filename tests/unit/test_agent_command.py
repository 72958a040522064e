"""`peerpxe agent` turns a configuration error into one stderr line and exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from actors.core import Address
from actors.election import RESPONDER_CAPABILITY
from peerpxe import cli
from peerpxe.agent_command import Agent, write_atomically
from peerpxe.config import load_config


def test_config_error_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad value stops the agent before anything starts, naming file, line and key."""
    config = tmp_path / "agent.toml"
    config.write_text('[discovery]\nprobe_interval_s = "fast"\n')
    assert cli.main(["agent", "--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert error == (
        f"peerpxe agent: {config}:2: discovery.probe_interval_s: expected a positive number,"
        ' got "fast"\n'
    )


def test_status_file_is_replaced_atomically(tmp_path: Path) -> None:
    """The status file is rewritten whole and no temporary file is left behind."""
    status = tmp_path / "status.json"
    write_atomically(status, json.dumps({"members": []}))
    write_atomically(status, json.dumps({"members": [1]}))
    assert json.loads(status.read_text()) == {"members": [1]}
    assert [path.name for path in tmp_path.iterdir()] == ["status.json"]


def agent_for(tmp_path: Path, boot: str, weight: int = 50) -> Agent:
    (tmp_path / "cluster.key").write_text("ab" * 32)
    (tmp_path / "cluster.key").chmod(0o600)
    config = tmp_path / "agent.toml"
    config.write_text(
        "[agent]\nnode_id = 'n1'\ninterface = 'lo'\naddress = '127.0.0.1'\n"
        f"weight = {weight}\ncapabilities = ['tftp', 'responder']\n"
        f"[security]\ncluster_key_file = 'cluster.key'\n{boot}"
    )
    return Agent(load_config(config), None, 1.0)


def test_responder_capability_follows_eligibility(tmp_path: Path) -> None:
    """Only an eligible agent advertises `responder`; a hand-written tag is never kept."""
    boot = "[boot]\nenabled = true\nroot = 'root'\nbios = 'undionly.kpxe'\n"
    agent = agent_for(tmp_path, boot)
    assert not agent.responder_eligible
    assert agent._member_info(Address("127.0.0.1", 7947)).capabilities == ("tftp",)
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "undionly.kpxe").write_bytes(b"nbp")
    agent = agent_for(tmp_path, boot)
    assert agent.responder_eligible
    info = agent._member_info(Address("127.0.0.1", 7947))
    assert info.capabilities == ("tftp", RESPONDER_CAPABILITY)
    assert not agent_for(tmp_path, boot, weight=0).responder_eligible


def test_boot_settings_follow_the_config(tmp_path: Path) -> None:
    """The agent serves its boot root as the interface's address; ProxyDHCP only when
    eligible; overrides (tests) replace fields."""
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "ipxe.efi").write_bytes(b"efi")
    boot = "[boot]\nenabled = true\nroot = 'root'\nefi64 = 'ipxe.efi'\nhttp_port = 8081\n"
    settings = agent_for(tmp_path, boot)._boot_settings()
    assert (settings.server, settings.bind, settings.dhcp_interface) == (
        "127.0.0.1",
        "127.0.0.1",
        "lo",
    )
    assert (settings.efi64_file, settings.http_port, settings.tftp_port) == ("ipxe.efi", 8081, 69)
    assert agent_for(tmp_path, boot, weight=0)._boot_settings().dhcp_interface is None
