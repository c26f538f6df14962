"""BpfScanner: the iterators' records parsed, checked and built into a Snapshot, and what a
reused scanner carries from one scan to the next (see memtrack.bpf for what it reads).
"""
from __future__ import annotations

import os
import threading
from dataclasses import replace
from operator import itemgetter
from typing import Dict, Iterable, List, NamedTuple, Optional, Tuple

from ..bpf_policy import unavailable
from .._libbpf import DRM_MAJOR, OBJECT
from ..errors import BpfUnavailable
from ..observe import Observations, ProcInfo, VmaRss
from ..readers.proc import parse_cmdline as _parse_cmdline
from ..rebuild import Rebuilder
from ..cgroup_scan import read_charges
from ..sources.live import LiveSource, read_at
from . import access
from .access import GateCache, Skipped, as_caller, caller, no_caller, others_denied
from .reads import Pending, Reads, resolved, split_by_tgid
from ..readers.mounts import live_shm_binds
from .records import C_OK, CMD_REC, link_target

_PID = itemgetter(0)                # FdRef.pid, MapRef.pid
_new = tuple.__new__                 # a NamedTuple without its Python-level __new__


class Memo(NamedTuple):
    """The last scan, given again while its inputs are byte for byte the same."""
    inputs: tuple       # (Raw, the pids asked for, hostname, kernel)
    snap: object        # its Snapshot


class Parsed(NamedTuple):
    """What _rescan() patches: the last scan's records and what was made of them, per process."""
    key: tuple          # (the pids asked for, hostname, kernel) it was made for
    files: dict         # pid -> its task_file records
    vmas: dict          # pid -> its task_vma records
    parts: dict         # pid -> its rebuild.Part (fds, maps, ProcInfo)
    status: dict        # holder pid -> "denied" or "vanished"


class _Links:
    """A readlink for the parsers that keeps, per process, what each link it read said (a
    file with a real path is named by its link: a reused scanner reads them again)."""

    def __init__(self):
        self.by_pid: Dict[int, Dict[str, Optional[str]]] = {}

    def __call__(self, path: str) -> Optional[str]:
        target = link_target(path)
        self.by_pid.setdefault(int(path.split("/", 3)[2]), {})[path] = target
        return target


def _proc_cgroup(pid: int, hier) -> Optional[str]:
    """A holder's memory cgroup, as the procfs backend reads it (its hierarchy into hier)."""
    from ..cgroup_scan import note_cgroup
    text = read_at("/proc/%d/cgroup" % pid, single=True).decode("utf-8", "surrogateescape")
    if hier is None:
        hier = {}
    return note_cgroup(_Hier(hier), text)


class _Hier:
    """What note_cgroup needs of an Observations: its cgroup_hier."""
    __slots__ = ("cgroup_hier",)

    def __init__(self, hier):
        self.cgroup_hier = hier


def _proc_cmdline(pid: int) -> str:
    """/proc/PID/cmdline as procfs reports it (OSError: gone)."""
    return _parse_cmdline(read_at("/proc/%d/cmdline" % pid, single=True))


def _by_pid(records) -> Dict[int, list]:
    """Records (FdRef, MapRef: pid first) -> pid -> its records, in their order."""
    out: Dict[int, list] = {}
    for r in records:
        out.setdefault(r.pid, []).append(r)
    return out


def _drm_clients(pid: int, fds: List[int], counters: Dict[str, int]) -> Optional[list]:
    """The DRM clients behind the DRM fds the iterator found, from their fdinfo text read as
    the procfs backend reads it (only these fds: no walk of fd/); None if the process is gone."""
    from ..errors import ProcessGone
    from ..readers.drm import is_drm_path
    from ..kernel import read_drm
    from ..sources.live import LiveProc
    try:
        p = LiveProc("/proc", pid)
    except ProcessGone:
        return None
    out = []
    try:
        for fd in fds:
            try:
                target = os.readlink("/proc/%d/fd/%d" % (pid, fd))
            except OSError:
                continue
            if is_drm_path(target):
                client = read_drm(p, fd, str(fd), target, counters)
                if client is not None:
                    out.append(client)
    finally:
        p.close()
    return out


