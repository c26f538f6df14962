"""The handful of libbpf calls memtrack needs, through ctypes on the system libbpf.so.1,
and the loading of memtrack's iterators (open_iterators). Who may use them, and how the
scanner's access check decides, is memtrack.bpf_policy.

open -> load -> set the config map -> attach_iter -> (per read) iter_create -> read() to EOF.
libbpf's own messages are silenced (MEMTRACK_BPF_DEBUG=1 shows them).

Standard library only, and no other memtrack module: the CLI loads the object in a thread
while it imports the rest (memtrack._preload), which must not wait on their imports.
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
import threading

LIBBPF_NAMES = ("libbpf.so.1", "libbpf.so")
OBJECT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "memtrack.bpf.o")
BTF = "/sys/kernel/btf/vmlinux"
DRM_MAJOR = 226                                   # the DRM char devices' major number
STATE = struct.Struct("<IIQQIIQQIIII")            # struct state: drm_major, abi, 0s, shm_dev, 0
ABI = 1


class _IterAttachOpts(ctypes.Structure):
    """struct bpf_iter_attach_opts"""
    _fields_ = [("sz", ctypes.c_size_t), ("link_info", ctypes.c_void_p),
                ("link_info_len", ctypes.c_uint32)]


class LibbpfError(Exception):
    """A libbpf step failed; str() is one line naming the step and the reason."""


_lib = None
_lib_lock = threading.Lock()


def _load_lib():
    with _lib_lock:
        return _lib or _open_lib()


def _open_lib():
    global _lib
    last = None
    for name in LIBBPF_NAMES:
        try:
            lib = ctypes.CDLL(name, use_errno=True)
            break
        except OSError as exc:
            last = exc
    else:
        raise LibbpfError(f"libbpf.so.1 not found ({last}); Debian: apt install libbpf1")
    vp, cp, ci = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    for fn, res, args in (
        ("bpf_object__open_file", vp, [cp, vp]),
        ("bpf_object__load", ci, [vp]),
        ("bpf_object__close", None, [vp]),
        ("bpf_object__find_program_by_name", vp, [vp, cp]),
        ("bpf_object__find_map_by_name", vp, [vp, cp]),
        ("bpf_map__fd", ci, [vp]),
        ("bpf_map__value_size", ctypes.c_uint32, [vp]),
        ("bpf_map_update_elem", ci, [ci, vp, vp, ctypes.c_uint64]),
        ("bpf_program__set_autoload", ci, [vp, ctypes.c_bool]),
        ("bpf_program__attach_iter", vp, [vp, vp]),
        ("bpf_link__fd", ci, [vp]),
        ("bpf_link__destroy", ci, [vp]),
        ("bpf_iter_create", ci, [ci]),
        ("libbpf_get_error", ctypes.c_long, [vp]),
        ("bpf_prog_get_next_id", ci, [ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32)]),
        ("bpf_prog_get_fd_by_id", ci, [ctypes.c_uint32]),
        ("bpf_obj_get_info_by_fd", ci, [ci, vp, ctypes.POINTER(ctypes.c_uint32)]),
        ("bpf_link_get_next_id", ci, [ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32)]),
        ("bpf_link_get_fd_by_id", ci, [ctypes.c_uint32]),
    ):
        f = getattr(lib, fn)
        f.restype, f.argtypes = res, args
    # libbpf prints to stderr by default. Silence it rather than capture it: a ctypes
    # callback would make libffi map a shared trampoline page into this process, a shared
    # mapping memtrack would then report about itself. MEMTRACK_BPF_DEBUG=1 keeps the messages.
    lib.libbpf_set_print.restype = vp
    lib.libbpf_set_print.argtypes = [vp]
    if not os.environ.get("MEMTRACK_BPF_DEBUG"):
        lib.libbpf_set_print(None)
    _lib = lib
    return lib


def available() -> str | None:
    """None when libbpf loads, else why not."""
    try:
        _load_lib()
    except LibbpfError as exc:
        return str(exc)
    return None


def _fail(step: str, err: int) -> LibbpfError:
    err = abs(err) if err else ctypes.get_errno()
    return LibbpfError(f"{step}: {os.strerror(err) if err else 'failed'} "
                       "(MEMTRACK_BPF_DEBUG=1 shows libbpf's messages)")


class BpfObject:
    """A loaded object with its iterator programs attached; read(name) runs one iterator."""

    def __init__(self, path: str, init: dict[str, bytes] | None = None, skip=()):
        """Open and load `path`; `init` gives the first value (key 0) of array maps, set
        right after load; `skip` names programs not to load."""
        lib = self._lib = _load_lib()
        self._obj = None
        self._links: dict[str, int] = {}
        self._progs: dict[str, int] = {}
        ctypes.set_errno(0)
        obj = lib.bpf_object__open_file(path.encode(), None)
        if not obj or lib.libbpf_get_error(obj):
            raise _fail(f"cannot open {path}", lib.libbpf_get_error(obj) if obj else 0)
        self._obj = obj
        try:
            for name in skip:
                prog = lib.bpf_object__find_program_by_name(obj, name.encode())
                if prog:
                    lib.bpf_program__set_autoload(prog, False)
            ctypes.set_errno(0)
            err = lib.bpf_object__load(obj)
            if err:
                raise _fail("BPF object load failed", err)
            for name, value in (init or {}).items():
                self._init_map(name, value)
        except BaseException:
            self.close()
            raise

    def _init_map(self, name: str, value: bytes) -> None:
        lib = self._lib
        m = lib.bpf_object__find_map_by_name(self._obj, name.encode())
        if not m:
            raise LibbpfError(f"the BPF object has no map {name}")
        if lib.bpf_map__value_size(m) != len(value):
            raise LibbpfError(f"map {name} holds {lib.bpf_map__value_size(m)}-byte values, the "
                              f"loader writes {len(value)}: object and loader do not match")
        key = ctypes.c_uint32(0)
        buf = ctypes.create_string_buffer(value, len(value))
        ctypes.set_errno(0)
        err = lib.bpf_map_update_elem(lib.bpf_map__fd(m), ctypes.byref(key), buf, 0)
        if err:
            raise _fail(f"setting map {name}", err)

    def attach(self, name: str) -> None:
        lib = self._lib
        prog = lib.bpf_object__find_program_by_name(self._obj, name.encode())
        if not prog:
            raise LibbpfError(f"no program {name} in the BPF object")
        ctypes.set_errno(0)
        link = lib.bpf_program__attach_iter(prog, None)
        if not link or lib.libbpf_get_error(link):
            raise _fail(f"attach iter {name}", lib.libbpf_get_error(link) if link else 0)
        self._links[name] = link
        self._progs[name] = prog

    def has(self, name: str) -> bool:
        """Whether iterator `name` is attached (read() can run it)."""
        return name in self._links

    def read(self, name: str, big: bool = False):
        """Run iterator `name` once: everything it writes, in one buffer (bytes; with big,
        a read-only memoryview, see _read_big)."""
        return self._run(self._links[name], name, big)

    def read_pid(self, name: str, pid: int) -> bytes:
        """Run the task iterator `name` over one process only (a link made for it, Linux >=
        6.1: union bpf_iter_link_info's task.pid); a process that is gone gives b""."""
        lib = self._lib
        info = (ctypes.c_uint32 * 4)(0, pid, 0, 0)       # tid, pid, pid_fd, (union tail)
        # the address, not ctypes.cast(): a cast result and its source refer to each other,
        # a cycle of garbage per call (info stays alive in this frame for the call)
        opts = _IterAttachOpts(ctypes.sizeof(_IterAttachOpts), ctypes.addressof(info),
                               ctypes.sizeof(info))
        ctypes.set_errno(0)
        link = lib.bpf_program__attach_iter(self._progs[name], ctypes.byref(opts))
        if not link or lib.libbpf_get_error(link):
            raise _fail(f"attach iter {name} for pid {pid}", lib.libbpf_get_error(link) if link else 0)
        try:
            return self._run(link, name)
        finally:
            lib.bpf_link__destroy(link)

    def _run(self, link, name: str, big: bool = False):
        lib = self._lib
        fd = lib.bpf_iter_create(lib.bpf_link__fd(link))
        if fd < 0:
            raise _fail(f"bpf_iter_create {name}", fd)
        try:
            parts = []
            if big:
                got = _read_big(fd)
                if got.__class__ is memoryview:
                    return got
                parts.append(got)               # it outgrew the map: the rest as usual
            while True:
                data = os.read(fd, 1 << 20)
                if not data:
                    break
                parts.append(data)
        finally:
            os.close(fd)
        return b"".join(parts)

    def close(self) -> None:
        lib = self._lib
        for link in self._links.values():
            lib.bpf_link__destroy(link)
        self._links = {}
        self._progs = {}
        if self._obj:
            lib.bpf_object__close(self._obj)
            self._obj = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def kernel_version() -> tuple[int, int]:
    """(major, minor) of the running kernel, from uname's release ("6.18.44-fc" -> (6, 18))."""
    rel = os.uname().release
    parts = []
    for p in rel.split(".")[:2]:
        digits = ""
        for c in p:
            if not c.isdigit():
                break
            digits += c
        parts.append(int(digits or 0))
    while len(parts) < 2:
        parts.append(0)
    return parts[0], parts[1]


BIG_READ = 64 << 20


def _read_big(fd: int):
    """An iterator's whole output (a walk of every process: megabytes) read straight into
    private anonymous memory asking for huge pages: one fault per 2 MiB where the kernel
    has them to give, not one per 4 KiB page twice over (the reads' buffers, then the
    join), which on a virtual machine is milliseconds. A read-only memoryview of it; bytes
    of what was read if it filled BIG_READ (the caller reads on); an empty bytes object if
    no map could be made."""
    try:
        m = mmap.mmap(-1, BIG_READ, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, ValueError, OverflowError):
        return b""
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            m.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass
    view = memoryview(m)
    n = 0
    while n < BIG_READ:
        k = os.readv(fd, [view[n:]])
        if not k:
            return view[:n].toreadonly()
        n += k
    return bytes(view)


_infos: dict = {}          # kind -> {id: info words}; ids are not reused (idr_alloc_cyclic)


def bpf_infos(kind: str, words: int) -> list | None:
    """The first `words` u32s of the info (bpf_obj_get_info_by_fd) of every loaded BPF
    "prog" or "link" (kind), or None where they cannot all be read. An id's info is read
    once: each later scan costs one system call per object (a host may have hundreds)."""
    lib = _load_lib()
    next_id = getattr(lib, f"bpf_{kind}_get_next_id")
    fd_by_id = getattr(lib, f"bpf_{kind}_get_fd_by_id")
    known = _infos.get(kind, {})
    now: dict = {}
    cur, nxt = 0, ctypes.c_uint32()
    while True:
        if next_id(cur, ctypes.byref(nxt)) < 0:
            if ctypes.get_errno() != errno.ENOENT:
                return None
            _infos[kind] = now              # those gone are forgotten
            return list(now.values())
        cur = nxt.value
        got = known.get(cur)
        if got is None:
            fd = fd_by_id(cur)
            if fd < 0:
                if ctypes.get_errno() == errno.ENOENT:
                    continue                # gone since it was listed
                return None
            try:
                info = (ctypes.c_uint32 * words)()
                size = ctypes.c_uint32(ctypes.sizeof(info))
                if lib.bpf_obj_get_info_by_fd(fd, info, ctypes.byref(size)) < 0:
                    return None
            finally:
                os.close(fd)
            got = tuple(info)
        now[cur] = got


def unused_programs(reuse: bool, dmabuf: bool, cmd: bool = False) -> tuple:
    """The programs not to load: iter/dmabuf where the kernel has none; task_mm and
    task_sum where no scan follows (they only serve reuse); task_cmd where the kernel
    cannot run it (bpf_copy_from_user_task: Linux >= 5.18)."""
    return ((() if reuse else ("task_mm", "task_sum")) + (() if dmabuf else ("dmabuf",)) +
            (() if cmd else ("task_cmd",)))


def shm_dev() -> int:
    """/dev/shm's device as the kernel encodes a dev_t (MAJOR << 20 | MINOR), 0 if none: the
    iterators report private mappings of files there (a memfd's they know by its name)."""
    try:
        d = os.stat("/dev/shm").st_dev
    except OSError:
        return 0
    return os.major(d) << 20 | os.minor(d)


def open_iterators(path: str, drm_major: int, reuse: bool) -> tuple[BpfObject, bool, list[str]]:
    """memtrack's object at `path` loaded and its iterators attached: (object, whether
    iter/dmabuf is among them, notes for the snapshot). iter/dmabuf is asked for where the
    kernel says 6.16+; one that lacks it all the same (a backport, a config) gets the object
    without it and a note. task_cmd (cmdlines, 5.18+) is an extra: where the kernel refuses
    it, the object goes without it and cmdlines come from /proc (BpfObject.has). LibbpfError
    where the kernel refuses the rest."""
    init = {"state": STATE.pack(drm_major, ABI, *[0] * 8, shm_dev(), 0)}
    notes: list[str] = []
    dmabuf, cmd = kernel_version() >= (6, 16), kernel_version() >= (5, 18)
    # where the kernel refuses the object, the extras are dropped: task_cmd, then iter/dmabuf,
    # then both ((iter/dmabuf, task_cmd) pairs, each asked at most once)
    tries = list(dict.fromkeys((d and dmabuf, c and cmd) for d, c in
                               ((True, True), (True, False), (False, True), (False, False))))
    for i, (with_dmabuf, with_cmd) in enumerate(tries):
        try:
            obj = BpfObject(path, init, skip=unused_programs(reuse, with_dmabuf, with_cmd))
            break
        except LibbpfError as exc:
            if i == len(tries) - 1:
                raise
            failed = exc
    if dmabuf and not with_dmabuf:
        notes.append(f"iter/dmabuf unavailable ({failed}): dma-buf table from debugfs/sysfs")
    try:
        for name in ("task_file", "task_vma") + (("task_mm", "task_sum") if reuse else ()) + \
                (("dmabuf",) if with_dmabuf else ()):
            obj.attach(name)
        if with_cmd:
            try:
                obj.attach("task_cmd")
            except LibbpfError:
                pass                # an extra: cmdlines from /proc
    except BaseException:
        obj.close()
        raise
    return obj, with_dmabuf, notes
