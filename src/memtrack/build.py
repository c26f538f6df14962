"""The one builder: observations (from any backend) -> Snapshot.

Identity is (kind, fs, inode) with fs as in observe.py. An fd seen only through fdinfo (a
capture without the fdstat sidecar) carries no device; it joins the one device that other
observations of the same kind and inode show, if exactly one does. Sizes come, in this
order, from the fd (fdinfo or stat), the kernel tables, then a stat of map_files: never
from a mapping's length. Allocated bytes (what the buffer really holds) come from the same
places: the stat's block count, the SysV table's rss + swap, map_files; a dma-buf's are its
size (the kernel has no finer figure).

Cost: a big scan has tens of thousands of buffers, nearly all held through one fd of one
process. The Buffer and Ref objects made for them are most of the time (model.new_buffer
and new_ref make them at half __init__'s cost); the merging around them is kept to one dict lookup
per record and no container for a buffer seen once. tests/reference_build.py says the same
rules the plain way; test_build.py checks both agree.
"""
from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from operator import itemgetter
from typing import Dict, List, Optional

from .model import KINDS, GpuClient, Host, KernelInfo, Process, Skipped, Snapshot, new_buffer, new_ref
from .observe import Observations

_KIND_ORDER = {k: i for i, k in enumerate(KINDS)}
_NOT_DEV = ("dmabuf", "sysv", "anon")     # identity fs values that name no device
_INODE = itemgetter(2)
_KIND_INODE = itemgetter(0, 2)

# What is known of one buffer while the observations are merged. Most buffers are seen
# once, by one fd: for them it is that FdRef itself. Any second sighting opens it into a
# list (not an object: a big scan has tens of thousands) indexed by these. FDS: pid ->
# [fd, ...]; VMAS: None until the buffer is seen mapped, then pid -> [(start, end, offset), ...];
# PRIV: the same for MAP_PRIVATE mappings.
SIZE, SIZE_FROM, EXPORTER, NAME, COUNT, KERNEL_COUNT, DEV, FDS, VMAS, PRIV, ALLOC, SWAPPED = range(12)


TWICE_NOTE = ("%d dma-buf fds came without their inode (a Linux 5.3-5.13 capture without the fdstat "
              "sidecar) in processes that also map dma-bufs: a buffer both open and mapped by one "
              "process counts twice there, once by its fd and once by its mapping")


def fds_beside_maps(fds, maps) -> int:
    """dma-buf fds without an inode in processes that map a dma-buf. Such an fd cannot be
    joined to the mapping it may share a buffer with (nothing names its buffer), so the
    builder keeps both apart and says so. A count per process, summed: the Rebuilder keeps
    it per process."""
    mapping = {m[0] for m in maps if m[4] == "dmabuf"}
    if not mapping:
        return 0
    return sum(1 for r in fds if r[2] == "dmabuf" and r[4] is None and r[0] in mapping)


def _resolver(obs: Observations):
    """Device for fd observations that came without one (fdinfo only: a capture without
    the fdstat sidecar): the one device other observations of that kind and inode show."""
    if all(r.fs is not None for r in obs.fds):
        return None
    devs = defaultdict(set)
    for r in obs.fds:
        if r.fs is not None and r.kind != "dmabuf":
            devs[(r.kind, r.inode)].add(r.fs)
    for m in obs.maps:
        if m.kind not in ("dmabuf", "sysv"):
            devs[(m.kind, m.inode)].add(m.fs)
    return {k: next(iter(v)) for k, v in devs.items() if len(v) == 1}


class _Ones(dict):
    """n -> (n,), one tuple for each n: most buffers have one holder and most references one
    fd, and the pids and fd numbers repeat (an allocation and a GC-tracked object saved)."""

    def __missing__(self, n):
        t = self[n] = (n,)
        return t


def _device(k) -> Optional[str]:
    kind, fs, _inode = k
    return None if kind == "dmabuf" or fs in _NOT_DEV else fs


def _open(k, r) -> list:
    """The accumulator of a buffer seen so far through one fd, the FdRef r."""
    pid, fd, _kind, _fs, _inode, size, name, exporter, count, size_from, alloc = r
    return [size, size_from, exporter, name, count, None, _device(k), {pid: [fd]}, None, None, alloc, None]


def order_key(k) -> tuple:
    """The order of buffers in a Snapshot, from their identity (kind, fs, inode): by kind,
    then inode; anonymous (pre-5.3) dma-bufs last, by (pid, fd). Unique per identity."""
    kind, fs, inode = k
    if fs == "anon":
        return (_KIND_ORDER[kind], 1, 0, "", inode)
    return (_KIND_ORDER.get(kind, 99), 0, inode, fs or "", ())


