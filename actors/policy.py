"""Signed policy: which agents serve PXE, which computers boot, and with which boot file.

Theory of operation
-------------------
The publisher writes one policy for the whole cluster (DESIGN.md §4), signs it with the same
Ed25519 key as boot packages (`actors.signing`, kind `policy`) and publishes it; every agent
verifies it and keeps the newest. A policy says:

- which agents may serve PXE: `serve_rules`, tried in order, **first match wins**; a rule
  matches when every criterion it gives matches (site equal, the agent's subnet inside the
  rule's network, hostname matching a glob, or the tag among the agent's tags); no rule
  matching means `serve_default`;
- which computers are answered, as `actors.boot.proxy_dhcp.ProxyPolicy` does it: a MAC in
  `mac_deny` never; when `mac_allow` is non-empty, only MACs in it; a MAC in neither
  `known_macs` nor `mac_allow` only with `unknown_computers`;
- `boot_files`: per-architecture boot files that override the package manifest's.

Life of a policy document::

    Policy --sign_policy(secret)--> signed bytes   (disk, network)
    signed bytes --verify_policy(public, current)--> Policy         accepted
                                                 `--> PackageError  refused, with reason

`verify_policy` checks the signature before any field (NOT_SIGNED, WRONG_KIND,
BAD_SIGNATURE), then the fields (MALFORMED; canonical form as for manifests), then
freshness: `version` must be greater than `current.version` (ROLLBACK), so a captured old
policy cannot be replayed to re-enable a group the publisher turned off.

Body layout (msgpack map, sorted keys)::

    {"boot_files": {arch: path}, "created_s": int, "format": 1, "known_macs": [mac, ...],
     "mac_allow": [mac, ...], "mac_deny": [mac, ...], "serve_default": bool,
     "serve_rules": [[serve: bool, site | nil, subnet | nil, hostname | nil, tag | nil], ...],
     "unknown_computers": bool, "version": int}

MACs are lower-case `aa:bb:cc:dd:ee:ff`, each list sorted and without duplicates.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from actors.boot.proxy_dhcp import ArchClass, ProxyPolicy, normalize_mac
from actors.errors import PackageError, PackageRefusal
from actors.package import BOOT_ARCHES, CREATED_S_MAX, check_package_path
from actors.signing import open_document, pack_body, sign_document, unpack_body

KIND: Final = "policy"
POLICY_FORMAT: Final = 1
RULES_MAX: Final = 10_000
MACS_MAX: Final = 1_000_000
CRITERION_CHARS_MAX: Final = 253  # RFC 1035 §2.3.4: a domain name is at most 253 characters
VERSION_MAX: Final = (1 << 63) - 1
_KEYS: Final = (
    "boot_files",
    "created_s",
    "format",
    "known_macs",
    "mac_allow",
    "mac_deny",
    "serve_default",
    "serve_rules",
    "unknown_computers",
    "version",
)


@dataclass(frozen=True, slots=True)
class ServeRule:
    """Serve (or not) when every given criterion matches; at least one must be given."""

    serve: bool
    site: str | None = None
    #: IPv4 or IPv6 network; matches an agent whose subnet lies inside it
    subnet: str | None = None
    #: shell-style glob (`pxe-*`, `lab?-[0-9]*`), compared case-insensitively
    hostname: str | None = None
    tag: str | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    """A cluster policy; construction normalises MAC lists and refuses invalid fields."""

    version: int
    created_s: int
    serve_rules: tuple[ServeRule, ...] = ()
    serve_default: bool = False
    unknown_computers: bool = True
    known_macs: tuple[str, ...] = ()
    mac_allow: tuple[str, ...] = ()
    mac_deny: tuple[str, ...] = ()
    boot_files: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("known_macs", "mac_allow", "mac_deny"):
            object.__setattr__(self, name, _mac_list(getattr(self, name), name))
        object.__setattr__(self, "boot_files", dict(sorted(self.boot_files.items())))
        _check_policy(self)


def policy_allows_serving(
    policy: Policy, site: str, subnet: str, hostname: str, tags: Sequence[str]
) -> bool:
    """Whether an agent with these facts may serve PXE: the first matching rule decides."""
    for rule in policy.serve_rules:
        if _rule_matches(rule, site, subnet, hostname, tags):
            return rule.serve
    return policy.serve_default


def policy_allows_client(policy: Policy, mac: str) -> bool:
    """Whether the computer with `mac` (any common notation) may be answered."""
    try:
        normal = normalize_mac(mac)
    except ValueError:
        return False
    if normal in policy.mac_deny:
        return False
    if policy.mac_allow:
        return normal in policy.mac_allow
    return policy.unknown_computers or normal in policy.known_macs


_ARCH_CLASSES: Final[dict[str, tuple[ArchClass, ...]]] = {
    "bios": (ArchClass.BIOS,),
    "efi32": (ArchClass.EFI_IA32, ArchClass.HTTP_IA32),
    "efi64": (ArchClass.EFI_X64, ArchClass.HTTP_X64),
    "arm64": (ArchClass.EFI_ARM64, ArchClass.HTTP_ARM64),
}
"""A policy's architecture keys (as in manifests) and the ProxyDHCP classes each covers."""


