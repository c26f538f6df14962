"""The builder's contract written the plain way, for tests: memtrack.build.build is
optimized for big scans, and must give exactly what this gives on any observations.

Everything is grouped first, then each buffer is decided from its group alone: no state
carried between records, no shortcuts for the common case."""
from __future__ import annotations

from memtrack.build import TWICE_NOTE, assemble
from memtrack.model import KINDS, Buffer, Ref

NO_DEVICE = ("dmabuf", "sysv", "anon")


def first(values):
    return next((v for v in values if v is not None), None)


def reference_build(obs, *, taken_at="", source="test", hostname=None, kernel=None,
                    backend="procfs", scope="all", smaps=False, extra_notes=()):
    # an fd without a device takes the one device every other observation agrees on
    devices = {}
    for r in obs.fds:
        if r.fs is not None and r.kind != "dmabuf":
            devices.setdefault((r.kind, r.inode), set()).add(r.fs)
    for m in obs.maps:
        if m.kind not in ("dmabuf", "sysv"):
            devices.setdefault((m.kind, m.inode), set()).add(m.fs)

    def fd_identity(r):
        if r.kind == "dmabuf":
            return ("dmabuf", "anon", (r.pid, r.fd)) if r.inode is None else ("dmabuf", "dmabuf", r.inode)
        fs = r.fs
        if fs is None and len(devices.get((r.kind, r.inode), ())) == 1:
            fs = next(iter(devices[(r.kind, r.inode)]))
        return (r.kind, fs, r.inode)

    def map_identity(m):
        return (m.kind, m.kind if m.kind in ("dmabuf", "sysv") else m.fs, m.inode)

    groups = {}                        # identity -> its observations, in first-seen order

    def group(k):
        return groups.setdefault(k, {"fds": [], "maps": [], "kernel": []})
    for r in obs.fds:
        group(fd_identity(r))["fds"].append(r)
    for m in obs.maps:
        group(map_identity(m))["maps"].append(m)
    unmatched = [kb for kb in obs.kernel if kb.inode is None]
    for kb in obs.kernel:
        if kb.inode is not None:
            group((kb.kind, kb.kind, kb.inode))["kernel"].append(kb)

    rank = {k: i for i, k in enumerate(KINDS)}

    def order(item):
        (kind, fs, inode), _ = item
        if fs == "anon":
            return (rank[kind], 1, 0, "", inode)
        return (rank.get(kind, 99), 0, inode, fs or "", ())
    ids_used = {}
    for kind, fs, inode in groups:
        if fs != "anon":
            ids_used[(kind, inode)] = ids_used.get((kind, inode), 0) + 1

    # the smaps Rss of a mapping goes to the buffer its last observation at that address names
    # (a private mapping's resident pages are the process's own copies: none)
    vma_owner = {}
    for m in obs.maps:
        if not m.private:
            vma_owner[(m.pid, m.start)] = map_identity(m)
    rss = {}
    for v in obs.rss:
        k = vma_owner.get((v.pid, v.start))
        if k is not None:
            rss[(v.pid, k)] = rss.get((v.pid, k), 0) + v.rss

    buffers, refs = [], {}
    for (kind, fs, inode), g in sorted(groups.items(), key=order):
        k = (kind, fs, inode)
        fds, maps, kern = g["fds"], g["maps"], g["kernel"]
        if fs == "anon":
            bid, inode = "dmabuf:anon:%d:%d" % inode, None
        elif ids_used[(kind, inode)] > 1:
            bid = f"{kind}:{inode}@{fs or '?'}"
        else:
            bid = f"{kind}:{inode}"
        sizes = [(r.size, r.size_from) for r in fds if r.size is not None] + \
            [(kb.size, kb.source) for kb in kern if kb.size is not None] + \
            [(m.size, "map_files") for m in maps if m.size is not None]
        size, size_from = sizes[0] if sizes else (None, None)
        # allocated bytes: from the same places in the same order; a dma-buf's are its size
        allocs = [(r.allocated, None) for r in fds if r.allocated is not None] + \
            [(kb.allocated, kb.swapped) for kb in kern if kb.allocated is not None] + \
            [(m.allocated, None) for m in maps if m.allocated is not None]
        allocated, swapped = allocs[0] if allocs else (None, None)
        if kind == "dmabuf":
            allocated = size
        if fds:
            dev = None if kind == "dmabuf" or fs in NO_DEVICE else fs
        elif maps:
            dev = None if kind in ("dmabuf", "sysv") else fs
        else:
            dev = None if fs in NO_DEVICE else fs
        if dev is None and kind not in ("dmabuf", "sysv") and maps:
            dev = maps[0].fs
        count = first(r.count for r in fds)
        kernel_count = kern[-1].count if kern else None
        holders = sorted({r.pid for r in fds} | {m.pid for m in maps})
        for pid in holders:
            vmas = sorted((m.start, m.end, m.offset) for m in maps if m.pid == pid and not m.private)
            private = sorted((m.start, m.end, m.offset) for m in maps if m.pid == pid and m.private)
            in_rss = None
            if smaps:               # never more than the buffer
                in_rss = rss.get((pid, k), 0) if vmas else 0
                if size is not None:
                    in_rss = min(in_rss, size)
            refs.setdefault(pid, []).append(Ref(
                buffer=bid, fds=tuple(sorted(r.fd for r in fds if r.pid == pid)),
                vmas=tuple(vmas), in_rss=in_rss, private=tuple(private)))
        buffers.append(Buffer(
            id=bid, kind=kind, inode=inode, dev=dev, size=size,
            exporter=first([r.exporter for r in fds] + [kb.exporter for kb in kern]),
            name=first([r.name for r in fds] + [m.name for m in maps] + [kb.name for kb in kern]),
            holders=tuple(holders), fd_refs=len(fds), map_refs=len([m for m in maps if not m.private]),
            kernel_count=kernel_count if kernel_count is not None else count, size_from=size_from,
            allocated=allocated, swapped=swapped))

    notes = list(obs.notes) + list(extra_notes)
    if unmatched:
        notes.append(f"{len(unmatched)} dma-bufs in the kernel table have no inode (kernel before 5.3): "
                     "they count in the exported total but cannot be matched to processes")
    mapping = {m.pid for m in obs.maps if m.kind == "dmabuf"}
    twice = [r for r in obs.fds if r.kind == "dmabuf" and r.inode is None and r.pid in mapping]
    if twice:
        notes.append(TWICE_NOTE % len(twice))
    # processes, tables and skips around the buffers: as build() does it (not what is tested)
    return assemble(obs, buffers, refs, notes, taken_at=taken_at, source=source, hostname=hostname,
                    kernel=kernel, backend=backend, scope=scope, smaps=smaps)