def _in_order(accs, shared) -> list:
    """The identities sorted by order_key, without calling it per buffer where that can be
    told in C: sorted by (kind, inode), then the kinds' runs put in KINDS order. That is
    order_key's order when no inode is shared by two filesystems (the tie order_key breaks
    by fs), none is an anonymous dma-buf's (pid, fd) and every kind is known."""
    if not shared:
        try:
            keys = sorted(accs, key=_KIND_INODE)
        except TypeError:               # (pid, fd) of an anonymous dma-buf beside inodes
            keys = None
        if keys is not None:
            bounds = [(bisect_left(keys, (kind,)), bisect_left(keys, (kind + "\0",)))
                      for kind in KINDS]
            if sum(hi - lo for lo, hi in bounds) == len(keys):    # no kind outside KINDS
                if any(hi - lo == len(keys) for lo, hi in bounds):
                    return keys                                     # one kind
                return [k for lo, hi in bounds for k in keys[lo:hi]]
    return sorted(accs, key=order_key)


def _shared_ids(accs) -> set:
    """(kind, inode) pairs that two filesystems share: their ids name the device too."""
    if len(set(map(_INODE, accs))) == len(accs) or len(set(map(_KIND_INODE, accs))) == len(accs):
        return set()                   # the usual case, told in C
    seen = defaultdict(int)
    for kind, fs, inode in accs:
        if fs != "anon":
            seen[(kind, inode)] += 1
    return {k for k, n in seen.items() if n > 1}


def accumulate_fds(fds, resolved=None, whole: bool = True) -> Optional[dict]:
    """The first step of build(): the fd observations merged by buffer identity, for a
    backend that has its fds before its mappings and time to spare while it waits
    (Observations.fd_accs). whole=False: None if any fd lacks its device, which only the
    mappings can resolve (_resolver)."""
    accs: Dict[tuple, list] = {}
    get = accs.get
    for r in fds:
        k = r[2:5]                     # (kind, fs, inode), a plain tuple
        if k[0] == "dmabuf":
            inode = k[2]
            k = ("dmabuf", "dmabuf", inode) if inode is not None else ("dmabuf", "anon", (r[0], r[1]))
        elif k[1] is None:
            if not whole:
                return None
            if resolved:
                k = (k[0], resolved.get((k[0], k[2])), k[2])
        a = get(k)
        if a is None:
            accs[k] = r
            continue
        pid, fd, _kind, _fs, _inode, size, name, exporter, count, size_from, alloc = r
        if a.__class__ is not list:
            a = accs[k] = _open(k, a)
        if a[SIZE] is None and size is not None:
            a[SIZE], a[SIZE_FROM] = size, size_from
        if a[ALLOC] is None:
            a[ALLOC] = alloc
        if a[EXPORTER] is None:
            a[EXPORTER] = exporter
        if a[NAME] is None:
            a[NAME] = name
        if a[COUNT] is None:
            a[COUNT] = count
        fds = a[FDS]
        per = fds.get(pid)
        if per is None:
            fds[pid] = [fd]
        else:
            per.append(fd)
    return accs


