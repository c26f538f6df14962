"""Numbers from kernel text, which in a capture from elsewhere may be anything."""
from __future__ import annotations

U64 = 1 << 64
#: include/linux/threads.h (64-bit): no process has a pid above it, and none has pid 0
PID_MAX_LIMIT = 4194304
# the longest u64: 20 decimal or 16 hex digits; a sign, "0x" or "_" is never kernel output
_MAXLEN = {10: 20, 16: 16, 8: 22}


def u64(text, base: int = 10) -> int:
    """A kernel unsigned 64-bit number, or ValueError. Checks the length before int(), so a
    10,000-digit "number" costs nothing and never meets Python's int-string limit."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    if not text or len(text) > _MAXLEN.get(base, 22) or not text.isascii() or not text.isalnum():
        raise ValueError(f"not an unsigned number: {text[:24]!r}")
    n = int(text, base)
    if n >= U64:
        raise ValueError(f"out of range: {text!r}")
    return n
