"""A Snapshot from its JSON form (schema 1), validated: what memtrack wrote, or a clear
SourceError (never a traceback) for anything else."""
from __future__ import annotations

from typing import Dict

from .errors import SourceError
from .model import KINDS, SCHEMA, Buffer, CgroupInfo, GpuClient, Host, KernelInfo, Process, Ref, Skipped, Snapshot
from .readers.num import PID_MAX_LIMIT, U64


def from_dict(doc: dict) -> Snapshot:
    """The Snapshot a schema-1 document (json.loads of `memtrack --json`) holds."""
    try:
        return _snapshot_from_dict(doc)
    except SourceError:
        raise
    except KeyError as exc:
        raise SourceError(f"not a memtrack snapshot: the field {exc.args[0]!r} is missing") from None
    except ValueError as exc:
        raise SourceError(f"not a memtrack snapshot: {exc}") from None
    except (TypeError, AttributeError):      # a value of a JSON type the checks did not foresee
        raise SourceError("not a memtrack snapshot: a field holds a value of the wrong type") from None


def _counters(doc) -> Dict[str, Dict[str, int]]:
    if not isinstance(doc, dict):
        raise ValueError(f"expected an object, got {doc!r}")
    out = {}
    for name, vals in doc.items():
        if not isinstance(vals, dict):
            raise ValueError(f"expected an object, got {vals!r}")
        out[str(name)] = {str(k): _u64(v) for k, v in vals.items()}
    return out


def _cgroup_from_dict(c) -> CgroupInfo:
    c = _obj(c, "cgroups")
    hier = c["hierarchy"]
    if hier not in ("v1", "v2"):
        raise ValueError(f"unknown cgroup hierarchy {hier!r}")
    stat = _obj(c.get("stat") or {}, "cgroups: stat")
    dmem = _obj(c.get("dmem") or {}, "cgroups: dmem")
    cur = _obj(dmem.get("current") or {}, "cgroups: dmem")
    mx = _obj(dmem.get("max") or {}, "cgroups: dmem")
    return CgroupInfo(path=_str(c["path"]), hierarchy=hier,
                      stat={str(k): _u64(v) for k, v in stat.items()},
                      dmem_current={str(k): _u64(v) for k, v in cur.items()},
                      dmem_max={str(k): _opt_u64(v) for k, v in mx.items()})


def _gpu_from_dict(g: dict) -> GpuClient:
    keys = _obj(g, "gpu").get("driver_keys") or {}
    if not isinstance(keys, dict):
        raise ValueError(f"expected an object, got {keys!r}")
    return GpuClient(
        pid=_pid(g["pid"]), driver=_opt_str(g["driver"]) or "", client_id=_opt_u64(g.get("client_id")),
        pdev=_opt_str(g.get("pdev")), device=_opt_str(g.get("device")),
        client_name=_opt_str(g.get("client_name")),
        holders=tuple(_pid(h) for h in _list(g.get("holders", ()))),
        fds=tuple(_fd(f) for f in _list(g.get("fds", ()))),
        regions=_counters(g.get("regions") or {}), engines=_counters(g.get("engines") or {}),
        driver_keys={str(k): str(v) for k, v in keys.items()})


def _opt_str(v):
    if v is None:
        return None
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {v!r}")
    return v


def _str(v):
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {v!r}")
    return v


def _int(v):
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"expected an integer, got {v!r}")
    return v


def _nat(v):
    """A count, size, inode or address: a non-negative integer."""
    if _int(v) < 0:
        raise ValueError(f"expected a non-negative integer, got {v!r}")
    return v


def _opt_nat(v):
    return None if v is None else _nat(v)


#: the most fds a process can have (fs.nr_open's ceiling is INT_MAX rounded down)
FD_LIMIT = 1 << 31


def _u64(v):
    """One size, inode, address or kernel counter: what the kernel prints as a u64."""
    if _nat(v) >= U64:
        raise ValueError(f"{v!r} is beyond what a 64-bit kernel value can hold")
    return v


def _opt_u64(v):
    return None if v is None else _u64(v)


def _pid(v):
    if not 0 < _int(v) <= PID_MAX_LIMIT:
        raise ValueError(f"{v!r} is no process id (1 to {PID_MAX_LIMIT})")
    return v


def _fd(v):
    if not 0 <= _int(v) < FD_LIMIT:
        raise ValueError(f"{v!r} is no file descriptor number")
    return v


def _uid(v):
    if v is not None and not 0 <= _int(v) < 1 << 32:           # a uid_t
        raise ValueError(f"{v!r} is no user id")
    return v