def build(obs: Observations, *, taken_at: str, source: str, hostname=None, kernel=None,
          backend: str = "procfs", scope: str = "all", smaps: bool = False,
          extra_notes=()) -> Snapshot:
    pre, obs.fd_accs = getattr(obs, "fd_accs", None), None   # taken once: build adds to it
    if pre is not None and pre[0] is obs.fds:
        accs = pre[1]                  # made of these very fds, every device known
    else:
        accs = accumulate_fds(obs.fds, whole=False)
        if accs is None:               # an fd came without its device: the maps may tell it
            accs = accumulate_fds(obs.fds, _resolver(obs))
    get = accs.get
    vma_key = {}
    for pid, start, end, offset, kind, fs, inode, name, _size, _alloc, private in obs.maps:
        if kind == "dmabuf" or kind == "sysv":
            k = (kind, kind, inode)
            dev = None
        else:
            k = (kind, fs, inode)
            dev = fs
        at = PRIV if private else VMAS
        a = get(k)
        if a is None:
            a = accs[k] = [None, None, None, name, None, None, dev, {}, None, None, None, None]
            a[at] = {pid: [(start, end, offset)]}
        else:
            if a.__class__ is not list:
                a = accs[k] = _open(k, a)
            if a[DEV] is None:
                a[DEV] = dev
            if a[NAME] is None:
                a[NAME] = name
            vmas = a[at]
            if vmas is None:
                a[at] = {pid: [(start, end, offset)]}
            else:
                per = vmas.get(pid)
                if per is None:
                    vmas[pid] = [(start, end, offset)]
                else:
                    per.append((start, end, offset))
        if smaps and not private:      # a private mapping's resident pages are not the buffer's
            vma_key[(pid, start)] = k
    notes: List[str] = list(obs.notes) + list(extra_notes)
    unmatched = 0
    for kb in obs.kernel:
        if kb.inode is None:
            unmatched += 1
            continue
        k = (kb.kind, kb.kind, kb.inode)   # dmabuf and sysv: fs is the kind itself
        a = get(k)
        if a is None:
            a = accs[k] = [None, None, None, None, None, None, _device(k), {}, None, None, None, None]
        elif a.__class__ is not list:
            a = accs[k] = _open(k, a)
        if kb.size is not None and a[SIZE] is None:
            a[SIZE], a[SIZE_FROM] = kb.size, kb.source
        if a[EXPORTER] is None:
            a[EXPORTER] = kb.exporter
        if a[NAME] is None:
            a[NAME] = kb.name
        a[KERNEL_COUNT] = kb.count
        if kb.allocated is not None and a[ALLOC] is None:
            a[ALLOC], a[SWAPPED] = kb.allocated, kb.swapped
    if unmatched:
        notes.append(f"{unmatched} dma-bufs in the kernel table have no inode (kernel before 5.3): "
                     "they count in the exported total but cannot be matched to processes")
    twice = fds_beside_maps(obs.fds, obs.maps)
    if twice:
        notes.append(TWICE_NOTE % twice)
    for m in obs.maps:             # every mapped buffer is a list by now
        if m.size is not None or m.allocated is not None:
            kind = m.kind
            a = accs[(kind, kind if kind in ("dmabuf", "sysv") else m.fs, m.inode)]
            if a[SIZE] is None and m.size is not None:
                a[SIZE], a[SIZE_FROM] = m.size, "map_files"
            if a[ALLOC] is None:
                a[ALLOC] = m.allocated

    rss_by_ref: Dict[tuple, int] = defaultdict(int)
    for v in obs.rss:
        k = vma_key.get((v.pid, v.start))
        if k is not None:
            rss_by_ref[(v.pid, k)] += v.rss

    # ids: "kind:inode", qualified by device only where two filesystems share the number
    shared = _shared_ids(accs)
    unmapped_rss = 0 if smaps else None
    buffers = []
    add_buffer = buffers.append
    ones = _Ones()
    refs_by_pid: Dict[int, list] = defaultdict(list)
    for k in _in_order(accs, shared):
        kind, fs, inode = k
        a = accs[k]
        if fs == "anon":
            bid = "dmabuf:anon:%d:%d" % inode
            inode = None
        elif shared and (kind, inode) in shared:
            bid = f"{kind}:{inode}@{fs or '?'}"
        else:
            bid = f"{kind}:{inode}"
        if a.__class__ is not list:    # one fd of one process; the device is _device(k), inline
            pid, fd, _, _, _, size, name, exporter, count, size_from, alloc = a
            refs_by_pid[pid].append(new_ref(bid, ones[fd], (), unmapped_rss, ()))
            if kind == "dmabuf":
                alloc = size           # the kernel keeps no finer figure than a dma-buf's size
            add_buffer(new_buffer(bid, kind, inode, None if kind == "dmabuf" or fs in _NOT_DEV else fs,
                                  size, exporter, name, None, ones[pid], 1, 0, count, size_from,
                                  alloc, None))
            continue
        size, size_from, exporter, name, count, kernel_count, dev, fds, vmas, priv, alloc, swapped = a
        if kind == "dmabuf":
            alloc = size
        nfds = nmaps = 0
        if priv is not None:           # mapped privately: rare, the plain way
            holders = tuple(sorted(fds.keys() | (vmas or {}).keys() | priv.keys()))
            for pid in holders:
                fdl = fds.get(pid, ())
                vmal = (vmas or {}).get(pid, ())
                pl = priv.get(pid, ())
                nfds += len(fdl)
                nmaps += len(vmal)     # map_refs: shared mappings, as the refs' vmas
                in_rss = unmapped_rss
                if smaps and vmal:
                    in_rss = min(rss_by_ref.get((pid, k), 0), size if size is not None else 1 << 64)
                refs_by_pid[pid].append(new_ref(bid, tuple(sorted(fdl)), tuple(sorted(vmal)), in_rss,
                                                tuple(sorted(pl))))
        elif vmas is None:             # held by fds only
            holders = ones[next(iter(fds))] if len(fds) == 1 else tuple(sorted(fds))
            for pid in holders:
                fdl = fds[pid]
                nfds += len(fdl)
                fdl = ones[fdl[0]] if len(fdl) == 1 else tuple(sorted(fdl))
                refs_by_pid[pid].append(new_ref(bid, fdl, (), unmapped_rss, ()))
        else:
            if len(vmas) == 1 and (not fds or (len(fds) == 1 and fds.keys() == vmas.keys())):
                holders = ones[next(iter(vmas))]        # one process, by fd and mapping
            else:
                holders = tuple(sorted(fds.keys() | vmas.keys()))
            for pid in holders:
                fdl = fds.get(pid, ())
                vmal = vmas.get(pid, ())
                nfds += len(fdl)
                nmaps += len(vmal)
                in_rss = unmapped_rss
                if smaps and vmal:
                    in_rss = rss_by_ref.get((pid, k), 0)
                    if size is not None and in_rss > size:
                        in_rss = size
                fdl = ones[fdl[0]] if len(fdl) == 1 else tuple(sorted(fdl))
                vmal = tuple(vmal) if len(vmal) < 2 else tuple(sorted(vmal))
                refs_by_pid[pid].append(new_ref(bid, fdl, vmal, in_rss, ()))
        add_buffer(new_buffer(
            bid, kind, inode, dev, size, exporter, name, None, holders, nfds, nmaps,
            kernel_count if kernel_count is not None else count, size_from, alloc, swapped))
    return assemble(obs, buffers, refs_by_pid, notes, taken_at=taken_at, source=source,
                    hostname=hostname, kernel=kernel, backend=backend, scope=scope, smaps=smaps)


