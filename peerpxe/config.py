"""`agent.toml`: loading, defaults and validation of the agent's configuration.

Every error names the file, the line and the key, for example::

    agent.toml:7: discovery.probe_interval_s: expected a positive number, got "fast"

`tomllib` reports no line numbers for values, so the loader scans the text once and maps
every `section.key` to the line that assigns it; syntax errors keep tomllib's own
`(at line L, column C)`. Unknown sections and keys are errors (a typo must not silently
fall back to a default). See docs/agent-config.md for every key.

Machine facts (the interface's address and netmask, the default route) are read through a
`NetworkInfo`, so tests can load configurations without depending on the host's interfaces.

`[election]` holds the `ElectionKnobs` and `[boot]` the PXE responder settings (`BootConfig`);
whether the agent may answer PXE clients (`responder_problems`) is decided at start, from the
files actually present under `boot.root`.
"""

from __future__ import annotations

import dataclasses
import fcntl
import ipaddress
import json
import re
import socket
import stat
import struct
import tomllib
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from actors.boot.tftp_paths import PathRefusal, validate_read_path
from actors.core import NODE_ID_BYTES_MAX, Address
from actors.discovery import DiscoveryKnobs
from actors.election import ElectionKnobs
from actors.envelope import CLUSTER_KEY_BYTES_MIN
from actors.replication import ReplicationKnobs
from actors.signing import PUBLIC_KEY_BYTES

DEFAULT_PORT: Final = 7947
"""UDP port of the peer endpoint: next to memberlist/Serf/Consul's 7946, without clashing."""
WEIGHT_MAX: Final = 100
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
_DISCOVERY_KEYS: Final = ("seeds", "mdns")
BOOT_FILE_KEYS: Final = ("bios", "efi64", "arm64")


_Knobs = typing.TypeVar("_Knobs", DiscoveryKnobs, ElectionKnobs, ReplicationKnobs)
MIB: Final = 1 << 20
MBIT_BYTES: Final = 1_000_000 / 8
_REPLICATION_KEYS: Final = (
    "enabled",
    "store",
    "publisher_key_file",
    "quota_mib",
    "wan_sources",
    "wan_cap_mbit_s",
)


