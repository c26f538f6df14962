"""/proc/PID/maps: shared mappings of shared buffers (perms with 's')."""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterator, Optional

from .fd import classify
from .mounts import kind_of
from .num import U64, u64

# One line of maps: start-end perms offset dev inode path
_LINE = re.compile(rb"([0-9a-f]+)-([0-9a-f]+) [r-][w-][x-]s ([0-9a-f]+) ([0-9a-f]+:[0-9a-f]+) (\d+) +(/[^\n]*)")


def shared_lines(data: bytes):
    """Match objects for the shared mappings (perms ending in 's') of a maps text.

    Shared lines are few; finding them with bytes.find (C speed over the whole text) and
    parsing only those is several times faster than running a regex over every line. The
    perms field ends in "-s " or "xs "; a hit inside a path is rejected by the line regex."""
    out = []
    for needle in (b"-s ", b"xs "):
        pos = data.find(needle)
        while pos >= 0:
            start = data.rfind(b"\n", 0, pos) + 1
            m = _LINE.match(data, start)
            if m is not None and m.start(3) == pos + 3:
                out.append(m)
            pos = data.find(needle, pos + 3)
    if len(out) > 1:
        out.sort(key=lambda m: m.start())
    return out


# A private mapping (perms ending in 'p') of a buffer file; found by the path, not the perms:
# nearly every line of a maps text is private
_PLINE = re.compile(rb"([0-9a-f]+)-([0-9a-f]+) [r-][w-][x-]p ([0-9a-f]+) ([0-9a-f]+:[0-9a-f]+) (\d+) +(/[^\n]*)")
# one regex pass finds them (a quarter of the cost of four finds, mostly their call overhead)
_PRIVATE_PATH = re.compile(rb" /(?:memfd:|dev/shm/|dmabuf:|dev/ashmem)")
PRIVATE_KINDS = ("memfd", "shm", "dmabuf", "ashmem")


def parse_private(data: bytes, bad: Optional[list] = None) -> Iterator[tuple]:
    """(start, end, offset, dev, inode, kind, name) for each MAP_PRIVATE mapping of a buffer
    file (memfd, /dev/shm, dma-buf, ashmem: a program run from a memfd maps it so). Private
    anonymous memory ("/dev/zero", "/anon_hugepage (deleted)" private) is no buffer."""
    if _PRIVATE_PATH.search(data) is None:       # nearly every process
        return
    seen = set()
    for hit in _PRIVATE_PATH.finditer(data):
        pos = hit.start()
        start = data.rfind(b"\n", 0, pos) + 1
        if start not in seen:
            seen.add(start)
            m = _PLINE.match(data, start)
            if m is not None and m.start(6) == pos + 1:
                row = _row(m, bad)
                if row is not None and row[5] in PRIVATE_KINDS:
                    yield row


def _row(m, bad, binds=None):
    """(start, end, offset, dev, inode, kind, name) of a maps line that names a buffer, else
    None. Numbers no kernel prints (over 64 bits, end before start) go to `bad` when given.
    binds: a function giving the process's other buffer mounts (readers.mounts), called only
    for a path that does not say what it is."""
    start, end, off, dev, ino, path = m.groups()
    path = path.decode("utf-8", "surrogateescape")
    kp = classify(path)
    if kp is None:
        b = binds() if binds is not None else None
        kp = kind_of(path, b) if b else None
        if kp is None:
            return None
    try:
        # the regex allowed only hex digits and ASCII digits: lengths are all that is left to
        # check (the hot path of a scan, so no general u64() here)
        if len(start) > 16 or len(end) > 16 or len(off) > 16 or len(ino) > 20:
            raise ValueError("over 64 bits")
        s, e, i = int(start, 16), int(end, 16), int(ino)
        if e < s or i >= U64:
            raise ValueError("end before start, or inode over 64 bits")
        return (s, e, int(off, 16), norm_dev(dev.decode()), i, kp[0], kp[1])
    except ValueError:
        if bad is not None:
            bad.append(m.group(0)[:120])
        return None


def norm_dev(dev: str) -> str:
    major, _, minor = dev.partition(":")
    return "%02x:%02x" % (u64(major, 16), u64(minor, 16))


def parse_shared(data: bytes, bad: Optional[list] = None, binds=None) -> Iterator[tuple]:
    """(start, end, offset, dev, inode, kind, name) for each shared-buffer mapping.
    Lines whose numbers no kernel prints (over 64 bits, end before start) are left out,
    and appended to `bad` when given, so the caller can say how many; binds: as _row's."""
    for m in shared_lines(data):
        row = _row(m, bad, binds)
        if row is not None:
            yield row


# A line of maps is at most a path (PATH_MAX) and its fields; a smaps block is some 25 lines.
# Longer ones are no kernel's output: their text is dropped unread, piece by piece.
MAX_LINE = 8192
MAX_BLOCK = 64 << 10
_BLOCK = re.compile(rb"\n(?=[0-9a-f]+-[0-9a-f]+ )")    # where a smaps block starts
_RSS_LINE = re.compile(rb"^Rss:[^\n]*", re.M)


