"""Signed policy: round trip, serving rules (first match wins), client lists, refusals."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.boot.proxy_dhcp import ArchClass, ProxyPolicy
from actors.errors import PackageError, PackageRefusal
from actors.package import Manifest, sign_manifest
from actors.policy import (
    KIND,
    Policy,
    ServeRule,
    encode_policy,
    policy_allows_client,
    policy_allows_serving,
    proxy_policy_with,
    sign_policy,
    verify_policy,
)
from actors.signing import pack_body, public_key, sign_document
from transport.policy_store import PolicyStore

SECRET = bytes(range(32))
PUBLIC = public_key(SECRET)

RULES = (
    ServeRule(serve=False, tag="laptop"),
    ServeRule(serve=True, site="hq", hostname="pxe-*"),
    ServeRule(serve=True, subnet="10.20.0.0/16"),
    ServeRule(serve=False, site="hq", subnet="10.1.0.0/16", hostname="desk-?", tag="x"),
)


def policy(**changes: Any) -> Policy:
    fields: dict[str, Any] = {"version": 1, "created_s": 1_700_000_000, "serve_rules": RULES}
    fields.update(changes)
    return Policy(**fields)


def refusal(signed: bytes, current: Policy | None = None) -> PackageRefusal:
    with pytest.raises(PackageError) as caught:
        verify_policy(signed, PUBLIC, current)
    return caught.value.reason


# --------------------------------------------------------------------------- serving


@pytest.mark.parametrize(
    ("site", "subnet", "hostname", "tags", "serves"),
    [
        ("hq", "10.0.0.0/24", "pxe-1", (), True),  # rule 2
        ("hq", "10.0.0.0/24", "PXE-1", (), True),  # hostnames compare case-insensitively
        ("hq", "10.0.0.0/24", "pxe-1", ("laptop",), False),  # rule 1 first
        ("branch", "10.0.0.0/24", "pxe-1", (), False),  # rule 2 needs the site too
        ("branch", "10.20.3.0/24", "anything", (), True),  # rule 3: inside 10.20/16
        ("branch", "10.20.0.0/16", "anything", (), True),  # the network itself
        ("branch", "10.0.0.0/8", "anything", (), False),  # wider than the rule's network
        ("branch", "10.21.0.0/24", "anything", (), False),  # default
        ("branch", "not a subnet", "anything", (), False),  # unparsable: no subnet match
        ("branch", "2001:db8::/64", "anything", (), False),  # other IP version
    ],
)
def test_first_matching_rule_decides(
    site: str, subnet: str, hostname: str, tags: tuple[str, ...], serves: bool
) -> None:
    """Rules are tried in order; all criteria of a rule must match; else the default."""
    assert policy_allows_serving(policy(), site, subnet, hostname, tags) is serves


def test_default_applies_when_no_rule_matches() -> None:
    """serve_default decides for agents no rule matches, and only for them."""
    open_policy = policy(serve_default=True)
    assert policy_allows_serving(open_policy, "branch", "10.99.0.0/24", "h", ())
    assert not policy_allows_serving(open_policy, "x", "10.0.0.0/24", "h", ("laptop",))


def test_a_rule_needs_all_its_criteria() -> None:
    """Rule 4 matches only when site, subnet, hostname and tag all match."""
    rules = (RULES[3],)
    strict = policy(serve_rules=rules, serve_default=True)
    assert not policy_allows_serving(strict, "hq", "10.1.2.0/24", "desk-7", ("x",))
    assert policy_allows_serving(strict, "hq", "10.1.2.0/24", "desk-77", ("x",))
    assert policy_allows_serving(strict, "hq", "10.1.2.0/24", "desk-7", ("y",))
    assert policy_allows_serving(strict, "hq", "10.2.0.0/24", "desk-7", ("x",))


# --------------------------------------------------------------------------- clients


MAC_1 = "52:54:00:00:00:01"
MAC_2 = "52:54:00:00:00:02"


@pytest.mark.parametrize(
    ("lists", "mac", "allowed"),
    [
        ({}, MAC_1, True),
        ({"unknown_computers": False}, MAC_1, False),
        ({"unknown_computers": False, "known_macs": (MAC_1,)}, MAC_1.replace(":", "-"), True),
        ({"mac_deny": (MAC_1,)}, MAC_1, False),
        ({"mac_deny": (MAC_1,), "mac_allow": (MAC_1,)}, MAC_1, False),
        ({"mac_allow": (MAC_2,)}, MAC_1, False),
        ({"mac_allow": (MAC_2,), "unknown_computers": False}, MAC_2, True),
        ({}, "not-a-mac", False),
    ],
)
def test_client_lists(lists: dict[str, Any], mac: str, allowed: bool) -> None:
    """Deny wins; a non-empty allow list is exclusive; unknown computers need the flag."""
    assert policy_allows_client(policy(**lists), mac) is allowed


def test_macs_are_normalised_sorted_and_unique() -> None:
    """MAC lists are stored lower-case, colon-separated, sorted, without duplicates."""
    held = policy(mac_deny=("AA-BB-CC-DD-EE-02", "aa:bb:cc:dd:ee:01", "aabb.ccdd.ee02"))
    assert held.mac_deny == ("aa:bb:cc:dd:ee:01", "aa:bb:cc:dd:ee:02")


# --------------------------------------------------------------------------- document


def rules_strategy() -> st.SearchStrategy[ServeRule]:
    text = st.text(alphabet="abcxyz-*?0", min_size=1, max_size=6)
    subnet = st.sampled_from(["10.0.0.0/8", "192.0.2.0/24", "2001:db8::/32"])
    return st.builds(
        ServeRule,
        serve=st.booleans(),
        site=text,
        subnet=st.none() | subnet,
        hostname=st.none() | text,
        tag=st.none() | text,
    )


macs = st.lists(
    st.binary(min_size=6, max_size=6).map(lambda raw: ":".join(f"{b:02x}" for b in raw)),
    max_size=4,
).map(tuple)


policies = st.builds(
    Policy,
    version=st.integers(1, 2**63 - 1),
    created_s=st.integers(0, 2**63 - 1),
    serve_rules=st.lists(rules_strategy(), max_size=4).map(tuple),
    serve_default=st.booleans(),
    unknown_computers=st.booleans(),
    known_macs=macs,
    mac_allow=macs,
    mac_deny=macs,
    boot_files=st.dictionaries(
        st.sampled_from(["bios", "efi64"]), st.sampled_from(["a", "b/c.efi"])
    ),
)


@given(made=policies)
@settings(max_examples=60, deadline=None)
def test_signed_policy_round_trips(made: Policy) -> None:
    """Signing then verifying gives back an equal policy."""
    assert verify_policy(sign_policy(made, SECRET), PUBLIC, None) == made


def test_rollback_is_refused() -> None:
    """A policy whose version is not above the current one is ROLLBACK."""
    signed = sign_policy(policy(version=3), SECRET)
    assert refusal(signed, policy(version=3)) is PackageRefusal.ROLLBACK
    assert refusal(signed, policy(version=4)) is PackageRefusal.ROLLBACK
    assert verify_policy(signed, PUBLIC, policy(version=2)).version == 3


def test_wrong_key_and_wrong_kind() -> None:
    """Another key's signature is BAD_SIGNATURE; a manifest is not a policy."""
    assert refusal(sign_policy(policy(), bytes(32))) is PackageRefusal.BAD_SIGNATURE
    manifest = Manifest(name="x", version=(1,), created_s=0, files=())
    assert refusal(sign_manifest(manifest, SECRET)) is PackageRefusal.WRONG_KIND


