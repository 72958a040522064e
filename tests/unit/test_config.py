"""agent.toml errors name file, line and key; defaults come from the machine; the example loads."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from actors.core import Address
from actors.discovery import DiscoveryKnobs
from actors.election import ElectionKnobs
from peerpxe.config import (
    DEFAULT_PORT,
    BootConfig,
    ConfigError,
    load_config,
    parse_key,
    responder_problems,
)

REPO = Path(__file__).resolve().parents[2]
KEY_HEX = "00112233445566778899aabbccddeeff" * 2


class FakeNetwork:
    """One interface eth0 with 192.0.2.10/24 and the default route."""

    def hostname(self) -> str:
        return "lab-host"

    def interface_ipv4(self, name: str) -> tuple[str, str] | None:
        return ("192.0.2.10", "255.255.255.0") if name == "eth0" else None

    def interface_of(self, address: str) -> str | None:
        return "eth0" if address == "192.0.2.10" else None

    def default_interface(self) -> str | None:
        return "eth0"


def write(tmp_path: Path, text: str, key: bytes | None = KEY_HEX.encode()) -> Path:
    if key is not None:
        key_file = tmp_path / "cluster.key"
        key_file.write_bytes(key)
        key_file.chmod(0o600)
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


MINIMAL = '[security]\ncluster_key_file = "cluster.key"\n'


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path, FakeNetwork())
    return str(caught.value)


def test_minimal_file_fills_defaults_from_the_machine(tmp_path: Path) -> None:
    """Only the key file is required; identity and network come from the host."""
    config = load_config(write(tmp_path, MINIMAL), FakeNetwork())
    assert (config.node_id, config.site) == ("lab-host", "default")
    assert (config.interface, config.address, config.subnet) == (
        "eth0",
        "192.0.2.10",
        "192.0.2.0/24",
    )
    assert (config.port, config.weight, config.mdns) == (DEFAULT_PORT, 50, True)
    assert config.cluster_key == bytes.fromhex(KEY_HEX)
    assert config.knobs == DiscoveryKnobs()
    assert config.warnings == ()


def test_wrong_type_names_file_line_and_key(tmp_path: Path) -> None:
    """The brief's example error, byte for byte."""
    text = MINIMAL + "[agent]\nsite = 'hq'\n\n[discovery]\nprobe_interval_s = \"fast\"\n"
    path = write(tmp_path, text)
    assert error_of(path) == (
        f'{path}:7: discovery.probe_interval_s: expected a positive number, got "fast"'
    )


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment"),
    [
        ("[agent]\nport = 70000\n", 2, "agent.port", "integer from 0 to 65535, got 70000"),
        ("[agent]\nweight = true\n", 2, "agent.weight", "got true"),
        ("[agent]\ncolour = 'red'\n", 2, "agent.colour", "unknown key"),
        ("[agnet]\nsite = 'x'\n", 1, "agnet", "unknown section"),
        ("[agent]\nsubnet = '10.0.0.5/24'\n", 2, "agent.subnet", "CIDR"),
        ("[agent]\nsubnet = 'ten/8'\n", 2, "agent.subnet", 'got "ten/8"'),
        ("[agent]\naddress = '10.1.1'\n", 2, "agent.address", "IPv4 address"),
        ("[discovery]\nseeds = ['host']\n", 2, "discovery.seeds", '"host:port"'),
        ("[discovery]\nmdns = 'yes'\n", 2, "discovery.mdns", "true or false"),
        ("[discovery]\nprobe_timeout_s = 2.0\n", 2, "discovery.probe_timeout_s", "less than"),
        ("[discovery]\nindirect_probes = -1\n", 2, "discovery.indirect_probes", "integer"),
        ("[log]\nlevel = 'loud'\n", 2, "log.level", "one of debug"),
    ],
)
def test_bad_values(tmp_path: Path, text: str, line: int, key: str, fragment: str) -> None:
    """Each bad value is reported at its own line with its dotted key."""
    path = write(tmp_path, MINIMAL + text)
    message = error_of(path)
    assert message.startswith(f"{path}:{line + 2}: {key}: ")
    assert fragment in message


