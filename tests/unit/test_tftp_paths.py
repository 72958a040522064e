"""Filename confinement for TFTP reads: what is served, normalised how, and what is refused."""

from __future__ import annotations

import posixpath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.boot.tftp_paths import (
    COMPONENT_BYTES_MAX,
    PATH_BYTES_MAX,
    PathRefusal,
    validate_read_path,
)


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("pxelinux.0", "pxelinux.0"),
        ("undionly.kpxe", "undionly.kpxe"),
        ("pxelinux.cfg/01-52-54-00-12-34-56", "pxelinux.cfg/01-52-54-00-12-34-56"),
        # one leading separator is root-relative (tftpd-hpa -s)
        ("/pxelinux.0", "pxelinux.0"),
        ("/boot/grub/grub.cfg", "boot/grub/grub.cfg"),
        # Windows bootmgr and WDS-style names
        ("\\Boot\\x64\\wdsmgfw.efi", "Boot/x64/wdsmgfw.efi"),
        ("Boot\\x86\\wdsnbp.com", "Boot/x86/wdsnbp.com"),
        ("\\Boot\\BCD", "Boot/BCD"),
        ("/Boot\\x64/mixed.efi", "Boot/x64/mixed.efi"),
        # harmless normalisations
        ("a//b", "a/b"),
        ("./a/./b", "a/b"),
        # dots inside names are fine
        ("..hidden", "..hidden"),
        ("a..b", "a..b"),
        (".bashrc", ".bashrc"),
        ("file.", "file."),
        ("v1.2.3/initrd.gz", "v1.2.3/initrd.gz"),
        ("with space.efi", "with space.efi"),
        # printable Unicode that does not normalise to a separator or a dot
        ("café/menü.ipxe", "café/menü.ipxe"),
        ("启动.efi", "启动.efi"),
        ("a" * COMPONENT_BYTES_MAX, "a" * COMPONENT_BYTES_MAX),
    ],
)
def test_accepted_names(filename: str, expected: str) -> None:
    """Ordinary boot file names are accepted and normalised to a root-relative POSIX path."""
    assert validate_read_path(filename) == expected


