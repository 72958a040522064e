"""`policy.toml`: the publisher's policy source, turned into an `actors.policy.Policy`.

Every error names the file, the line and the key, as `agent.toml` errors do
(`peerpxe.config`), for example::

    policy.toml:9: serve.rule[2].subnet: expected a network like 10.1.0.0/16, got "10.1.0.1/16"

Format (see docs/packages.md and docs/policy.toml.example)::

    version = 3                       # required; every published policy needs a higher one
    [serve]
    default = false                   # agents no rule matches
    [[serve.rule]]                    # tried in order, first match wins
    site = "hq"                       # any of site, subnet, hostname (glob), tag; all given
    hostname = "pxe-*"                #   must match
    serve = true                      # required
    [clients]
    unknown_computers = true          # answer MACs in neither known nor allow
    known = ["52:54:00:12:34:56"]
    allow = []                        # non-empty: only these MACs
    deny = ["52:54:00:66:66:66"]      # never these
    [boot_files]                      # override the package's boot files
    efi64 = "ipxe-snponly.efi"

Unknown sections and keys are errors, so a typo never silently changes who boots.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any, Final

from actors.boot.proxy_dhcp import normalize_mac
from actors.errors import PackageError
from actors.package import BOOT_ARCHES, check_package_path
from actors.policy import Policy, ServeRule
from peerpxe.config import ConfigError, key_lines, read_toml

RULE_KEYS: Final = ("serve", "site", "subnet", "hostname", "tag")
CLIENT_KEYS: Final = {"unknown_computers": "bool", "known": "macs", "allow": "macs", "deny": "macs"}
SECTIONS: Final = ("version", "serve", "clients", "boot_files")


def load_policy(path: Path, created_s: int) -> Policy:
    """Read and validate `path`; raise `ConfigError` naming file, line and key on error."""
    text, document = read_toml(path)
    return _PolicyLoader(path, key_lines(text), document).load(created_s)


class _PolicyLoader:
    def __init__(self, path: Path, lines: dict[str, int], document: dict[str, Any]) -> None:
        self.path = path
        self.lines = lines
        self.document = document

    def load(self, created_s: int) -> Policy:
        for section in self.document:
            if section not in SECTIONS:
                raise self.error(section, f"unknown key (expected one of {', '.join(SECTIONS)})")
        serve = self._table("serve", ("default", "rule"))
        clients = self._table("clients", tuple(CLIENT_KEYS))
        try:
            return Policy(
                version=self._version(),
                created_s=created_s,
                serve_rules=self._rules(serve.get("rule", [])),
                serve_default=self._boolean("serve.default", serve.get("default", False)),
                unknown_computers=self._boolean(
                    "clients.unknown_computers", clients.get("unknown_computers", True)
                ),
                known_macs=self._macs("clients.known", clients.get("known", [])),
                mac_allow=self._macs("clients.allow", clients.get("allow", [])),
                mac_deny=self._macs("clients.deny", clients.get("deny", [])),
                boot_files=self._boot_files(),
            )
        except PackageError as error:  # a rule the per-key checks let through
            raise ConfigError(self.path, None, None, error.detail) from None

    def error(self, key: str, message: str) -> ConfigError:
        line = self.lines.get(key) or self.lines.get(key.partition(".")[0])
        return ConfigError(self.path, line, key, message)

    def _table(self, name: str, keys: tuple[str, ...]) -> dict[str, Any]:
        table = self.document.get(name, {})
        if not isinstance(table, dict):
            raise self.error(name, "expected a table")
        for key in table:
            if key not in keys:
                raise self.error(f"{name}.{key}", f"unknown key (expected {', '.join(keys)})")
        return table

    def _version(self) -> int:
        if "version" not in self.document:
            raise ConfigError(self.path, None, "version", "missing (required: an integer >= 1)")
        value = self.document["version"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.error("version", f"expected an integer >= 1, got {_got(value)}")
        return value

    def _boolean(self, key: str, value: object) -> bool:
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {_got(value)}")
        return value

    def _rules(self, value: object) -> tuple[ServeRule, ...]:
        if not isinstance(value, list):
            raise self.error("serve.rule", "expected [[serve.rule]] tables")
        return tuple(
            self._rule(f"serve.rule[{number}]", table)
            for number, table in enumerate(value, start=1)
        )

    def _rule(self, name: str, table: dict[str, Any]) -> ServeRule:
        for key in table:
            if key not in RULE_KEYS:
                raise self.error(f"{name}.{key}", f"unknown key (expected {', '.join(RULE_KEYS)})")
        if "serve" not in table:
            raise self.error(name, "missing key serve (true or false)")
        criteria = {
            key: self._criterion(f"{name}.{key}", table[key])
            for key in RULE_KEYS[1:]
            if key in table
        }
        if not criteria:
            raise self.error(name, "give at least one of site, subnet, hostname, tag")
        if "subnet" in criteria:
            criteria["subnet"] = self._subnet(f"{name}.subnet", criteria["subnet"])
        if "hostname" in criteria:
            criteria["hostname"] = criteria["hostname"].lower()
        return ServeRule(
            serve=self._boolean(f"{name}.serve", table["serve"]),
            site=criteria.get("site"),
            subnet=criteria.get("subnet"),
            hostname=criteria.get("hostname"),
            tag=criteria.get("tag"),
        )

    def _criterion(self, key: str, value: object) -> str:
        if not isinstance(value, str) or not value or not value.isprintable() or len(value) > 253:
            raise self.error(
                key, f"expected a printable string of 1 to 253 characters, got {_got(value)}"
            )
        return value

    def _subnet(self, key: str, text: str) -> str:
        try:
            return str(ipaddress.ip_network(text, strict=True))
        except ValueError as problem:
            raise self.error(
                key, f"expected a network like 10.1.0.0/16, got {_got(text)} ({problem})"
            ) from None

    def _macs(self, key: str, value: object) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.error(key, f"expected a list of MAC addresses, got {_got(value)}")
        macs = []
        for item in value:
            try:
                macs.append(normalize_mac(item if isinstance(item, str) else ""))
            except ValueError:
                raise self.error(
                    key, f"expected MAC addresses like 52:54:00:12:34:56, got {_got(item)}"
                ) from None
        return tuple(macs)

    def _boot_files(self) -> dict[str, str]:
        table = self._table("boot_files", BOOT_ARCHES)
        files = {}
        for arch, value in table.items():
            key = f"boot_files.{arch}"
            problem = check_package_path(value) if isinstance(value, str) else "not a string"
            if problem is not None:
                raise self.error(
                    key, f"expected a path inside the package, got {_got(value)} ({problem})"
                )
            files[arch] = value
        return files


def _got(value: object) -> str:
    return json.dumps(value, default=str)
