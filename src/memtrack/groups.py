"""Accounting per group of processes (cgroup, systemd unit, container, pod): a group is one
holder. With G(B) the set of groups of the holders of buffer B, of size S:
  rss(g) = sum S over buffers a process of g holds
  pss(g) = sum S/|G(B)|, split to the byte as account.pss_shares splits it between pids
           (the first S mod |G| groups, in name order, get one byte more)
  uss(g) = sum S over buffers held by processes of g alone
  mapped(g) = the bytes its processes map of those buffers
so sum pss(g) over groups == sum pss over processes == the held bytes, exactly.

A holder the snapshot does not list (a saved view narrowed to some pids) is in the group
cgroups.UNKNOWN. mem(g) splits each buffer's allocated bytes between groups as pss splits
its size; a buffer of unknown allocated bytes counts in unknown_alloc instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .account import pss_shares
from .cgroups import GROUPINGS, UNKNOWN, group_key
from .model import Snapshot


@dataclass
class GroupUsage:
    group: str
    rss: int = 0
    pss: int = 0
    uss: int = 0
    mapped: int = 0
    buffers: int = 0
    unknown: int = 0                    # buffers held whose size could not be known
    pids: List[int] = field(default_factory=list)
    cgroups: List[str] = field(default_factory=list)   # the cgroup paths of its processes
    by_kind: Dict[str, int] = field(default_factory=dict)   # kind -> pss
    mem: int = 0                        # share of the allocated bytes, split as pss is
    unknown_alloc: int = 0              # buffers held whose allocated bytes are unknown

    def as_dict(self) -> dict:
        d = {"group": self.group, "rss": self.rss, "pss": self.pss, "uss": self.uss,
             "mapped": self.mapped, "buffers": self.buffers, "unknown_size": self.unknown,
             "pids": list(self.pids), "cgroups": list(self.cgroups),
             "by_kind": dict(sorted(self.by_kind.items()))}
        d["mem"] = self.mem
        d["unknown_allocated"] = self.unknown_alloc
        return d


@dataclass
class GroupAccounting:
    by: str
    groups: Dict[str, GroupUsage]
    shares: Dict[str, Dict[str, int]]   # buffer id -> group -> pss bytes
    held_bytes: int
    mem_shares: Dict[str, Dict[str, int]] = field(default_factory=dict)   # ... -> mem bytes

    def sorted(self) -> List[GroupUsage]:
        return sorted(self.groups.values(), key=lambda g: (-g.pss, g.group))


def group_of(snap: Snapshot, by: str) -> Dict[int, str]:
    """pid -> its group, for every listed process."""
    if by not in GROUPINGS:
        raise ValueError(f"cannot group by {by!r}")
    return {p.pid: group_key(p.cgroup, by) for p in snap.processes}


def account_groups(snap: Snapshot, by: str) -> GroupAccounting:
    gof = group_of(snap, by)
    groups: Dict[str, GroupUsage] = {}

    def get(g: str) -> GroupUsage:
        u = groups.get(g)
        if u is None:
            u = groups[g] = GroupUsage(g)
        return u

    for p in snap.processes:
        u = get(gof[p.pid])
        u.pids.append(p.pid)
        if p.cgroup is not None and p.cgroup not in u.cgroups:
            u.cgroups.append(p.cgroup)
        for r in p.refs:
            u.mapped += r.mapped
    shares: Dict[str, Dict[str, int]] = {}
    mem_shares: Dict[str, Dict[str, int]] = {}
    held = 0
    for b in snap.buffers:
        if not b.holders:
            continue
        gs = sorted({gof.get(pid, UNKNOWN) for pid in b.holders})
        for g in gs:
            u = get(g)
            u.buffers += 1
            if b.size is None:
                u.unknown += 1
            if b.allocated is None:
                u.unknown_alloc += 1
        if b.allocated is not None:
            msh = mem_shares[b.id] = pss_shares(b.allocated, gs)
            for g, n in msh.items():
                groups[g].mem += n
        if b.size is None:
            continue
        held += b.size
        sh = shares[b.id] = pss_shares(b.size, gs)
        for g, n in sh.items():
            u = groups[g]
            u.rss += b.size
            u.pss += n
            u.by_kind[b.kind] = u.by_kind.get(b.kind, 0) + n
            if len(gs) == 1:
                u.uss += b.size
    for u in groups.values():
        u.pids.sort()
        u.cgroups.sort()
    return GroupAccounting(by, groups, shares, held, mem_shares)


SHMEM_KINDS = ("memfd", "shm", "sysv", "shmem", "ashmem")   # shmem-backed: what memory.stat's shmem counts
CHARGED = ("shmem", "file_mapped", "dmem")


def _subtree(stat: Dict[str, int], hierarchy: str, key: str) -> Optional[int]:
    # v2's figures include the descendants; v1's own ones do not, its total_* do
    return stat.get(f"total_{key}" if hierarchy == "v1" else key)


def _inside(path: str, top: str) -> bool:
    return top == "/" or path.startswith(top.rstrip("/") + "/")


def charged(snap: Snapshot, cgroups) -> Optional[Dict[str, int]]:
    """What the memory controller charged these cgroups (a group's, GroupUsage.cgroups) for
    shared memory, each cgroup with its descendants (v1 total_*, v2 as printed); a cgroup
    inside another of the list counts once, in it. Keys: shmem, file_mapped, and dmem
    (device memory, the sum over regions) where the kernel has the dmem controller. None
    where none of them was read (a capture without cgroup files, a cgroup gone)."""
    tops = [c for c in cgroups if not any(o != c and _inside(c, o) for o in cgroups)]
    out: Dict[str, int] = {}
    seen = False
    for path in tops:
        c = snap.cgroup_map.get(path)
        if c is None:
            continue
        seen = True
        for key in ("shmem", "file_mapped"):
            n = _subtree(c.stat, c.hierarchy, key)
            if n is not None:
                out[key] = out.get(key, 0) + n
        if c.dmem_current:
            out["dmem"] = out.get("dmem", 0) + sum(c.dmem_current.values())
    return out if seen else None