def test_missing_key_file(tmp_path: Path) -> None:
    """A key file that does not exist is reported at the key's line."""
    path = write(tmp_path, "\n" + MINIMAL, key=None)
    message = error_of(path)
    assert message.startswith(f"{path}:3: security.cluster_key_file: cannot read ")
    assert "No such file or directory" in message


def test_missing_key_setting(tmp_path: Path) -> None:
    """Without any key file setting the error says the key is required."""
    message = error_of(write(tmp_path, "[agent]\nsite = 'x'\n"))
    assert "security.cluster_key_file: missing (required" in message


@pytest.mark.parametrize("key", [b"short", b"00112233445566778899aabbccddee", b"\x01" * 15])
def test_short_key_is_refused(tmp_path: Path, key: bytes) -> None:
    """Keys under 16 bytes (raw or hex-decoded) are refused."""
    path = write(tmp_path, MINIMAL, key=key)
    message = error_of(path)
    assert message.startswith(f"{path}:2: security.cluster_key_file: ")
    assert "at least 16 bytes" in message


def test_raw_key_and_loose_permissions(tmp_path: Path) -> None:
    """A raw binary key is used as is; a group-readable key file gives a warning."""
    raw = bytes(range(40))
    path = write(tmp_path, MINIMAL, key=raw)
    (tmp_path / "cluster.key").chmod(0o640)
    config = load_config(path, FakeNetwork())
    assert config.cluster_key == raw
    (warning,) = config.warnings
    assert "chmod 600" in warning
    assert "security.cluster_key_file" in warning


def test_hex_key_parsing() -> None:
    """Hex text with surrounding whitespace decodes; anything else stays raw."""
    assert parse_key(b" 0a0B\n") == b"\x0a\x0b"
    assert parse_key(b"xyz\n") == b"xyz\n"


def test_syntax_error_keeps_tomllib_position(tmp_path: Path) -> None:
    """TOML syntax errors report tomllib's line and column."""
    path = write(tmp_path, MINIMAL + "[agent]\nsite = \n")
    message = error_of(path)
    assert message.startswith(f"{path}:4: syntax error: ")
    assert "line 4, column" in message


def test_unreadable_file(tmp_path: Path) -> None:
    """A missing config file is one line naming it."""
    message = error_of(tmp_path / "nope.toml")
    assert message == f"{tmp_path / 'nope.toml'}: cannot read: No such file or directory"


def test_address_without_interface_and_unknown_interface(tmp_path: Path) -> None:
    """The interface is found from the address; an address no interface holds is an error."""
    config = load_config(
        write(tmp_path, MINIMAL + "[agent]\naddress = '192.0.2.10'\n"), FakeNetwork()
    )
    assert config.interface == "eth0"
    message = error_of(write(tmp_path, MINIMAL + "[agent]\naddress = '198.51.100.1'\n"))
    assert message.endswith("agent.address: no interface holds 198.51.100.1")
    message = error_of(write(tmp_path, MINIMAL + "[agent]\ninterface = 'wlan9'\n"))
    assert message.endswith("agent.interface: wlan9 has no IPv4 address")


def test_example_file_loads_and_sets_every_key(tmp_path: Path) -> None:
    """docs/agent.toml.example is valid and mentions every knob of DiscoveryKnobs."""
    example = tmp_path / "agent.toml"
    shutil.copy(REPO / "docs" / "agent.toml.example", example)
    (tmp_path / "cluster.key").write_text(KEY_HEX + "\n")
    (tmp_path / "cluster.key").chmod(0o600)
    config = load_config(example, FakeNetwork())
    assert config.node_id == "pxe-lab-01"
    assert config.seeds == (Address("192.0.2.11", 7947), Address("198.51.100.20", 7947))
    assert config.capabilities == ("tftp", "http")
    assert config.knobs == DiscoveryKnobs()
    text = example.read_text()
    for knob in DiscoveryKnobs.__dataclass_fields__:
        assert f"\n{knob} = " in text, f"example does not document {knob}"
    reference = (REPO / "docs" / "agent-config.md").read_text()
    for knob in DiscoveryKnobs.__dataclass_fields__:
        assert f"`{knob}`" in reference, f"agent-config.md does not document {knob}"
    assert config.election == ElectionKnobs()
    assert not config.boot.enabled
    assert config.boot.files == {
        "bios": "undionly.kpxe",
        "efi64": "ipxe.efi",
        "arm64": "ipxe-arm64.efi",
    }
    for section, knobs in (("election", ElectionKnobs), ("boot", BootConfig)):
        for knob in knobs.__dataclass_fields__:
            if knob in ("server", "files"):  # derived, not keys
                continue
            assert f"\n{knob} = " in text, f"example does not document {section}.{knob}"
            assert f"`{knob}`" in reference, f"agent-config.md does not document {knob}"


