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

from .model import KINDS, Buffer, GpuClient, Host, KernelInfo, Process, Ref, Skipped, Snapshot
from .observe import Observations

_KIND_ORDER = {k: i for i, k in enumerate(KINDS)}


class _Acc:
    __slots__ = ("kind", "fs", "inode", "size", "size_from", "exporter", "name", "count",
                 "kernel_count", "dev", "fds", "vmas")

    def __init__(self, kind, fs, inode):
        self.kind, self.fs, self.inode = kind, fs, inode
        self.size = self.size_from = self.exporter = self.name = self.count = None
        self.kernel_count = None
        self.dev = fs if fs not in ("dmabuf", "sysv", "anon") else None
        self.fds: Dict[int, List[int]] = defaultdict(list)
        self.vmas: Dict[int, List[tuple]] = defaultdict(list)

    def offer_size(self, size, source):
        if self.size is None and size is not None:
            self.size, self.size_from = size, source


def _resolve(obs: Observations):
    devs = defaultdict(set)
    for r in obs.fds:
        if r.fs is not None and r.kind not in ("dmabuf", "sysv"):
            devs[(r.kind, r.inode)].add(r.fs)
    for m in obs.maps:
        if m.kind not in ("dmabuf", "sysv"):
            devs[(m.kind, m.inode)].add(m.fs)

    def key(kind, fs, inode, pid=None, fd=None):
        if kind == "dmabuf":
            if inode is None:
                return ("dmabuf", "anon", (pid, fd))
            return ("dmabuf", "dmabuf", inode)
        if kind == "sysv":
            return ("sysv", "sysv", inode)
        if fs is None:
            known = devs.get((kind, inode))
            if known and len(known) == 1:
                fs = next(iter(known))
        return (kind, fs, inode)
    return key


def build(obs: Observations, *, taken_at: str, source: str, hostname=None, kernel=None,
          backend: str = "procfs", scope: str = "all", smaps: bool = False,
          extra_notes=()) -> Snapshot:
    key = _resolve(obs)
    accs: Dict[tuple, _Acc] = {}

    def acc(k):
        a = accs.get(k)
        if a is None:
            a = accs[k] = _Acc(*k)
        return a

    for r in obs.fds:
        a = acc(key(r.kind, r.fs, r.inode, r.pid, r.fd))
        a.fds[r.pid].append(r.fd)
        a.offer_size(r.size, r.size_from)
        if a.exporter is None:
            a.exporter = r.exporter
        if a.name is None:
            a.name = r.name
        if a.count is None:
            a.count = r.count
    vma_key = {}
    for m in obs.maps:
        k = key(m.kind, m.fs, m.inode)
        a = acc(k)
        a.vmas[m.pid].append((m.start, m.end, m.offset))
        if a.dev is None and m.fs not in ("dmabuf", "sysv"):
            a.dev = m.fs
        if a.name is None:
            a.name = m.name
        vma_key[(m.pid, m.start)] = k
    notes: List[str] = list(obs.notes) + list(extra_notes)
    unmatched = 0
    for kb in obs.kernel:
        if kb.inode is None:
            unmatched += 1
            continue
        k = (kb.kind, kb.kind, kb.inode)   # dmabuf and sysv: fs is the kind itself
        a = accs.get(k) or acc(k)
        if kb.size is not None and (a.size is None or a.size_from == "map_files"):
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
            accs[key(m.kind, m.fs, m.inode)].offer_size(m.size, "map_files")

    rss_by_ref: Dict[tuple, int] = defaultdict(int)
    for v in obs.rss:
        k = vma_key.get((v.pid, v.start))
        if k is not None:
            rss_by_ref[(v.pid, k)] += v.rss

    # ids: "kind:inode", qualified by device only where two filesystems share the number
    clash = defaultdict(int)
    for (kind, fs, inode) in accs:
        if fs != "anon":
            clash[(kind, inode)] += 1

    def make_id(k):
        kind, fs, inode = k
        if fs == "anon":
            return "dmabuf:anon:%d:%d" % inode
        if clash[(kind, inode)] > 1:
            return f"{kind}:{inode}@{fs or '?'}"
        return f"{kind}:{inode}"

    order = sorted(accs, key=lambda k: (_KIND_ORDER.get(k[0], 99), k[1] == "anon",
                                        k[2] if k[1] != "anon" else 0, str(k[1]), str(k[2])))
    buffers = []
    refs_by_pid: Dict[int, List[Ref]] = defaultdict(list)
    for k in order:
        a = accs[k]
        bid = make_id(k)
        holders = sorted(set(a.fds) | set(a.vmas))
        for pid in holders:
            vmas = tuple(sorted(a.vmas.get(pid, ())))
            in_rss = None
            if smaps and vmas:
                in_rss = rss_by_ref.get((pid, k), 0)
                if a.size is not None:
                    in_rss = min(in_rss, a.size)
            elif smaps:
                in_rss = 0
            refs_by_pid[pid].append(Ref(buffer=bid, fds=tuple(sorted(a.fds.get(pid, ()))),
                                        vmas=vmas, in_rss=in_rss))
        kernel_count = a.kernel_count if a.kernel_count is not None else a.count
        buffers.append(Buffer(
            id=bid, kind=a.kind, inode=a.inode if a.fs != "anon" else None, dev=a.dev,
            size=a.size, exporter=a.exporter, name=a.name, category=None,
            holders=tuple(holders), fd_refs=sum(len(v) for v in a.fds.values()),
            map_refs=sum(len(v) for v in a.vmas.values()), kernel_count=kernel_count,
            size_from=a.size_from))
    gpu = build_gpu(obs)
    info = {p.pid: p for p in obs.procs}
    processes = []
    for pid in sorted(set(refs_by_pid) | {g.pid for g in gpu}):
        pi = info.get(pid)
        processes.append(Process(pid=pid, comm=pi.comm if pi else "", cmdline=pi.cmdline if pi else "",
                                 uid=pi.uid if pi else None, refs=tuple(refs_by_pid.get(pid, ()))))
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
