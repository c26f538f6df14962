"""The one builder: observations (from any backend) -> Snapshot.

Identity is (kind, fs, inode) with fs as in observe.py. An fd seen only through fdinfo (a
capture without the fdstat sidecar) carries no device; it joins the one device that other
observations of the same kind and inode show, if exactly one does. Sizes come, in this
order, from the fd (fdinfo or stat), the kernel tables, then a stat of map_files: never
from a mapping's length.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Optional

from .model import KINDS, GpuClient, Host, KernelInfo, Process, Skipped, Snapshot, new_buffer, new_ref
from .observe import Observations

_KIND_ORDER = {k: i for i, k in enumerate(KINDS)}


class _Acc:
    __slots__ = ("kind", "fs", "inode", "size", "size_from", "exporter", "name", "count",
                 "kernel_count", "dev", "refs")

    def __init__(self, kind, fs, inode):
        self.kind, self.fs, self.inode = kind, fs, inode
        self.size = self.size_from = self.exporter = self.name = self.count = None
        self.kernel_count = None
        self.dev = fs if fs not in ("dmabuf", "sysv", "anon") else None
        self.refs = {}                   # pid -> ([fd, ...], [(start, end, offset), ...])


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


def order_key(k) -> tuple:
    """The order of buffers in a Snapshot, from their identity (kind, fs, inode): by kind,
    then inode; anonymous (pre-5.3) dma-bufs last, by (pid, fd). Unique per identity."""
    kind, fs, inode = k
    if fs == "anon":
        return (_KIND_ORDER[kind], 1, 0, "", inode)
    return (_KIND_ORDER.get(kind, 99), 0, inode, fs or "", ())


def build(obs: Observations, *, taken_at: str, source: str, hostname=None, kernel=None,
          backend: str = "procfs", scope: str = "all", smaps: bool = False,
          extra_notes=()) -> Snapshot:
    resolved = _resolver(obs)
    accs: Dict[tuple, _Acc] = {}
    get = accs.get
    for pid, fd, kind, fs, inode, size, name, exporter, count, size_from in obs.fds:
        if kind == "dmabuf":
            k = ("dmabuf", "dmabuf", inode) if inode is not None else ("dmabuf", "anon", (pid, fd))
        else:
            if fs is None and resolved:
                fs = resolved.get((kind, inode))
            k = (kind, fs, inode)
        a = get(k)
        if a is None:
            a = accs[k] = _Acc(*k)
            a.size, a.size_from, a.exporter, a.name, a.count = size, size_from, exporter, name, count
        else:
            if a.size is None and size is not None:
                a.size, a.size_from = size, size_from
            if a.exporter is None:
                a.exporter = exporter
            if a.name is None:
                a.name = name
            if a.count is None:
                a.count = count
        per = a.refs.get(pid)
        if per is None:
            a.refs[pid] = ([fd], [])
        else:
            per[0].append(fd)
    vma_key = {}
    for pid, start, end, offset, kind, fs, inode, name, _size in obs.maps:
        k = (kind, kind if kind in ("dmabuf", "sysv") else fs, inode)
        a = get(k)
        if a is None:
            a = accs[k] = _Acc(*k)
        per = a.refs.get(pid)
        if per is None:
            a.refs[pid] = ([], [(start, end, offset)])
        else:
            per[1].append((start, end, offset))
        if a.dev is None and kind not in ("dmabuf", "sysv"):
            a.dev = fs
        if a.name is None:
            a.name = name
        if smaps:
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
            a = accs[k] = _Acc(*k)
        if kb.size is not None and a.size is None:
            a.size, a.size_from = kb.size, kb.source
        if a.exporter is None:
            a.exporter = kb.exporter
        if a.name is None:
            a.name = kb.name
        a.kernel_count = kb.count
    if unmatched:
        notes.append(f"{unmatched} dma-bufs in the kernel table have no inode (kernel before 5.3): "
                     "they count in the exported total but cannot be matched to processes")
    for m in obs.maps:
        if m.size is not None:
            kind = m.kind
            a = accs[(kind, kind if kind in ("dmabuf", "sysv") else m.fs, m.inode)]
            if a.size is None:
                a.size, a.size_from = m.size, "map_files"

    rss_by_ref: Dict[tuple, int] = defaultdict(int)
    for v in obs.rss:
        k = vma_key.get((v.pid, v.start))
        if k is not None:
            rss_by_ref[(v.pid, k)] += v.rss

    # ids: "kind:inode", qualified by device only where two filesystems share the number
    seen_ids = defaultdict(int)
    for (kind, fs, inode) in accs:
        if fs != "anon":
            seen_ids[(kind, inode)] += 1

    buffers = []
    refs_by_pid: Dict[int, List[Ref]] = defaultdict(list)
    for k in sorted(accs, key=order_key):
        a = accs[k]
        kind, fs, inode = k
        if fs == "anon":
            bid = "dmabuf:anon:%d:%d" % inode
            inode = None
        elif seen_ids[(kind, inode)] > 1:
            bid = f"{kind}:{inode}@{fs or '?'}"
        else:
            bid = f"{kind}:{inode}"
        holders = sorted(a.refs)
        nfds = nmaps = 0
        for pid in holders:
            fdl, vmal = a.refs[pid]
            nfds += len(fdl)
            nmaps += len(vmal)
            if len(fdl) > 1:
                fdl.sort()
            if len(vmal) > 1:
                vmal.sort()
            in_rss = None
            if smaps:
                in_rss = rss_by_ref.get((pid, k), 0) if vmal else 0
                if a.size is not None and in_rss > a.size:
                    in_rss = a.size
            refs_by_pid[pid].append(new_ref(bid, tuple(fdl), tuple(vmal), in_rss))
        buffers.append(new_buffer(
            bid, kind, inode, a.dev, a.size, a.exporter, a.name, None, tuple(holders), nfds, nmaps,
            a.kernel_count if a.kernel_count is not None else a.count, a.size_from))
    gpu = build_gpu(obs)
    info = {p.pid: p for p in obs.procs}
    processes = []
    for pid in sorted(set(refs_by_pid) | {g.pid for g in gpu}):
        pi = info.get(pid)
        processes.append(Process(pid, pi.comm if pi else "", pi.cmdline if pi else "",
                                 pi.uid if pi else None, tuple(refs_by_pid[pid])))
    return Snapshot(
        taken_at=taken_at, source=source, host=Host(hostname=hostname, kernel=kernel),
        backend=backend, scope=scope, smaps=smaps, buffers=tuple(buffers),
        processes=tuple(processes),
        kernel=KernelInfo(dmabuf_source=obs.dmabuf_source, dmabuf_exported_bytes=obs.dmabuf_total,
                          dmabuf_exported_count=obs.dmabuf_count, sysv_source=obs.sysv_source),
        skipped=Skipped(denied=tuple(sorted(obs.denied)), vanished=tuple(sorted(obs.vanished)),
                        unreadable=tuple(sorted(obs.unreadable))),
        notes=tuple(notes), gpu=gpu)


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