def test_election_knobs_are_validated_like_discovery_knobs(tmp_path: Path) -> None:
    """[election] accepts every ElectionKnobs field; order and minimums name file:line: key."""
    text = MINIMAL + "[election]\nheartbeat_interval_s = 0.2\nstandby_count = 3\n"
    config = load_config(write(tmp_path, text), FakeNetwork())
    assert config.election == ElectionKnobs(heartbeat_interval_s=0.2, standby_count=3)
    path = write(tmp_path, MINIMAL + "[election]\n\nheartbeat_interval_s = 2.0\n")
    assert error_of(path) == (
        f"{path}:5: election.heartbeat_interval_s: heartbeat_interval_s (2.0) must be less"
        " than lease_timeout_s (1.5)"
    )
    path = write(tmp_path, MINIMAL + "[election]\nstandby_count = 0\n")
    assert error_of(path).startswith(f"{path}:4: election.standby_count: expected an integer")
    path = write(tmp_path, MINIMAL + "[election]\nclaim_wait_s = 'soon'\n")
    assert error_of(path).startswith(f"{path}:4: election.claim_wait_s: expected a positive")


def test_boot_section_defaults_and_values(tmp_path: Path) -> None:
    """[boot] is off by default; when on, paths resolve from the config file's folder and
    the server address is the agent's (or the boot interface's) address."""
    config = load_config(write(tmp_path, MINIMAL), FakeNetwork())
    assert config.boot == BootConfig(interface="eth0", server="192.0.2.10")
    assert responder_problems(config) == ["boot.enabled is false"]
    text = MINIMAL + (
        "[boot]\nenabled = true\nroot = 'tftp'\nbios = '/undionly.kpxe'\n"
        "efi64 = 'efi\\\\ipxe.efi'\n"
        "ipxe_script = 'boot.ipxe'\ntftp_port = 1069\nhttp_port = 80\n"
        "answer_retries_as_standby = false\nspread_file_servers = false\n"
    )
    config = load_config(write(tmp_path, text), FakeNetwork())
    assert config.boot == BootConfig(
        enabled=True,
        interface="eth0",
        server="192.0.2.10",
        root=tmp_path / "tftp",
        files={"bios": "undionly.kpxe", "efi64": "efi/ipxe.efi"},
        ipxe_script="boot.ipxe",
        tftp_port=1069,
        http_port=80,
        answer_retries_as_standby=False,
        spread_file_servers=False,
    )


