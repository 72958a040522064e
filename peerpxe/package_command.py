"""`peerpxe package build|verify`: sign a boot package directory, or check one.

    peerpxe package build DIR --key KEY --name N --version V
        [--bios F] [--efi32 F] [--efi64 F] [--arm64 F] [--ipxe-script F]
        [--chunk-bytes B] [--out FILE]
    peerpxe package verify MANIFEST --pub PUB [--dir DIR]

`build` hashes every file under DIR (chunk by chunk) and writes the signed manifest to
`--out`, by default `N-V.manifest` next to DIR. `created_s` is the current time, or
`SOURCE_DATE_EPOCH` when set (reproducible builds). `verify` checks the signature and, with
`--dir`, every file and every chunk. See docs/packages.md.

Exit status: 0 on success; 1 when verification fails (the reason is printed); 2 for a usage
or input error (unreadable key, a file that cannot be packaged, a bad option).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "build a signed boot package manifest, or verify one"

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
BOOT_ARCHES = ("bios", "efi32", "efi64", "arm64")
"""`actors.package.BOOT_ARCHES`, repeated so that `peerpxe --help` imports no crypto."""


class _UsageError(Exception):
    """A bad option or input; the message is for the user."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `peerpxe package build` and `peerpxe package verify`."""
    actions = parser.add_subparsers(dest="package_action", required=True, metavar="ACTION")
    build = actions.add_parser("build", help="hash a directory and sign its manifest")
    build.add_argument("directory", type=Path, help="the package directory")
    build.add_argument("--key", required=True, type=Path, help="publisher secret key file")
    build.add_argument("--name", required=True, help="package name, e.g. winpe")
    build.add_argument("--version", required=True, help="package version: 7 or 1.2.3")
    for arch in BOOT_ARCHES:
        build.add_argument(f"--{arch}", metavar="FILE", help=f"boot file for {arch} clients")
    build.add_argument("--ipxe-script", metavar="FILE", help="iPXE script in the package")
    build.add_argument("--chunk-bytes", type=int, default=None, help="chunk size (1 MiB)")
    build.add_argument("--out", type=Path, help="manifest file (default: DIR/../N-V.manifest)")
    verify = actions.add_parser("verify", help="check a signed manifest (and a directory)")
    verify.add_argument("manifest", type=Path, help="the signed manifest file")
    verify.add_argument("--pub", required=True, type=Path, help="publisher public key file")
    verify.add_argument("--dir", type=Path, help="also check every file and chunk in DIR")


def run(args: argparse.Namespace) -> int:
    """Dispatch to build or verify."""
    action = build if args.package_action == "build" else verify
    try:
        return action(args)
    except _UsageError as error:
        print(f"peerpxe package {args.package_action}: {error}", file=sys.stderr)
        return EXIT_USAGE


def build(args: argparse.Namespace) -> int:
    """`package build`: scan, hash, sign, write."""
    from actors.errors import PackageError
    from actors.package import CHUNK_BYTES_DEFAULT, format_version, sign_manifest
    from peerpxe.package_tree import PackageDirectoryError, build_manifest, scan_directory
    from transport.durable import write_atomic

    secret = _secret_key(args.key)
    version = _version(args.version)
    try:
        files = scan_directory(args.directory)
        manifest = build_manifest(
            files,
            name=args.name,
            version=version,
            created_s=_created_s(),
            boot_files=_boot_files(args, [item.path for item in files]),
            ipxe_script=_in_package(args.ipxe_script, "--ipxe-script", [f.path for f in files]),
            chunk_bytes=args.chunk_bytes or CHUNK_BYTES_DEFAULT,
        )
    except (PackageDirectoryError, PackageError) as error:
        raise _UsageError(str(error)) from None
    out: Path = args.out or args.directory.resolve().parent / (
        f"{manifest.name}-{format_version(manifest.version)}.manifest"
    )
    try:
        write_atomic(out, sign_manifest(manifest, secret))
    except OSError as error:
        raise _UsageError(f"cannot write {out}: {error.strerror or error}") from None
    print(
        f"built {manifest.package_id}: {len(manifest.files)} files, {manifest.total_bytes} bytes"
        f" in {manifest.chunk_count} chunks of {manifest.chunk_bytes} bytes -> {out}"
    )
    return EXIT_OK


def verify(args: argparse.Namespace) -> int:
    """`package verify`: signature, then (with --dir) every file and chunk."""
    from actors.errors import PackageError
    from actors.package import verify_manifest
    from peerpxe.keys import KeyFileError, load_public_key
    from peerpxe.package_tree import check_tree, unlisted_files

    try:
        public = load_public_key(args.pub)
        signed = args.manifest.read_bytes()
    except KeyFileError as error:
        raise _UsageError(str(error)) from None
    except OSError as error:
        raise _UsageError(f"cannot read {args.manifest}: {error.strerror or error}") from None
    try:
        manifest = verify_manifest(signed, public, None)
    except PackageError as error:
        print(f"{args.manifest}: REFUSED ({error.reason.value}): {error.detail}")
        return EXIT_REFUSED
    print(
        f"{args.manifest}: signature ok: {manifest.package_id}, {len(manifest.files)} files,"
        f" {manifest.total_bytes} bytes, boot files {manifest.boot_files or 'none'}"
    )
    if args.dir is None:
        return EXIT_OK
    if not args.dir.is_dir():
        raise _UsageError(f"{args.dir} is not a directory")
    problems = check_tree(manifest, args.dir)
    for problem in problems:
        print(f"  FAILED {problem}")
    extra = unlisted_files(manifest, args.dir)
    if extra:
        print(f"  note: {len(extra)} file(s) in {args.dir} are not in the manifest: {extra[:5]}")
    if problems:
        print(f"{args.dir}: REFUSED: {len(problems)} of {len(manifest.files)} files differ")
        return EXIT_REFUSED
    print(f"{args.dir}: all {len(manifest.files)} files and {manifest.chunk_count} chunks match")
    return EXIT_OK


# --------------------------------------------------------------------------- helpers


def _secret_key(path: Path) -> bytes:
    from peerpxe.keys import KeyFileError, load_secret_key

    try:
        key, warnings = load_secret_key(path)
    except KeyFileError as error:
        raise _UsageError(str(error)) from None
    for warning in warnings:
        print(f"peerpxe package build: warning: {warning}", file=sys.stderr)
    return key


def _version(text: str) -> tuple[int, ...]:
    from actors.package import parse_version

    try:
        return parse_version(text)
    except ValueError as error:
        raise _UsageError(f"--version: {error}") from None


def _created_s() -> int:
    from peerpxe.package_tree import publication_time_s

    try:
        return publication_time_s()
    except ValueError as error:
        raise _UsageError(str(error)) from None


def _boot_files(args: argparse.Namespace, paths: list[str]) -> dict[str, str]:
    chosen = {arch: getattr(args, arch) for arch in BOOT_ARCHES if getattr(args, arch)}
    return {arch: str(_in_package(file, f"--{arch}", paths)) for arch, file in chosen.items()}


def _in_package(file: str | None, option: str, paths: list[str]) -> str | None:
    """`file` as a package path (a leading `/` is dropped); it must be one of `paths`."""
    if file is None:
        return None
    path = file.removeprefix("/")
    if path not in paths:
        raise _UsageError(f"{option} {file}: not a file of the package directory")
    return path
