"""What both backends read the same way: the kernel-wide tables (SysV shm, the dma-buf
debugfs or sysfs table), a DRM client's fdinfo, the host's name and kernel, the notes a
scan's counters call for, and what a capture recorded as skipped."""
from __future__ import annotations

from typing import Dict, Optional

from .errors import Denied, ProcessGone, Unreadable, Vanished
from .observe import DrmClient, KernelBuffer, Observations
from .readers import debugfs, sysv
from .readers.drm import parse_drm_fdinfo
from .readers.num import u64 as to_u64
from .sources.base import is_number

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


def read_drm(p, fdn: int, fd: str, target: str, counters: Dict[str, int]) -> Optional[DrmClient]:
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
    """The notes a scan's per-fd counters call for (the procfs scan, the incremental scanner)."""
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


def merge_recorded_skips(src, obs: Observations, pids) -> None:
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
