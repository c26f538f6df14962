"""The procfs backend: walk processes through the readers, emit observations, build.

Cost model (what a scan of N processes with F buffer fds does): one listdir of /proc; per
process an open of its directory, a listdir of fd/, one readlink per fd, one read of maps;
per buffer fd one stat (memfd, shm: dev/inode/size in one syscall) or one fdinfo read
(dma-buf: exporter, name and count live only there); per process that holds buffers one
read of status and cmdline; per fd to a /dev/dri node one fdinfo read (a DRM client).
map_files is stat'ed only for mappings whose size nothing else gave (map-only references);
smaps only with --smaps.
"""
from __future__ import annotations

import gc
from typing import Dict, Iterable, Optional

from .errors import Denied, ProcessGone, Unreadable, Vanished
from .observe import DrmClient, FdRef, KernelBuffer, MapRef, Observations, ProcInfo, VmaRss
from .readers import debugfs, sysv
from .readers.drm import is_drm_path, parse_drm_fdinfo
from .readers.fd import classify, fdinfo_int, parse_fdinfo
from .readers.maps import parse_shared
from .readers.proc import parse_cmdline, parse_status
from .readers.smaps import parse_rss
from .readers.num import u64 as to_u64
from .sources.base import is_number
from .cgroup_scan import process_cgroup, read_charges

BUFINFO = "sys/kernel/debug/dma_buf/bufinfo"
SYSFS_BUFFERS = "sys/kernel/dmabuf/buffers"
SYSVIPC = "proc/sysvipc/shm"
# what classify() can accept: a cheap C-level prefilter for the per-fd loop
BUFFER_PREFIXES = ("/memfd:", "/dmabuf:", "/dev/shm/", "/dev/ashmem", "/dev/zero", "anon_inode:dmabuf",
                   "/dev/dri/")          # the last: DRM clients


def _read_optional(src, rel, obs, what):
    try:
        return src.read_text(rel)
    except Vanished:
        return None
    except (Denied, Unreadable) as exc:
        obs.notes.append(f"{what} ({'/' + rel}) not readable: {exc}")
        return None


def read_kernel_tables(src, obs: Observations) -> None:
    read_sysv_table(src, obs)
    read_dmabuf_table(src, obs)


def read_sysv_table(src, obs: Observations) -> None:
    text = _read_optional(src, SYSVIPC, obs, "SysV shm table")
    if text is not None:
        try:
            obs.kernel.extend(sysv.parse(text))
            obs.sysv_source = "sysvipc"
        except ValueError as exc:
            obs.notes.append(f"/{SYSVIPC} malformed: {exc}")


def read_dmabuf_table(src, obs: Observations) -> None:
    text = _read_optional(src, BUFINFO, obs, "dma-buf debugfs table")
    if text is not None:
        try:
            bufs, count, total = debugfs.parse(text)
        except ValueError as exc:
            obs.notes.append(f"/{BUFINFO} malformed: {exc}")
        else:
            obs.kernel.extend(bufs)
            obs.dmabuf_source = "debugfs"
            obs.dmabuf_count = count if count is not None else len(bufs)
            obs.dmabuf_total = total if total is not None else sum(b.size or 0 for b in bufs)
            return
    read_sysfs_stats(src, obs)


def read_sysfs_stats(src, obs: Observations) -> None:
    """CONFIG_DMABUF_SYSFS_STATS: /sys/kernel/dmabuf/buffers/<inode>/{exporter_name,size}."""
    try:
        names = src.listdir(SYSFS_BUFFERS)
    except ProcessGone:
        if obs.dmabuf_source is None:
            obs.notes.append("no dma-buf kernel table (debugfs dma_buf/bufinfo or sysfs "
                             "dmabuf stats): kernel-only dma-bufs cannot be known")
        return
    bufs = []
    for n in names:
        if not is_number(n):
            continue
        try:
            size = to_u64(src.read_text(f"{SYSFS_BUFFERS}/{n}/size").strip())
            exp = src.read_text(f"{SYSFS_BUFFERS}/{n}/exporter_name").strip() or None
        except (ProcessGone, ValueError):
            continue                      # freed while we listed, or garbage
        bufs.append(KernelBuffer("dmabuf", int(n), size, exp, None, None, "sysfs"))
    obs.kernel.extend(bufs)
    obs.dmabuf_source = "sysfs"
    obs.dmabuf_count = len(bufs)
    obs.dmabuf_total = sum(b.size for b in bufs)


