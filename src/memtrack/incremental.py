"""Incremental scanning: refresh a snapshot without re-reading processes that did not change.

A full scan costs, per process, an fd directory listing, one readlink per fd (sockets and
pipes included), a maps read and parse, and status/cmdline; per buffer fd a stat or fdinfo
read. A refresh first takes a cheap *signature* of each process and re-reads only those
whose signature moved, reusing their previous observations otherwise:

  fd count     stat(/proc/PID/fd).st_size (Linux >= 6.2 reports the number of open fds;
               on older kernels, which say 0, the directory is listed: still no readlinks)
  /proc/PID/stat  starttime (a reused pid is another process), vsize (a mapping added,
               removed or resized changes it), minflt + majflt (a new mapping that is used
               faults pages in, and so does the smaps Rss growing)

Two syscalls and a short read per process instead of dozens. What the signature can miss: a
buffer fd closed and another opened in its place between two refreshes with no other fd
change, no mapping change and no page fault; a memfd resized by another process. So every
process is also fully re-read once every ``verify_every`` refreshes (a rotating slice, never
a burst): a stale entry lives at most that many refreshes. ``verify_every=1`` re-reads all.

Only live sources have signatures; a directory or archive is re-read whole each refresh
(it does not change under us, and re-reading is what proves it). The result is the same
Snapshot the full scan builds, from the same observations, merged in pid order.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import Dict, Iterable, List, Optional

from .rebuild import Part, Rebuilder
from .errors import ProcessGone
from .model import Snapshot
from .observe import Observations
from .kernel import counter_notes, host_info, merge_recorded_skips, read_kernel_tables
from .procfs import read_process
from .speed import no_gc
from .sources.base import now_iso
from .cgroup_scan import read_charges


_fd_count_in_size: Dict[str, bool] = {}


def _kernel_counts_fds(proc_root: str) -> bool:
    """Whether stat() of an fd directory gives the fd count (Linux 6.2+): ours is never 0."""
    v = _fd_count_in_size.get(proc_root)
    if v is None:
        try:
            v = os.stat(f"{proc_root}/self/fd").st_size > 0
        except OSError:
            v = False
        _fd_count_in_size[proc_root] = v
    return v


def live_signature(proc_root: str, pid: int) -> Optional[tuple]:
    """(fds, starttime, vsize, faults) of a live process, or None if it cannot be had."""
    base = f"{proc_root}/{pid}"
    try:
        if _kernel_counts_fds(proc_root):
            nfd = os.stat(base + "/fd").st_size
        else:
            nfd = len(os.listdir(base + "/fd"))       # older kernels: list, still no readlinks
        fd = os.open(base + "/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
    except OSError:
        return None
    # comm may hold spaces and parentheses: the fields start after the last ')'
    f = data[data.rfind(b")") + 2:].split()
    if len(f) < 21:
        return None
    # f[0] is field 3 (state): minflt 10, majflt 12, starttime 22, vsize 23
    return (nfd, f[19], f[20], f[7], f[9])


#: Observations lists filled once per machine, not per process
_MACHINE_WIDE = ("kernel", "notes", "cgroups")


def _per_process_lists(o: Observations):
    """(name, list) of every per-process record list, including ones other backends or
    readers add later (DRM clients...): a refresh must carry them all."""
    return [(k, v) for k, v in sorted(vars(o).items()) if isinstance(v, list) and k not in _MACHINE_WIDE]


def _facts(o: Observations) -> tuple:
    return tuple(v for _, v in _per_process_lists(o))


class _Part:
    """One process's share of the observations, kept between refreshes."""
    __slots__ = ("sig", "obs", "counters")

    def __init__(self, sig, obs, counters):
        self.sig, self.obs, self.counters = sig, obs, counters


@dataclass
class RefreshStats:
    processes: int = 0          # pids listed
    reread: int = 0             # fully re-read (signature moved, new, or due for verification)
    reused: int = 0             # observations reused as they were
    verified: int = 0           # re-read only because their verification turn came
    seconds: float = 0.0


