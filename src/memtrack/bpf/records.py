"""The iterators' binary records (memtrack.bpf.c) -> the observations the procfs readers emit.

Kinds and names are not decided here: each record is turned back into the path the kernel's
d_path would print (what readlink of /proc/PID/fd/N or the maps line shows), and the procfs
backend's own filter (BUFFER_PREFIXES for fds) and classify() decide, so both backends
classify identically by construction. A pseudo file's path is "/" + dentry name + " (deleted)" (simple_dname), a
dma-buf's "/dmabuf:" + its name (dmabuf_dname); files with a real path (a /dev/shm file, a
file on any tmpfs) come without R_PSEUDO and are read with readlink, as procfs would.

size_from names the procfs interface that prints the same kernel field (i_size: "stat";
dma_buf.size: "fdinfo"; the mapped file's i_size: "map_files"), so the two backends'
snapshots compare equal; Snapshot.backend says which one ran.
"""
from __future__ import annotations

import mmap
import os
import struct
from typing import Callable, Dict, List, Optional, Tuple

from ..observe import FdRef, KernelBuffer, MapRef
from ..readers.fd import classify
from ..kernel import BUFFER_PREFIXES

R_TASK, R_PSEUDO, R_DMABUF, R_DRM, R_TRUNC, R_NAMED, R_PFNMAP = 1, 2, 4, 8, 16, 32, 64
R_LEN_SHIFT = 8                                   # flags bits 8-15: a copied name's length, or 0

FD_REC = struct.Struct("<IIQQIIq64s32s")          # struct fd_rec
FD_HEAD = struct.Struct("<IIQQIIq64s32x")         # the same, exp skipped: only dma-bufs need it
FD_EXP = FD_REC.size - 32                         # offset of exp in a record
VMA_REC = struct.Struct("<IIQQQQQII64s")          # struct vma_rec
DMABUF_REC = struct.Struct("<QQqII32s64s")        # struct dmabuf_rec
SUM_REC = struct.Struct("<IIQ")                   # struct sum_rec (task_sum)
TASK_REC = struct.Struct("<IIQQQQ16s")            # struct task_rec (task_mm)
CMD_REC = struct.Struct("<IIQII232s")             # struct cmd_rec (task_cmd)
C_OK = 1                                          # cmd_rec: arg[:len] is the whole cmdline
T_SEQ = 1
PAGE_SIZE = mmap.PAGESIZE


