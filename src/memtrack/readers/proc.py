"""/proc/PID/status and cmdline."""
from __future__ import annotations

import re
from typing import Optional, Tuple


_ESCAPE = re.compile(r"\\([n\\])")


def _unescape_name(s: str) -> str:
    # proc_task_name() escapes "\n" and "\\" in the Name: line; one pass, so that an
    # escaped backslash followed by "n" stays a backslash and an "n"
    if "\\" not in s:
        return s
    return _ESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else "\\", s)


def parse_status(text: str) -> Tuple[str, Optional[int]]:
    """(comm, real uid)."""
    comm, uid = "", None
    # split on "\n" only: a comm may hold "\r" or "\x1c", which splitlines() would cut at
    for line in text.split("\n"):
        if line.startswith("Name:"):
            comm = _unescape_name(line[6:] if line[5:6] == "\t" else line[5:].strip())
        elif line.startswith("Uid:"):
            f = line.split()
            if len(f) > 1 and f[1].isascii() and f[1].isdigit() and len(f[1]) <= 10:
                uid = int(f[1])
            break
    return comm, uid


def parse_cmdline(data: bytes) -> str:
    return data.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "surrogateescape")