def proxy_policy_with(policy: Policy, base: ProxyPolicy) -> ProxyPolicy:
    """`base` (what the served package says) with the policy's computer lists, its
    unknown-computer switch and its per-architecture boot files laid over it."""
    boot_files = dict(base.boot_files)
    for arch, path in policy.boot_files.items():
        for arch_class in _ARCH_CLASSES[arch]:
            boot_files[arch_class] = path.lstrip("/")
    return replace(
        base,
        boot_files=boot_files,
        serve_unknown=policy.unknown_computers,
        known_macs=frozenset(policy.known_macs),
        allowed_macs=frozenset(policy.mac_allow),
        denied_macs=frozenset(policy.mac_deny),
    )


def encode_policy(policy: Policy) -> bytes:
    """The canonical body bytes of `policy` (what is signed)."""
    rules = [
        [rule.serve, rule.site, rule.subnet, rule.hostname, rule.tag] for rule in policy.serve_rules
    ]
    return pack_body(
        {
            "boot_files": policy.boot_files,
            "created_s": policy.created_s,
            "format": POLICY_FORMAT,
            "known_macs": list(policy.known_macs),
            "mac_allow": list(policy.mac_allow),
            "mac_deny": list(policy.mac_deny),
            "serve_default": policy.serve_default,
            "serve_rules": rules,
            "unknown_computers": policy.unknown_computers,
            "version": policy.version,
        }
    )


def sign_policy(policy: Policy, secret_key: bytes) -> bytes:
    """The signed form of `policy`, ready to publish."""
    return sign_document(KIND, encode_policy(policy), secret_key)


def verify_policy(
    signed_bytes: bytes, publisher_public_key: bytes, current: Policy | None
) -> Policy:
    """The policy in `signed_bytes` if authentic, valid and newer than `current`.

    Raises:
        PackageError: NOT_SIGNED, WRONG_KIND, BAD_SIGNATURE, MALFORMED, ROLLBACK or BAD_KEY.
    """
    policy = decode_policy(open_document(KIND, signed_bytes, publisher_public_key))
    if current is not None and policy.version <= current.version:
        raise PackageError(
            PackageRefusal.ROLLBACK,
            f"policy version {policy.version} is not newer than {current.version}",
        )
    return policy


def decode_policy(body: bytes) -> Policy:
    """Decode an authentic policy body; MALFORMED unless valid and in canonical form."""
    fields = unpack_body(body)
    if tuple(fields) != _KEYS:
        raise _malformed(f"policy keys are {sorted(fields)}, expected {list(_KEYS)}")
    if _exact(fields["format"], int, "format") != POLICY_FORMAT:
        raise _malformed(f"unsupported policy format {fields['format']!r}")
    policy = Policy(
        version=_exact(fields["version"], int, "version"),
        created_s=_exact(fields["created_s"], int, "created_s"),
        serve_rules=tuple(_rule(item) for item in _exact(fields["serve_rules"], list, "rules")),
        serve_default=_exact(fields["serve_default"], bool, "serve_default"),
        unknown_computers=_exact(fields["unknown_computers"], bool, "unknown_computers"),
        known_macs=_strings(fields["known_macs"], "known_macs"),
        mac_allow=_strings(fields["mac_allow"], "mac_allow"),
        mac_deny=_strings(fields["mac_deny"], "mac_deny"),
        boot_files=_boot_files(fields["boot_files"]),
    )
    if encode_policy(policy) != body:
        raise _malformed("policy is not in canonical form")
    return policy


def normal_subnet(text: str) -> str:
    """`10.1.0.0/16` as written by `ipaddress` (host bits must be zero); else ValueError."""
    return str(ipaddress.ip_network(text, strict=True))


# --------------------------------------------------------------------------- matching