def assemble(obs: Observations, buffers: list, refs_by_pid: Dict[int, list], notes: list, *,
             taken_at: str, source: str, hostname, kernel, backend: str, scope: str,
             smaps: bool) -> Snapshot:
    """The Snapshot around the buffers made and each pid's references to them: a Process
    for every pid holding a reference or a DRM client; the tables and skips as observed."""
    gpu = build_gpu(obs)
    info = {p.pid: p for p in obs.procs}
    processes = []
    for pid in sorted(set(refs_by_pid) | {g.pid for g in gpu}):
        pi = info.get(pid)
        processes.append(Process(pid, pi.comm if pi else "", pi.cmdline if pi else "",
                                 pi.uid if pi else None, tuple(refs_by_pid.get(pid, ())),
                                 pi.cgroup if pi else None))
    return Snapshot(
        taken_at=taken_at, source=source, host=Host(hostname=hostname, kernel=kernel),
        backend=backend, scope=scope, smaps=smaps, buffers=tuple(buffers),
        processes=tuple(processes),
        kernel=KernelInfo(dmabuf_source=obs.dmabuf_source, dmabuf_exported_bytes=obs.dmabuf_total,
                          dmabuf_exported_count=obs.dmabuf_count, sysv_source=obs.sysv_source),
        skipped=Skipped(denied=tuple(sorted(obs.denied)), vanished=tuple(sorted(obs.vanished)),
                        unreadable=tuple(sorted(obs.unreadable))),
        notes=tuple(notes), gpu=gpu, cgroups=tuple(getattr(obs, "cgroups", ())))


def build_gpu(obs: Observations) -> tuple:
    """DRM clients deduplicated by (pdev or device, client-id): one entry per (client, holder).
    A client's numbers come from the first fd read; every holder's entry repeats them."""
    groups: Dict[tuple, list] = {}
    for c in obs.drm:
        k = (c.pdev or c.device, c.client_id) if c.client_id is not None else \
            (c.pdev or c.device, None, c.pid, c.fd)
        groups.setdefault(k, []).append(c)
    out = []
    for k, cs in groups.items():
        first = cs[0]
        fds: Dict[int, List[int]] = defaultdict(list)
        for c in cs:
            fds[c.pid].append(c.fd)
        holders = tuple(sorted(fds))
        for pid in holders:
            out.append(GpuClient(pid=pid, driver=first.driver, client_id=first.client_id,
                                 pdev=first.pdev, device=first.device, client_name=first.client_name,
                                 holders=holders, fds=tuple(sorted(fds[pid])), regions=first.regions,
                                 engines=first.engines, driver_keys=first.driver_keys))
    out.sort(key=lambda g: (str(g.pdev or g.device), g.client_id if g.client_id is not None else -1,
                            g.pid, g.fds))
    return tuple(out)