def test_responder_eligibility_needs_files_and_weight(tmp_path: Path) -> None:
    """Eligible only with boot enabled, weight > 0 and every named file under the root."""
    text = MINIMAL + "[boot]\nenabled = true\nroot = 'tftp'\nbios = 'undionly.kpxe'\n"
    config = load_config(write(tmp_path, text), FakeNetwork())
    assert responder_problems(config) == [f"boot.root {tmp_path / 'tftp'} is not a directory"]
    (tmp_path / "tftp").mkdir()
    assert responder_problems(config) == [
        f"undionly.kpxe is missing under boot.root {tmp_path / 'tftp'}"
    ]
    (tmp_path / "tftp" / "undionly.kpxe").write_bytes(b"nbp")
    assert responder_problems(config) == []
    config = load_config(write(tmp_path, text + "[agent]\nweight = 0\n"), FakeNetwork())
    assert responder_problems(config) == ["agent.weight is 0 (never responder)"]


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment"),
    [
        ("[boot]\nenabled = 'yes'\n", 2, "boot.enabled", "true or false"),
        ("[boot]\nenabled = true\nbios = 'a'\n", 2, "boot.enabled", "boot.root is required"),
        ("[boot]\nenabled = true\nroot = 'r'\n", 2, "boot.enabled", "at least one of"),
        ("[boot]\nbios = '../etc/passwd'\n", 2, "boot.bios", "relative to boot.root"),
        ("[boot]\nefi64 = 'C:ipxe.efi'\n", 2, "boot.efi64", "relative to boot.root"),
        ("[boot]\ntftp_port = 0\n", 2, "boot.tftp_port", "integer from 1 to 65535"),
        ("[boot]\ninterface = 'wlan9'\n", 2, "boot.interface", "wlan9 has no IPv4 address"),
        ("[boot]\ncolour = 'red'\n", 2, "boot.colour", "unknown key"),
    ],
)
def test_bad_boot_values(tmp_path: Path, text: str, line: int, key: str, fragment: str) -> None:
    """Each bad [boot] value is reported at its own line with its dotted key."""
    path = write(tmp_path, MINIMAL + text)
    message = error_of(path)
    assert message.startswith(f"{path}:{line + 2}: {key}: ")
    assert fragment in message


# --------------------------------------------------------------------------- [replication]

PUB_HEX = "ab" * 32


def test_replication_section_loads_with_paths_key_and_cap(tmp_path: Path) -> None:
    (tmp_path / "publisher.pub").write_text(PUB_HEX + "\n")
    text = MINIMAL + (
        "[replication]\nenabled = true\nstore = 'store'\npublisher_key_file = 'publisher.pub'\n"
        "quota_mib = 10\nwan_sources = ['198.51.100.20:7947']\nwan_cap_mbit_s = 8\n"
        "have_interval_s = 2.0\n"
    )
    config = load_config(write(tmp_path, text), FakeNetwork())
    replication = config.replication
    assert replication.enabled
    assert replication.store == tmp_path / "store"
    assert replication.publisher_key == bytes.fromhex(PUB_HEX)
    assert replication.quota_bytes == 10 << 20
    assert replication.wan_sources == (Address("198.51.100.20", 7947),)
    assert replication.knobs.wan_bytes_per_s == 1_000_000.0
    assert replication.knobs.have_interval_s == 2.0


@pytest.mark.parametrize(
    ("section", "line", "message"),
    [
        (
            "enabled = true\npublisher_key_file = 'publisher.pub'\n",
            4,
            "replication.store is required",
        ),
        ("enabled = true\nstore = 's'\n", 4, "replication.publisher_key_file is required"),
        (
            "enabled = true\nstore = 's'\npublisher_key_file = 'missing.pub'\n",
            6,
            "replication.publisher_key_file: cannot read",
        ),
        (
            "enabled = true\nstore = 's'\npublisher_key_file = 'short.pub'\n",
            6,
            "holds 3 bytes; an Ed25519 public key has 32",
        ),
        (
            "enabled = true\nstore = 's'\npublisher_key_file = 'publisher.pub'\n"
            "wan_cap_mbit_s = 8\nwan_bytes_per_s = 9.0\n",
            7,
            "give wan_cap_mbit_s or wan_bytes_per_s, not both",
        ),
        ("wan_sources = ['nowhere']\n", 4, 'expected "host:port"'),
        (
            "enabled = true\nstore = 's'\npublisher_key_file = 'publisher.pub'\n"
            "have_debounce_s = 9.0\n",
            7,
            "have_debounce_s",
        ),
    ],
)
def test_replication_errors_name_file_line_and_key(
    tmp_path: Path, section: str, line: int, message: str
) -> None:
    (tmp_path / "publisher.pub").write_text(PUB_HEX)
    (tmp_path / "short.pub").write_text("abcdef")
    path = write(tmp_path, MINIMAL + "[replication]\n" + section)
    error = error_of(path)
    assert error.startswith(f"{path}:{line}: replication."), error
    assert message in error