def _skip_list(obs: Observations, exc: ProcessGone) -> list:
    if isinstance(exc, Vanished):
        return obs.vanished
    if isinstance(exc, Denied):
        return obs.denied
    return obs.unreadable


def read_process(src, pid: int, obs: Observations, smaps: bool, sized: Dict[tuple, int],
                 counters: Dict[str, int]) -> None:
    """Read one process. If it vanishes or can't be read, it is counted and whatever was
    read of it is dropped: a half-read process would be a lie."""
    thorough = src.thorough
    fds, maps, rss, drm = [], [], [], []
    p = None
    try:
        p = src.process(pid)
        for fd, target in p.fd_targets():
            if not target.startswith(BUFFER_PREFIXES):
                continue
            kp = classify(target)
            if kp is None:
                if is_drm_path(target):
                    client = _read_drm(p, int(fd), fd, target, counters)
                    if client is not None:
                        drm.append(client)
                continue
            ref = _read_fd(p, int(fd), fd, target, kp[0], kp[1], thorough, counters)
            if ref is not None:
                fds.append(ref)
                if ref.size is not None:
                    sized[(ref.kind, ref.fs, ref.inode)] = ref.size
        bad = []
        for start, end, off, dev, ino, kind, name in parse_shared(p.maps(), bad):
            fs = kind if kind in ("sysv", "dmabuf") else dev
            size = None
            key = (kind, fs, ino)
            if thorough or (key not in sized and kind != "sysv" and not (kind == "dmabuf" and obs.dmabuf_source)):
                # A map-only reference: the VMA length is not the buffer size; the file's is.
                size = _map_size(p, start, end, ino, counters)
                if size is not None:
                    sized[key] = size
            maps.append(MapRef(pid, start, end, off, kind, fs, ino, name, size))
        if smaps and maps:
            per_vma = parse_rss(p.smaps())
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
    if bad:
        counters["bad_maps_lines"] = counters.get("bad_maps_lines", 0) + len(bad)
        counters.setdefault("bad_maps_pids", []).append(pid)
    obs.fds.extend(fds)
    obs.maps.extend(maps)
    obs.rss.extend(rss)
    obs.drm.extend(drm)


def _read_drm(p, fdn: int, fd: str, target: str, counters: Dict[str, int]) -> Optional[DrmClient]:
    """A DRM client's fdinfo: read only for fds to /dev/dri nodes (one read per such fd)."""
    try:
        d = parse_drm_fdinfo(p.fdinfo(fd))
    except Vanished:
        return None
    except (Denied, Unreadable):
        counters["drm_unreadable"] = counters.get("drm_unreadable", 0) + 1
        return None
    if d is None:
        counters["drm_no_stats"] = counters.get("drm_no_stats", 0) + 1
        return None
    if d["client_id"] is None:
        counters["drm_no_client_id"] = counters.get("drm_no_client_id", 0) + 1
    return DrmClient(p.pid, fdn, target, d["driver"], d["pdev"], d["client_id"], d["client_name"],
                     d["regions"], d["engines"], d["driver_keys"])


read_drm = _read_drm                # the bpf backend reads DRM clients as this backend does


