"""A Snapshot's JSON form (schema 1): to_dict, and to_json, whose compact text is written fast.

The compact output is, byte for byte, ``json.dumps(to_dict(snap, filt), ensure_ascii=False,
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
are tuples), which the builder and json_in.from_dict guarantee.
"""
from __future__ import annotations

import json
from json.encoder import encode_basestring as _str
from typing import Iterator, Optional, Tuple

from .account import account
from .model import Buffer, GpuClient, Ref, Snapshot
from .speed import no_gc

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def to_json(snap: Snapshot, indent: Optional[int] = None, filt: Optional[dict] = None) -> str:
    """Compact by default, and then written without building to_dict()'s document (the
    same bytes, twice as fast or more). With an indent, json falls back from its C encoder
    (5x slower on a big machine's snapshot); `jq .` pretty-prints."""
    with no_gc():
        if indent is None:
            return snapshot_json(snap, filt)
        return json.dumps(to_dict(snap, filt), indent=indent, ensure_ascii=False)


def to_dict(snap: Snapshot, filt: Optional[dict] = None) -> dict:
    """The schema-1 document as dicts and lists (`filt`: the -p/--kind it was saved under)."""
    acct = account(snap)
    head, tail = _json_parts(snap, acct, filt)
    doc = dict(head, buffers=[_buffer_dict(b) for b in snap.buffers], processes=[])
    for p in snap.processes:
        usage = acct.processes[p.pid]
        doc["processes"].append({
            "pid": p.pid, "comm": p.comm, "cmdline": p.cmdline, "uid": p.uid,
            "totals": usage.total.as_dict(snap.smaps),
            "by_kind": {k: u.as_dict(snap.smaps) for k, u in sorted(usage.by_kind.items())},
            "refs": [_ref_dict(r, snap.smaps) for r in p.refs],
        })
        if p.cgroup is not None:
            doc["processes"][-1]["cgroup"] = p.cgroup
    doc.update(tail)
    return doc


def _json_parts(snap: Snapshot, acct, filt: Optional[dict] = None) -> Tuple[dict, dict]:
    """The document's keys before "buffers" and after "processes" (to_dict, snapshot_json)."""
    head = {
        "schema": snap.schema,
        "taken_at": snap.taken_at,
        "source": snap.source,
        "host": {"hostname": snap.host.hostname, "kernel": snap.host.kernel},
        "backend": snap.backend,
        "backend_reason": snap.backend_reason,
        "scope": snap.scope,
        "smaps": snap.smaps,
    }
    tail = {
        "kernel": {
            "dmabuf_source": snap.kernel.dmabuf_source,
            "dmabuf_exported_bytes": snap.kernel.dmabuf_exported_bytes,
            "dmabuf_exported_count": snap.kernel.dmabuf_exported_count,
            "sysv_source": snap.kernel.sysv_source,
            "held_bytes": acct.held_bytes,
            "held_allocated": acct.held_allocated,
            "kernel_only_bytes": acct.kernel_only_bytes,
            "kernel_only_buffers": acct.kernel_only_buffers,
            "unattributed_bytes": acct.unattributed_bytes,
        },
        "totals": acct.total.as_dict(snap.smaps),
        "skipped": {"denied": list(snap.skipped.denied),
                    "vanished": list(snap.skipped.vanished),
                    "unreadable": list(snap.skipped.unreadable)},
        "notes": list(snap.notes),
        "gpu": [_gpu_dict(g) for g in snap.gpu],
    }
    if snap.cgroups:
        tail["cgroups"] = [_cgroup_dict(c) for c in snap.cgroups]
    if filt:
        tail["filter"] = filt
    return head, tail


def _buffer_dict(b: Buffer) -> dict:
    return {"id": b.id, "kind": b.kind, "dev": b.dev, "inode": b.inode, "size": b.size,
            "exporter": b.exporter, "name": b.name, "category": b.category,
            "holders": list(b.holders), "fd_refs": b.fd_refs, "map_refs": b.map_refs,
            "kernel_count": b.kernel_count, "size_from": b.size_from,
            "allocated": b.allocated, "swapped": b.swapped}




def _cgroup_dict(c) -> dict:
    d = {"path": c.path, "hierarchy": c.hierarchy, "stat": dict(c.stat)}
    if c.dmem_current or c.dmem_max:
        d["dmem"] = {"current": dict(c.dmem_current), "max": dict(c.dmem_max)}
    return d


def _gpu_dict(g: GpuClient) -> dict:
    # what the fdinfo did not print stays out (drm-pdev, drm-client-id, drm-client-name...)
    d = {"pid": g.pid, "driver": g.driver}
    for key in ("pdev", "client_id", "client_name", "device"):
        if getattr(g, key) is not None:
            d[key] = getattr(g, key)
    d.update({"holders": list(g.holders), "fds": list(g.fds),
              "regions": {r: dict(v) for r, v in g.regions.items()},
              "engines": {e: dict(v) for e, v in g.engines.items()}})
    if g.driver_keys:
        d["driver_keys"] = dict(g.driver_keys)
    return d