class IncrementalScanner:
    """scanner = IncrementalScanner(); snap = scanner.refresh()  # again and again.

    Reusable by any long-running view (top, record, an exporter). Not thread-safe."""

    def __init__(self, src=None, pids: Optional[Iterable[int]] = None, smaps: bool = False,
                 verify_every: int = 30):
        if src is None:
            from .sources.live import LiveSource
            src = LiveSource()
        self.src = src
        self.pids = None if pids is None else sorted(set(pids))
        self.smaps = smaps
        self.verify_every = max(0, int(verify_every))
        self.generation = 0
        self.stats = RefreshStats()
        self.last: Optional[Snapshot] = None
        self._parts: Dict[int, _Part] = {}
        self._tables = None
        self._rebuilder = Rebuilder()
        self._host = host_info(src)
        root = getattr(src, "proc_root", None)
        self._proc_root = root if getattr(src, "live", False) and root else None

    def signature(self, pid: int):
        if self._proc_root is None:
            return None
        return live_signature(self._proc_root, pid)

    def refresh(self) -> Snapshot:
        with no_gc():
            return self._refresh()

    def _refresh(self) -> Snapshot:
        t0 = time.perf_counter()
        src = self.src
        stats = RefreshStats()
        obs = Observations()
        taken_at = src.taken_at() if not src.live else now_iso()
        read_kernel_tables(src, obs)
        try:
            pids = src.pids() if self.pids is None else self.pids
        except ProcessGone:
            pids = []
        stats.processes = len(pids)
        gen, k = self.generation, self.verify_every
        old, new = self._parts, {}
        todo: List[tuple] = []
        sized: Dict[tuple, int] = {}
        for pid in pids:
            sig = self.signature(pid)
            part = old.get(pid)
            if sig is not None and part is not None and part.sig == sig:
                if k and (pid + gen) % k == 0:
                    stats.verified += 1
                else:
                    new[pid] = part
                    for r in part.obs.fds:
                        if r.size is not None:
                            sized[(r.kind, r.fs, r.inode)] = r.size
                    continue
            todo.append((pid, sig))
        binds = None
        if todo and self._proc_root is not None:
            from .readers.mounts import live_shm_binds
            binds = live_shm_binds(self._proc_root)
        for pid, sig in todo:
            sub = Observations()
            sub.dmabuf_source = obs.dmabuf_source
            counters: Dict[str, int] = {}
            read_process(src, pid, sub, self.smaps, sized, counters, binds)
            part = _Part(sig, sub, counters)
            # a process that went away or failed is asked again next time, never cached; nor
            # one read through its threads' tables, which its signature does not cover
            if sub.vanished or sub.unreadable or counters.get("thread_tables"):
                part.sig = None
            new[pid] = part
        # what the memory controller charged the holders' cgroups: read every refresh
        for part in new.values():
            obs.cgroup_hier.update(part.obs.cgroup_hier)
        read_charges(src, obs, [pi for part in new.values() for pi in part.obs.procs])
        moved = {pid for pid in old if pid not in new}
        moved.update(pid for pid, _ in todo
                     if pid not in old or _facts(old[pid].obs) != _facts(new[pid].obs))
        stats.reread = len(todo)
        stats.reused = len(pids) - len(todo)
        tables = (obs.kernel, obs.dmabuf_source, obs.dmabuf_total, obs.dmabuf_count,
                  obs.sysv_source, obs.notes, obs.cgroups)
        self._parts = new
        if not moved and self.last is not None and tables == self._tables and src.live:
            # nothing moved: the previous snapshot is this one (building is the costly part)
            self.generation += 1
            snap = replace(self.last, taken_at=taken_at)
            stats.seconds = time.perf_counter() - t0
            self.stats, self.last = stats, snap
            return snap
        self._tables = tables
        # each process's fds, maps and ProcInfo go to the Rebuilder as its part; everything
        # else it observed (skipped, DRM clients, smaps Rss) is merged machine-wide
        counters: Dict[str, int] = {}
        parts: Dict[int, Part] = {}
        for pid in pids:
            part = new.get(pid)
            if part is None:
                continue
            o = part.obs
            parts[pid] = Part(o.fds, o.maps, o.procs[0] if o.procs else None)
            for name, records in _per_process_lists(o):
                if name not in ("fds", "maps", "procs"):
                    getattr(obs, name).extend(records)
            for key, n in part.counters.items():
                counters[key] = counters.get(key, 0) + n
        obs.notes.extend(counter_notes(counters))
        scope = "all" if self.pids is None else "pids"
        if not src.live:
            merge_recorded_skips(src, obs, self.pids)
            if src.meta().get("scope") == "pids":
                scope = "pids"
        self.generation += 1
        hostname, kernel = self._host
        snap = self._rebuilder.build(
            obs, parts, moved if src.live else None, taken_at=taken_at, source=src.label,
            hostname=hostname, kernel=kernel, backend="procfs", scope=scope, smaps=self.smaps,
            extra_notes=list(getattr(src, "problems", ())))
        stats.seconds = time.perf_counter() - t0
        self.stats = stats
        self.last = snap
        return snap

    def close(self) -> None:
        self.src.close()


class BpfRefresher:
    """The IncrementalScanner interface over the BPF backend: the object is loaded once and
    each refresh reads the iterators (the scanner hands back its last snapshot when the
    iterators return exactly the same records). Should a read fail under --backend auto, the
    refresher falls back to the incremental procfs scanner for good, and says why."""

    def __init__(self, scanner, requested: str, smaps: bool, verify_every: int, reason: Optional[str]):
        self.scanner, self.requested, self.smaps = scanner, requested, smaps
        self.verify_every, self.reason = verify_every, reason
        self.fallback: Optional[IncrementalScanner] = None
        self.stats = RefreshStats()
        self.last = None

    def refresh(self):
        if self.fallback is not None:
            snap = self.fallback.refresh()
            self.stats = self.fallback.stats
            return snap
        from .bpf import BpfUnavailable, fallback_reason
        t0 = time.perf_counter()
        try:
            snap = self.scanner.scan(smaps=self.smaps, reason=self.reason)
        except BpfUnavailable as exc:
            reason = fallback_reason(self.requested, exc)
            self.close()
            self.fallback = IncrementalScanner(smaps=self.smaps, verify_every=self.verify_every)
            snap = self.fallback.refresh()
            self.stats = self.fallback.stats
            return replace(snap, backend_reason=reason)
        st = RefreshStats()
        st.processes = len(snap.processes)
        n = self.scanner.reparsed
        st.reread = st.processes if n is None else min(n, st.processes)
        st.reused = st.processes - st.reread
        st.seconds = time.perf_counter() - t0
        self.stats, self.last = st, snap
        return snap

    def close(self) -> None:
        if self.scanner is not None:
            self.scanner.close()
            self.scanner = None


def live_refresher(backend: str = "auto", smaps: bool = False, verify_every: int = 30):
    """What top, record and serve refresh this machine with: the BPF backend loaded once
    where it runs (--backend), else the incremental procfs scanner. Both have refresh() and
    stats."""
    from .bpf import open_backend
    scanner, reason = open_backend(backend, live=True, reuse=True, verify_every=verify_every)
    if scanner is None:
        return IncrementalScanner(smaps=smaps, verify_every=verify_every)
    return BpfRefresher(scanner, backend, smaps, verify_every, reason)
