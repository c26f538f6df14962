"""The snapshot: plain frozen dataclasses, and their JSON form (schema 1).

A Snapshot holds facts only (which buffers exist, who references them how); every derived
number (rss, pss, uss, kernel-only...) comes from ``account.py`` so it can never go stale.
"""
from __future__ import annotations

import json
from dataclasses import FrozenInstanceError, dataclass, field, fields, replace
from functools import cached_property
from typing import Dict, List, Optional, Tuple

from .errors import SourceError
from .readers.num import PID_MAX_LIMIT, U64

SCHEMA = 1
KINDS = ("dmabuf", "memfd", "shm", "sysv", "shmem", "ashmem")


def _slotted(cls):
    """The frozen dataclass cls remade with __slots__ (dataclass(slots=True), which Python
    3.9 lacks): no per-instance dict, so a big scan's tens of thousands of Buffers and Refs
    take 40% less memory and are made faster. Pickling and copying go through the fields.
    Weak references still work (a __weakref__ slot, as the unslotted class had)."""
    names = tuple(f.name for f in fields(cls))
    ns = {k: v for k, v in cls.__dict__.items() if k not in names and k not in ("__dict__", "__weakref__")}
    ns["__slots__"] = names + ("__weakref__",)
    ns["__getstate__"] = _getstate
    ns["__setstate__"] = _setstate
    ns["__setattr__"] = _frozen_setattr   # the generated ones name the class being replaced
    ns["__delattr__"] = _frozen_delattr
    new = type(cls)(cls.__name__, cls.__bases__, ns)
    new.__qualname__ = cls.__qualname__
    return new


def _frozen_setattr(self, name, value):
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self, name):
    raise FrozenInstanceError(f"cannot delete field {name!r}")


def _getstate(self):
    return [getattr(self, f.name) for f in fields(self)]


def _setstate(self, state):
    names = [f.name for f in fields(self)]
    if (isinstance(state, tuple) and len(state) == 2 and len(names) != 2
            and all(part is None or isinstance(part, dict) for part in state)):
        state = {**(state[0] or {}), **(state[1] or {})}    # (dict, slots): the default shape
    if isinstance(state, dict):         # pickled before Buffer and Ref had slots
        if set(state) != set(names):
            raise TypeError(f"cannot unpickle {type(self).__name__}: fields {sorted(state)}")
        state = [state[n] for n in names]
    if len(state) != len(names):
        raise TypeError(f"cannot unpickle {type(self).__name__}: {len(state)} values for "
                        f"{len(names)} fields")
    for name, value in zip(names, state):
        object.__setattr__(self, name, value)


@_slotted
@dataclass(frozen=True)
class Buffer:
    id: str
    kind: str
    inode: Optional[int]               # None only for pre-5.3 anon_inode dma-bufs
    dev: Optional[str] = None          # "MM:mm" as maps prints it; None where nothing said
    size: Optional[int] = None         # bytes; None = could not be known (never guessed)
    exporter: Optional[str] = None
    name: Optional[str] = None
    category: Optional[str] = None
    holders: Tuple[int, ...] = ()      # pids holding it by fd or mapping, sorted
    fd_refs: int = 0
    map_refs: int = 0
    kernel_count: Optional[int] = None  # dma-buf: file count (bufinfo/fdinfo); sysv: nattch
    size_from: Optional[str] = None    # which interface gave the size


@_slotted
@dataclass(frozen=True)
class Ref:
    """One process's references to one buffer."""
    buffer: str
    fds: Tuple[int, ...] = ()
    vmas: Tuple[Tuple[int, int, int], ...] = ()   # (start, end, file offset)
    in_rss: Optional[int] = None                  # smaps Rss of those VMAs (with --smaps)

    @property
    def mapped(self) -> int:
        return sum(end - start for start, end, _ in self.vmas)


@dataclass(frozen=True)
class Process:
    pid: int
    comm: str = ""
    cmdline: str = ""
    uid: Optional[int] = None
    refs: Tuple[Ref, ...] = ()
    cgroup: Optional[str] = None       # the memory controller's cgroup path (cgroups.py); None: unknown

    @property
    def name(self) -> str:
        return self.cmdline or self.comm or "?"


