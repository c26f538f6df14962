"""The scanner's reads of the iterators: whole walks in threads of their own (Pending) beside
the parse, and for a reused scanner only the processes whose records may have moved.
"""
from __future__ import annotations

import os
import threading
from bisect import bisect_right
from typing import Dict, NamedTuple, Optional

from .._libbpf import LibbpfError
from ..errors import BpfUnavailable
from ..sources.live import read_at
from .records import FD_REC, SUM_REC, T_SEQ, TASK_REC

_new = tuple.__new__                 # a NamedTuple without its Python-level __new__


class Raw(NamedTuple):
    """Everything a scan reads that can change between scans, raw (Reads._read)."""
    files: object       # task_file's records: bytes; for a reused scanner {pid: its records}
    vmas: object        # task_vma's records: bytes, or the Pending walk that reads them
    dmabufs: object     # iter/dmabuf's records, or None where the kernel has none
    sysv: object        # /proc/sysvipc/shm, or the OSError reading it gave


class TaskMark(NamedTuple):
    """What iter/task (task_mm) says of a process: what moves when its mappings or its
    identity may have."""
    start: int          # start time
    seq: Optional[int]  # the mm's change sequence (moves on every mmap...), None: unknown
    cred: int           # its struct cred (a new one on every change of credentials)
    mm: int             # its mm (a new one on exec)
    comm: bytes


def split_by_tgid(data: bytes, size: int) -> Dict[int, bytes]:
    """Records (tgid first, grouped by tgid as the task iterators write them) -> tgid -> its
    records. The iterators go by ascending pid, so group ends are found by bisection."""
    out: Dict[int, bytes] = {}
    if not data:
        return out
    tgids = memoryview(data).cast("I")[::size // 4].tolist()
    n = len(tgids)
    if tgids != sorted(tgids):              # not expected: one pass then
        start = 0
        for i in range(1, n + 1):
            if i == n or tgids[i] != tgids[start]:
                out[tgids[start]] = out.get(tgids[start], b"") + data[start * size:i * size]
                start = i
        return out
    i = 0
    while i < n:
        t = tgids[i]
        j = bisect_right(tgids, t, i)
        out[t] = data[i * size:j * size]
        i = j
    return out


def sums_by_tgid(raw: bytes) -> Dict[int, tuple]:
    """task_sum's records -> tgid -> (buffer files, hash). A process whose threads' records
    the walk met apart (a thread with a table of its own, its tid beyond other processes)
    has several sums: all are kept, so a change in any of them shows. Its one-process read
    sums it as one and never equals them: such a process is read again every scan."""
    out: Dict[int, tuple] = {}
    for tgid, n, h in SUM_REC.iter_unpack(raw):
        had = out.get(tgid)
        out[tgid] = (n, h) if had is None else (had[0] + n, (had[1], h))
    return out


class Pending:
    """An iterator read running in a thread of its own: the kernel walks (read() releases
    the GIL) while this thread reads and parses the other iterators. get() gives the bytes.
    (The interpreter's switch interval is left as the program set it: a shorter one, to hand
    the GIL back to the walk sooner, bought nothing measurable.)"""

    def __init__(self, fn, extra=None):
        """fn() gives the bytes; extra(), if given, runs after it in the same thread, for
        what its reader can do without and needs later: get() returns as soon as fn() has,
        extras() waits for extra()'s result (None where it failed)."""
        self._value = self._error = self._extra = None
        self._has_extra = extra is not None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(fn, extra), daemon=True)
        self._thread.start()

    def _run(self, fn, extra):
        try:
            self._value = fn()
        except Exception as exc:         # raised by get(), in the caller's thread
            self._error = exc
            return
        finally:
            self._ready.set()
        if extra is not None:
            try:
                self._extra = extra()
            except Exception:
                self._extra = None

    def wait(self) -> None:
        """Let the thread finish (its results or error dropped)."""
        self._thread.join()

    def get(self) -> bytes:
        """fn()'s bytes, once it returned (the thread may still run extra())."""
        if self._has_extra:
            self._ready.wait()
        else:
            self.wait()
        if self._error is not None:
            raise BpfUnavailable(f"reading the BPF iterators failed: {self._error}") from None
        return self._value

    def ready(self) -> bool:
        """Whether get() would return without waiting."""
        return self._ready.is_set()

    def extras(self):
        """extra()'s result once the thread is done, or None."""
        self.wait()
        return self._extra


