"""The procfs backend: walk processes through the readers, emit observations, build.

Cost model (what a scan of N processes with F buffer fds does): one listdir of /proc; per
process an open of its directory, a listdir of fd/, one readlink per fd, one read of maps;
per buffer fd one stat (memfd, shm: dev/inode/size in one syscall) or one fdinfo read
(dma-buf: exporter, name and count live only there); per process that holds buffers one
read of status and cmdline. map_files is stat'ed only for mappings whose size nothing else
gave (map-only references); smaps only with --smaps.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional

from .errors import Denied, ProcessGone, Unreadable, Vanished
from .observe import FdRef, KernelBuffer, MapRef, Observations, ProcInfo, VmaRss
from .readers import debugfs, sysv
from .readers.fd import classify, fdinfo_int, parse_fdinfo
from .readers.maps import parse_shared
from .readers.proc import parse_cmdline, parse_status
from .readers.smaps import parse_rss

BUFINFO = "sys/kernel/debug/dma_buf/bufinfo"
SYSFS_BUFFERS = "sys/kernel/dmabuf/buffers"
SYSVIPC = "proc/sysvipc/shm"


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
        if not n.isdigit():
            continue
        try:
            size = int(src.read_text(f"{SYSFS_BUFFERS}/{n}/size").strip())
            exp = src.read_text(f"{SYSFS_BUFFERS}/{n}/exporter_name").strip() or None
        except (ProcessGone, ValueError):
            continue                      # freed while we listed, or garbage
        bufs.append(KernelBuffer("dmabuf", int(n), size, exp, None, None, "sysfs"))
    obs.kernel.extend(bufs)
    obs.dmabuf_source = "sysfs"
    obs.dmabuf_count = len(bufs)
    obs.dmabuf_total = sum(b.size for b in bufs)


def read_process(src, pid: int, obs: Observations, smaps: bool, sized: Dict[tuple, int],
                 counters: Dict[str, int]) -> None:
    """Read one process; on Vanished/Denied the whole process is counted, its partial data dropped."""
    thorough = src.thorough
    try:
        p = src.process(pid)
    except Vanished:
        obs.vanished.append(pid)
        return
    except Denied:
        obs.denied.append(pid)
        return
    except Unreadable:
        obs.unreadable.append(pid)
        return
    fds, maps, rss = [], [], []
    try:
        for fd in p.fds():
            try:
                target = p.readlink(fd)
            except Vanished:
                continue                  # closed between listdir and readlink
            kp = classify(target)
            if kp is None:
                continue
            ref = _read_fd(p, int(fd), fd, target, kp[0], kp[1], thorough, counters)
            if ref is not None:
                fds.append(ref)
                if ref.size is not None and ref.inode is not None:
                    sized[(ref.kind, ref.inode)] = ref.size
        data = p.maps()
        for start, end, off, dev, ino, kind, name in parse_shared(data):
            size = None
            if kind == "sysv":
                fs = "sysv"
            elif kind == "dmabuf":
                fs = "dmabuf"
            else:
                fs = dev
            key = (kind, ino)
            if thorough or (key not in sized and kind != "sysv" and not (kind == "dmabuf" and obs.dmabuf_source)):
                # A map-only reference: the VMA length is not the buffer size; the file is.
                try:
                    st = p.mapstat(start, end)
                except Vanished:
                    st = None
                except (Denied, Unreadable):
                    st = None
                    counters["mapstat_denied"] = counters.get("mapstat_denied", 0) + 1
                if st is not None and st[1] == ino:
                    size = st[2]
                    sized[key] = size
            maps.append(MapRef(pid, start, end, off, kind, fs, ino, name, size))
        if smaps and maps:
            per_vma = parse_rss(p.smaps())
            for m in maps:
                r = per_vma.get(m.start)
                if r is not None:
                    rss.append(VmaRss(pid, m.start, r))
        if fds or maps or thorough:
            comm, uid = parse_status(p.status())
            cmdline = parse_cmdline(p.cmdline())
            obs.procs.append(ProcInfo(pid, comm, cmdline, uid))
    except Vanished:
        obs.vanished.append(pid)
        return
    except Denied:
        obs.denied.append(pid)
        return
    except Unreadable:
        obs.unreadable.append(pid)
        return
    finally:
        p.close()
    obs.fds.extend(fds)
    obs.maps.extend(maps)
    obs.rss.extend(rss)


def _read_fd(p, fdn: int, fd: str, target: str, kind: str, name: Optional[str], thorough: bool,
             counters: Dict[str, int]) -> Optional[FdRef]:
    pid = p.pid
    info = None
    if kind == "dmabuf" or thorough:
        try:
            info = parse_fdinfo(p.fdinfo(fd))
        except Vanished:
            return None
        except (Denied, Unreadable):
            counters["fdinfo_unreadable"] = counters.get("fdinfo_unreadable", 0) + 1
    if kind == "dmabuf":
        ino = size = count = exporter = None
        size_from = None
        if info is not None:
            ino = fdinfo_int(info, "ino")
            size = fdinfo_int(info, "size")
            count = fdinfo_int(info, "count")
            exporter = info.get("exp_name") or None
            name = info.get("name") or name
            size_from = "fdinfo" if size is not None else None
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
    st = _stat(p, fd)
    if st is not None:
        dev, ino, size = st[0], st[1], st[2]
        return FdRef(pid, fdn, kind, dev, ino, size, name, None, None, "stat")
    if info is None:
        try:
            info = parse_fdinfo(p.fdinfo(fd))
        except Vanished:
            return None
        except (Denied, Unreadable):
            counters["fdinfo_unreadable"] = counters.get("fdinfo_unreadable", 0) + 1
            info = {}
    if kind == "ashmem":
        # ashmem's own fdinfo (Android): inode:, name:, size:
        ino = fdinfo_int(info, "inode")
        if ino is None:
            ino = fdinfo_int(info, "ino")
        size = fdinfo_int(info, "size")
        return FdRef(pid, fdn, kind, None, ino, size, info.get("name") or name, None, None,
                     "fdinfo" if size is not None else None)
    ino = fdinfo_int(info, "ino")
    if ino is None:
        counters["no_identity"] = counters.get("no_identity", 0) + 1
        return None
    return FdRef(pid, fdn, kind, None, ino, None, name, None, None, None)


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
    return (out[0] or host.get("hostname"), out[1] or host.get("kernel"))


def collect(src, pids: Optional[Iterable[int]] = None, smaps: bool = False) -> Observations:
    obs = Observations()
    read_kernel_tables(src, obs)
    targets = src.pids() if pids is None else sorted(set(pids))
    sized: Dict[tuple, int] = {}
    counters: Dict[str, int] = {}
    for pid in targets:
        read_process(src, pid, obs, smaps, sized, counters)
    if counters.get("fdinfo_unreadable"):
        obs.notes.append(f"fdinfo unreadable for {counters['fdinfo_unreadable']} buffer fds: "
                         "their exporter/name/count are unknown")
    if counters.get("mapstat_denied"):
        obs.notes.append(f"sizes of {counters['mapstat_denied']} map-only buffer mappings unknown: "
                         "stat of /proc/PID/map_files needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE")
    if counters.get("anon_dmabuf"):
        obs.notes.append(f"{counters['anon_dmabuf']} dma-buf fds from a kernel before 5.3 "
                         "(anon_inode:dmabuf): buffers cannot be told apart, each fd is counted "
                         "as its own buffer")
    if counters.get("no_identity"):
        obs.notes.append(f"{counters['no_identity']} buffer fds had no inode in fdinfo and no stat data: left out")
    return obs


def scan(src, pids: Optional[Iterable[int]] = None, smaps: bool = False):
    from .build import build
    taken_at = src.taken_at()
    obs = collect(src, pids, smaps)
    notes = list(getattr(src, "problems", ()))
    hostname, kernel = host_info(src)
    scope = "all" if pids is None else "pids"
    meta_scope = src.meta().get("scope")
    if meta_scope == "pids":
        scope = "pids"               # the capture itself covered only some processes
    return build(obs, taken_at=taken_at, source=src.label, hostname=hostname, kernel=kernel,
                 backend="procfs", scope=scope, smaps=smaps, extra_notes=notes)
