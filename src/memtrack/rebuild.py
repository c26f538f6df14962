"""Rebuilding a snapshot after a few processes changed, without building it all again.

A refresher (top, serve, record) knows which processes' observations moved since its last
scan; build() would still make every buffer and process again (tens of milliseconds at
tens of thousands of buffers). The Rebuilder keeps the last snapshot's pieces and rebuilds
only what the changed processes touch: every buffer that one of them held before or holds
now (with all its holders' records, so that its size, name and holders come out as build()
makes them) and the changed processes themselves. It runs build() itself on that part, so
there is one set of rules; the result equals build() of the whole observations, which the
tests check step by step.

It builds everything afresh where a partial build could differ: the first time, with smaps
(VMA Rss), DRM clients, fds without a device (fdinfo-only captures), kernel-table entries
without an inode, and when a changed buffer's "kind:inode" id is shared by another buffer
(the id then depends on both).
"""
from __future__ import annotations

from bisect import bisect_left
from dataclasses import replace
from typing import Dict, Iterable, List, NamedTuple, Optional, Set

from .build import TWICE_NOTE, build, fds_beside_maps, order_key
from .model import Snapshot
from .observe import FdRef, MapRef, Observations, ProcInfo


class Part(NamedTuple):
    """One process's observations."""
    fds: List[FdRef]
    maps: List[MapRef]
    proc: Optional[ProcInfo]


def fd_key(r) -> tuple:
    if r.kind == "dmabuf":
        return ("dmabuf", "dmabuf", r.inode) if r.inode is not None else ("dmabuf", "anon", (r.pid, r.fd))
    return (r.kind, r.fs, r.inode)


def map_key(m) -> tuple:
    kind = m.kind
    return (kind, kind if kind in ("dmabuf", "sysv") else m.fs, m.inode)


def _kernel_by_key(kernel) -> Dict[tuple, list]:
    out: Dict[tuple, list] = {}
    for kb in kernel:
        out.setdefault((kb.kind, kb.kind, kb.inode), []).append(kb)
    return out