@dataclass(frozen=True)
class GpuClient:
    """One DRM client (struct drm_file) as one holding process sees it: the snapshot has one
    per (client, holder). regions/engines are the client's, identical in every holder's entry;
    keys the fdinfo did not print are absent. Treat the dicts as read-only."""
    pid: int
    driver: str
    client_id: Optional[int]           # None: the driver printed none (each fd its own client)
    pdev: Optional[str] = None
    device: Optional[str] = None       # /dev/dri node the fds name
    client_name: Optional[str] = None
    holders: Tuple[int, ...] = ()      # every pid holding this client, sorted
    fds: Tuple[int, ...] = ()          # this pid's fds to it
    regions: Dict[str, Dict[str, int]] = field(default_factory=dict)   # bytes
    engines: Dict[str, Dict[str, int]] = field(default_factory=dict)   # raw counters (ns...)
    driver_keys: Dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple:
        """Client identity: (pdev or device, client-id) (drm-usage-stats.rst)."""
        if self.client_id is None:
            return (self.pdev or self.device, None, self.pid, self.fds)
        return (self.pdev or self.device, self.client_id)


@dataclass(frozen=True)
class CgroupInfo:
    """What the memory controller says of one cgroup a scanned process is in: what it was
    charged for shared memory (memory.stat, cgroups.STAT_KEYS names, bytes) and, where the
    dmem controller is (Linux 6.14+, v2), device memory per region (max: None = no limit).
    Keys the kernel did not print are absent. Treat the dicts as read-only."""
    path: str
    hierarchy: str                     # "v1" | "v2"
    stat: Dict[str, int] = field(default_factory=dict)
    dmem_current: Dict[str, int] = field(default_factory=dict)
    dmem_max: Dict[str, Optional[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Host:
    hostname: Optional[str] = None
    kernel: Optional[str] = None


@dataclass(frozen=True)
class KernelInfo:
    """What the kernel-wide tables said, independent of any process."""
    dmabuf_source: Optional[str] = None        # "debugfs" | "sysfs" | None (unreadable)
    dmabuf_exported_bytes: Optional[int] = None
    dmabuf_exported_count: Optional[int] = None
    sysv_source: Optional[str] = None          # "sysvipc" | None


@dataclass(frozen=True)
class Skipped:
    denied: Tuple[int, ...] = ()
    vanished: Tuple[int, ...] = ()
    unreadable: Tuple[int, ...] = ()

    @property
    def total(self) -> int:
        return len(self.denied) + len(self.vanished) + len(self.unreadable)


@dataclass(frozen=True)
class Snapshot:
    taken_at: str = ""
    source: str = "live"
    host: Host = field(default_factory=Host)
    backend: str = "procfs"
    backend_reason: Optional[str] = None   # why that backend ran (--backend auto's choice)
    scope: str = "all"                 # "all": every process was scanned; "pids": a subset
    smaps: bool = False                # whether in_rss was read
    buffers: Tuple[Buffer, ...] = ()
    processes: Tuple[Process, ...] = ()
    kernel: KernelInfo = field(default_factory=KernelInfo)
    skipped: Skipped = field(default_factory=Skipped)
    notes: Tuple[str, ...] = ()
    schema: int = SCHEMA
    gpu: Tuple[GpuClient, ...] = ()    # DRM clients, one per (client, holding process)
    cgroups: Tuple[CgroupInfo, ...] = ()   # the cgroups of the processes, by path

    @cached_property
    def cgroup_map(self) -> Dict[str, CgroupInfo]:
        return {c.path: c for c in self.cgroups}

    @cached_property
    def buffer_map(self) -> Dict[str, Buffer]:
        return {b.id: b for b in self.buffers}

    @cached_property
    def process_map(self) -> Dict[int, Process]:
        return {p.pid: p for p in self.processes}

    def buffer(self, bid: str) -> Buffer:
        return self.buffer_map[bid]

    @property
    def complete(self) -> bool:
        """True when every process on the machine was seen, so unheld = kernel-only."""
        return self.scope == "all" and not self.skipped.denied and not self.skipped.unreadable

    def restrict(self, pids=None, kinds=None) -> "Snapshot":
        """The same snapshot narrowed for display: holders keep every pid, so pss is unchanged."""
        kinds = set(kinds) if kinds else None
        buffers = tuple(b for b in self.buffers if kinds is None or b.kind in kinds)
        keep = {b.id for b in buffers}
        procs = []
        for p in self.processes:
            if pids is not None and p.pid not in pids:
                continue
            refs = tuple(r for r in p.refs if r.buffer in keep)
            if kinds is not None and not refs:
                continue
            procs.append(replace(p, refs=refs))
        gpu, cgroups = self.gpu, self.cgroups
        if pids is not None:
            held = {r.buffer for p in procs for r in p.refs}
            buffers = tuple(b for b in buffers if b.id in held)
            gpu = tuple(g for g in gpu if g.pid in pids)
            seen = {p.cgroup for p in procs}
            cgroups = tuple(c for c in cgroups if c.path in seen)
        return replace(self, buffers=buffers, processes=tuple(procs), gpu=gpu, cgroups=cgroups)

    # -- JSON ---------------------------------------------------------------------------
    def to_dict(self, filt: Optional[dict] = None) -> dict:
        from .account import account
        acct = account(self)
        head, tail = self._json_parts(acct, filt)
        doc = dict(head, buffers=[_buffer_dict(b) for b in self.buffers], processes=[])
        for p in self.processes:
            usage = acct.processes[p.pid]
            doc["processes"].append({
                "pid": p.pid, "comm": p.comm, "cmdline": p.cmdline, "uid": p.uid,
                "totals": usage.total.as_dict(self.smaps),
                "by_kind": {k: u.as_dict(self.smaps) for k, u in sorted(usage.by_kind.items())},
                "refs": [_ref_dict(r, self.smaps) for r in p.refs],
            })
            if p.cgroup is not None:
                doc["processes"][-1]["cgroup"] = p.cgroup
        doc.update(tail)
        return doc

    def _json_parts(self, acct, filt: Optional[dict] = None) -> Tuple[dict, dict]:
        """The document's keys before "buffers" and after "processes" (to_dict, json_out)."""
        head = {
            "schema": self.schema,
            "taken_at": self.taken_at,
            "source": self.source,
            "host": {"hostname": self.host.hostname, "kernel": self.host.kernel},
            "backend": self.backend,
            "backend_reason": self.backend_reason,
            "scope": self.scope,
            "smaps": self.smaps,
        }
        tail = {
            "kernel": {
                "dmabuf_source": self.kernel.dmabuf_source,
                "dmabuf_exported_bytes": self.kernel.dmabuf_exported_bytes,
                "dmabuf_exported_count": self.kernel.dmabuf_exported_count,
                "sysv_source": self.kernel.sysv_source,
                "held_bytes": acct.held_bytes,
                "kernel_only_bytes": acct.kernel_only_bytes,
                "kernel_only_buffers": acct.kernel_only_buffers,
                "unattributed_bytes": acct.unattributed_bytes,
            },
            "totals": acct.total.as_dict(self.smaps),
            "skipped": {"denied": list(self.skipped.denied),
                        "vanished": list(self.skipped.vanished),
                        "unreadable": list(self.skipped.unreadable)},
            "notes": list(self.notes),
            "gpu": [_gpu_dict(g) for g in self.gpu],
        }
        if self.cgroups:
            tail["cgroups"] = [_cgroup_dict(c) for c in self.cgroups]
        if filt:
            tail["filter"] = filt
        return head, tail

    def to_json(self, indent: Optional[int] = None, filt: Optional[dict] = None) -> str:
        """Compact by default, and then written by json_out without building to_dict()'s
        document (the same bytes, twice as fast or more). With an indent, json falls back
        from its C encoder (5x slower on a big machine's snapshot); `jq .` pretty-prints."""
        from .scan import no_gc
        with no_gc():
            if indent is None:
                from .json_out import snapshot_json
                return snapshot_json(self, filt)
            return json.dumps(self.to_dict(filt), indent=indent, ensure_ascii=False)

    @classmethod
    def from_dict(cls, doc: dict) -> "Snapshot":
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


def _buffer_dict(b: Buffer) -> dict:
    return {"id": b.id, "kind": b.kind, "dev": b.dev, "inode": b.inode, "size": b.size,
            "exporter": b.exporter, "name": b.name, "category": b.category,
            "holders": list(b.holders), "fd_refs": b.fd_refs, "map_refs": b.map_refs,
            "kernel_count": b.kernel_count, "size_from": b.size_from}


def _cgroup_dict(c: CgroupInfo) -> dict:
    d = {"path": c.path, "hierarchy": c.hierarchy, "stat": dict(c.stat)}
    if c.dmem_current or c.dmem_max:
        d["dmem"] = {"current": dict(c.dmem_current), "max": dict(c.dmem_max)}
    return d


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


def _counters(doc) -> Dict[str, Dict[str, int]]:
    if not isinstance(doc, dict):
        raise ValueError(f"expected an object, got {doc!r}")
    out = {}
    for name, vals in doc.items():
        if not isinstance(vals, dict):
            raise ValueError(f"expected an object, got {vals!r}")
        out[str(name)] = {str(k): _u64(v) for k, v in vals.items()}
    return out


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


def _ref_dict(r: Ref, smaps: bool) -> dict:
    d = {"buffer": r.buffer, "fds": len(r.fds), "maps": len(r.vmas), "mapped": r.mapped,
         "fd_list": list(r.fds), "vmas": [list(v) for v in r.vmas]}
    if smaps:
        d["in_rss"] = r.in_rss
    return d


def _opt_int(v):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"expected an integer, got {v!r}")
    return v


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
            kernel_count=_opt_u64(b.get("kernel_count")), size_from=_opt_str(b.get("size_from"))))
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
                            in_rss=_opt_u64(r.get("in_rss")) if smaps else None))
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