class ConfigError(Exception):
    """A configuration file that cannot be used; `str()` is one line for the operator."""

    def __init__(self, path: Path, line: int | None, key: str | None, message: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")
        self.path = path
        self.line = line
        self.key = key


@dataclass(frozen=True, slots=True)
class BootConfig:
    """The `[boot]` section: what this agent serves and answers when it is the responder.

    `files` maps `bios`/`efi64`/`arm64` to root-relative paths (validated, not checked for
    existence: see `responder_problems`); `server` is the IPv4 address of `interface`, the
    address PXE clients are sent to.
    """

    enabled: bool = False
    interface: str = ""
    server: str = ""
    root: Path | None = None
    files: dict[str, str] = field(default_factory=dict)
    ipxe_script: str | None = None
    tftp_port: int = 69
    http_port: int = 8080
    answer_retries_as_standby: bool = True
    spread_file_servers: bool = True


@dataclass(frozen=True, slots=True)
class ReplicationConfig:
    """The `[replication]` section: the content store, the publisher's key, WAN sources.

    When enabled, the boot package comes from the store (`peerpxe publish` and peers), not
    from `boot.root`: the agent serves the current verified package's tree and is
    responder-eligible only while it holds one with a boot file.
    """

    enabled: bool = False
    store: Path | None = None
    publisher_key: bytes = b""
    quota_bytes: int = 4096 * MIB
    wan_sources: tuple[Address, ...] = ()
    knobs: ReplicationKnobs = field(default_factory=ReplicationKnobs)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """A validated agent configuration with every default filled in."""

    path: Path
    node_id: str
    site: str
    subnet: str
    interface: str
    address: str
    port: int
    weight: int
    capabilities: tuple[str, ...]
    cluster_key: bytes
    cluster_key_file: Path
    seeds: tuple[Address, ...]
    mdns: bool
    knobs: DiscoveryKnobs
    log_level: str
    warnings: tuple[str, ...] = ()
    election: ElectionKnobs = field(default_factory=ElectionKnobs)
    boot: BootConfig = field(default_factory=BootConfig)
    replication: ReplicationConfig = field(default_factory=ReplicationConfig)


def responder_problems(config: AgentConfig) -> list[str]:
    """Why this agent may not be the subnet's PXE responder (empty: it may).

    Eligible means: `[boot] enabled`, weight > 0, and every configured boot file (and the
    iPXE script) present as a regular file under `boot.root`. Until content replication
    exists, the files are whatever the operator put there.
    """
    if not config.boot.enabled:
        return ["boot.enabled is false"]
    problems = [] if config.weight > 0 else ["agent.weight is 0 (never responder)"]
    if config.replication.enabled:
        return problems  # the store's verified package decides, once it is complete
    return problems + missing_boot_files(config.boot)


def missing_boot_files(boot: BootConfig) -> list[str]:
    """What is missing under `boot.root` for serving the configured files (empty: nothing)."""
    if boot.root is None or not boot.root.is_dir():
        return [f"boot.root {boot.root} is not a directory"]
    named = [*boot.files.values(), *([boot.ipxe_script] if boot.ipxe_script else [])]
    missing = [relative for relative in named if not (boot.root / relative).is_file()]
    return [f"{relative} is missing under boot.root {boot.root}" for relative in missing]


class NetworkInfo(Protocol):
    """The machine facts that defaults come from."""

    def hostname(self) -> str:
        """This machine's host name."""
        ...

    def interface_ipv4(self, name: str) -> tuple[str, str] | None:
        """(address, netmask) of interface `name`, or None if it has no IPv4 address."""
        ...

    def interface_of(self, address: str) -> str | None:
        """The interface holding IPv4 `address`, or None."""
        ...

    def default_interface(self) -> str | None:
        """The interface of the IPv4 default route, or None."""
        ...


def load_config(path: Path, network: NetworkInfo | None = None) -> AgentConfig:
    """Read, validate and complete `path`; raise `ConfigError` with file:line: key on error."""
    text, document = read_toml(path)
    return _Loader(path, text, document, network or LinuxNetworkInfo()).load()


def read_toml(path: Path) -> tuple[str, dict[str, Any]]:
    """The text and the parsed document of a TOML file; `ConfigError` (with the line) if not."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(path, None, None, f"cannot read: {_reason(error)}") from error
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        match = re.search(r"at line (\d+)", str(error))
        line = int(match.group(1)) if match else None
        raise ConfigError(path, line, None, f"syntax error: {error}") from error
    return text, document


# --------------------------------------------------------------------------- value checks


Check = Callable[[Any], Any]
"""Returns the converted value or raises `ValueError` with the expectation (no key, no line)."""


def _got(value: object) -> str:
    return json.dumps(value, default=str)


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {_got(value)}")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_got(value)}")
    return value


def _positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"expected a positive number, got {_got(value)}")
    return float(value)


def _integer_in(low: int, high: int) -> Check:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"expected an integer from {low} to {high}, got {_got(value)}")
        return value

    return check


def _string_list(item: Check) -> Check:
    def check(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {_got(value)}")
        return tuple(item(element) for element in value)

    return check


def _node_id(value: Any) -> str:
    text = _string(value)
    if len(text.encode()) > NODE_ID_BYTES_MAX or not text.isprintable() or " " in text:
        raise ValueError(
            f"expected a printable id without spaces, at most {NODE_ID_BYTES_MAX} bytes,"
            f" got {_got(value)}"
        )
    return text


def _capability(value: Any) -> str:
    text = _string(value)
    if "," in text or not text.isprintable():
        raise ValueError(f"expected a capability name without commas, got {_got(value)}")
    return text


def _ipv4(value: Any) -> str:
    text = _string(value)
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise ValueError(f"expected an IPv4 address like 192.0.2.10, got {_got(value)}") from None


def _cidr(value: Any) -> str:
    text = _string(value)
    try:
        return str(ipaddress.IPv4Network(text, strict=True))
    except ValueError as error:
        raise ValueError(
            f"expected an IPv4 network in CIDR form like 192.0.2.0/24, got {_got(value)} ({error})"
        ) from None


def _seed(value: Any) -> Address:
    text = _string(value)
    host, _, port_text = text.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65_536:
        raise ValueError(f'expected "host:port" with a port from 1 to 65535, got {_got(value)}')
    return Address(host, int(port_text))


def parse_address(text: str) -> Address:
    """`"host:port"` as an `Address`; `ValueError` with the reason otherwise."""
    return _seed(text)


def _log_level(value: Any) -> str:
    if value not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {_got(value)}")
    return str(value)


def _boot_path(value: Any) -> str:
    relative = validate_read_path(_string(value))
    if isinstance(relative, PathRefusal):
        raise ValueError(f"expected a path relative to boot.root, got {_got(value)} ({relative})")
    return relative


def _knob_checks(knobs: type[Any], minimums: dict[str, int] | None = None) -> dict[str, Check]:
    """One check per field of the knobs dataclass, from its annotation (new knobs need no code
    here): float fields are positive numbers, int fields integers >= 0 (or the minimum)."""
    hints = typing.get_type_hints(knobs)
    checks: dict[str, Check] = {}
    for knob in dataclasses.fields(knobs):
        kind = hints[knob.name]
        assert kind in (int, float), f"knob {knob.name}: unsupported type {kind}"
        low = (minimums or {}).get(knob.name, 0)
        checks[knob.name] = _positive_number if kind is float else _integer_in(low, 1_000_000)
    return checks


# --------------------------------------------------------------------------- the loader


_AGENT_CHECKS: Final[dict[str, Check]] = {
    "node_id": _node_id,
    "site": _string,
    "subnet": _cidr,
    "interface": _string,
    "address": _ipv4,
    "port": _integer_in(0, 65_535),
    "weight": _integer_in(0, WEIGHT_MAX),
    "capabilities": _string_list(_capability),
}
_SECURITY_CHECKS: Final[dict[str, Check]] = {"cluster_key_file": _string}
_DISCOVERY_CHECKS: Final[dict[str, Check]] = {
    "seeds": _string_list(_seed),
    "mdns": _boolean,
    **_knob_checks(DiscoveryKnobs),
}
_ELECTION_CHECKS: Final[dict[str, Check]] = _knob_checks(ElectionKnobs, {"standby_count": 1})
_BOOT_CHECKS: Final[dict[str, Check]] = {
    "enabled": _boolean,
    "interface": _string,
    "root": _string,
    **dict.fromkeys(BOOT_FILE_KEYS, _boot_path),
    "ipxe_script": _boot_path,
    "tftp_port": _integer_in(1, 65_535),
    "http_port": _integer_in(1, 65_535),
    "answer_retries_as_standby": _boolean,
    "spread_file_servers": _boolean,
}
_LOG_CHECKS: Final[dict[str, Check]] = {"level": _log_level}
_REPLICATION_CHECKS: Final[dict[str, Check]] = {
    "enabled": _boolean,
    "store": _string,
    "publisher_key_file": _string,
    "quota_mib": _integer_in(1, 100_000_000),
    "wan_sources": _string_list(_seed),
    "wan_cap_mbit_s": _positive_number,
    **_knob_checks(ReplicationKnobs),
}
SCHEMA: Final[dict[str, dict[str, Check]]] = {
    "agent": _AGENT_CHECKS,
    "security": _SECURITY_CHECKS,
    "discovery": _DISCOVERY_CHECKS,
    "election": _ELECTION_CHECKS,
    "boot": _BOOT_CHECKS,
    "replication": _REPLICATION_CHECKS,
    "log": _LOG_CHECKS,
}
"""Every section and key `agent.toml` accepts."""


class _Loader:
    def __init__(
        self, path: Path, text: str, document: dict[str, Any], network: NetworkInfo
    ) -> None:
        self.path = path
        self.lines = key_lines(text)
        self.document = document
        self.network = network
        self.warnings: list[str] = []

    def load(self) -> AgentConfig:
        values = self._checked_values()
        agent, discovery = values["agent"], values["discovery"]
        interface, address = self._interface_and_address(agent)
        key_file, key = self._cluster_key(values["security"])
        return AgentConfig(
            path=self.path,
            node_id=agent.get("node_id") or self._default_node_id(),
            site=agent.get("site", "default"),
            subnet=agent.get("subnet") or self._default_subnet(interface, address),
            interface=interface,
            address=address,
            port=agent.get("port", DEFAULT_PORT),
            weight=agent.get("weight", 50),
            capabilities=agent.get("capabilities", ()),
            cluster_key=key,
            cluster_key_file=key_file,
            seeds=discovery.get("seeds", ()),
            mdns=discovery.get("mdns", True),
            knobs=self._knobs("discovery", DiscoveryKnobs, discovery),
            log_level=values["log"].get("level", "info"),
            warnings=tuple(self.warnings),
            election=self._knobs("election", ElectionKnobs, values["election"]),
            boot=self._boot(values["boot"], interface, address, values["replication"]),
            replication=self._replication(values["replication"]),
        )

    def error(self, key: str, message: str) -> ConfigError:
        line = self.lines.get(key) or self.lines.get(key.partition(".")[0])
        return ConfigError(self.path, line, key, message)

    def _checked_values(self) -> dict[str, dict[str, Any]]:
        values: dict[str, dict[str, Any]] = {section: {} for section in SCHEMA}
        for section, table in self.document.items():
            checks = SCHEMA.get(section)
            if checks is None or not isinstance(table, dict):
                raise self.error(section, f"unknown section (expected one of {', '.join(SCHEMA)})")
            for key, value in table.items():
                check = checks.get(key)
                if check is None:
                    raise self.error(f"{section}.{key}", "unknown key")
                try:
                    values[section][key] = check(value)
                except ValueError as problem:
                    raise self.error(f"{section}.{key}", str(problem)) from None
        return values

    def _interface_and_address(self, agent: dict[str, Any]) -> tuple[str, str]:
        interface: str | None = agent.get("interface")
        address: str | None = agent.get("address")
        if interface is None and address is not None:
            interface = self.network.interface_of(address)
            if interface is None:
                raise self.error("agent.address", f"no interface holds {address}")
        if interface is None:
            interface = self.network.default_interface()
            if interface is None:
                raise self.error("agent.interface", "no default route: set agent.interface")
        if address is None:
            found = self.network.interface_ipv4(interface)
            if found is None:
                raise self.error("agent.interface", f"{interface} has no IPv4 address")
            address = found[0]
        return interface, address

    def _default_node_id(self) -> str:
        try:
            return _node_id(self.network.hostname())
        except ValueError as problem:
            raise self.error("agent.node_id", f"the host name is not usable: {problem}") from None

    def _default_subnet(self, interface: str, address: str) -> str:
        found = self.network.interface_ipv4(interface)
        if found is None:
            raise self.error("agent.subnet", f"cannot derive it: {interface} has no IPv4 address")
        network = ipaddress.IPv4Network(f"{address}/{found[1]}", strict=False)
        return str(network)

    def _cluster_key(self, security: dict[str, Any]) -> tuple[Path, bytes]:
        name = "security.cluster_key_file"
        if "cluster_key_file" not in security:
            raise self.error(name, "missing (required: the file holding the cluster key)")
        key_file = self.path.parent / Path(security["cluster_key_file"]).expanduser()
        try:
            data = key_file.read_bytes()
            mode = key_file.stat().st_mode
        except OSError as error:
            raise self.error(name, f"cannot read {key_file}: {_reason(error)}") from None
        key = parse_key(data)
        if len(key) < CLUSTER_KEY_BYTES_MIN:
            raise self.error(
                name,
                f"{key_file} holds a {len(key)}-byte key; at least {CLUSTER_KEY_BYTES_MIN}"
                " bytes are needed (e.g. `openssl rand -hex 32`)",
            )
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            self.warnings.append(
                f"{self.path}:{self.lines.get(name)}: {name}: {key_file} is accessible by"
                f" group or others (mode {stat.S_IMODE(mode):04o}); run chmod 600"
            )
        return key_file, key

    def _replication(self, replication: dict[str, Any]) -> ReplicationConfig:
        if not replication.get("enabled", False):
            return ReplicationConfig()
        store = self._required_path(replication, "store", "the content store's directory")
        key_path = self._required_path(
            replication, "publisher_key_file", "the publisher's public key (publisher.pub)"
        )
        knob_values = {k: v for k, v in replication.items() if k not in _REPLICATION_KEYS}
        if "wan_cap_mbit_s" in replication:
            if "wan_bytes_per_s" in knob_values:
                raise self.error(
                    "replication.wan_cap_mbit_s", "give wan_cap_mbit_s or wan_bytes_per_s, not both"
                )
            knob_values["wan_bytes_per_s"] = replication["wan_cap_mbit_s"] * MBIT_BYTES
        return ReplicationConfig(
            enabled=True,
            store=store,
            publisher_key=self._publisher_key(key_path),
            quota_bytes=replication.get("quota_mib", 4096) * MIB,
            wan_sources=replication.get("wan_sources", ()),
            knobs=self._knobs("replication", ReplicationKnobs, knob_values),
        )

    def _required_path(self, table: dict[str, Any], key: str, what: str) -> Path:
        if key not in table:
            raise self.error("replication.enabled", f"replication.{key} is required ({what})")
        return self.path.parent / Path(table[key]).expanduser()

    def _publisher_key(self, path: Path) -> bytes:
        name = "replication.publisher_key_file"
        try:
            key = parse_key(path.read_bytes())
        except OSError as error:
            raise self.error(name, f"cannot read {path}: {_reason(error)}") from None
        if len(key) != PUBLIC_KEY_BYTES:
            raise self.error(
                name,
                f"{path} holds {len(key)} bytes; an Ed25519 public key has {PUBLIC_KEY_BYTES}"
                " (the publisher.pub of `peerpxe keygen`)",
            )
        return key

    def _knobs(self, section: str, knobs: type[_Knobs], values: dict[str, Any]) -> _Knobs:
        overrides = {key: value for key, value in values.items() if key not in _DISCOVERY_KEYS}
        defaults = knobs()
        merged: dict[str, Any] = {
            knob.name: getattr(defaults, knob.name) for knob in dataclasses.fields(defaults)
        }
        merged.update(overrides)
        for smaller, larger, strict in _KNOB_ORDER[section]:
            if merged[smaller] > merged[larger] or (strict and merged[smaller] == merged[larger]):
                culprit = smaller if smaller in overrides else larger
                relation = "less than" if strict else "at most"
                raise self.error(
                    f"{section}.{culprit}",
                    f"{smaller} ({merged[smaller]}) must be {relation} {larger} ({merged[larger]})",
                )
        try:
            return knobs(**overrides)
        except AssertionError:
            raise self.error(section, "the knob values are inconsistent") from None
        except ValueError as problem:
            named = [key for key in overrides if key in str(problem)]
            where = f"{section}.{named[0]}" if named else section
            raise self.error(where, str(problem)) from None

    def _boot(
        self,
        boot: dict[str, Any],
        agent_interface: str,
        agent_address: str,
        replication: dict[str, Any],
    ) -> BootConfig:
        enabled = boot.get("enabled", False)
        interface = boot.get("interface", agent_interface)
        server = agent_address
        if interface != agent_interface:
            found = self.network.interface_ipv4(interface)
            if found is None:
                raise self.error("boot.interface", f"{interface} has no IPv4 address")
            server = found[0]
        root: Path | None = None
        replicated = replication.get("enabled", False)  # the store's package is served
        if "root" in boot:
            root = self.path.parent / Path(boot["root"]).expanduser()
        elif enabled and not replicated:
            raise self.error("boot.enabled", "boot.root is required when boot is enabled")
        files: dict[str, str] = {key: boot[key] for key in BOOT_FILE_KEYS if key in boot}
        if enabled and not files and not replicated:
            raise self.error("boot.enabled", "give at least one of boot.bios, efi64, arm64")
        return BootConfig(
            enabled=enabled,
            interface=interface,
            server=server,
            root=root,
            files=files,
            ipxe_script=boot.get("ipxe_script"),
            tftp_port=boot.get("tftp_port", 69),
            http_port=boot.get("http_port", 8080),
            answer_retries_as_standby=boot.get("answer_retries_as_standby", True),
            spread_file_servers=boot.get("spread_file_servers", True),
        )


_KNOB_ORDER: Final[dict[str, tuple[tuple[str, str, bool], ...]]] = {
    "discovery": (
        ("probe_timeout_s", "probe_interval_s", True),
        ("suspicion_timeout_s_min", "suspicion_timeout_s_max", False),
    ),
    "election": (("heartbeat_interval_s", "lease_timeout_s", True),),
    "replication": (),
}


def parse_key(data: bytes) -> bytes:
    """A key file's key: hex text (whitespace around it ignored) or, otherwise, raw bytes."""
    stripped = data.strip()
    if stripped and len(stripped) % 2 == 0 and re.fullmatch(rb"[0-9A-Fa-f]+", stripped):
        return bytes.fromhex(stripped.decode())
    return data


def key_lines(text: str) -> dict[str, int]:
    """Map `section` and `section.key` to the (1-based) line that declares or assigns it.

    The N-th table of an array of tables (`[[serve.rule]]`) is also mapped by its 1-based
    index: `serve.rule[N]` and `serve.rule[N].key`.
    """
    lines: dict[str, int] = {}
    tables_seen: dict[str, int] = {}
    section = indexed = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        header = re.match(r"^\[\[?\s*([^\]#]+?)\s*\]\]?", line)
        if header:
            section = header.group(1).replace('"', "").replace("'", "")
            lines.setdefault(section, number)
            indexed = ""
            if line.startswith("[["):
                tables_seen[section] = tables_seen.get(section, 0) + 1
                indexed = f"{section}[{tables_seen[section]}]"
                lines[indexed] = number
            continue
        assignment = re.match(r"^([A-Za-z0-9_.\-\"' ]+?)\s*=", line)
        if assignment:
            key = assignment.group(1).replace('"', "").replace("'", "").replace(" ", "")
            lines.setdefault(f"{section}.{key}" if section else key, number)
            if indexed:
                lines.setdefault(f"{indexed}.{key}", number)
    return lines


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)