@pytest.mark.parametrize(
    ("filename", "refusal"),
    [
        ("", PathRefusal.EMPTY),
        ("/", PathRefusal.EMPTY),
        ("\\", PathRefusal.EMPTY),
        (".", PathRefusal.EMPTY),
        ("/./", PathRefusal.DIRECTORY),
        # traversal
        ("..", PathRefusal.TRAVERSAL),
        ("../etc/passwd", PathRefusal.TRAVERSAL),
        ("/../etc/passwd", PathRefusal.TRAVERSAL),
        ("a/../../b", PathRefusal.TRAVERSAL),
        ("a/..", PathRefusal.TRAVERSAL),
        ("a/../b", PathRefusal.TRAVERSAL),
        ("\\..\\x", PathRefusal.TRAVERSAL),
        ("..\\..\\windows\\win.ini", PathRefusal.TRAVERSAL),
        ("Boot\\..\\..\\secret", PathRefusal.TRAVERSAL),
        ("....//etc/passwd", PathRefusal.TRAVERSAL),
        ("...", PathRefusal.TRAVERSAL),
        ("a/.../b", PathRefusal.TRAVERSAL),
        (".. /x", PathRefusal.TRAVERSAL),
        ("a/. ./b", PathRefusal.TRAVERSAL),
        ("a/ /b", PathRefusal.TRAVERSAL),
        # absolute: two leading separators (UNC), drive letters
        ("//etc/passwd", PathRefusal.ABSOLUTE),
        ("\\\\server\\share\\x", PathRefusal.ABSOLUTE),
        ("/\\x", PathRefusal.ABSOLUTE),
        ("C:\\Windows\\win.ini", PathRefusal.DRIVE_OR_STREAM),
        ("c:x", PathRefusal.DRIVE_OR_STREAM),
        ("boot.wim::$DATA", PathRefusal.DRIVE_OR_STREAM),
        # directories
        ("pxelinux.cfg/", PathRefusal.DIRECTORY),
        ("Boot\\", PathRefusal.DIRECTORY),
        # NUL and control characters
        ("a\0b", PathRefusal.NUL),
        ("\0", PathRefusal.NUL),
        ("a\nb", PathRefusal.NON_PRINTABLE),
        ("a\tb", PathRefusal.NON_PRINTABLE),
        ("a\rb", PathRefusal.NON_PRINTABLE),
        ("\x1b[2Jx", PathRefusal.NON_PRINTABLE),
        ("del\x7f", PathRefusal.NON_PRINTABLE),
        ("c1\x85x", PathRefusal.NON_PRINTABLE),
        ("rtl\u202egpj.exe", PathRefusal.NON_PRINTABLE),
        ("zero\u200bwidth", PathRefusal.NON_PRINTABLE),
        ("nb\u00a0sp", PathRefusal.NON_PRINTABLE),
        # not UTF-8 on the wire (surrogateescape'd bytes)
        ("\udcff.bin", PathRefusal.NOT_UTF8),
        ("\udcc0\udcae\udcc0\udcae/etc/passwd", PathRefusal.NOT_UTF8),  # overlong ".."
        # Unicode look-alikes of dots and separators
        ("\uff0e\uff0e/etc/passwd", PathRefusal.CONFUSABLE),  # fullwidth full stops
        ("a\uff0fb", PathRefusal.CONFUSABLE),  # fullwidth solidus
        ("a\uff3cb", PathRefusal.CONFUSABLE),  # fullwidth reverse solidus
        ("\u2025/etc/passwd", PathRefusal.CONFUSABLE),  # two dot leader
        ("\u2026", PathRefusal.CONFUSABLE),  # horizontal ellipsis
        ("a\ufe52b", PathRefusal.CONFUSABLE),  # small full stop
        ("a\u2215b", PathRefusal.CONFUSABLE),  # division slash (Windows best fit: "/")
        ("\u00a5Boot\u00a5x", PathRefusal.CONFUSABLE),  # yen sign: CP932 backslash
        ("a\uff1ab", PathRefusal.CONFUSABLE),  # fullwidth colon
        # overlong
        ("a" * (COMPONENT_BYTES_MAX + 1), PathRefusal.TOO_LONG),
        ("d/" * (PATH_BYTES_MAX // 2) + "x", PathRefusal.TOO_LONG),
        ("é" * (COMPONENT_BYTES_MAX // 2 + 1), PathRefusal.TOO_LONG),
    ],
)
def test_refused_names(filename: str, refusal: PathRefusal) -> None:
    """Traversal, absolute, control, look-alike and overlong names are refused with a reason."""
    assert validate_read_path(filename) == refusal


@given(st.text(max_size=60))
def test_accepted_paths_stay_inside_the_root(filename: str) -> None:
    """Whatever the input, an accepted path is relative, normalised and never climbs out."""
    result = validate_read_path(filename)
    if isinstance(result, PathRefusal):
        return
    assert result
    assert not result.startswith("/")
    assert "\\" not in result
    assert "\0" not in result
    assert posixpath.normpath(result) == result
    assert ".." not in result.split("/")
    joined = posixpath.normpath(posixpath.join("/srv/root", result))
    assert joined.startswith("/srv/root/")


@given(st.lists(st.sampled_from(["a", "..", ".", "", "...", "b.c", "/", "\\", "\uff0e"])))
def test_traversal_soups_never_escape(parts: list[str]) -> None:
    """Any mix of dot, separator and name components is refused or stays inside the root."""
    filename = "/".join(parts)
    result = validate_read_path(filename)
    if isinstance(result, PathRefusal):
        return
    assert ".." not in result.split("/")
    assert posixpath.normpath(posixpath.join("/srv/root", result)).startswith("/srv/root/")
