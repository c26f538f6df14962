"""The procfs backend: walk processes through the readers, emit observations, build.

Cost model (what a scan of N processes with F buffer fds does): one listdir of /proc; per
process an open of its directory, a listdir of fd/, one readlink per fd, one read of maps;
per buffer fd one stat (memfd, shm: dev/inode/size/blocks in one syscall) or one fdinfo read
(dma-buf: exporter, name and count live only there); per process that holds buffers one
read of status and cmdline; per fd to a /dev/dri node one fdinfo read (a DRM client).
map_files is stat'ed only for mappings whose size nothing else gave (map-only references);
smaps only with --smaps.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional

from .build import build
from .cgroup_scan import process_cgroup, read_charges
from .errors import Denied, ProcessGone, Unreadable, Vanished
from .kernel import (BUFFER_PREFIXES, NOT_MOUNT_POINTS, counter_notes, host_info, merge_recorded_skips,
                     read_drm, read_kernel_tables)
from .observe import FdRef, MapRef, Observations, ProcInfo, VmaRss
from .readers.drm import is_drm_path
from .readers.fd import classify, fdinfo_int, parse_fdinfo
from .readers.maps import parse_private, parse_shared
from .readers.mounts import kind_of
from .readers.proc import parse_cmdline, parse_status
from .readers.smaps import parse_rss
from .speed import no_gc


def _skip_list(obs: Observations, exc: ProcessGone) -> list:
    if isinstance(exc, Vanished):
        return obs.vanished
    if isinstance(exc, Denied):
        return obs.denied
    return obs.unreadable


def read_process(src, pid: int, obs: Observations, smaps: bool, sized: Dict[tuple, int],
                 counters: Dict[str, int], binds=None) -> None:
    """Read one process. If it vanishes or can't be read, it is counted and whatever was
    read of it is dropped: a half-read process would be a lie. binds: a ShmBinds
    (readers.mounts), for a live source: a /dev/shm file reached through a bind mount is
    read as the /dev/shm file it is."""
    thorough = src.thorough
    fds, maps, rss, drm = [], [], [], []
    p = None
    tables = []
    try:
        p = src.process(pid)
        try:
            targets = p.fd_targets()
        except Denied:
            if not _is_zombie(p):
                raise
            targets = []                  # an exited leader: its live threads may hold
        tables = p.fd_tables()
        if tables and tables[0] is None:  # no kcmp: only an exited leader's thread is read
            tables.pop(0)
            if targets:
                tables.pop().close()
                counters["no_kcmp"] = counters.get("no_kcmp", 0) + 1
        if tables:
            # their changes do not show in the leader's fd count or vsize: an incremental
            # scanner reads such a process every time (incremental.py)
            counters["thread_tables"] = counters.get("thread_tables", 0) + 1
        seen = set()
        for q in (p, *tables):
            for fd, target in (targets if q is p else q.fd_targets()):
                if target.startswith(BUFFER_PREFIXES):
                    kp = classify(target)
                else:
                    # a path only pid's mounts can tell: read them then (binds.of: once)
                    if binds is None or not target.startswith("/") or target.startswith(NOT_MOUNT_POINTS):
                        continue
                    bl = binds.of(pid)
                    kp = kind_of(target, bl) if bl else None
                    if kp is None:
                        continue
                if kp is None:
                    if is_drm_path(target) and q is p:
                        client = read_drm(p, int(fd), fd, target, counters)
                        if client is not None:
                            drm.append(client)
                    continue
                ref = _read_fd(q, int(fd), fd, target, kp[0], kp[1], thorough, counters)
                if ref is not None:
                    if tables:
                        # a table copied from another (unshare) holds the same files
                        key = (ref.fd, ref.kind, ref.fs, ref.inode)
                        if key in seen:
                            continue
                        seen.add(key)
                    fds.append(ref)
                    if ref.size is not None:
                        sized[(ref.kind, ref.fs, ref.inode)] = ref.size
        try:
            text = p.maps()
        except Denied:
            if not tables:
                raise
            text = b""
        mp = p
        if not text and tables:
            # the leader has exited: its maps are empty, its threads' mm is the process's
            mp = tables[0]
            text = mp.maps()
        bad = []
        lazy = (lambda: binds.of(pid)) if binds is not None else None
        for start, end, off, dev, ino, kind, name in parse_shared(text, bad, lazy):
            fs = kind if kind in ("sysv", "dmabuf") else dev
            size = None
            key = (kind, fs, ino)
            if thorough or (key not in sized and kind != "sysv" and not (kind == "dmabuf" and obs.dmabuf_source)):
                # A map-only reference: the VMA length is not the buffer size; the file's is.
                size, alloc = _map_size(mp, start, end, ino, counters)
                if size is not None:
                    sized[key] = size
            else:
                alloc = None
            maps.append(MapRef(pid, start, end, off, kind, fs, ino, name, size, alloc))
        for start, end, off, dev, ino, kind, name in parse_private(text, bad):
            # held through a private mapping: the size comes as for a map-only reference
            fs = "dmabuf" if kind == "dmabuf" else dev
            key = (kind, fs, ino)
            size = alloc = None
            if thorough or (key not in sized and not (kind == "dmabuf" and obs.dmabuf_source)):
                size, alloc = _map_size(mp, start, end, ino, counters)
                if size is not None:
                    sized[key] = size
            maps.append(MapRef(pid, start, end, off, kind, fs, ino, name, size, alloc, True))
        if smaps and maps:
            per_vma = parse_rss(mp.smaps())
            for m in maps:
                r = per_vma.get(m.start)
                if r is not None:
                    rss.append(VmaRss(pid, m.start, r))
        if fds or maps or drm or thorough:
            comm, uid = parse_status(p.status())
            obs.procs.append(ProcInfo(pid, comm, parse_cmdline(p.cmdline()), uid,
                                      process_cgroup(p, obs)))
    except ProcessGone as exc:
        if not (isinstance(exc, Denied) and p is not None and _is_zombie(p)):
            _skip_list(obs, exc).append(pid)
        return
    finally:
        if p is not None:
            p.close()
        for q in tables:
            q.close()
    if bad:
        counters["bad_maps_lines"] = counters.get("bad_maps_lines", 0) + len(bad)
        counters.setdefault("bad_maps_pids", []).append(pid)
    obs.fds.extend(fds)
    obs.maps.extend(maps)
    obs.rss.extend(rss)
    obs.drm.extend(drm)


def _map_size(p, start: int, end: int, ino: int, counters: Dict[str, int]) -> tuple:
    """(size, allocated bytes) of the file a mapping maps, each None where unknown."""
    try:
        st = p.mapstat(start, end)
    except Vanished:
        return None, None
    except (Denied, Unreadable):
        counters["mapstat_denied"] = counters.get("mapstat_denied", 0) + 1
        return None, None
    if st is None or st[1] != ino:
        return None, None
    return st[2], allocated(st)


def allocated(st) -> Optional[int]:
    """Bytes a file holds from its stat: st_blocks counts 512-byte units whatever the
    filesystem (tmpfs and hugetlbfs count each page they hold, swapped out or not); None
    where the stat came without it (a capture from before the sidecars had it)."""
    blocks = st[4] if len(st) > 4 else None
    return None if blocks is None else blocks * 512


def _is_zombie(p) -> bool:
    """A zombie has released its files and memory: it holds nothing, so there is nothing
    denied. (Its fd/ is unreadable to non-root: ptrace access needs an mm.)"""
    try:
        st = p.status()
    except ProcessGone:
        return False
    return "\nState:\tZ" in st or "\nState:\tX" in st


def _read_fd(p, fdn: int, fd: str, target: str, kind: str, name: Optional[str], thorough: bool,
             counters: Dict[str, int]) -> Optional[FdRef]:
    pid = p.pid
    info = None
    if kind == "dmabuf" or thorough:
        info = _fdinfo(p, fd, counters)
        if info is None:
            return None
    if kind == "dmabuf":
        ino = size = count = exporter = None
        size_from = None
        if info:
            ino = fdinfo_int(info, "ino")
            size = fdinfo_int(info, "size")
            count = fdinfo_int(info, "count")
            exporter = info.get("exp_name") or None
            name = info.get("name") or name
            size_from = "fdinfo" if size is not None else None
            if (ino is None and "ino" in info) or (size is None and "size" in info) or \
                    (count is None and "count" in info):
                counters["bad_fdinfo"] = counters.get("bad_fdinfo", 0) + 1
                counters.setdefault("bad_fdinfo_pids", set()).add(pid)
        if ino is None or size is None:
            st = _stat(p, fd)
            if st is not None:
                if target != "anon_inode:dmabuf" and ino is None:
                    ino = st[1]          # pre-5.14: no ino: line, but the dmabuf fs inode is unique
                if size is None and target != "anon_inode:dmabuf":
                    size, size_from = st[2], "stat"
        if target == "anon_inode:dmabuf":
            # Before 5.3 every dma-buf shares one anon inode: nothing tells two buffers apart.
            ino = None
            counters["anon_dmabuf"] = counters.get("anon_dmabuf", 0) + 1
        return FdRef(pid, fdn, "dmabuf", "dmabuf", ino, size, name, exporter, count, size_from)
    if kind == "ashmem":
        return _read_ashmem(p, pid, fdn, fd, target, name, info, counters)
    st = _stat(p, fd)
    if st is not None:
        dev, ino, size = st[0], st[1], st[2]
        return FdRef(pid, fdn, kind, dev, ino, size, name, None, None, "stat", allocated(st))
    if info is None:
        info = _fdinfo(p, fd, counters)
        if info is None:
            return None
    ino = fdinfo_int(info, "ino")
    if ino is None:
        counters["no_identity"] = counters.get("no_identity", 0) + 1
        return None
    return FdRef(pid, fdn, kind, None, ino, None, name, None, None, None)


def _fdinfo(p, fd, counters):
    """Parsed fdinfo; {} when unreadable (counted); None when the fd is gone."""
    try:
        return parse_fdinfo(p.fdinfo(fd))
    except Vanished:
        return None
    except (Denied, Unreadable):
        counters["fdinfo_unreadable"] = counters.get("fdinfo_unreadable", 0) + 1
        return {}


def _read_ashmem(p, pid, fdn, fd, target, name, info, counters):
    """Android ashmem. The fd is the /dev/ashmem misc device (one inode for every region);
    the region is its backing shmem file, whose inode, name and size ashmem's own fdinfo
    prints (inode:, name:, size:) and whose mappings show as /dev/ashmem/<name> (deleted)."""
    if info is None:
        info = _fdinfo(p, fd, counters)
        if info is None:
            return None
    ino = fdinfo_int(info, "inode")
    size = fdinfo_int(info, "size")
    name = info.get("name") or name
    if ino is not None:
        return FdRef(pid, fdn, "ashmem", None, ino, size, name, None, None,
                     "fdinfo" if size is not None else None)
    if target.rstrip("/") != "/dev/ashmem":
        st = _stat(p, fd)                # a link naming the backing file: stat reaches it
        if st is not None:
            return FdRef(pid, fdn, "ashmem", st[0], st[1], st[2], name, None, None, "stat", allocated(st))
    counters["no_identity"] = counters.get("no_identity", 0) + 1
    return None


def _stat(p, fd):
    try:
        return p.fdstat(fd)
    except ProcessGone:
        return None


def collect(src, pids: Optional[Iterable[int]] = None, smaps: bool = False) -> Observations:
    obs = Observations()
    read_kernel_tables(src, obs)
    targets = src.pids() if pids is None else sorted(set(pids))
    sized: Dict[tuple, int] = {}
    counters: Dict[str, int] = {}
    shm_binds = getattr(src, "shm_binds", None)    # their mounts: this machine's, a capture's
    binds = shm_binds() if shm_binds is not None else None
    for pid in targets:
        read_process(src, pid, obs, smaps, sized, counters, binds)
    read_charges(src, obs)
    merge_recorded_skips(src, obs, pids)
    obs.notes.extend(counter_notes(counters))
    return obs


def scan(src, pids: Optional[Iterable[int]] = None, smaps: bool = False):
    taken_at = src.taken_at()
    with no_gc():
        obs = collect(src, pids, smaps)
        return _finish(src, obs, taken_at, pids, smaps)


def _finish(src, obs, taken_at, pids, smaps):
    notes = list(getattr(src, "problems", ()))
    if hasattr(src, "input_notes"):
        notes += src.input_notes()      # what reading a tree or an archive found wrong in it
    hostname, kernel = host_info(src)
    scope = "all" if pids is None else "pids"
    meta_scope = src.meta().get("scope")
    if meta_scope == "pids":
        scope = "pids"               # the capture itself covered only some processes
    return build(obs, taken_at=taken_at, source=src.label, hostname=hostname, kernel=kernel,
                 backend="procfs", scope=scope, smaps=smaps, extra_notes=notes)
