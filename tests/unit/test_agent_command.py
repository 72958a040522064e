"""`peerpxe agent` turns a configuration error into one stderr line and exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peerpxe import cli
from peerpxe.agent_command import write_atomically


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