# --------------------------------------------------------------------------- machine facts

_SIOCGIFADDR: Final = 0x8915  # linux/sockios.h
_SIOCGIFNETMASK: Final = 0x891B


class LinuxNetworkInfo:
    """Machine facts from Linux: ioctl for interface addresses, /proc/net/route for routes."""

    def hostname(self) -> str:
        """`socket.gethostname()`."""
        return socket.gethostname()

    def interface_ipv4(self, name: str) -> tuple[str, str] | None:
        """(address, netmask) of the interface's primary IPv4 address."""
        address = _interface_ioctl(name, _SIOCGIFADDR)
        netmask = _interface_ioctl(name, _SIOCGIFNETMASK)
        if address is None or netmask is None:
            return None
        return address, netmask

    def interface_of(self, address: str) -> str | None:
        """The first interface (by index) whose primary IPv4 address is `address`."""
        for _, name in socket.if_nameindex():
            if _interface_ioctl(name, _SIOCGIFADDR) == address:
                return name
        return None

    def default_interface(self) -> str | None:
        """The interface of the first IPv4 default route in /proc/net/route."""
        try:
            rows = Path("/proc/net/route").read_text(encoding="ascii").splitlines()[1:]
        except OSError:
            return None
        for row in rows:
            fields = row.split()
            if len(fields) > 7 and fields[1] == "00000000" and fields[7] == "00000000":
                return fields[0]
        return None


def _interface_ioctl(name: str, request: int) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            answer = fcntl.ioctl(sock.fileno(), request, struct.pack("256s", name[:15].encode()))
        except OSError:
            return None
    return socket.inet_ntoa(answer[20:24])
