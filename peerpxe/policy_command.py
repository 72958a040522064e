"""`peerpxe policy build|verify`: sign a policy written in TOML, or check a signed one.

    peerpxe policy build POLICY.toml --key KEY --out FILE
    peerpxe policy verify FILE --pub PUB

`build` validates the TOML (errors name file, line and key; `peerpxe.policy_file`) and
writes the signed policy; `created_s` is the current time, or `SOURCE_DATE_EPOCH` when set.
`verify` checks the signature and prints what the policy says. See docs/packages.md.

Exit status: 0 on success; 1 when verification fails; 2 for a usage or input error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from actors.policy import ServeRule

HELP = "build a signed policy from TOML, or verify one"

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `peerpxe policy build` and `peerpxe policy verify`."""
    actions = parser.add_subparsers(dest="policy_action", required=True, metavar="ACTION")
    build = actions.add_parser("build", help="validate a TOML policy and sign it")
    build.add_argument("source", type=Path, help="the policy in TOML (see docs/packages.md)")
    build.add_argument("--key", required=True, type=Path, help="publisher secret key file")
    build.add_argument("--out", required=True, type=Path, help="signed policy file to write")
    verify = actions.add_parser("verify", help="check a signed policy and print it")
    verify.add_argument("policy", type=Path, help="the signed policy file")
    verify.add_argument("--pub", required=True, type=Path, help="publisher public key file")


def run(args: argparse.Namespace) -> int:
    """Dispatch to build or verify."""
    return build(args) if args.policy_action == "build" else verify(args)


def build(args: argparse.Namespace) -> int:
    """`policy build`: load and check the TOML, sign, write."""
    from actors.policy import sign_policy
    from peerpxe.config import ConfigError
    from peerpxe.keys import KeyFileError, load_secret_key
    from peerpxe.package_tree import publication_time_s
    from peerpxe.policy_file import load_policy
    from transport.durable import write_atomic

    try:
        key, warnings = load_secret_key(args.key)
        policy = load_policy(args.source, publication_time_s())
    except (KeyFileError, ConfigError, ValueError) as error:
        print(f"peerpxe policy build: {error}", file=sys.stderr)
        return EXIT_USAGE
    for warning in warnings:
        print(f"peerpxe policy build: warning: {warning}", file=sys.stderr)
    try:
        write_atomic(args.out, sign_policy(policy, key))
    except OSError as error:
        print(f"peerpxe policy build: cannot write {args.out}: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"built policy version {policy.version}: {len(policy.serve_rules)} serve rules,"
        f" {len(policy.mac_allow)} allowed, {len(policy.mac_deny)} denied MACs -> {args.out}"
    )
    return EXIT_OK


def verify(args: argparse.Namespace) -> int:
    """`policy verify`: check the signature and print the policy."""
    from actors.errors import PackageError
    from actors.policy import verify_policy
    from peerpxe.keys import KeyFileError, load_public_key

    try:
        public = load_public_key(args.pub)
        signed = args.policy.read_bytes()
    except (KeyFileError, OSError) as error:
        print(f"peerpxe policy verify: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        policy = verify_policy(signed, public, None)
    except PackageError as error:
        print(f"{args.policy}: REFUSED ({error.reason.value}): {error.detail}")
        return EXIT_REFUSED
    print(f"{args.policy}: signature ok: policy version {policy.version}")
    for number, rule in enumerate(policy.serve_rules, start=1):
        print(
            f"  rule {number}: {'serve' if rule.serve else 'do not serve'} when {_criteria(rule)}"
        )
    print(f"  otherwise: {'serve' if policy.serve_default else 'do not serve'}")
    print(
        f"  unknown computers {'answered' if policy.unknown_computers else 'ignored'};"
        f" known {len(policy.known_macs)}, allowed {len(policy.mac_allow)},"
        f" denied {len(policy.mac_deny)} MACs; boot files {policy.boot_files or 'from package'}"
    )
    return EXIT_OK


def _criteria(rule: ServeRule) -> str:
    names = ("site", "subnet", "hostname", "tag")
    given = [f"{name} {getattr(rule, name)}" for name in names if getattr(rule, name) is not None]
    return " and ".join(given)