def _task_from_proc(pid: int):
    """A task the iterators did not describe, from /proc/PID/status (never cached: -1)."""
    from ..readers.proc import parse_status
    from .records import Task
    try:
        comm, uid = parse_status(read_at("/proc/%d/status" % pid, single=True).decode("utf-8", "surrogateescape"))
    except OSError:
        return None
    return Task(pid, uid, -1, comm)


class _Given:
    """A source holding one file already read (or the error reading it gave)."""

    def __init__(self, data):
        self.data = data

    def read_text(self, rel):
        from ..errors import translate_oserror
        if isinstance(self.data, OSError):
            raise translate_oserror(self.data)
        return self.data.decode("utf-8", "surrogateescape")


class BpfScanner(Reads):
    """Loads the iterators once; scan() reads them into a Snapshot as often as needed.

    A reused scanner (`reuse`, the default: top, serve, record) carries from one scan to the
    next what cannot have changed, and so reads much less each time:
      - mappings: iter/task says, per process, the mm's change sequence (it moves on every
        mmap, munmap, mremap, mprotect...); only the processes whose sequence moved (or that
        are new) are walked again, each with an iter/task_vma of its own. A mapped file's
        size or a dma-buf's name can change without the mm moving: every process that maps a
        buffer is walked again once every `verify_every` scans (a rotating slice), so a stale
        one lives at most that many scans (one that maps none can only start to by mapping,
        which moves its sequence);
      - /proc's access verdicts, per process identity (access.GateCache);
      - cmdlines, per process start time;
      - the Snapshot itself, when every input is byte-identical to the last scan's.
    `reuse=False` reads and builds everything every time (what a one-shot command does)."""

    def __init__(self, obj: str = OBJECT, drm_major: int = DRM_MAJOR, reuse: bool = True,
                 verify_every: int = 30):
        from .. import _preload
        from .._libbpf import LibbpfError, open_iterators
        # the CLI may have loaded the object already, while it imported the rest
        got = _preload.take(obj, drm_major, reuse)
        why = unavailable(obj)
        if why:
            if got:
                got[0].close()
            raise BpfUnavailable(why)
        try:
            got = got or open_iterators(obj, drm_major, reuse)
        except LibbpfError as exc:
            raise BpfUnavailable(f"the kernel refused the BPF iterators: {exc}") from None
        self._obj, self.has_dmabuf, self.notes = got
        # one scan at a time: what a scan carries to the next (verdicts, the last snapshot)
        # was made on the credentials of the thread that scanned, and is checked against
        # the next scan's caller (GateCache.caller) before it is used
        self._lock = threading.RLock()
        self.reuse = reuse
        self.verify_every = max(0, int(verify_every))
        self._cmdlines: Optional[Dict[Tuple[int, int], str]] = {} if reuse else None
        self._gates = GateCache(verify_every if reuse else 1)
        self.drm_fds: List[tuple] = []      # (pid, fd, kernel rdev) of DRM device fds, last scan
        self._memo: Optional[Memo] = None   # the last scan
        self._gated: List[int] = []         # the holders the last scan checked
        self._others = Skipped((), ())      # others_denied() of the last scan
        self._links: Dict[int, Dict[str, Optional[str]]] = {}   # pid -> readlinks its parse made
        self._state: Optional[Parsed] = None    # what _rescan() patches
        self._rebuilder = Rebuilder()
        self.reparsed: Optional[int] = None  # processes the last scan parsed again (None: all)
        self.init_reads()

    def _tables(self, dmabufs, sysv) -> Observations:
        """Observations holding the machine-wide tables: SysV segments, dma-bufs."""
        from ..kernel import read_dmabuf_table, read_sysv_table
        from ..sources.live import LiveSource
        from .records import parse_dmabufs
        obs = Observations()
        obs.notes.extend(self.notes)
        read_sysv_table(_Given(sysv), obs)
        if dmabufs is not None:
            bufs = parse_dmabufs(dmabufs)
            obs.kernel.extend(bufs)
            obs.dmabuf_source = "dmabuf_iter"
            obs.dmabuf_count = len(bufs)
            obs.dmabuf_total = sum(b.size for b in bufs)
        else:
            read_dmabuf_table(LiveSource(), obs)
        return obs

    @staticmethod
    def _describe(pid: int, t, cache, fresh, cmds=None, hier=None) -> Optional[ProcInfo]:
        """ProcInfo of a holder from its task record and its cmdline: cached per start time
        in `cache` (kept in `fresh`), else as task_cmd copied it (`cmds`: pid -> its
        record) where the record is of this task and sure, else /proc/PID/cmdline; None if
        it is gone (the functions it reads with are bound at import: it runs once per
        holder)."""
        if t is None:                       # not expected: the iterators describe each task
            t = _task_from_proc(pid)
            if t is None:
                return None
        key = (pid, t.start_time)
        cmdline = cache.get(key) if cache is not None else None
        if cmdline is None and cmds is not None:
            rec = cmds.get(pid)             # (tgid, flags, start_time, len, pad, arg)
            if rec is not None and rec[1] & C_OK and rec[2] == t.start_time:
                cmdline = _parse_cmdline(rec[5][:rec[3]])
        if cmdline is None:
            try:
                cmdline = _proc_cmdline(pid)
            except OSError:
                return None                 # gone since the iterator saw it, as procfs counts it
        if fresh is not None:
            fresh[key] = cmdline
        # the cgroup is read every scan, never cached: a process moves between cgroups
        # without an exec (the task records would not tell)
        try:
            cgroup = _proc_cgroup(pid, hier)
        except OSError:
            return None
        return _new(ProcInfo, (pid, t.comm, cmdline, t.uid, cgroup))

    def collect(self, pids: Optional[Iterable[int]] = None, smaps: bool = False,
                raw: Optional[tuple] = None) -> Observations:
        """The observations of one scan (of `raw`, what _read() gave, or a new read)."""
        with self._lock:
            return self._collect_as_caller(pids, smaps, raw)

    def _collect_as_caller(self, pids, smaps, raw) -> Observations:
        outer = not caller.scanning
        if outer:
            self._as_caller()
        try:
            raw = raw if raw is not None else self._read()
            try:
                return self._collect(pids, smaps, raw)
            finally:
                if isinstance(raw[1], Pending):
                    raw[1].wait()           # the walk ended, the switch interval restored
        finally:
            if outer:
                no_caller()

    def _as_caller(self) -> None:
        """A scan starts on this thread's credentials as they are now (access.caller);
        verdicts kept from scans on others are dropped."""
        as_caller(self._gates)

    def _collect(self, pids, smaps, raw) -> Observations:
        from ..readers.smaps import parse_rss
        from ..kernel import counter_notes
        from .records import parse_files, parse_vmas

        files, vmas, dmabufs, sysv = raw
        if isinstance(files, dict):
            files = b"".join(files[pid] for pid in sorted(files))
        obs = self._tables(dmabufs, sysv)
        want = set(pids) if pids is not None else None
        tasks: dict = {}
        fds: list = []
        maps: list = []
        drm: list = []
        pfnmap: set = set()
        links = _Links()
        binds = live_shm_binds()
        parse_files(files, tasks, fds, drm, want, links, binds)
        if isinstance(vmas, Pending) and not vmas.ready() and not self.reuse:
            # the walk is still going (processes with many mappings): merge the fds for
            # build() meanwhile, rather than wait
            from ..build import accumulate_fds
            pre = accumulate_fds(fds, whole=False)
            if pre is not None:
                obs.fd_accs = (fds, pre)
        parse_vmas(resolved(vmas), tasks, maps, pfnmap, want, links, binds)
        cmds, listing = (vmas.extras() or (None, None)) if isinstance(vmas, Pending) else (None, None)
        cmds = {rec[0]: rec for rec in CMD_REC.iter_unpack(cmds)} if cmds else None
        self._links = links.by_pid if self.reuse else {}
        self.drm_fds = drm

        gate = self._gates if self.reuse else access.gate   # a one-shot scanner keeps no verdicts
        drm_pids = {pid for pid, _fd, _rdev in drm}
        has_refs = set(map(_PID, fds))
        has_refs.update(map(_PID, maps))
        holders = sorted(has_refs | drm_pids)
        self._gated = holders
        self._others = others_denied(set(holders), want, gate, listing)
        obs.denied.extend(self._others.denied)
        obs.vanished.extend(self._others.vanished)
        cache = self._cmdlines
        fresh = {} if cache is not None else None
        gone = set()
        counters: Dict[str, int] = {}
        for pid in holders:
            why = gate(pid)
            if why is not None:
                (obs.denied if why == "denied" else obs.vanished).append(pid)
                gone.add(pid)
                continue
            if pid in drm_pids:
                clients = _drm_clients(pid, [fd for p, fd, _r in drm if p == pid], counters)
                if clients is None:
                    obs.vanished.append(pid)
                    gone.add(pid)
                    continue
                obs.drm.extend(clients)
                if not clients and pid not in has_refs:
                    continue                # DRM fds without usage stats: procfs lists nothing
            info = self._describe(pid, tasks.get(pid), cache, fresh, cmds, obs.cgroup_hier)
            if info is None:
                obs.vanished.append(pid)
                gone.add(pid)
                continue
            obs.procs.append(info)
        read_charges(LiveSource(), obs)
        self._cgroup_hier = obs.cgroup_hier
        if cache is not None:
            self._cmdlines = fresh          # forget processes that went away
        if gone:
            fds = [r for r in fds if r.pid not in gone]
            maps = [m for m in maps if m.pid not in gone]
        obs.fds, obs.maps = fds, maps
        obs.notes.extend(counter_notes(counters))
        if smaps:
            for pid in sorted({m.pid for m in maps}):
                try:
                    text = read_at("/proc/%d/smaps" % pid)
                    if not text:                # an exited leader: a live thread's mm
                        tids = [t for t in os.listdir("/proc/%d/task" % pid) if t != str(pid)]
                        text = read_at("/proc/%s/smaps" % min(tids, key=int)) if tids else b""
                    per_vma = parse_rss(text)
                except OSError:
                    continue
                for m in maps:
                    if m.pid == pid and m.start in per_vma:
                        obs.rss.append(VmaRss(pid, m.start, per_vma[m.start]))
        return obs

    def scan(self, pids: Optional[Iterable[int]] = None, smaps: bool = False,
             reason: Optional[str] = None):
        """A Snapshot of this machine now. A reused scanner (top, serve) whose inputs are
        exactly the bytes of its last scan, with every holder still readable, returns that
        scan's Snapshot again with the new time; when some processes' records moved, it
        parses and describes only those and patches the last Snapshot (rebuild.Rebuilder).
        With smaps or DRM clients every scan is read and built whole."""
        from ..sources.base import now_iso
        taken_at = now_iso()
        with self._lock:
            self._as_caller()
            try:
                raw = self._read()
                pending = raw.vmas if isinstance(raw.vmas, Pending) else None
                try:
                    return self._scan(raw, pids, smaps, reason, taken_at)
                finally:
                    if pending is not None:
                        pending.wait()      # no read may outlive the scan (close() frees links)
            finally:
                no_caller()

    def _scan(self, raw, pids, smaps, reason, taken_at):
        from ..kernel import host_info
        from ..speed import no_gc
        from ..sources.live import LiveSource
        hostname, kernel = host_info(LiveSource())
        want = None if pids is None else frozenset(pids)
        meta = dict(taken_at=taken_at, source="live", hostname=hostname, kernel=kernel,
                    backend="bpf", scope="all" if pids is None else "pids", smaps=smaps)
        memo = self._memo
        gate = self._gates
        if memo is not None and isinstance(raw.vmas, Pending):
            raw = raw._replace(vmas=raw.vmas.get())
        stale = self._stale() if self._state is not None else set()
        if (memo is not None and not smaps and raw.dmabufs is not None and not stale
                and memo.inputs == (raw, want, hostname, kernel)
                and all(gate(pid) is None for pid in self._gated)
                and others_denied(set(self._gated), want, gate) == self._others):
            snap = replace(memo.snap, taken_at=taken_at)
            self.reparsed = 0
        else:
            # tens of thousands of small objects and no cycles: the cyclic GC would only
            # rescan them, again and again as they are made (half the build time at 20k fds)
            with no_gc():
                got = None
                state = self._state
                self.reparsed = None
                if state is not None and state.key == (want, hostname, kernel) and not smaps:
                    try:
                        got = self._rescan(raw, want, meta, stale)
                    except BaseException:
                        # nothing half-done may serve the next scan: it starts afresh
                        self._state = self._memo = None
                        self._rebuilder = Rebuilder()
                        raise
                if got is None:
                    got = self._scan_whole(raw, pids, want, smaps, meta)
            snap, obs = got
            raw = raw._replace(vmas=resolved(raw.vmas))
            # DRM clients' fdinfo (engine time, resident memory) moves without the records
            # moving: a scan that read any is never reused
            gated = set(self._gated)
            clean = not (self.drm_fds or [p for p in obs.denied + obs.vanished if p in gated])
            # (a one-shot scanner keeps none: its next scan would wait for the VMA walk to
            # compare the inputs, where it parses the files meanwhile)
            self._memo = Memo((raw, want, hostname, kernel), snap) \
                if clean and not smaps and self.reuse else None
        return replace(snap, backend_reason=reason) if reason else snap

    def _scan_whole(self, raw, pids, want, smaps, meta):
        """collect() and build everything; a reused scanner keeps the pieces for _rescan."""
        from ..build import build
        from ..rebuild import Part
        from .records import FD_REC, VMA_REC
        obs = self.collect(pids, smaps, raw=raw)
        self._state = None
        if not self.reuse or smaps or self.drm_fds:
            return build(obs, **meta), obs
        fds_by, maps_by = _by_pid(obs.fds), _by_pid(obs.maps)
        parts = {p.pid: Part(fds_by.get(p.pid, []), maps_by.get(p.pid, []), p) for p in obs.procs}
        gated = set(self._gated)
        status = {pid: "denied" for pid in obs.denied if pid in gated}
        status.update((pid, "vanished") for pid in obs.vanished if pid in gated)
        vparts = self._vma_parts
        if vparts is None:
            vparts = self._vma_parts = split_by_tgid(resolved(raw.vmas), VMA_REC.size)
        fparts = raw.files if isinstance(raw.files, dict) else split_by_tgid(raw.files, FD_REC.size)
        self._state = Parsed((want, meta["hostname"], meta["kernel"]), fparts, vparts, parts, status)
        return self._rebuilder.build(obs, parts, None, **meta), obs

    def _stale(self) -> set:
        """Holders whose records may be unchanged while what a scan says of them moved: an
        exec, a new uid or comm (the task's identity); a link the parse resolved that now
        reads otherwise (a /dev/shm directory renamed); and, in a rotating slice (each
        holder once every verify_every scans), a cmdline rewritten in place."""
        out = set()
        last, now = self._last_tasks, self._tasks
        parts, status = self._state.parts, self._state.status
        for holders in (parts, status):
            for pid in holders:
                a, b = last.get(pid), now.get(pid)
                # equal for nearly all; the sequence alone moving is the VMA walk's business
                if a != b and a is not None and b is not None and (
                        a.start != b.start or a.cred != b.cred or a.mm != b.mm or a.comm != b.comm):
                    out.add(pid)
        cache = self._cmdlines
        if out and cache:                   # an exec: its cmdline is read again
            self._cmdlines = cache = {key: v for key, v in cache.items() if key[0] not in out}
        for pid, links in self._links.items():
            if any(link_target(path) != target for path, target in links.items()):
                out.add(pid)
        k, gen = self.verify_every, self._gates.gen
        if k:
            for pid, part in parts.items():
                if (pid + gen) % k == 0 and pid not in out:
                    try:
                        cmdline = _proc_cmdline(pid)
                    except OSError:
                        continue            # gone: the scan's own checks say so
                    if cmdline != part.proc.cmdline:
                        out.add(pid)
                        task = now.get(pid)
                        if cache is not None and task is not None:
                            cache[(pid, task.start)] = cmdline  # what describing it reads
        return out

    def _rescan(self, raw, want, meta, stale=frozenset()):
        """The scan after a reused scanner's last one: only the processes whose records (or
        access verdict, or what _stale() found) changed are parsed and described again, and
        the snapshot is patched; None where that cannot be done (DRM fds appeared)."""
        from ..rebuild import Part
        from .records import FD_REC, VMA_REC, parse_files, parse_vmas
        files, vmas, dmabufs, sysv = raw
        key, old_f, old_v, old_parts, old_status = self._state
        fparts = files if isinstance(files, dict) else split_by_tgid(files, FD_REC.size)
        vparts = self._vma_parts
        if vparts is None:
            vparts = self._vma_parts = split_by_tgid(resolved(vmas), VMA_REC.size)
        pids = set(fparts) | set(vparts) | set(old_f) | set(old_v)
        if want is not None:
            pids &= want
        changed = {p for p in pids if fparts.get(p) != old_f.get(p) or vparts.get(p) != old_v.get(p)}
        changed |= stale & pids
        gate = self._gates
        for pid in (set(old_parts) | set(old_status)) - changed:
            if gate(pid) != old_status.get(pid):
                changed.add(pid)
        order = sorted(changed)
        tasks: dict = {}
        fds: list = []
        maps: list = []
        drm: list = []
        links = _Links()
        binds = live_shm_binds()
        parse_files(b"".join(fparts.get(p, b"") for p in order), tasks, fds, drm, want, links, binds)
        if drm:
            return None
        parse_vmas(b"".join(vparts.get(p, b"") for p in order), tasks, maps, set(), want, links, binds)
        fds_by, maps_by = _by_pid(fds), _by_pid(maps)
        parts, status = dict(old_parts), dict(old_status)
        cache = self._cmdlines
        hier: Dict[str, str] = {}
        for pid in order:
            parts.pop(pid, None)
            status.pop(pid, None)
            f, m = fds_by.get(pid, []), maps_by.get(pid, [])
            if not f and not m:
                continue                    # holds nothing (any more)
            why = gate(pid)
            if why is not None:
                status[pid] = why
                continue
            info = self._describe(pid, tasks.get(pid), cache, cache, None, hier)
            if info is None:
                status[pid] = "vanished"
                continue
            parts[pid] = Part(f, m, info)
        if cache is not None and len(cache) > 2 * len(parts) + 64:
            self._cmdlines = {k: v for k, v in cache.items() if k[0] in parts}
        obs = self._tables(dmabufs, sysv)
        obs.cgroup_hier.update(getattr(self, "_cgroup_hier", {}))
        obs.cgroup_hier.update(hier)
        self._cgroup_hier = obs.cgroup_hier
        read_charges(LiveSource(), obs, [part.proc for part in parts.values()])
        holders = sorted(set(parts) | set(status))
        self._gated = holders
        self._others = others_denied(set(holders), want, gate)
        obs.denied.extend(self._others.denied)
        obs.vanished.extend(self._others.vanished)
        obs.denied.extend(p for p, why in status.items() if why == "denied")
        obs.vanished.extend(p for p, why in status.items() if why == "vanished")
        self.drm_fds = []
        self.reparsed = len(changed)
        snap = self._rebuilder.build(obs, parts, changed, **meta)
        for pid in order:
            self._links.pop(pid, None)
        self._links.update(links.by_pid)
        self._state = Parsed(key, fparts, vparts, parts, status)
        return snap, obs

    # -- lifetime ------------------------------------------------------------------------
    def close(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is None:                    # __init__ did not get that far
            return
        with lock:                          # not under another thread's scan
            obj = getattr(self, "_obj", None)
            if obj is not None:
                obj.close()
                self._obj = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