def _ref_dict(r: Ref, smaps: bool) -> dict:
    d = {"buffer": r.buffer, "fds": len(r.fds), "maps": len(r.vmas), "mapped": r.mapped,
         "fd_list": list(r.fds), "vmas": [list(v) for v in r.vmas]}
    if smaps:
        d["in_rss"] = r.in_rss
    if r.private:
        d["private_vmas"] = [list(v) for v in r.private]
    return d


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
    return "".join(json_chunks(snap, filt))


# buffers and processes per piece: big enough that writes stay few, small enough that a
# piece is a few hundred KB
_BATCH = 1024


def json_document(snap, filt: Optional[dict] = None) -> Iterator[str]:
    """The pieces of what `memtrack --json` prints: the compact document and a newline."""
    with no_gc():
        yield from json_chunks(snap, filt)
    yield "\n"


def json_chunks(snap, filt: Optional[dict] = None) -> Iterator[str]:
    """The compact document in pieces whose concatenation is snapshot_json's text."""
    acct = account(snap)
    head, tail = _json_parts(snap, acct, filt)
    strings, ints = _Strings(), _Ints()
    yield _encode(head)[:-1] + ',"buffers":['
    bufs = snap.buffers
    for i in range(0, len(bufs), _BATCH):
        yield ("," if i else "") + _buffers(bufs[i:i + _BATCH], strings, ints)
    yield '],"processes":['
    procs = snap.processes
    for i in range(0, len(procs), _BATCH):
        yield ("," if i else "") + _processes(procs[i:i + _BATCH], snap.smaps, acct, strings, ints)
    yield "]," + _encode(tail)[1:]


def _buffers(bufs, S, I) -> str:
    """The buffers' JSON objects joined by commas."""
    enc = _str
    N = _Numbers()
    out = []
    add = out.append
    for b in bufs:
        inode, name = b.inode, b.name
        add(f'{{"id":{enc(b.id)},"kind":{S[b.kind]},"dev":{S[b.dev]},'
            f'"inode":{"null" if inode is None else inode},"size":{N[b.size]},'
            f'"exporter":{S[b.exporter]},"name":{"null" if name is None else enc(name)},'
            f'"category":{S[b.category]},"holders":[{I[b.holders]}],"fd_refs":{N[b.fd_refs]},'
            f'"map_refs":{N[b.map_refs]},"kernel_count":{N[b.kernel_count]},'
            f'"size_from":{S[b.size_from]},"allocated":{N[b.allocated]},"swapped":{N[b.swapped]}}}')
    return ",".join(out)


def _usage(u, smaps: bool) -> str:
    if smaps:
        return (f'{{"rss":{u.rss},"pss":{u.pss},"uss":{u.uss},"mapped":{u.mapped},"buffers":{u.buffers},'
                f'"unknown_size":{u.unknown},"mem":{u.mem},"unknown_allocated":{u.unknown_alloc},'
                f'"in_rss":{u.in_rss}}}')
    return (f'{{"rss":{u.rss},"pss":{u.pss},"uss":{u.uss},"mapped":{u.mapped},"buffers":{u.buffers},'
            f'"unknown_size":{u.unknown},"mem":{u.mem},"unknown_allocated":{u.unknown_alloc}}}')


def _processes(procs, smaps: bool, acct, S, I) -> str:
    enc = _str
    usage = acct.processes
    M = _Mappings({(): ('0,"mapped":0', "")})
    out = []
    for p in procs:
        refs = []
        add = refs.append
        for r in p.refs:
            fds = r.fds
            maps, vmas = M[r.vmas]
            # "private_vmas" only where there are some (as _ref_dict)
            priv = (',"private_vmas":[%s]' % ",".join("[%d,%d,%d]" % v for v in r.private)
                    if r.private else "")
            if smaps:
                in_rss = r.in_rss
                add(f'{{"buffer":{enc(r.buffer)},"fds":{len(fds)},"maps":{maps},"fd_list":[{I[fds]}],'
                    f'"vmas":[{vmas}],"in_rss":{"null" if in_rss is None else in_rss}{priv}}}')
            else:
                add(f'{{"buffer":{enc(r.buffer)},"fds":{len(fds)},"maps":{maps},"fd_list":[{I[fds]}],'
                    f'"vmas":[{vmas}]{priv}}}')
        u = usage[p.pid]
        kinds = ",".join(f"{enc(k)}:{_usage(ku, smaps)}" for k, ku in sorted(u.by_kind.items()))
        comm, cmdline, uid = p.comm, p.cmdline, p.uid
        out.append(f'{{"pid":{p.pid},"comm":{"null" if comm is None else enc(comm)},'
                   f'"cmdline":{"null" if cmdline is None else enc(cmdline)},'
                   f'"uid":{"null" if uid is None else uid},"totals":{_usage(u.total, smaps)},'
                   f'"by_kind":{{{kinds}}},"refs":[{",".join(refs)}]'
                   + ("}" if p.cgroup is None else f',"cgroup":{enc(p.cgroup)}}}'))
    return ",".join(out)