@given(data=st.binary(max_size=1000))
def test_garbage_raises_only_package_error(data: bytes) -> None:
    """Random bytes are refused with PackageError and nothing else."""
    with pytest.raises(PackageError):
        verify_policy(data, PUBLIC, None)


def body(**changes: Any) -> bytes:
    fields: dict[str, Any] = msgpack.unpackb(encode_policy(policy()), raw=False)
    fields.update(changes)
    return sign_document(KIND, pack_body(fields), SECRET)


@pytest.mark.parametrize(
    "changes",
    [
        {"version": 0},
        {"version": "2"},
        {"created_s": -1},
        {"serve_default": 1},
        {"unknown_computers": None},
        {"mac_deny": ["zz:zz"]},
        {"mac_deny": ["aa:bb:cc:dd:ee:02", "aa:bb:cc:dd:ee:01"]},  # not sorted: not canonical
        {"mac_allow": [1]},
        {"serve_rules": [[True, None, None, None, None]]},  # no criterion
        {"serve_rules": [[True, "hq", "10.0.0.1/8", None, None]]},  # host bits set
        {"serve_rules": [[True, "hq", "banana", None, None]]},
        {"serve_rules": [[True, "hq", None, "PXE-*", None]]},  # patterns are lower case
        {"serve_rules": [[True, "", None, None, None]]},
        {"serve_rules": [[1, "hq", None, None, None]]},
        {"serve_rules": [[True, "hq"]]},
        {"boot_files": {"sparc": "a"}},
        {"boot_files": {"bios": "../a"}},
        {"format": 9},
        {"extra": 1},
    ],
)
def test_bad_fields_are_malformed(changes: dict[str, Any]) -> None:
    """Each invalid field of an authentic policy is refused as MALFORMED."""
    assert refusal(body(**changes)) is PackageRefusal.MALFORMED