def _json_type(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true/false"
    return {dict: "an object", list: "a list", str: "a string"}.get(type(v), "a number")


def _list(v):
    if not isinstance(v, (list, tuple)):
        raise ValueError(f"expected a list, got {_json_type(v)}")
    return v


def _obj(v, what: str) -> dict:
    if not isinstance(v, dict):
        raise ValueError(f"{what}: expected an object, got {_json_type(v)}")
    return v


def _vma(v):
    start, end, off = (_u64(x) for x in _list(v))
    if end < start:
        raise ValueError(f"mapping ends before it starts: {v!r}")
    return start, end, off


def _snapshot_from_dict(doc: dict) -> Snapshot:
    if not isinstance(doc, dict):
        raise SourceError("not a memtrack snapshot: the JSON document is not an object")
    if type(doc.get("schema")) is not int or doc["schema"] != SCHEMA:
        raise SourceError(f"unsupported snapshot schema {doc.get('schema')!r} (this memtrack reads {SCHEMA})")
    buffers = []
    for b in _list(doc["buffers"]):
        kind = _obj(b, "buffers")["kind"]
        if kind not in KINDS:
            raise ValueError(f"unknown buffer kind {kind!r}")
        holders = tuple(_pid(h) for h in _list(b.get("holders", ())))
        if list(holders) != sorted(set(holders)):
            raise ValueError(f"buffer {b['id']!r}: holders not sorted and unique")
        buffers.append(Buffer(
            id=_str(b["id"]), kind=kind, inode=_opt_u64(b["inode"]), dev=_opt_str(b.get("dev")),
            size=_opt_u64(b.get("size")), exporter=_opt_str(b.get("exporter")),
            name=_opt_str(b.get("name")), category=_opt_str(b.get("category")),
            holders=holders,
            fd_refs=_u64(b.get("fd_refs", 0)), map_refs=_u64(b.get("map_refs", 0)),
            kernel_count=_opt_u64(b.get("kernel_count")), size_from=_opt_str(b.get("size_from")),
            # absent in snapshots from before allocated was known: unknown, not a guess
            allocated=_opt_u64(b.get("allocated")), swapped=_opt_u64(b.get("swapped"))))
    holders_of = {b.id: frozenset(b.holders) for b in buffers}     # a set: a buffer may have thousands
    if len(holders_of) != len(buffers):
        raise ValueError("duplicate buffer ids")
    procs = []
    smaps = bool(doc.get("smaps", False))
    referenced = {}
    for p in _list(doc["processes"]):
        pid = _pid(_obj(p, "processes")["pid"])
        refs = []
        for r in _list(p.get("refs", ())):
            bid = _obj(r, f"pid {pid}: refs")["buffer"]
            if not isinstance(bid, str) or bid not in holders_of:
                raise ValueError(f"reference to unknown buffer {bid!r}")
            if pid not in holders_of[bid]:
                raise ValueError(f"pid {pid} references {bid!r} but is not among its holders")
            referenced.setdefault(bid, set()).add(pid)
            vmas = tuple(_vma(v) for v in _list(r.get("vmas", ())))
            fds = tuple(_fd(f) for f in _list(r.get("fd_list", ())))
            refs.append(Ref(buffer=bid, fds=fds, vmas=vmas,
                            in_rss=_opt_u64(r.get("in_rss")) if smaps else None,
                            private=tuple(_vma(v) for v in _list(r.get("private_vmas", ())))))
        if len({r.buffer for r in refs}) != len(refs):
            raise ValueError(f"pid {pid} references one buffer twice")
        procs.append(Process(pid=pid, comm=_opt_str(p.get("comm")) or "",
                             cmdline=_opt_str(p.get("cmdline")) or "", uid=_uid(p.get("uid")),
                             refs=tuple(refs), cgroup=_opt_str(p.get("cgroup"))))
    if len({p.pid for p in procs}) != len(procs):
        raise ValueError("a pid listed twice")
    if not doc.get("filter"):
        # a whole snapshot: every holder has its reference (a filtered one keeps all holders
        # for pss, but only the selected processes)
        for b in buffers:
            if b.holders and set(b.holders) != referenced.get(b.id, set()):
                raise ValueError(f"buffer {b.id!r}: holders without a reference")
    k = _obj(doc.get("kernel") or {}, "kernel")
    exp_count = _opt_u64(k.get("dmabuf_exported_count"))
    exp_bytes = _opt_nat(k.get("dmabuf_exported_bytes"))
    if exp_bytes is not None and exp_bytes >= U64 and (exp_count is None or exp_bytes > exp_count * (U64 - 1)):
        # a sum of dma-buf sizes may pass 2^64, but only as a sum: never more than its count of u64s
        raise ValueError(f"dmabuf_exported_bytes {exp_bytes} is more than {exp_count or 0} dma-bufs can hold")
    s = _obj(doc.get("skipped") or {}, "skipped")
    h = _obj(doc.get("host") or {}, "host")
    return Snapshot(
        schema=SCHEMA, taken_at=_opt_str(doc.get("taken_at")) or "", source=_opt_str(doc.get("source")) or "",
        host=Host(hostname=_opt_str(h.get("hostname")), kernel=_opt_str(h.get("kernel"))),
        backend=_opt_str(doc.get("backend")) or "procfs",
        backend_reason=_opt_str(doc.get("backend_reason")), scope=_opt_str(doc.get("scope")) or "all",
        smaps=smaps, buffers=tuple(buffers), processes=tuple(procs),
        kernel=KernelInfo(dmabuf_source=_opt_str(k.get("dmabuf_source")),
                          dmabuf_exported_bytes=exp_bytes, dmabuf_exported_count=exp_count,
                          sysv_source=_opt_str(k.get("sysv_source"))),
        skipped=Skipped(denied=tuple(_pid(x) for x in _list(s.get("denied", ()))),
                        vanished=tuple(_pid(x) for x in _list(s.get("vanished", ()))),
                        unreadable=tuple(_pid(x) for x in _list(s.get("unreadable", ())))),
        notes=tuple(_str(n) for n in _list(doc.get("notes", ()))),
        gpu=tuple(_gpu_from_dict(g) for g in _list(doc.get("gpu") or ())),
        cgroups=tuple(_cgroup_from_dict(c) for c in _list(doc.get("cgroups") or ())),
    )