def field_names(cls) -> List[str]:
    return [f.name for f in fields(cls)]


def fast_factory(cls):
    """A constructor taking every field positionally, for the builder's hot loop, of a
    slotted frozen dataclass (Buffer, Ref): their __init__ pays one object.__setattr__ call
    per field. This makes the instance as a private subclass whose __init__ stores each slot
    directly, then turns it into cls (same layout): generated code, as dataclasses itself
    makes __init__, about 2.5x faster. The instances cannot be told from ones __init__ makes."""
    assert "__slots__" in cls.__dict__, cls
    names = field_names(cls)
    assert not {"_cls", "self"} & set(names)
    ns = {"_cls": cls}
    body = "".join(f"    self.{n} = {n}\n" for n in names)
    exec(f"def __init__(self, {', '.join(names)}):\n{body}    self.__class__ = _cls\n", ns)
    # both slots of tp_setattro plain, or every store goes through a lookup by name
    return type(f"_New{cls.__name__}", (cls,), {
        "__slots__": (), "__init__": ns["__init__"], "__module__": cls.__module__,
        "__setattr__": object.__setattr__, "__delattr__": object.__delattr__})


def replacer(cls, name: str):
    """f(obj, value): a copy of obj (an instance of cls) with field `name` set to value, at
    the cost of fast_factory's constructor: dataclasses.replace() for one field of a hot
    loop (categorize sets every fresh buffer's category). An instance of a subclass of cls
    is copied by dataclasses.replace(), keeping its class and its own fields."""
    names = field_names(cls)
    assert name in names and not {"_make", "_cls", "_replace"} & set(names)
    ns = {"_make": fast_factory(cls), "_cls": cls, "_replace": replace}
    got = ", ".join("value" if n == name else f"obj.{n}" for n in names)
    exec(f"def with_{name}(obj, value):\n"
         f"    if obj.__class__ is not _cls:\n"
         f"        return _replace(obj, {name}=value)\n"
         f"    return _make({got})\n", ns)
    return ns[f"with_{name}"]


new_buffer = fast_factory(Buffer)
new_ref = fast_factory(Ref)
with_category = replacer(Buffer, "category")