def _map_size(p, start: int, end: int, ino: int, counters: Dict[str, int]) -> Optional[int]:
    try:
        st = p.mapstat(start, end)
    except Vanished:
        return None
    except (Denied, Unreadable):
        counters["mapstat_denied"] = counters.get("mapstat_denied", 0) + 1
        return None
    return st[2] if st is not None and st[1] == ino else None


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
        return FdRef(pid, fdn, kind, dev, ino, size, name, None, None, "stat")
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
            return FdRef(pid, fdn, "ashmem", st[0], st[1], st[2], name, None, None, "stat")
    counters["no_identity"] = counters.get("no_identity", 0) + 1
    return None


def _stat(p, fd):
    try:
        return p.fdstat(fd)
    except ProcessGone:
        return None


def host_info(src):
    out = []
    for rel in ("proc/sys/kernel/hostname", "proc/sys/kernel/osrelease"):
        try:
            out.append(src.read_text(rel).strip() or None)
        except ProcessGone:
            out.append(None)
    meta = src.meta()
    host = meta.get("host") if isinstance(meta.get("host"), dict) else {}
    meta_host = [v if isinstance(v, str) else None for v in (host.get("hostname"), host.get("kernel"))]
    return (out[0] or meta_host[0], out[1] or meta_host[1])


def collect(src, pids: Optional[Iterable[int]] = None, smaps: bool = False) -> Observations:
    obs = Observations()
    read_kernel_tables(src, obs)
    targets = src.pids() if pids is None else sorted(set(pids))
    sized: Dict[tuple, int] = {}
    counters: Dict[str, int] = {}
    for pid in targets:
        read_process(src, pid, obs, smaps, sized, counters)
    read_charges(src, obs)
    _merge_recorded_skips(src, obs, pids)
    obs.notes.extend(counter_notes(counters))
    return obs


# counter -> what it means for the reader of the snapshot ({n}: the count; {X_pids}: the
# first pids of the counter X_pids)
_COUNTER_NOTES = (
    ("fdinfo_unreadable", "fdinfo unreadable for {n} buffer fds: their exporter/name/count are unknown"),
    ("mapstat_denied", "sizes of {n} map-only buffer mappings unknown: stat of /proc/PID/map_files "
                       "needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE"),
    ("anon_dmabuf", "{n} dma-buf fds from a kernel before 5.3 (anon_inode:dmabuf): buffers cannot be "
                    "told apart, each fd is counted as its own buffer"),
    ("drm_unreadable", "fdinfo unreadable for {n} DRM fds: their GPU clients are left out"),
    ("drm_no_stats", "{n} DRM fds have no drm-driver in fdinfo (driver without usage stats, or a "
                     "kernel before 5.19): GPU memory unknown for them"),
    ("drm_no_client_id", "{n} DRM fds have no drm-client-id: each counts as its own client (dup'd "
                         "fds may be counted twice)"),
    ("bad_fdinfo", "{n} dma-buf fdinfo files with impossible numbers (ino, size or count over 64 "
                   "bits or negative): those values ignored, in pids {bad_fdinfo_pids}"),
    ("bad_maps_lines", "{n} maps lines with impossible numbers (over 64 bits, end before start) "
                       "left out, in pids {bad_maps_pids}"),
    ("no_identity", "{n} buffer fds had no inode in fdinfo and no stat data: left out"),
)


def counter_notes(counters: Dict[str, int]):
    """The notes a scan's per-fd counters call for (shared with the incremental scanner)."""
    notes = []
    for key, text in _COUNTER_NOTES:
        n = counters.get(key)
        if n:
            pids = {}
            for name in ("bad_fdinfo_pids", "bad_maps_pids"):
                pl = sorted(set(counters.get(name, ())))
                pids[name] = ", ".join(map(str, pl[:5])) + (", ..." if len(pl) > 5 else "")
            notes.append(text.format(n=n, **pids))
    return notes


def _merge_recorded_skips(src, obs: Observations, pids) -> None:
    """A capture records which processes the capturing scan could not read."""
    sk = src.meta().get("skipped")
    if not isinstance(sk, dict):
        return
    want = None if pids is None else set(pids)
    for name, out in (("denied", obs.denied), ("vanished", obs.vanished), ("unreadable", obs.unreadable)):
        vals = sk.get(name)
        if not isinstance(vals, list):
            continue
        seen = set(out)
        for v in vals:
            if isinstance(v, int) and not isinstance(v, bool) and v not in seen and (want is None or v in want):
                out.append(v)


