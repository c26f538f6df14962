"""The compact JSON text of a Snapshot, written fast.

The output is, byte for byte, ``json.dumps(snap.to_dict(filt), ensure_ascii=False,
separators=(",", ":"))`` (tests/test_json_out.py holds it to that), without the dict per
buffer and per reference that to_dict builds for the encoder to walk: on a big machine's
snapshot, building and encoding those was most of the time after the scan. Each buffer and
reference is one f-string; strings go through json's own C string encoder (the one
json.dumps uses with ensure_ascii=False, so quotes, control characters, non-ASCII and lone
surrogates come out the same), and what repeats (kinds, devices, exporters, categories,
sizes, counts, holder and fd tuples, empty mappings) is encoded once. The small parts around
them (host, kernel, totals, gpu, filter) go through the json encoder itself, as the dicts
to_dict uses.

It relies on the model's types (int fields hold ints, string fields strings or None, tuples
are tuples), which the builder and Snapshot.from_dict guarantee.
"""
from __future__ import annotations

import json
from json.encoder import encode_basestring as _str
from typing import Dict, Optional

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class _Strings(dict):
    """Optional string -> its JSON text, for values that repeat."""
    __slots__ = ()

    def __missing__(self, v):
        s = self[v] = "null" if v is None else _str(v)
        return s


class _Numbers(dict):
    """Optional int -> its JSON text, for values that repeat (sizes, counts)."""
    __slots__ = ()

    def __missing__(self, v):
        s = self[v] = "null" if v is None else str(v)
        return s


class _Ints(dict):
    """Tuple of ints -> "1,2,3", the inside of its JSON array."""
    __slots__ = ()

    def __missing__(self, t):
        s = self[t] = ",".join(map(str, t))
        return s


class _Mappings(dict):
    """A reference's vmas -> ('N,"mapped":BYTES', the inside of its "vmas" array)."""
    __slots__ = ()

    def __missing__(self, vmas):
        text = self[vmas] = (f'{len(vmas)},"mapped":{sum(end - start for start, end, _ in vmas)}',
                             ",".join(f"[{start},{end},{off}]" for start, end, off in vmas))
        return text


def snapshot_json(snap, filt: Optional[dict] = None) -> str:
    from .account import account
    acct = account(snap)
    head, tail = snap._json_parts(acct, filt)
    strings, ints = _Strings(), _Ints()
    ids, buffers = _buffers(snap.buffers, strings, ints)
    processes = _processes(snap, acct, ids, strings, ints)
    return "".join((_encode(head)[:-1], ',"buffers":[', buffers, '],"processes":[', processes, "],",
                    _encode(tail)[1:]))


def _buffers(bufs, S, I):
    """({buffer id: its JSON text}, the buffers' JSON objects joined by commas)."""
    enc = _str
    N = _Numbers()
    ids: Dict[str, str] = {}
    out = []
    add = out.append
    for b in bufs:
        ids[b.id] = i = enc(b.id)
        inode, name = b.inode, b.name
        add(f'{{"id":{i},"kind":{S[b.kind]},"dev":{S[b.dev]},'
            f'"inode":{"null" if inode is None else inode},"size":{N[b.size]},'
            f'"exporter":{S[b.exporter]},"name":{"null" if name is None else enc(name)},'
            f'"category":{S[b.category]},"holders":[{I[b.holders]}],"fd_refs":{N[b.fd_refs]},'
            f'"map_refs":{N[b.map_refs]},"kernel_count":{N[b.kernel_count]},'
            f'"size_from":{S[b.size_from]}}}')
    return ids, ",".join(out)


def _usage(u, smaps: bool) -> str:
    if smaps:
        return (f'{{"rss":{u.rss},"pss":{u.pss},"uss":{u.uss},"mapped":{u.mapped},"buffers":{u.buffers},'
                f'"unknown_size":{u.unknown},"in_rss":{u.in_rss}}}')
    return (f'{{"rss":{u.rss},"pss":{u.pss},"uss":{u.uss},"mapped":{u.mapped},"buffers":{u.buffers},'
            f'"unknown_size":{u.unknown}}}')


def _processes(snap, acct, ids, S, I) -> str:
    enc = _str
    smaps = snap.smaps
    usage = acct.processes
    M = _Mappings({(): ('0,"mapped":0', "")})
    out = []
    for p in snap.processes:
        refs = []
        add = refs.append
        for r in p.refs:
            fds = r.fds
            maps, vmas = M[r.vmas]
            if smaps:
                in_rss = r.in_rss
                add(f'{{"buffer":{ids[r.buffer]},"fds":{len(fds)},"maps":{maps},"fd_list":[{I[fds]}],'
                    f'"vmas":[{vmas}],"in_rss":{"null" if in_rss is None else in_rss}}}')
            else:
                add(f'{{"buffer":{ids[r.buffer]},"fds":{len(fds)},"maps":{maps},"fd_list":[{I[fds]}],'
                    f'"vmas":[{vmas}]}}')
        u = usage[p.pid]
        kinds = ",".join(f"{enc(k)}:{_usage(ku, smaps)}" for k, ku in sorted(u.by_kind.items()))
        comm, cmdline, uid = p.comm, p.cmdline, p.uid
        out.append(f'{{"pid":{p.pid},"comm":{"null" if comm is None else enc(comm)},'
                   f'"cmdline":{"null" if cmdline is None else enc(cmdline)},'
                   f'"uid":{"null" if uid is None else uid},"totals":{_usage(u.total, smaps)},'
                   f'"by_kind":{{{kinds}}},"refs":[{",".join(refs)}]'
                   + ("}" if p.cgroup is None else f',"cgroup":{enc(p.cgroup)}}}'))
    return ",".join(out)