class SharedFilter:
    """Keeps, of a maps (or smaps) text fed in chunks, only what the scan reads: the lines
    (blocks: header and Rss line) of shared-buffer mappings, each address range once; and,
    apart (extra), the other shared file mappings and the private mappings of buffer files.

    A kernel never prints two VMAs at one start address, so a line whose start was seen
    before is a duplicate: it is dropped and counted (`dups`), the first one wins. The cost
    is a chunk's worth of text at a time and the kept lines, whatever the input's size: a
    line repeated a million times costs one line. Identical lines (blocks) of a chunk are
    counted in C (Counter), so a repeated line costs no Python work per repetition."""

    def __init__(self, smaps: bool = False):
        self.smaps = smaps
        self.out = []
        self.kept = 0            # lines (blocks) kept: distinct shared-buffer mappings
        self.nbytes = 0          # their bytes
        self.dups = 0            # lines (blocks) dropped as duplicates of a kept one
        # shared mappings of other files (a path only the process's mounts explain) and
        # private mappings of buffer files, each start once: kept, not counted above
        self.extra = 0
        self._seen = set()
        self._xseen = set()
        self._carry = b""
        self._skip = False       # inside an overlong line: drop up to the next newline

    def feed(self, chunk: bytes) -> None:
        data = self._carry + chunk if self._carry else chunk
        if self._skip:
            nl = data.find(b"\n")
            if nl < 0:
                self._carry = b""
                return
            data, self._skip = data[nl + 1:], False
        if self.smaps:
            parts = _BLOCK.split(data)
            tail = parts.pop()
            if len(tail) > MAX_BLOCK:          # no kernel block is this long: take it as it
                parts.append(tail)              # is; the rest of it, headerless, is ignored
                tail, self._skip = b"", not tail.endswith(b"\n")
        else:
            nl = data.rfind(b"\n") + 1
            first = data[:data.find(b"\n") + 1]
            n = data.count(first, 0, nl) if nl else 0
            if n > 1 and n * len(first) == nl:
                # one line repeated to the end (counted in C, and never split into objects)
                parts, times = [first[:-1]], n
            else:
                parts, times = data[:nl].split(b"\n"), 1
                parts.pop()
            tail = data[nl:]
            if len(tail) > MAX_LINE:
                tail, self._skip = b"", True
            self._carry = tail
            self._take(parts, times, _PRIVATE_PATH.search(data) is not None)
            return
        self._carry = tail
        self._take(parts, 1, _PRIVATE_PATH.search(data) is not None)

    def finish(self) -> bytes:
        if self._carry and not self._skip:
            self._take([self._carry])
        self._carry = b""
        out, self.out = b"".join(self.out), []
        return out

    def _take(self, parts, times: int = 1, private: bool = True) -> None:
        """private: whether the text may hold a private buffer mapping (one search of a
        chunk spares one per line)."""
        keep = self.out.append
        for part, n in (Counter(parts).items() if times == 1 else ((parts[0], times),)):
            nl = part.find(b"\n")
            line = part if nl < 0 else part[:nl]
            # every shared file mapping (a path only the process's mounts explain, a bind
            # of /dev/shm or a hugetlbfs file, is read with them later), and the private
            # mappings of buffer files (parse_private)
            m = _LINE.match(line) if b"s " in line else None
            if m is not None and classify(m.group(6).decode("utf-8", "surrogateescape")) is not None:
                seen, extra = self._seen, False
            else:
                if m is None:
                    if not private:
                        continue
                    hit = _PRIVATE_PATH.search(line)
                    m = _PLINE.match(line) if hit is not None else None
                    if m is None or m.start(6) != hit.start() + 1:
                        continue
                    kp = classify(m.group(6).decode("utf-8", "surrogateescape"))
                    if kp is None or kp[0] not in PRIVATE_KINDS:
                        continue
                # kept apart: the buffer mappings (kept, dups) are what they always were
                seen, extra = self._xseen, True
            start = m.group(1)
            key = int(start, 16) if len(start) <= 16 else start
            if key in seen:
                if not extra:
                    self.dups += n
                continue
            seen.add(key)
            if extra:
                self.extra += 1
                if self.smaps:
                    rss = _RSS_LINE.search(part)
                    line = line + b"\n" + rss.group(0) if rss else line
                keep(line + b"\n")
                self.nbytes += len(line) + 1
                continue
            self.dups += n - 1
            if self.smaps:
                rss = _RSS_LINE.search(part)
                line = line + b"\n" + rss.group(0) if rss else line
            keep(line + b"\n")
            self.kept += 1
            self.nbytes += len(line) + 1


def filter_shared(data: bytes, smaps: bool = False) -> SharedFilter:
    """SharedFilter of a whole text (the result in .text)."""
    f = SharedFilter(smaps)
    step = 1 << 20
    for i in range(0, len(data), step):
        f.feed(data[i:i + step])
    f.text = f.finish()
    return f
