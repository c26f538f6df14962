"""/proc/PID/status and cmdline."""
from __future__ import annotations

from typing import Optional, Tuple


def _unescape_name(s: str) -> str:
    # proc_task_name() escapes "\n" and "\\" in the Name: line
    return s.replace("\\n", "\n").replace("\\\\", "\\")


def parse_status(text: str) -> Tuple[str, Optional[int]]:
    """(comm, real uid)."""
    comm, uid = "", None
    for line in text.splitlines():
        if line.startswith("Name:"):
            comm = _unescape_name(line[5:].strip("\t "))
        elif line.startswith("Uid:"):
            f = line.split()
            if len(f) > 1 and f[1].isascii() and f[1].isdigit() and len(f[1]) <= 10:
                uid = int(f[1])
            break
    return comm, uid


def parse_cmdline(data: bytes) -> str:
    return data.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
