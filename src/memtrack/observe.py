"""Observations: the seam between readers (procfs text, or BPF iterators) and the builder.

Readers emit these small records; ``build.build`` merges them into a Snapshot. Identity of
a buffer is (fs, inode); ``fs`` is "dmabuf" for dma-bufs (one pseudo-filesystem), "sysv" for
SysV segments (their inode is the shmid, a namespace of its own), and the device ("MM:mm",
as maps prints it) for file-backed kinds, or None where the interface did not say.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional


class ProcInfo(NamedTuple):
    pid: int
    comm: str
    cmdline: str
    uid: Optional[int]
    cgroup: Optional[str] = None       # the memory controller's cgroup path (cgroups.py)


class FdRef(NamedTuple):
    pid: int
    fd: int
    kind: str
    fs: Optional[str]
    inode: Optional[int]
    size: Optional[int]
    name: Optional[str]
    exporter: Optional[str] = None
    count: Optional[int] = None
    size_from: Optional[str] = None
    allocated: Optional[int] = None    # bytes the file really holds (st_blocks * 512)


class MapRef(NamedTuple):
    pid: int
    start: int
    end: int
    offset: int
    kind: str
    fs: Optional[str]
    inode: int
    name: Optional[str]
    size: Optional[int] = None         # from a stat of /proc/PID/map_files (never the VMA length)
    allocated: Optional[int] = None    # the same stat's st_blocks * 512
    private: bool = False              # MAP_PRIVATE: holds the buffer; its written pages are copies


class KernelBuffer(NamedTuple):
    """A buffer as a kernel-wide table lists it (debugfs bufinfo, sysfs, /proc/sysvipc/shm)."""
    kind: str
    inode: Optional[int]
    size: Optional[int]
    exporter: Optional[str]
    name: Optional[str]
    count: Optional[int]
    source: str
    allocated: Optional[int] = None    # sysv: the rss + swap columns
    swapped: Optional[int] = None      # sysv: the swap column


class DrmClient(NamedTuple):
    """One DRM fd (an open of /dev/dri/*): the client it reaches and what its fdinfo said.
    Dup'd, inherited and passed fds of one client show the same (pdev or device, client_id)."""
    pid: int
    fd: int
    device: str                        # the fd link target, e.g. /dev/dri/renderD128
    driver: str
    pdev: Optional[str]
    client_id: Optional[int]
    client_name: Optional[str]
    regions: Dict[str, Dict[str, int]]   # region -> {total, shared, resident, purgeable, active}
    engines: Dict[str, Dict[str, int]]   # engine -> {busy_ns, cycles, total_cycles, capacity...}
    driver_keys: Dict[str, str]          # amd-*, pasid... as printed


class VmaRss(NamedTuple):
    pid: int
    start: int
    rss: int                           # bytes


class Observations:
    """Everything one scan saw, in the order it saw it."""

    def __init__(self):
        self.procs: List[ProcInfo] = []
        self.fds: List[FdRef] = []
        self.maps: List[MapRef] = []
        self.kernel: List[KernelBuffer] = []
        self.rss: List[VmaRss] = []
        self.drm: List[DrmClient] = []
        self.denied: List[int] = []
        self.vanished: List[int] = []
        self.unreadable: List[int] = []
        self.notes: List[str] = []
        self.dmabuf_source: Optional[str] = None
        self.dmabuf_total: Optional[int] = None
        self.dmabuf_count: Optional[int] = None
        self.sysv_source: Optional[str] = None
        self.cgroups: list = []           # model.CgroupInfo of the processes' cgroups
        self.cgroup_hier: Dict[str, str] = {}   # cgroup path -> "v1" | "v2" (cgroup_scan)
        # (fds, build.accumulate_fds(fds)) made while the backend waited: build() takes it
        # if fds is still this object's fds list
        self.fd_accs: Optional[tuple] = None