def resolved(data):
    """The bytes of `data`, waited for where it is a Pending read."""
    return data.get() if isinstance(data, Pending) else data


class Reads:
    """The iterator reads of a BpfScanner, its base class. It uses the scanner's _obj,
    reuse, verify_every, _gates and _cmdlines, and keeps what the next scan's reads carry
    over (init_reads())."""

    def init_reads(self) -> None:
        self._tasks: Dict[int, TaskMark] = {}       # pid -> its TaskMark, last scan
        self._last_tasks: Dict[int, TaskMark] = {}  # the same, of the scan before
        self._vma_parts: Optional[Dict[int, bytes]] = None   # pid -> its task_vma records
        self._per_pid = True                # the kernel runs an iterator for one process (6.1+)
        self._sums: Dict[int, tuple] = {}               # pid -> (buffer files, hash): task_sum
        self._file_parts: Optional[Dict[int, bytes]] = None   # pid -> its task_file records
        self.walked: Optional[set] = None   # pids whose VMAs the last read walked (None: all)
        self.reused_vmas = 0                # processes whose VMA records it carried over

    def _read_tasks(self) -> Dict[int, TaskMark]:
        if not self.reuse:
            return {}
        return {tgid: _new(TaskMark, (start, seq if flags & T_SEQ else None, cred, mm, comm))
                for tgid, flags, start, seq, cred, mm, comm
                in TASK_REC.iter_unpack(self._obj.read("task_mm"))}

    def _read_pid(self, name: str, tgid: int) -> Optional[bytes]:
        """Iterator `name` over one process; None where the kernel cannot (before 6.1: a
        per-process link is refused), which turns this scanner to whole walks for good."""
        try:
            return self._obj.read_pid(name, tgid)
        except LibbpfError:
            self._per_pid = False
            self._vma_parts = self._file_parts = None
            return None

    def _read_vmas(self, tasks: Dict[int, TaskMark]):
        """The task_vma records of every process: walked afresh where the mm may have moved
        (tasks was read before this, so a change racing the walk shows next time). A walk of
        every process runs in a thread (a Pending), beside the read of the other iterators
        and the parse of the files; _scan_whole keeps its records per process."""
        old = self._vma_parts
        if (not self.reuse or old is None or not self._per_pid
                or any(t.seq is None for t in tasks.values())):
            self._vma_parts = None
            self.walked, self.reused_vmas = None, 0
            # with no cmdline cached (a one-shot scanner, a first scan), the same thread
            # then reads every cmdline the kernel can copy (task_cmd): the walk ends well
            # before the parse of the files, so they come for free
            cmd = self._obj.has("task_cmd") and not self._cmdlines
            big = not self.reuse            # a reused scanner keeps slices of it: bytes
            # the extras serve a whole scan (a one-shot's, a first one): a reused scanner's
            # refresh on a kernel that walks every process each time has no use for them
            extra = (lambda: self._after_walk(cmd)) if cmd or not self.reuse else None
            return Pending(lambda: self._obj.read("task_vma", big), extra)
        prev, k, gen = self._tasks, self.verify_every, self._gates.gen
        parts: Dict[int, bytes] = {}
        walked = set()
        for tgid in sorted(tasks):
            t = tasks[tgid]
            p = prev.get(tgid)
            data = old.get(tgid)
            # what the sequence cannot see (a mapped file resized through another process, a
            # dma-buf renamed) is only in processes that map a buffer: only those are verified.
            # Moved: the sequence, or what the walk's task record says (an exec, whose new mm
            # may reach the old sequence; a new uid or comm)
            moved = p != t
            if moved or (data and k and (tgid + gen) % k == 0):
                walked.add(tgid)
                data = self._read_pid("task_vma", tgid)
                if data is None:
                    return self._read_vmas(tasks)
            if data:
                parts[tgid] = data
        self._vma_parts = parts
        self.walked, self.reused_vmas = walked, len(tasks) - len(walked)
        return b"".join(parts.values())

    def _read_files(self, sums_read: Optional[Pending] = None):
        """task_file's records: the bytes of one walk; for a reused scanner, {pid: its
        records}, read again (one iter/task_file per process) only where the process's sum
        (task_sum: a hash of its records, no names copied) moved since the last scan.
        sums_read: that task_sum read, started earlier in a thread of its own (_read)."""
        if not self.reuse:
            return self._obj.read("task_file", big=True)
        if not self._per_pid:                   # a kernel before 6.1: whole walks only
            if sums_read is not None:
                sums_read.wait()
            self._sums, self._file_parts = {}, None
            return split_by_tgid(self._obj.read("task_file"), FD_REC.size)
        # the sums first: a change racing the full reads shows in the next scan
        raw = sums_read.get() if sums_read is not None else self._obj.read("task_sum")
        sums = sums_by_tgid(raw)
        old_sums, old = self._sums, self._file_parts
        # A change between the sum and the records read could be undone before the next
        # scan, whose sum would then match records of a state that no longer exists: where
        # the sum moved across the read, none is kept, so the next scan reads again.
        if old is None:
            parts = split_by_tgid(self._obj.read("task_file"), FD_REC.size)
            after = sums_by_tgid(self._obj.read("task_sum"))
            sums = {tgid: s for tgid, s in sums.items() if after.get(tgid) == s}
        else:
            parts = {}
            for tgid, sum_ in list(sums.items()):
                data = old.get(tgid)
                if data is None or old_sums.get(tgid) != sum_:
                    data = self._read_pid("task_file", tgid)
                    if data is None:
                        return self._read_files()
                    after = self._read_pid("task_sum", tgid)
                    if after is None:
                        return self._read_files()
                    if [s[1:] for s in SUM_REC.iter_unpack(after)] != [sum_]:
                        del sums[tgid]
                if data:
                    parts[tgid] = data
        self._sums, self._file_parts = sums, parts
        return parts

    def _after_walk(self, cmd: bool) -> tuple:
        """What the walking thread reads once the walk is done, while the files are parsed:
        (task_cmd's records, or None if not asked or failed; /proc's listing, or None).
        Listing /proc is 1-3 ms of kernel time the first time a process does it."""
        cmds = listing = None
        if cmd:
            try:
                cmds = self._obj.read("task_cmd")
            except Exception:
                cmds = None
        try:
            listing = os.listdir("/proc")
        except OSError:
            listing = None
        return cmds, listing

    def _read(self) -> Raw:
        """Everything a scan reads that can change between scans, raw. For a reused scanner
        the task_file records come as {pid: its records} (see _read_files)."""
        try:
            sysv = read_at("/proc/sysvipc/shm")
        except OSError as exc:
            sysv = exc
        # a reused scanner's task_sum read (the kernel touching every buffer file: most of a
        # refresh) runs in a thread from here, beside the reads of tasks and mappings
        sums_read = Pending(lambda: self._obj.read("task_sum")) \
            if self.reuse and self._per_pid else None
        try:
            try:
                tasks = self._read_tasks()
                self._gates.start({pid: (t.start, t.cred, t.mm) for pid, t in tasks.items()})
                vmas = self._read_vmas(tasks)
            except BaseException:
                if sums_read is not None:
                    sums_read.wait()        # no read may outlive this scan (close() frees links)
                raise
            try:
                files = self._read_files(sums_read)
                dmabufs = self._obj.read("dmabuf") if self.has_dmabuf else None
            except BaseException:
                for pending in (vmas, sums_read):
                    if isinstance(pending, Pending):
                        pending.wait()
                raise
            self._last_tasks, self._tasks = self._tasks, tasks
            return _new(Raw, (files, vmas, dmabufs, sysv))
        except (LibbpfError, OSError) as exc:
            raise BpfUnavailable(f"reading the BPF iterators failed: {exc}") from None