def scan(src, pids: Optional[Iterable[int]] = None, smaps: bool = False):
    from .build import build
    taken_at = src.taken_at()
    with no_gc():
        obs = collect(src, pids, smaps)
        snap = _finish(src, obs, taken_at, pids, smaps, build)
        keep_to_exit(obs)              # a one-shot command's: left to the exit, not freed
        return snap


class no_gc:
    """A scan allocates ~10 objects per buffer reference and frees none of them: the cyclic
    collector would walk that growing heap again and again for nothing. Pause it; and
    before it runs again, move what was made to its oldest generation (freeze, unfreeze),
    or the first young collection after the pause would walk all of it (10-30 ms).

    While a one-shot command holds the heap frozen (hold_frozen), what is made stays frozen.
    Whether it does is this module's flag, not gc.get_freeze_count(): that walks the whole
    frozen list, and some interpreters (3.12) start with objects frozen, which made a
    refresher keep every snapshot frozen and pay a walk of all of them per refresh."""

    held = False
    to_exit = False     # the process ends with its command: see keep_to_exit()
    one_shot = False    # ... and the command scans once, prints and ends (get_snapshot)
    # What the pauses moved to the oldest generation since it was last collected, and how
    # many objects that collection left (see __exit__); the floor keeps a small heap from
    # being collected whole after every pause.
    pending = 0
    long_lived = 0
    FLOOR = 20000

    def __enter__(self):
        self.was = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc):
        if self.was:
            if hasattr(gc, "freeze"):
                made = gc.get_count()[0]        # objects made during the pause, net
                gc.freeze()
                if not no_gc.held:
                    gc.unfreeze()
                    no_gc._age(made)
            gc.enable()

    @staticmethod
    def _age(made: int) -> None:
        """unfreeze() puts what the pause made straight into the oldest generation, which
        CPython collects only once a quarter more objects than its last collection left
        have aged into it through the young ones: objects put there this way are not
        counted, so in a refresher (top, serve, record) it never ran again, and every
        cycle of garbage a refresh left (a ctypes cast, an exception and its traceback)
        stayed for good: tens of MB an hour under process churn. The same rule, counted
        here."""
        no_gc.pending += max(0, made)
        if no_gc.pending > max(no_gc.long_lived // 4, no_gc.FLOOR):
            gc.collect()
            no_gc.long_lived = len(gc.get_objects())
            no_gc.pending = 0


def hold_frozen():
    """For a command that runs once: freeze everything made so far (its snapshot, kept to
    the end) so the collector never walks it again, until thaw()."""
    if hasattr(gc, "freeze"):
        gc.freeze()
        no_gc.held = True


def thaw():
    no_gc.held = False
    if hasattr(gc, "unfreeze"):
        gc.unfreeze()


_kept: Optional[list] = None


def keep_to_exit(obj) -> None:
    """In a process that exits when its one-shot command ends (cli.console: the memtrack
    command, not a caller of cli.main; get_snapshot: a command that scans once, not top,
    serve or record), never free obj: tens of thousands of objects freed one by one cost
    5-10 ms for nothing, the process is about to go. Its snapshot, and what its scan made
    on the way (the parse's records, the builder's merge). obj joins a list that holds
    itself, frozen: when the interpreter clears the modules at exit the list is an
    unreachable cycle, and the collector leaves the frozen ones alone. Elsewhere a no-op."""
    global _kept
    if not (no_gc.to_exit and no_gc.one_shot) or not hasattr(gc, "freeze"):
        return
    if _kept is None:
        _kept = [None]
        _kept[0] = _kept
    _kept.append(obj)
    gc.freeze()
    no_gc.held = True


def _finish(src, obs, taken_at, pids, smaps, build):
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
