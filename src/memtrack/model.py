"""The snapshot: plain frozen dataclasses (their JSON form: json_out.py, json_in.py).

A Snapshot holds facts only (which buffers exist, who references them how); every derived
number (rss, pss, uss, kernel-only...) comes from ``account.py`` so it can never go stale.
"""
from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass, field, fields, replace
from functools import cached_property
from typing import Dict, Optional, Tuple

SCHEMA = 1
KINDS = ("dmabuf", "memfd", "shm", "sysv", "shmem", "ashmem", "hugetlb")


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
    # bytes of memory the buffer really holds, in RAM or swapped out (a sparse or untouched
    # file holds less than its size); None = could not be known. swapped: the part of it in
    # swap, where the kernel tells it apart (SysV)
    allocated: Optional[int] = None
    swapped: Optional[int] = None


@_slotted
@dataclass(frozen=True)
class Ref:
    """One process's references to one buffer."""
    buffer: str
    fds: Tuple[int, ...] = ()
    vmas: Tuple[Tuple[int, int, int], ...] = ()   # (start, end, file offset)
    in_rss: Optional[int] = None                  # smaps Rss of those VMAs (with --smaps)
    # MAP_PRIVATE mappings (start, end, offset): they keep the buffer alive, but the pages
    # written through them are the process's own copies, so they count in neither `mapped`
    # nor in_rss
    private: Tuple[Tuple[int, int, int], ...] = ()

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


# Hand-written constructors for the builder's hot loop, a Buffer and a Ref per record: the
# frozen __init__ pays one object.__setattr__ call per field, storing through each slot's
# own descriptor is about twice as fast. test_build checks that their parameters are the
# classes' fields with the same defaults.
_new = object.__new__
_set_b_id = Buffer.id.__set__
_set_b_kind = Buffer.kind.__set__
_set_b_inode = Buffer.inode.__set__
_set_b_dev = Buffer.dev.__set__
_set_b_size = Buffer.size.__set__
_set_b_exporter = Buffer.exporter.__set__
_set_b_name = Buffer.name.__set__
_set_b_category = Buffer.category.__set__
_set_b_holders = Buffer.holders.__set__
_set_b_fd_refs = Buffer.fd_refs.__set__
_set_b_map_refs = Buffer.map_refs.__set__
_set_b_kernel_count = Buffer.kernel_count.__set__
_set_b_size_from = Buffer.size_from.__set__
_set_b_allocated = Buffer.allocated.__set__
_set_b_swapped = Buffer.swapped.__set__
_set_r_buffer = Ref.buffer.__set__
_set_r_fds = Ref.fds.__set__
_set_r_vmas = Ref.vmas.__set__
_set_r_in_rss = Ref.in_rss.__set__
_set_r_private = Ref.private.__set__


def new_buffer(id, kind, inode, dev=None, size=None, exporter=None, name=None, category=None,
               holders=(), fd_refs=0, map_refs=0, kernel_count=None, size_from=None,
               allocated=None, swapped=None):
    """Buffer(...), the same instance, made faster."""
    o = _new(Buffer)
    _set_b_id(o, id)
    _set_b_kind(o, kind)
    _set_b_inode(o, inode)
    _set_b_dev(o, dev)
    _set_b_size(o, size)
    _set_b_exporter(o, exporter)
    _set_b_name(o, name)
    _set_b_category(o, category)
    _set_b_holders(o, holders)
    _set_b_fd_refs(o, fd_refs)
    _set_b_map_refs(o, map_refs)
    _set_b_kernel_count(o, kernel_count)
    _set_b_size_from(o, size_from)
    _set_b_allocated(o, allocated)
    _set_b_swapped(o, swapped)
    return o


def new_ref(buffer, fds=(), vmas=(), in_rss=None, private=()):
    """Ref(...), the same instance, made faster."""
    o = _new(Ref)
    _set_r_buffer(o, buffer)
    _set_r_fds(o, fds)
    _set_r_vmas(o, vmas)
    _set_r_in_rss(o, in_rss)
    _set_r_private(o, private)
    return o


def with_category(b: Buffer, category: Optional[str]) -> Buffer:
    """replace(b, category=category) at new_buffer's cost (categorize sets every fresh
    buffer's category). A caller's subclass of Buffer goes through replace(), which keeps
    its class and its own fields."""
    if b.__class__ is not Buffer:
        return replace(b, category=category)
    return new_buffer(b.id, b.kind, b.inode, b.dev, b.size, b.exporter, b.name, category,
                      b.holders, b.fd_refs, b.map_refs, b.kernel_count, b.size_from,
                      b.allocated, b.swapped)