def _str(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def fmt_dev(kdev: int) -> str:
    """Kernel dev_t (MAJOR << 20 | MINOR) as maps prints it."""
    return "%02x:%02x" % (kdev >> 20, kdev & 0xFFFFF)


class Task:
    __slots__ = ("pid", "uid", "start_time", "comm")

    def __init__(self, pid, uid, start_time, comm):
        self.pid, self.uid, self.start_time, self.comm = pid, uid, start_time, comm


Readlink = Callable[[str], Optional[str]]


def link_target(path: str) -> Optional[str]:
    """readlink(path), or None where the link is gone."""
    try:
        return os.readlink(path)
    except OSError:
        return None                   # closed or unmapped since the iterator saw it


def classify_fd(target: str):
    """What the procfs backend makes of an fd link: its prefix filter, then classify()."""
    return classify(target) if target.startswith(BUFFER_PREFIXES) else None


def _pseudo_kinds(classify_fn):
    """name field of a pseudo file, up to its NUL -> classify_fn("/" + name + " (deleted)"),
    memoized; memfds, nearly every record, take the short way to the same answer."""
    memo: Dict[bytes, Optional[Tuple[str, Optional[str]]]] = {}

    def kind(n: bytes):
        if n.startswith(b"memfd:"):
            return "memfd", n[6:].decode("utf-8", "surrogateescape")
        kp = memo.get(n, False)
        if kp is False:
            kp = memo[n] = classify_fn("/" + n.decode("utf-8", "surrogateescape") + " (deleted)")
        return kp
    return kind


# a pseudo file (its path is its name) that is not a task, DRM or dma-buf record, and whose
# name fit: the flags of nearly every record
_PSEUDO_MASK = R_PSEUDO | R_TRUNC | R_TASK | R_DRM | R_DMABUF
_new = tuple.__new__                   # NamedTuple without its Python-level __new__


def parse_files(data: bytes, tasks: Dict[int, Task], fds: List[FdRef], drm: List[tuple],
                want=None, readlink: Readlink = link_target) -> None:
    """task_file records -> FdRef (and tasks, DRM fds (pid, fd, rdev)), in the iterator's
    order, which is procfs order: pids ascending, fds ascending."""
    pseudo = _pseudo_kinds(classify_fd)
    devs: Dict[int, str] = {}
    add = fds.append
    # exp is cut from data only for dma-buf records: a bytes object per record costs a
    # sixth of the parse
    step = FD_REC.size
    for i, (tgid, fd, ino, size, dev, flags, count, name) in enumerate(FD_HEAD.iter_unpack(data)):
        if want is not None and tgid not in want:
            continue
        if flags & _PSEUDO_MASK == R_PSEUDO:
            ln = flags >> R_LEN_SHIFT & 0xFF
            if ln and name.startswith(b"memfd:"):    # pseudo(n), without the call or the search
                kind, bname = "memfd", name[6:ln].decode("utf-8", "surrogateescape")
            else:
                n = name[:ln] if ln else name.partition(b"\0")[0]
                kp = pseudo(n)
                if kp is None:
                    continue
                kind, bname = kp
        elif flags & (R_TASK | R_DRM | R_DMABUF):
            if flags & R_TASK:
                tasks[tgid] = Task(tgid, fd, ino, _str(name))
            elif flags & R_DRM:
                drm.append((tgid, fd, dev))
            else:
                # fdinfo's name: and exp_name: values (stripped, as parse_fdinfo does), else
                # the name in the link (classify: "/dmabuf:" + name, empty -> None)
                n = _str(name) if flags & R_NAMED else ""
                at = i * step + FD_EXP
                add(FdRef(tgid, fd, "dmabuf", "dmabuf", ino, size, n.strip() or n or None,
                          _str(bytes(data[at:at + 32])).strip() or None, count, "fdinfo"))
            continue
        else:
            target = readlink("/proc/%d/fd/%d" % (tgid, fd))
            kp = classify_fd(target) if target is not None else None
            if kp is None:
                continue
            kind, bname = kp
        d = devs.get(dev)
        if d is None:
            d = devs[dev] = fmt_dev(dev)
        add(_new(FdRef, (tgid, fd, kind, d, ino, size, bname, None, None, "stat")))


def parse_vmas(data: bytes, tasks: Dict[int, Task], maps: List[MapRef], pfnmap: set,
               want=None, readlink: Readlink = link_target) -> None:
    """task_vma records -> MapRef, pids ascending, addresses ascending (maps order)."""
    pseudo = _pseudo_kinds(classify)
    devs: Dict[int, str] = {}
    add = maps.append
    for tgid, flags, start, end, pgoff, ino, size, dev, _pad, name in VMA_REC.iter_unpack(data):
        if want is not None and tgid not in want:
            continue
        if flags & R_TASK:
            if tgid not in tasks:
                tasks[tgid] = Task(tgid, end, start, _str(name))
            continue
        if flags & R_DMABUF:
            kp = classify("/dmabuf:" + (_str(name) if flags & R_NAMED else ""))
        elif flags & R_PSEUDO and not flags & R_TRUNC:
            kp = pseudo(name.partition(b"\0")[0])
        else:
            path = readlink("/proc/%d/map_files/%x-%x" % (tgid, start, end))
            kp = classify(path) if path is not None else None
        if kp is None:
            continue
        kind = kp[0]
        if kind == "sysv":
            fs, msize = "sysv", None      # sized by /proc/sysvipc/shm, as in procfs
        elif kind == "dmabuf":
            fs, msize = "dmabuf", size
        else:
            fs = devs.get(dev)
            if fs is None:
                fs = devs[dev] = fmt_dev(dev)
            msize = size
        if flags & R_PFNMAP:
            pfnmap.add((tgid, start))
        add(_new(MapRef, (tgid, start, end, pgoff * PAGE_SIZE, kind, fs, ino, kp[1], msize)))


def parse_dmabufs(data: bytes) -> List[KernelBuffer]:
    """iter/dmabuf records -> the kernel table debugfs bufinfo would give."""
    out = []
    for ino, size, count, flags, _pad, exp, name in DMABUF_REC.iter_unpack(data):
        out.append(KernelBuffer("dmabuf", ino, size, _str(exp) or None,
                                _str(name) if flags & R_NAMED else None, count, "dmabuf_iter"))
    return out