def _rule_matches(
    rule: ServeRule, site: str, subnet: str, hostname: str, tags: Sequence[str]
) -> bool:
    if rule.site is not None and rule.site != site:
        return False
    if rule.subnet is not None and not _subnet_inside(subnet, rule.subnet):
        return False
    if rule.hostname is not None and not fnmatch.fnmatchcase(hostname.lower(), rule.hostname):
        return False
    return rule.tag is None or rule.tag in tags


def _subnet_inside(subnet: str, network: str) -> bool:
    try:
        inner = ipaddress.ip_network(subnet, strict=False)
    except ValueError:
        return False
    outer = ipaddress.ip_network(network)
    if inner.version != outer.version:
        return False
    return inner.subnet_of(outer)  # type: ignore[arg-type]  # same version checked above


# --------------------------------------------------------------------------- validation


def _check_policy(policy: Policy) -> None:
    if not _is_int(policy.version) or not 1 <= policy.version <= VERSION_MAX:
        raise _malformed(f"version must be an integer from 1 to {VERSION_MAX}")
    if not _is_int(policy.created_s) or not 0 <= policy.created_s <= CREATED_S_MAX:
        raise _malformed(f"created_s out of range: {policy.created_s!r}")
    if len(policy.serve_rules) > RULES_MAX:
        raise _malformed(f"more than {RULES_MAX} serve rules")
    for number, rule in enumerate(policy.serve_rules, start=1):
        problem = _rule_problem(rule)
        if problem is not None:
            raise _malformed(f"serve rule {number}: {problem}")
    for arch, path in policy.boot_files.items():
        if arch not in BOOT_ARCHES:
            raise _malformed(f"unknown boot architecture {arch!r} (known: {BOOT_ARCHES})")
        problem = check_package_path(path)
        if problem is not None:
            raise _malformed(f"boot file for {arch} ({path!r}): {problem}")


def _rule_problem(rule: ServeRule) -> str | None:
    criteria = (rule.site, rule.subnet, rule.hostname, rule.tag)
    if all(criterion is None for criterion in criteria):
        return "gives no criterion (site, subnet, hostname or tag); use serve_default instead"
    for criterion in criteria:
        if criterion is not None and not _is_criterion(criterion):
            return f"bad criterion {criterion!r} (a printable string of 1 to 253 characters)"
    if rule.subnet is not None:
        try:
            if normal_subnet(rule.subnet) != rule.subnet:
                return f"subnet {rule.subnet!r} is not in normal form"
        except ValueError as error:
            return f"bad subnet {rule.subnet!r}: {error}"
    if rule.hostname is not None and rule.hostname != rule.hostname.lower():
        return f"hostname pattern {rule.hostname!r} must be lower case"
    return None


def _mac_list(macs: Sequence[str], name: str) -> tuple[str, ...]:
    if len(macs) > MACS_MAX:
        raise _malformed(f"{name}: more than {MACS_MAX} addresses")
    try:
        normal = sorted({normalize_mac(mac) for mac in macs})
    except (ValueError, AttributeError):
        raise _malformed(f"{name}: not a list of MAC addresses") from None
    return tuple(normal)


# --------------------------------------------------------------------------- decoding helpers


def _malformed(detail: str) -> PackageError:
    return PackageError(PackageRefusal.MALFORMED, detail)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_criterion(value: object) -> bool:
    if not isinstance(value, str):
        return False
    return 0 < len(value) <= CRITERION_CHARS_MAX and value.isprintable()


def _exact(value: object, kind: type[Any], name: str) -> Any:
    if type(value) is not kind:
        raise _malformed(f"{name}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _optional_text(value: object, name: str) -> str | None:
    if value is None:
        return None
    text: str = _exact(value, str, name)
    return text


def _strings(value: object, name: str) -> tuple[str, ...]:
    return tuple(_exact(item, str, name) for item in _exact(value, list, name))


def _rule(item: object) -> ServeRule:
    fields = _exact(item, list, "serve rule")
    if len(fields) != 5:
        raise _malformed("a serve rule is not [serve, site, subnet, hostname, tag]")
    return ServeRule(
        serve=_exact(fields[0], bool, "serve"),
        site=_optional_text(fields[1], "site"),
        subnet=_optional_text(fields[2], "subnet"),
        hostname=_optional_text(fields[3], "hostname"),
        tag=_optional_text(fields[4], "tag"),
    )


def _boot_files(value: object) -> dict[str, str]:
    table = _exact(value, dict, "boot_files")
    return {_exact(k, str, "boot_files key"): _exact(v, str, "boot file") for k, v in table.items()}
