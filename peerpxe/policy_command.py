"""`peerpxe policy build|verify`: sign a policy written in TOML, or check a signed one.

    peerpxe policy build POLICY.toml --key KEY --out FILE
    peerpxe policy verify FILE --pub PUB
    peerpxe policy publish FILE --to HOST:PORT --cluster-key FILE --pub PUB [--timeout-s S]

`build` validates the TOML (errors name file, line and key; `peerpxe.policy_file`) and
writes the signed policy; `created_s` is the current time, or `SOURCE_DATE_EPOCH` when set.
`verify` checks the signature and prints what the policy says. See docs/packages.md.

Exit status: 0 on success; 1 when verification fails; 2 for a usage or input error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    publish = actions.add_parser("publish", help="hand a signed policy to an agent")
    publish.add_argument("policy", type=Path, help="the signed policy file")
    publish.add_argument("--to", required=True, help="an agent's address, HOST:PORT")
    publish.add_argument("--cluster-key", required=True, type=Path, help="the cluster key file")
    publish.add_argument("--pub", required=True, type=Path, help="publisher public key file")
    publish.add_argument("--bind", help="address to serve the policy from (default: routed)")
    publish.add_argument(
        "--timeout-s", type=float, default=60.0, help="give up after this long (default: 60)"
    )


def run(args: argparse.Namespace) -> int:
    """Dispatch to build, verify or publish."""
    actions = {"build": build, "verify": verify, "publish": publish}
    return actions[args.policy_action](args)


def publish(args: argparse.Namespace) -> int:
    """`policy publish`: check the policy, offer it from a seed, wait until the agent has it.

    The agent fetches it from the seed (`PolicyRequest`), verifies it (signature, version
    newer than its own) and applies it; its peers fetch it from it in their next gossip
    rounds (`docs/packages.md`). Exit 0 once the agent holds this version or a newer one.
    """
    import tempfile

    from actors.errors import PackageError
    from actors.policy import verify_policy
    from peerpxe.config import parse_address
    from peerpxe.publish_command import PublishInputError, SeedSession, read_keys
    from transport.content_store import ContentStore
    from transport.shared_store import SharedStore

    try:
        target = parse_address(args.to)
        cluster_key, public = read_keys(args.cluster_key, args.pub)
        signed = args.policy.read_bytes()
    except (ValueError, PublishInputError, OSError) as error:
        print(f"peerpxe policy publish: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        policy = verify_policy(signed, public, None)
    except PackageError as error:
        print(f"peerpxe policy publish: {args.policy}: REFUSED: {error}", file=sys.stderr)
        return EXIT_REFUSED
    with tempfile.TemporaryDirectory(prefix="peerpxe-policy-") as workspace:
        store = SharedStore(ContentStore(Path(workspace), 1, public))
        session = SeedSession(target, cluster_key, args.bind, store, policy=signed)
        try:
            served = session.run(
                lambda sealer: _agent_version(target, sealer, public) >= policy.version,
                offered=lambda _server: print(
                    f"offered policy version {policy.version} to {target.host}:{target.port}"
                ),
                waiting=lambda _counters: "the agent has not installed it yet",
                timeout_s=args.timeout_s,
            )
        except OSError as error:
            print(f"peerpxe policy publish: {error}", file=sys.stderr)
            return EXIT_REFUSED
    if served is None:
        print(
            f"peerpxe policy publish: {target.host}:{target.port} did not install version"
            f" {policy.version} within {args.timeout_s} s (is its policy newer?)",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    print(f"published policy version {policy.version}: {target.host}:{target.port} applies it")
    return EXIT_OK


def _agent_version(target: Any, sealer: Any, public: bytes) -> int:
    """The version of the verified policy the agent holds (0: none or unreachable)."""
    from actors.errors import DecodeError, PackageError
    from actors.messages import PolicyRequest
    from actors.policy import verify_policy
    from transport.chunk_fetcher import request_once
    from transport.chunk_service import MANIFEST_REPLY_BYTES_MAX, STATUS_OK

    try:
        status, signed = request_once(
            target, sealer, PolicyRequest(), MANIFEST_REPLY_BYTES_MAX, 5.0
        )
        if status != STATUS_OK:
            return 0
        return verify_policy(signed, public, None).version
    except (OSError, DecodeError, PackageError):
        return 0


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