class Rebuilder:
    def __init__(self):
        self.full_builds = 0
        self.partial_builds = 0
        self._ready = False

    def build(self, obs: Observations, parts: Dict[int, Part], changed: Optional[Iterable[int]],
              **meta) -> Snapshot:
        """The Snapshot build(obs + parts, **meta) would make. `obs` holds the machine-wide
        observations (tables, skipped processes, notes; its fds, maps and procs are ignored);
        `parts` every process's own; `changed` the pids whose part differs from the last
        call's (new and gone ones included), or None when not known."""
        if changed is not None and self._ready and self._can_patch(obs, meta):
            snap = self._patch(obs, parts, set(changed), meta)
            if snap is not None:
                self.partial_builds += 1
                return snap
        return self._full(obs, parts, meta)

    # -- the whole build -------------------------------------------------------------------
    def _full(self, obs: Observations, parts: Dict[int, Part], meta) -> Snapshot:
        self.full_builds += 1
        whole = _with_parts(obs, parts, sorted(parts))
        snap = build(whole, **meta)
        self._ready = False
        if not self._can_patch(obs, meta) or any(r.fs is None for r in whole.fds):
            return snap
        self._meta = meta
        self._kernel = _kernel_by_key(obs.kernel)
        # dma-buf fds without an inode beside dma-buf maps, per process: build()'s note
        self._twice: Dict[int, int] = {}
        for pid, part in parts.items():
            n = fds_beside_maps(part.fds, part.maps)
            if n:
                self._twice[pid] = n
        self._pid_keys: Dict[int, Set[tuple]] = {}
        self._key_pids: Dict[tuple, Set[int]] = {}
        for pid, part in parts.items():
            keys = {fd_key(r) for r in part.fds} | {map_key(m) for m in part.maps}
            self._pid_keys[pid] = keys
            for k in keys:
                self._key_pids.setdefault(k, set()).add(pid)
        universe = set(self._key_pids) | set(self._kernel)
        self._ord = sorted(order_key(k) for k in universe)
        self._bufs = list(snap.buffers)
        if len(self._ord) != len(self._bufs):          # not expected: build makes one per key
            return snap
        self._ids: Dict[tuple, int] = {}
        for kind, fs, inode in universe:
            if fs != "anon":
                self._ids[(kind, inode)] = self._ids.get((kind, inode), 0) + 1
        self._pids = [p.pid for p in snap.processes]
        self._procs = list(snap.processes)
        self._ready = True
        return snap

    def _can_patch(self, obs: Observations, meta) -> bool:
        return (not meta.get("smaps") and not obs.drm and not obs.rss
                and all(kb.inode is not None for kb in obs.kernel)
                and (not self._ready or meta_key(meta) == meta_key(self._meta)))

    # -- the part that changed -------------------------------------------------------------
    def _patch(self, obs: Observations, parts: Dict[int, Part], changed: Set[int], meta):
        kernel = _kernel_by_key(obs.kernel)
        touched: Set[tuple] = set()
        new_keys: Dict[int, Set[tuple]] = {}
        for pid in changed:
            touched |= self._pid_keys.get(pid, set())
            part = parts.get(pid)
            n = fds_beside_maps(part.fds, part.maps) if part is not None else 0
            if n:
                self._twice[pid] = n
            else:
                self._twice.pop(pid, None)
            if part is not None:
                if any(r.fs is None for r in part.fds):
                    return None
                keys = {fd_key(r) for r in part.fds} | {map_key(m) for m in part.maps}
                new_keys[pid] = keys
                touched |= keys
        old_kernel = self._kernel
        if kernel != old_kernel:
            for k in set(kernel) | set(old_kernel):
                if kernel.get(k) != old_kernel.get(k):
                    touched.add(k)
        if not touched and not changed:
            return replace(self._shell(obs, meta, sum(self._twice.values())), buffers=tuple(self._bufs),
                           processes=tuple(self._procs))

        # ids "kind:inode" shared by two buffers depend on both: not patched
        ids = self._ids
        key_pids = self._key_pids
        before = {k for k in touched if k in key_pids or k in old_kernel}
        if any(ids.get((k[0], k[2]), 0) > 1 for k in before if k[1] != "anon"):
            return None
        # the new holder sets
        for pid in changed:
            for k in self._pid_keys.pop(pid, ()):
                holders = key_pids[k]
                holders.discard(pid)
                if not holders:
                    del key_pids[k]
            keys = new_keys.get(pid)
            if keys:
                self._pid_keys[pid] = keys
                for k in keys:
                    key_pids.setdefault(k, set()).add(pid)
        after = {k for k in touched if k in key_pids or k in kernel}
        for k in before:
            if k[1] != "anon":
                # an id no buffer has any more is forgotten: under process churn every new
                # memfd is a new inode, and a count kept at 0 for each grew without bound
                n = ids[(k[0], k[2])] - 1
                if n:
                    ids[(k[0], k[2])] = n
                else:
                    del ids[(k[0], k[2])]
        for k in after:
            if k[1] != "anon":
                ids[(k[0], k[2])] = ids.get((k[0], k[2]), 0) + 1
        self._kernel = kernel
        if any(ids[(k[0], k[2])] > 1 for k in after if k[1] != "anon"):
            self._ready = False
            return None

        # build() on every record of the touched buffers, from all their holders, in order
        sub = Observations()
        holders = sorted({pid for k in after for pid in key_pids.get(k, ())})
        for pid in holders:
            part = parts[pid]
            sub.fds.extend(r for r in part.fds if fd_key(r) in touched)
            sub.maps.extend(m for m in part.maps if map_key(m) in touched)
            if part.proc is not None:
                sub.procs.append(part.proc)
        sub.kernel = [kb for kb in obs.kernel if (kb.kind, kb.kind, kb.inode) in touched]
        piece = build(sub, **meta)
        made = sorted(order_key(k) for k in after)
        if len(made) != len(piece.buffers):
            self._ready = False
            return None

        ords, bufs = self._ord, self._bufs
        for k in before - after:
            i = bisect_left(ords, order_key(k))
            del ords[i], bufs[i]
        for o, b in zip(made, piece.buffers):
            i = bisect_left(ords, o)
            if i < len(ords) and ords[i] == o:
                bufs[i] = b
            else:
                ords.insert(i, o)
                bufs.insert(i, b)
        by_pid = {p.pid: p for p in piece.processes}
        pids, procs = self._pids, self._procs
        for pid in changed:
            i = bisect_left(pids, pid)
            present = i < len(pids) and pids[i] == pid
            p = by_pid.get(pid)
            if p is None:
                if present:
                    del pids[i], procs[i]
            elif present:
                procs[i] = p
            else:
                pids.insert(i, pid)
                procs.insert(i, p)
        return replace(self._shell(obs, meta, sum(self._twice.values())), buffers=tuple(bufs), processes=tuple(procs))

    @staticmethod
    def _shell(obs: Observations, meta, twice: int = 0) -> Snapshot:
        """The snapshot without buffers and processes: tables, skipped processes, notes
        (twice: the count of build()'s note on dma-buf fds without an inode, from the
        processes' parts, which the shell has none of)."""
        bare = Observations()
        for name in ("dmabuf_source", "dmabuf_total", "dmabuf_count", "sysv_source", "cgroups"):
            setattr(bare, name, getattr(obs, name))
        bare.notes = list(obs.notes)
        bare.denied, bare.vanished, bare.unreadable = obs.denied, obs.vanished, obs.unreadable
        snap = build(bare, **meta)
        return replace(snap, notes=snap.notes + (TWICE_NOTE % twice,)) if twice else snap


def meta_key(meta) -> tuple:
    """What of build()'s arguments decides the buffers and processes (not the time)."""
    return tuple(sorted((k, v if not isinstance(v, list) else tuple(v))
                        for k, v in meta.items() if k != "taken_at"))


def _with_parts(obs: Observations, parts: Dict[int, Part], order) -> Observations:
    whole = Observations()
    whole.__dict__.update({k: v for k, v in vars(obs).items()
                           if k not in ("fds", "maps", "procs")})
    whole.fds, whole.maps, whole.procs = [], [], []
    for pid in order:
        part = parts[pid]
        whole.fds.extend(part.fds)
        whole.maps.extend(part.maps)
        if part.proc is not None:
            whole.procs.append(part.proc)
    return whole
