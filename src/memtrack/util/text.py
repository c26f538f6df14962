"""Text for people: sizes in KiB/MiB, and names from other processes made safe to print."""
from __future__ import annotations

import re
import unicodedata
from typing import Optional

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def human(n: Optional[int], raw: bool = False) -> str:
    """1024-based size: 0, 512 B, 4.0 KiB, 1.5 MiB ... (raw: the byte count)."""
    if n is None:
        return "?"
    if raw:
        return str(n)
    if abs(n) < 1024:
        return f"{n} B" if n else "0"
    v = float(n)
    for unit in _UNITS:
        v /= 1024.0
        if abs(v) < 1024 or unit == _UNITS[-1]:
            return f"{v:.1f} {unit}" if abs(v) < 100 else f"{v:.0f} {unit}"
    return str(n)


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def printable(s: str) -> str:
    """Names come from other processes (a memfd name, a comm, a cmdline): escape control
    characters and undecodable bytes so no name can move the cursor or recolor a terminal."""
    if s.isprintable() or not _CONTROL.search(s):
        return s
    return _CONTROL.sub(lambda m: "\\x%02x" % (ord(m.group()) & 0xFF), s)


def oneline(text: str, limit: int) -> str:
    """Whitespace (newlines in a `python -c` cmdline...) collapsed, control characters and
    undecodable bytes escaped (names come from other processes), cut at limit."""
    s = printable(" ".join(text.split()))
    return s if len(s) <= limit else s[:limit - 1] + "…"


def _cells(c: str) -> int:
    """Terminal cells one character takes: 2 for East Asian wide ones, 0 for combining marks."""
    if c < "\u0300":
        return 1
    if unicodedata.combining(c):
        return 0
    return 2 if unicodedata.east_asian_width(c) in "WF" else 1


def clip(line: str, width: int) -> str:
    """line cut to at most width terminal cells, ending in … where cut (as ps and top cut a
    row at the terminal's edge)."""
    if len(line) <= width and line.isascii():
        return line
    used = 0
    for i, c in enumerate(line):
        used += _cells(c)
        if used > width:
            # room for the … (one cell): drop characters until it fits
            out, used = line[:i], used - _cells(c)
            while out and used + 1 > width:
                used -= _cells(out[-1])
                out = out[:-1]
            return out + "…" if width > 0 else ""
    return line
