"""Pure validation of TFTP read-request filenames: confine every request to the served root.

`validate_read_path(filename)` returns the normalised path relative to the served root (a
`str` of `/`-separated components) or a `PathRefusal` saying why the name is refused. It is
string logic only. What it cannot see needs the filesystem and is checked later, in
`transport/`, when the file is opened: symbolic links (or bind mounts) inside the root that
point outside it, and names that are not regular files (directories, devices, FIFOs).

Rules, in order:
- empty names, NUL, control and other non-printable characters (C0, DEL, C1, format
  characters such as the right-to-left override, non-ASCII spaces) and names that were not
  valid UTF-8 on the wire (lone surrogates from `surrogateescape`) are refused;
- overlong names are refused: more than `PATH_BYTES_MAX` UTF-8 bytes in all, or a component
  longer than `COMPONENT_BYTES_MAX` (NAME_MAX on Linux);
- non-ASCII characters whose compatibility form (NFKC) contains `.`, `/`, `\\` or `:` are
  refused (fullwidth full stop U+FF0E, solidus U+FF0F, reverse solidus U+FF3C, the
  two-dot leader U+2025, ...): a normalising
  filesystem could turn them into real dots or separators; so are a few that NFKC keeps
  but the Windows "best fit" code-page mappings turn into `/` or `\\` (division, fraction
  and big slashes, set minus, the yen and won signs, which are the backslash of the
  Japanese and Korean code pages); other printable Unicode is allowed;
- `:` is refused everywhere: Windows drive letters (`C:\\x`) and NTFS alternate data streams
  (`file::$DATA`) have no place in a boot file name;
- backslashes become `/`: Windows bootmgr and WDS-style replies use `\\Boot\\x64\\...`;
- one leading separator means "relative to the served root", as with `tftpd-hpa -s` (the
  root is a chroot there): PXE clients send `/pxelinux.0` or `\\Boot\\...` for a root-relative
  name. Two leading separators (`//host/share`, `\\\\host\\share`, a UNC path) are refused;
- a trailing separator (a directory) is refused;
- empty components inside (`a//b`) and `.` components are dropped;
- `..` is refused anywhere, and so is any other component made of dots and spaces only
  (`...`, `....`, `.. `): Windows strips trailing dots and spaces from path components, so
  such a name aliases `.` or `..` there; this also covers `....//`, which a naive "strip
  `../`" filter turns into `../`.
"""

from __future__ import annotations

import unicodedata
from enum import Enum
from typing import Final

__all__ = [
    "COMPONENT_BYTES_MAX",
    "PATH_BYTES_MAX",
    "PathRefusal",
    "validate_read_path",
]

PATH_BYTES_MAX: Final = 1024
"""Longest accepted filename in UTF-8 bytes (a request must fit 512 bytes by RFC 2347 anyway,
but some clients ignore that; a boot file name is far shorter)."""

COMPONENT_BYTES_MAX: Final = 255
"""Longest accepted path component in UTF-8 bytes (NAME_MAX on Linux and most filesystems)."""

_SEPARATOR_LOOKALIKES: Final = "./\\:"
"""Characters a non-ASCII character must not turn into under NFKC normalisation."""

_BEST_FIT_LOOKALIKES: Final = "\u2215\u2044\u29f8\u2216\u29f5\u29f9\u00a5\u20a9"
"""Characters NFKC keeps but Windows best-fit mappings turn into `/` or `\\`."""


class PathRefusal(Enum):
    """Why a requested filename is refused (the value is a short human-readable reason)."""

    #: the filename is empty (or only separators)
    EMPTY = "empty filename"
    #: the filename contains a NUL character
    NUL = "NUL in filename"
    #: the filename contains a control or other non-printable character
    NON_PRINTABLE = "control or non-printable character in filename"
    #: the filename bytes were not valid UTF-8
    NOT_UTF8 = "filename is not valid UTF-8"
    #: the filename or one component is too long
    TOO_LONG = "filename too long"
    #: a non-ASCII character that normalises to a dot or a separator
    CONFUSABLE = "character that normalises to a dot or separator"
    #: a drive letter or alternate data stream (`:`)
    DRIVE_OR_STREAM = "drive letter or stream name (':')"
    #: two leading separators (a UNC or otherwise absolute path)
    ABSOLUTE = "absolute path"
    #: the name ends with a separator (a directory)
    DIRECTORY = "names a directory"
    #: a `..` (or dots-and-spaces-only) component: traversal out of the served root
    TRAVERSAL = "'..' or dots-only component"


def validate_read_path(filename: str) -> str | PathRefusal:
    """The root-relative normalised path for `filename`, or why it is refused."""
    refusal = _character_refusal(filename)
    if refusal is not None:
        return refusal
    path = filename.replace("\\", "/")
    if path.startswith("//"):
        return PathRefusal.ABSOLUTE
    path = path.removeprefix("/")
    if path.endswith("/"):
        return PathRefusal.DIRECTORY if path.strip("/") else PathRefusal.EMPTY
    components: list[str] = []
    for component in path.split("/"):
        if component in ("", "."):
            continue
        if component.rstrip(". ") == "":
            return PathRefusal.TRAVERSAL
        if len(component.encode("utf-8")) > COMPONENT_BYTES_MAX:
            return PathRefusal.TOO_LONG
        components.append(component)
    if not components:
        return PathRefusal.EMPTY
    return "/".join(components)


def _character_refusal(filename: str) -> PathRefusal | None:
    """Refusals that depend on single characters and the total length only."""
    if not filename:
        return PathRefusal.EMPTY
    if "\0" in filename:
        return PathRefusal.NUL
    try:
        encoded = filename.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: undecodable bytes on the wire
        return PathRefusal.NOT_UTF8
    if len(encoded) > PATH_BYTES_MAX:
        return PathRefusal.TOO_LONG
    if not filename.isprintable():  # Cc, Cf, Co, Cn, Zl, Zp and every Zs but " "
        return PathRefusal.NON_PRINTABLE
    if ":" in filename:
        return PathRefusal.DRIVE_OR_STREAM
    if filename.isascii():
        return None
    for character in filename:
        if character.isascii():
            continue
        if character in _BEST_FIT_LOOKALIKES:
            return PathRefusal.CONFUSABLE
        normalised = unicodedata.normalize("NFKC", character)
        if any(lookalike in normalised for lookalike in _SEPARATOR_LOOKALIKES):
            return PathRefusal.CONFUSABLE
    return None
