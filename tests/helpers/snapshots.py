"""Hand-built snapshots for the tests of diff, history and plots."""
from __future__ import annotations

from memtrack.json_out import to_dict
from memtrack.model import Buffer, Process, Ref, Snapshot

MFD = dict(kind="memfd", dev="00:01")


def snap(buffers, procs, taken_at="t"):
    """buffers: {id: dict(kind, inode, size, dev, exporter, name)};
    procs: {pid: (comm, {buffer_id: (fds, vmas)})}. Holders and ref counts are derived."""
    holders, fdn, mapn = {}, {}, {}
    processes = []
    for pid, (comm, refs) in sorted(procs.items()):
        rs = []
        for bid, (fds, vmas) in refs.items():
            holders.setdefault(bid, set()).add(pid)
            fdn[bid] = fdn.get(bid, 0) + len(fds)
            mapn[bid] = mapn.get(bid, 0) + len(vmas)
            rs.append(Ref(buffer=bid, fds=tuple(fds), vmas=tuple(vmas)))
        processes.append(Process(pid=pid, comm=comm, cmdline=comm, refs=tuple(rs)))
    bufs = tuple(Buffer(id=bid, holders=tuple(sorted(holders.get(bid, ()))), fd_refs=fdn.get(bid, 0),
                        map_refs=mapn.get(bid, 0), **kw) for bid, kw in buffers.items())
    return Snapshot(taken_at=taken_at, buffers=bufs, processes=tuple(processes))


def comparable(snap, pids):
    """The parts both backends must agree on, for these processes: buffers, refs, sizes,
    accounting (the kernel-table source and notes legitimately differ)."""
    doc = to_dict(snap.restrict(pids=set(pids)))
    return {"buffers": doc["buffers"], "processes": doc["processes"], "totals": doc["totals"]}