def test_constructor_refuses_bad_rules() -> None:
    """A Policy cannot even be built with an invalid rule."""
    with pytest.raises(PackageError, match="no criterion"):
        Policy(version=1, created_s=0, serve_rules=(ServeRule(serve=True),))
    with pytest.raises(PackageError, match="MAC"):
        Policy(version=1, created_s=0, mac_allow=("nope",))


# --------------------------------------------------------------------------- applied to ProxyDHCP


def test_the_policy_is_laid_over_the_served_packages_answer() -> None:
    """MAC lists and the unknown-computer switch replace the base's; per-arch boot files
    override the package's (an arch key covers its TFTP and HTTP boot classes)."""
    base = ProxyPolicy(
        boot_files={ArchClass.BIOS: "undionly.kpxe", ArchClass.EFI_X64: "ipxe.efi"},
        ipxe_script_url="http://10.0.0.1:8080/boot.ipxe",
        denied_macs=frozenset({"aa:aa:aa:aa:aa:aa"}),
    )
    laid = proxy_policy_with(
        policy(
            unknown_computers=False,
            known_macs=("52:54:00:00:00:01",),
            mac_deny=("52:54:00:00:00:02",),
            boot_files={"efi64": "custom/snp.efi"},
        ),
        base,
    )
    assert laid.boot_files == {
        ArchClass.BIOS: "undionly.kpxe",
        ArchClass.EFI_X64: "custom/snp.efi",
        ArchClass.HTTP_X64: "custom/snp.efi",
    }
    assert laid.ipxe_script_url == base.ipxe_script_url
    assert not laid.serve_unknown
    assert laid.known_macs == frozenset({"52:54:00:00:00:01"})
    assert laid.denied_macs == frozenset({"52:54:00:00:00:02"})
    assert laid.allowed_macs == frozenset()


# --------------------------------------------------------------------------- the agent's store


def test_policy_store_installs_newer_refuses_older_and_survives_a_restart(tmp_path: Any) -> None:
    path = tmp_path / "policy.signed"
    applied: list[int] = []
    store = PolicyStore(path, PUBLIC)
    store.set_listener(lambda installed: applied.append(installed.version))
    assert store.current() is None
    assert store.signed() is None
    assert store.install(sign_policy(policy(version=2), SECRET)).version == 2
    with pytest.raises(PackageError) as caught:
        store.install(sign_policy(policy(version=1), SECRET))
    assert caught.value.reason is PackageRefusal.ROLLBACK
    with pytest.raises(PackageError):
        store.install(sign_policy(policy(version=9), bytes(range(1, 33))))  # another key
    assert applied == [2]
    assert [p.name for p in tmp_path.iterdir()] == ["policy.signed"]  # no temporaries left
    again = PolicyStore(path, PUBLIC)
    current = again.current()
    assert current is not None
    assert current.version == 2
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")  # tampered on disk: ignored
    assert PolicyStore(path, PUBLIC).current() is None
