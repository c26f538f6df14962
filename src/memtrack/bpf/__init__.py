"""The BPF scan backend: the observations of the procfs backend, from kernel iterators.

    from memtrack.bpf import BpfScanner
    with BpfScanner() as s:          # loads and attaches once (tens of ms)
        snap = s.scan()              # each scan: three iterator reads (a few ms)

It runs only where the caller could already read every process through /proc (root, or
CAP_SYS_PTRACE with CAP_SYS_ADMIN): the iterators bypass per-process ptrace checks, so the
backend must never show more than procfs would; on top of that every process is checked
against /proc's own access rule and counted as denied where procfs would be refused.
`unavailable()` says what is missing.

What still comes from /proc and /sys: /proc/PID/cmdline of the processes holding buffers
where task_cmd could not copy it (Linux < 5.18, longer than 232 bytes, overwritten past
argv) and in refreshes (cached per process start time by a reused scanner), the access
check per holder (a kcmp(2) where it decides as /proc does, else a readlink of
/proc/PID/exe), the /proc listing (the processes it may not read), /proc/sysvipc/shm (the SysV table),
smaps with --smaps, the fdinfo of the DRM fds the iterator found, a readlink for files with
a real path (a /dev/shm file), and the dma-buf table from debugfs/sysfs on kernels before
6.16 (no iter/dmabuf). Ashmem fds (Android's misc device) are not reported.
"""
from __future__ import annotations

import errno
from bisect import bisect_right
from operator import itemgetter
import os
import threading
from dataclasses import replace
from typing import Dict, Iterable, List, Optional, Tuple

from .._libbpf import (DRM_MAJOR, OBJECT, _mac_facts, _status_fields, kcmp_gate, mac_problem,
                       own_creds, reads_every_fd_dir, unavailable)
from .records import C_OK, CMD_REC, _readlink
from ..errors import MemtrackError
from ..observe import Observations, ProcInfo, VmaRss
from ..readers.proc import parse_cmdline as _parse_cmdline
from ..rebuild import Rebuilder
from ..sources.live import read_at as _read_at


class BpfUnavailable(MemtrackError):
    """The bpf backend cannot run here; the text names the missing piece."""


_PID = itemgetter(0)                # FdRef.pid, MapRef.pid
_new = tuple.__new__                 # a NamedTuple without its Python-level __new__


class _Caller(threading.local):
    """What the access check knows of the calling thread's rights during its scan (set by
    BpfScanner.scan or collect; credentials are per thread, and so is this): fast, its
    kcmp_gate() or False; exe_only, whether a readlink of /proc/PID/exe alone answers as
    procfs would (DAC lets it list every /proc/PID/fd, and no MAC module mediates the way
    there). Outside a scan both are False, so /proc is asked everything."""
    fast = False
    exe_only = False
    scanning = False


_caller = _Caller()


def _open_fd_dir(pid: int) -> None:
    """Open /proc/PID/fd as procfs lists it (its DAC and MAC checks), or raise OSError."""
    os.close(os.open("/proc/%d/fd" % pid, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))


def _gate(pid: int) -> Optional[str]:
    """None if procfs would let this caller read the process, else "denied" or "vanished".

    The iterators see every process; /proc still applies its checks (an LSM, a process out
    of this caller's reach...). Ask /proc with the check its fd links use
    (proc_fd_access_allowed): a readlink of /proc/PID/exe, one syscall. Where kcmp(2) makes
    the same check (_libbpf.kcmp_gate), a pass there is taken without the path walk; any
    other answer is asked of /proc. A caller without the DAC capabilities, or under a MAC
    module (whose file hooks may judge a directory apart from a link), also needs to open
    /proc/PID/fd, as procfs lists it (mode 0500: its owner's, or the capable's)."""
    me = _caller
    fast = me.fast                      # False outside a scan: /proc is asked
    if fast and fast(pid):
        return None
    try:
        if not me.exe_only:
            _open_fd_dir(pid)
        os.readlink("/proc/%d/exe" % pid)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            return "denied"
        if exc.errno == errno.ENOENT and os.path.isdir("/proc/%d" % pid):
            return None                 # a zombie or kernel thread: readable, holds nothing
        return "vanished"
    return None


def _others_denied(exclude, want, gate=_gate, listing=None) -> Tuple[tuple, tuple]:
    """(denied, vanished) among the processes holding nothing: procfs counts every process
    it cannot read, so the bpf backend does too (and so shows nothing procfs would not, not
    even that a process it may not read holds no buffers), and only those (_holds_nothing:
    not a zombie, nor a kernel thread past the DAC check). The list is /proc's (`listing`,
    os.listdir("/proc") made during this scan, else listed here): the task iterator is not
    asked, it may not list every process /proc does (in this project's sandbox it skips
    pid 1)."""
    if want is not None:
        pids = sorted(want)
    else:
        pids = [int(n) for n in (listing if listing is not None else os.listdir("/proc"))
                if n.isdigit()]
    denied, vanished = [], []
    for pid in pids:
        if pid in exclude:
            continue
        why = gate(pid)
        if why == "denied":
            if not _holds_nothing(pid):
                denied.append(pid)
        elif why == "vanished" and want is not None:
            vanished.append(pid)        # asked for by pid, as procfs reports it
    return tuple(denied), tuple(vanished)


PF_KTHREAD = 0x00200000


def _holds_nothing(pid: int) -> bool:
    """Whether a process that holds no buffer and that _gate() finds denied is one procfs
    does not count denied: a zombie (read_process drops a denied zombie), or a kernel thread
    whose /proc/PID/fd this caller may list (it has no fd whose link needs the ptrace check,
    and no mm for /proc/PID/maps to check). /proc/PID/stat's state and flags, which it shows
    every caller."""
    try:
        stat = _read_at("/proc/%d/stat" % pid, single=True)
    except OSError:
        return False
    f = stat[stat.rfind(b")") + 2:].split()
    try:
        if f[0] in (b"Z", b"X"):
            return True
        if not int(f[6]) & PF_KTHREAD:
            return False
    except (IndexError, ValueError):
        return False
    if _caller.exe_only:
        return True
    try:
        _open_fd_dir(pid)
    except OSError:
        return False
    return True


class _GateCache:
    """_gate() verdicts kept between scans of a reused scanner, each for as long as the
    process keeps its identity: start time, credentials (a task gets a new struct cred on
    every change: setuid, capabilities...) and mm (a new one on exec), the inputs of /proc's
    ptrace check that can move. What the iterators cannot see (an LSM policy changed under
    a running process) is caught by re-asking every process once every `every` scans, a
    rotating slice."""

    def __init__(self, every: int):
        self.every = max(0, int(every))
        self.memo: Dict[int, tuple] = {}
        self.ident: Dict[int, tuple] = {}
        self.creds: tuple = ()
        self.gen = 0

    def caller(self, creds: tuple) -> None:
        """This process's credentials for the coming scan: every verdict was made on the
        last ones, so a change (privileges dropped) forgets them all."""
        if creds != self.creds:
            self.memo.clear()
            self.creds = creds

    def start(self, ident: Dict[int, tuple]) -> None:
        """A new scan: `ident` is pid -> (start_time, cred, mm) from iter/task."""
        self.gen += 1
        self.ident = ident
        memo = self.memo
        for pid in [p for p in memo if p not in ident]:
            del memo[pid]

    def __call__(self, pid: int) -> Optional[str]:
        ident = self.ident.get(pid)
        m = self.memo.get(pid)
        k = self.every
        if (m is not None and ident is not None and m[0] == ident
                and not (k and (pid + self.gen) % k == 0)):
            return m[1]
        why = _gate(pid)
        if ident is not None and why != "vanished":
            self.memo[pid] = (ident, why)
        else:
            self.memo.pop(pid, None)
        return why


def _split_by_tgid(data: bytes, size: int) -> Dict[int, bytes]:
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


_switch = [0, None]          # [threads wanting a short switch interval, the interval before]


def _fast_switch(on: bool) -> None:
    import sys
    if on:
        if _switch[0] == 0:
            _switch[1] = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch[1], _Pending.SWITCH))
        _switch[0] += 1
    else:
        _switch[0] -= 1
        if _switch[0] == 0:
            sys.setswitchinterval(_switch[1])


class _Pending:
    """An iterator read running in a thread of its own: the kernel walks (read() releases
    the GIL) while this thread reads and parses the other iterators. get() gives the bytes.

    Between two read()s the walking thread needs the GIL back; at the default switch
    interval (5 ms) a busy parser would keep it waiting that long each time, so the
    interval is short (0.2 ms) until the thread is done (or restore())."""

    SWITCH = 0.00005

    def __init__(self, fn, extra=None):
        """fn() gives the bytes; extra(), if given, runs after it in the same thread, for
        what its reader can do without and needs later: get() returns as soon as fn() has,
        extras() waits for extra()'s result (None where it failed)."""
        import threading
        self._value = self._error = self._extra = None
        self._fast = True
        self._has_extra = extra is not None
        self._ready = threading.Event()
        _fast_switch(True)
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

    def restore(self) -> None:
        """The switch interval as it was (wait() and extras() do it; so must whoever drops
        this)."""
        if self._fast:
            self._fast = False
            _fast_switch(False)

    def wait(self) -> None:
        """Let the thread finish (its results or error dropped), the switch interval restored."""
        self._thread.join()
        self.restore()

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


class _Links:
    """A readlink for the parsers that keeps, per process, what each link it read said (a
    file with a real path is named by its link: a reused scanner reads them again)."""

    def __init__(self):
        self.by_pid: Dict[int, Dict[str, Optional[str]]] = {}

    def __call__(self, path: str) -> Optional[str]:
        target = _readlink(path)
        self.by_pid.setdefault(int(path.split("/", 3)[2]), {})[path] = target
        return target


def _proc_cmdline(pid: int) -> str:
    """/proc/PID/cmdline as procfs reports it (OSError: gone)."""
    return _parse_cmdline(_read_at("/proc/%d/cmdline" % pid, single=True))


def _resolved(data):
    return data.get() if isinstance(data, _Pending) else data


def _by_pid(records) -> Dict[int, list]:
    """Records (FdRef, MapRef: pid first) -> pid -> its records, in their order."""
    out: Dict[int, list] = {}
    for r in records:
        out.setdefault(r.pid, []).append(r)
    return out


def _drm_clients(pid: int, fds: List[int], counters: Dict[str, int]) -> Optional[list]:
    """The DRM clients behind the DRM fds the iterator found, from their fdinfo text read as
    the procfs backend reads it (only these fds: no walk of fd/); None if the process is gone."""
    from ..errors import ProcessGone
    from ..readers.drm import is_drm_path
    from ..scan import _read_drm
    from ..sources.live import LiveProc
    try:
        p = LiveProc("/proc", pid)
    except ProcessGone:
        return None
    out = []
    try:
        for fd in fds:
            try:
                target = os.readlink("/proc/%d/fd/%d" % (pid, fd))
            except OSError:
                continue
            if is_drm_path(target):
                client = _read_drm(p, fd, str(fd), target, counters)
                if client is not None:
                    out.append(client)
    finally:
        p.close()
    return out


def _task_from_proc(pid: int):
    """A task the iterators did not describe, from /proc/PID/status (never cached: -1)."""
    from ..readers.proc import parse_status
    from ..sources.live import read_at
    from .records import Task
    try:
        comm, uid = parse_status(read_at("/proc/%d/status" % pid, single=True).decode("utf-8", "surrogateescape"))
    except OSError:
        return None
    return Task(pid, uid, -1, comm)


class _Given:
    """A source holding one file already read (or the error reading it gave)."""

    def __init__(self, data):
        self.data = data

    def read_text(self, rel):
        from ..errors import translate_oserror
        if isinstance(self.data, OSError):
            raise translate_oserror(self.data)
        return self.data.decode("utf-8", "surrogateescape")


class BpfScanner:
    """Loads the iterators once; scan() reads them into a Snapshot as often as needed.

    A reused scanner (`reuse`, the default: top, serve, record) carries from one scan to the
    next what cannot have changed, and so reads much less each time:
      - mappings: iter/task says, per process, the mm's change sequence (it moves on every
        mmap, munmap, mremap, mprotect...); only the processes whose sequence moved (or that
        are new) are walked again, each with an iter/task_vma of its own. A mapped file's
        size or a dma-buf's name can change without the mm moving: every process that maps a
        buffer is walked again once every `verify_every` scans (a rotating slice), so a stale
        one lives at most that many scans (one that maps none can only start to by mapping,
        which moves its sequence);
      - /proc's access verdicts, per process identity (_GateCache);
      - cmdlines, per process start time;
      - the Snapshot itself, when every input is byte-identical to the last scan's.
    `reuse=False` reads and builds everything every time (what a one-shot command does)."""

    def __init__(self, obj: str = OBJECT, drm_major: int = DRM_MAJOR, reuse: bool = True,
                 verify_every: int = 30):
        from .. import _preload
        from .._libbpf import LibbpfError, open_iterators
        # the CLI may have loaded the object already, while it imported the rest
        got = _preload.take(obj, drm_major, reuse)
        why = unavailable(obj)
        if why:
            if got:
                got[0].close()
            raise BpfUnavailable(why)
        try:
            got = got or open_iterators(obj, drm_major, reuse)
        except LibbpfError as exc:
            raise BpfUnavailable(f"the kernel refused the BPF iterators: {exc}") from None
        self._obj, self.has_dmabuf, self.notes = got
        # one scan at a time: what a scan carries to the next (verdicts, the last snapshot)
        # was made on the credentials of the thread that scanned, and is checked against
        # the next scan's caller (_GateCache.caller) before it is used
        self._lock = threading.RLock()
        self.reuse = reuse
        self.verify_every = max(0, int(verify_every))
        self._cmdlines: Optional[Dict[Tuple[int, int], str]] = {} if reuse else None
        self._gates = _GateCache(verify_every if reuse else 1)
        self.drm_fds: List[tuple] = []      # (pid, fd, kernel rdev) of DRM device fds, last scan
        self._memo = None                   # ((raw inputs, pids, host), Snapshot) of the last scan
        self._gated: List[int] = []         # the holders the last scan checked
        self._others: tuple = ((), ())      # _others_denied() of the last scan
        self._tasks: Dict[int, tuple] = {}  # pid -> (start_time, mm seq or None, cred, mm, comm)
        self._last_tasks: Dict[int, tuple] = {}   # the same, of the scan before
        self._links: Dict[int, Dict[str, Optional[str]]] = {}   # pid -> readlinks its parse made
        self._vma_parts: Optional[Dict[int, bytes]] = None   # pid -> its task_vma records
        self._per_pid = True                # the kernel runs an iterator for one process (6.1+)
        self._state = None                  # what _rescan() patches: see _scan_whole()
        self._rebuilder = Rebuilder()
        self._sums: Dict[int, tuple] = {}               # pid -> (buffer files, hash): task_sum
        self._file_parts: Optional[Dict[int, bytes]] = None   # pid -> its task_file records
        self.reparsed: Optional[int] = None  # processes the last scan parsed again (None: all)
        self.walked: Optional[set] = None   # pids whose VMAs the last read walked (None: all)
        self.reused_vmas = 0                # processes whose VMA records it carried over

    # -- scanning ------------------------------------------------------------------------
    def _read_tasks(self) -> Dict[int, tuple]:
        from .records import T_SEQ, TASK_REC
        if not self.reuse:
            return {}
        return {tgid: (start, seq if flags & T_SEQ else None, cred, mm, comm)
                for tgid, flags, start, seq, cred, mm, comm
                in TASK_REC.iter_unpack(self._obj.read("task_mm"))}

    def _read_pid(self, name: str, tgid: int) -> Optional[bytes]:
        """Iterator `name` over one process; None where the kernel cannot (before 6.1: a
        per-process link is refused), which turns this scanner to whole walks for good."""
        from .._libbpf import LibbpfError
        try:
            return self._obj.read_pid(name, tgid)
        except LibbpfError:
            self._per_pid = False
            self._vma_parts = self._file_parts = None
            return None

    def _read_vmas(self, tasks: Dict[int, tuple]):
        """The task_vma records of every process: walked afresh where the mm may have moved
        (tasks was read before this, so a change racing the walk shows next time). A walk of
        every process runs in a thread (a _Pending), beside the read of the other iterators
        and the parse of the files; _scan_whole keeps its records per process."""
        old = self._vma_parts
        if (not self.reuse or old is None or not self._per_pid
                or any(t[1] is None for t in tasks.values())):
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
            return _Pending(lambda: self._obj.read("task_vma", big), extra)
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

    def _read_files(self, sums_read: Optional["_Pending"] = None):
        """task_file's records: the bytes of one walk; for a reused scanner, {pid: its
        records}, read again (one iter/task_file per process) only where the process's sum
        (task_sum: a hash of its records, no names copied) moved since the last scan.
        sums_read: that task_sum read, started earlier in a thread of its own (_read)."""
        from .records import FD_REC, SUM_REC
        if not self.reuse:
            return self._obj.read("task_file", big=True)
        if not self._per_pid:                   # a kernel before 6.1: whole walks only
            if sums_read is not None:
                sums_read.wait()
            self._sums, self._file_parts = {}, None
            return _split_by_tgid(self._obj.read("task_file"), FD_REC.size)
        # the sums first: a change racing the full reads shows in the next scan
        raw = sums_read.get() if sums_read is not None else self._obj.read("task_sum")
        sums = {tgid: (n, h) for tgid, n, h in SUM_REC.iter_unpack(raw)}
        old_sums, old = self._sums, self._file_parts
        # A change between the sum and the records read could be undone before the next
        # scan, whose sum would then match records of a state that no longer exists: where
        # the sum moved across the read, none is kept, so the next scan reads again.
        if old is None:
            parts = _split_by_tgid(self._obj.read("task_file"), FD_REC.size)
            after = {tgid: (n, h) for tgid, n, h in SUM_REC.iter_unpack(self._obj.read("task_sum"))}
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

    def _read(self) -> tuple:
        """Everything a scan reads that can change between scans, raw. For a reused scanner
        the task_file records come as {pid: its records} (see _read_files)."""
        from ..sources.live import read_at
        from .._libbpf import LibbpfError
        try:
            sysv = read_at("/proc/sysvipc/shm")
        except OSError as exc:
            sysv = exc
        # a reused scanner's task_sum read (the kernel touching every buffer file: most of a
        # refresh) runs in a thread from here, beside the reads of tasks and mappings
        sums_read = _Pending(lambda: self._obj.read("task_sum")) \
            if self.reuse and self._per_pid else None
        try:
            try:
                tasks = self._read_tasks()
                self._gates.start({pid: (t[0], t[2], t[3]) for pid, t in tasks.items()})
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
                    if isinstance(pending, _Pending):
                        pending.wait()
                raise
            self._last_tasks, self._tasks = self._tasks, tasks
            return (files, vmas, dmabufs, sysv)
        except (LibbpfError, OSError) as exc:
            raise BpfUnavailable(f"reading the BPF iterators failed: {exc}") from None

    def _tables(self, dmabufs, sysv) -> Observations:
        """Observations holding the machine-wide tables: SysV segments, dma-bufs."""
        from ..scan import read_dmabuf_table, read_sysv_table
        from ..sources.live import LiveSource
        from .records import parse_dmabufs
        obs = Observations()
        obs.notes.extend(self.notes)
        read_sysv_table(_Given(sysv), obs)
        if dmabufs is not None:
            bufs = parse_dmabufs(dmabufs)
            obs.kernel.extend(bufs)
            obs.dmabuf_source = "dmabuf_iter"
            obs.dmabuf_count = len(bufs)
            obs.dmabuf_total = sum(b.size for b in bufs)
        else:
            read_dmabuf_table(LiveSource(), obs)
        return obs

    @staticmethod
    def _describe(pid: int, t, cache, fresh, cmds=None) -> Optional[ProcInfo]:
        """ProcInfo of a holder from its task record and its cmdline: cached per start time
        in `cache` (kept in `fresh`), else as task_cmd copied it (`cmds`: pid -> its
        record) where the record is of this task and sure, else /proc/PID/cmdline; None if
        it is gone (the functions it reads with are bound at import: it runs once per
        holder)."""
        if t is None:                       # not expected: the iterators describe each task
            t = _task_from_proc(pid)
            if t is None:
                return None
        key = (pid, t.start_time)
        cmdline = cache.get(key) if cache is not None else None
        if cmdline is None and cmds is not None:
            rec = cmds.get(pid)             # (tgid, flags, start_time, len, pad, arg)
            if rec is not None and rec[1] & C_OK and rec[2] == t.start_time:
                cmdline = _parse_cmdline(rec[5][:rec[3]])
        if cmdline is None:
            try:
                cmdline = _proc_cmdline(pid)
            except OSError:
                return None                 # gone since the iterator saw it, as procfs counts it
        if fresh is not None:
            fresh[key] = cmdline
        return _new(ProcInfo, (pid, t.comm, cmdline, t.uid))

    def collect(self, pids: Optional[Iterable[int]] = None, smaps: bool = False,
                raw: Optional[tuple] = None) -> Observations:
        """The observations of one scan (of `raw`, what _read() gave, or a new read)."""
        with self._lock:
            return self._collect_as_caller(pids, smaps, raw)

    def _collect_as_caller(self, pids, smaps, raw) -> Observations:
        outer = not _caller.scanning
        if outer:
            self._as_caller()
        try:
            raw = raw if raw is not None else self._read()
            try:
                return self._collect(pids, smaps, raw)
            finally:
                if isinstance(raw[1], _Pending):
                    raw[1].wait()           # the walk ended, the switch interval restored
        finally:
            if outer:
                _caller.fast = _caller.exe_only = _caller.scanning = False

    def _as_caller(self) -> None:
        """A scan starts on this thread's credentials as they are now (_caller); verdicts
        kept from scans on others are dropped."""
        try:
            status = _status_fields()
        except OSError:
            status = {}
        facts = _mac_facts()
        _caller.fast = kcmp_gate(status, mac=facts)
        _caller.exe_only = reads_every_fd_dir(status) and not mac_problem(*facts)
        _caller.scanning = True
        self._gates.caller(own_creds(status) + facts)

    def _collect(self, pids, smaps, raw) -> Observations:
        from ..readers.smaps import parse_rss
        from ..scan import counter_notes
        from ..sources.live import read_at
        from .records import parse_files, parse_vmas

        files, vmas, dmabufs, sysv = raw
        if isinstance(files, dict):
            files = b"".join(files[pid] for pid in sorted(files))
        obs = self._tables(dmabufs, sysv)
        want = set(pids) if pids is not None else None
        tasks: dict = {}
        fds: list = []
        maps: list = []
        drm: list = []
        pfnmap: set = set()
        links = _Links()
        parse_files(files, tasks, fds, drm, want, links)
        if isinstance(vmas, _Pending) and not vmas.ready() and not self.reuse:
            # the walk is still going (processes with many mappings): merge the fds for
            # build() meanwhile, rather than wait
            from ..build import accumulate_fds
            pre = accumulate_fds(fds, whole=False)
            if pre is not None:
                obs.fd_accs = (fds, pre)
        parse_vmas(_resolved(vmas), tasks, maps, pfnmap, want, links)
        cmds, listing = (vmas.extras() or (None, None)) if isinstance(vmas, _Pending) else (None, None)
        cmds = {rec[0]: rec for rec in CMD_REC.iter_unpack(cmds)} if cmds else None
        self._links = links.by_pid if self.reuse else {}
        self.drm_fds = drm

        gate = self._gates if self.reuse else _gate     # a one-shot scanner keeps no verdicts
        drm_pids = {pid for pid, _fd, _rdev in drm}
        has_refs = set(map(_PID, fds))
        has_refs.update(map(_PID, maps))
        holders = sorted(has_refs | drm_pids)
        self._gated = holders
        self._others = _others_denied(set(holders), want, gate, listing)
        obs.denied.extend(self._others[0])
        obs.vanished.extend(self._others[1])
        cache = self._cmdlines
        fresh = {} if cache is not None else None
        gone = set()
        counters: Dict[str, int] = {}
        for pid in holders:
            why = gate(pid)
            if why is not None:
                (obs.denied if why == "denied" else obs.vanished).append(pid)
                gone.add(pid)
                continue
            if pid in drm_pids:
                clients = _drm_clients(pid, [fd for p, fd, _r in drm if p == pid], counters)
                if clients is None:
                    obs.vanished.append(pid)
                    gone.add(pid)
                    continue
                obs.drm.extend(clients)
                if not clients and pid not in has_refs:
                    continue                # DRM fds without usage stats: procfs lists nothing
            info = self._describe(pid, tasks.get(pid), cache, fresh, cmds)
            if info is None:
                obs.vanished.append(pid)
                gone.add(pid)
                continue
            obs.procs.append(info)
        if cache is not None:
            self._cmdlines = fresh          # forget processes that went away
        if gone:
            fds = [r for r in fds if r.pid not in gone]
            maps = [m for m in maps if m.pid not in gone]
        obs.fds, obs.maps = fds, maps
        obs.notes.extend(counter_notes(counters))
        if smaps:
            for pid in sorted({m.pid for m in maps}):
                try:
                    per_vma = parse_rss(read_at("/proc/%d/smaps" % pid))
                except OSError:
                    continue
                for m in maps:
                    if m.pid == pid and m.start in per_vma:
                        obs.rss.append(VmaRss(pid, m.start, per_vma[m.start]))
        return obs

    def scan(self, pids: Optional[Iterable[int]] = None, smaps: bool = False,
             reason: Optional[str] = None):
        """A Snapshot of this machine now. A reused scanner (top, serve) whose inputs are
        exactly the bytes of its last scan, with every holder still readable, returns that
        scan's Snapshot again with the new time; when some processes' records moved, it
        parses and describes only those and patches the last Snapshot (rebuild.Rebuilder).
        With smaps or DRM clients every scan is read and built whole."""
        from ..sources.base import now_iso
        taken_at = now_iso()
        with self._lock:
            self._as_caller()
            try:
                raw = self._read()
                pending = raw[1] if isinstance(raw[1], _Pending) else None
                try:
                    return self._scan(raw, pids, smaps, reason, taken_at)
                finally:
                    if pending is not None:
                        pending.wait()      # no read may outlive the scan (close() frees links)
            finally:
                _caller.fast = _caller.exe_only = _caller.scanning = False

    def _scan(self, raw, pids, smaps, reason, taken_at):
        from ..scan import host_info, keep_to_exit, no_gc
        from ..sources.live import LiveSource
        hostname, kernel = host_info(LiveSource())
        want = None if pids is None else frozenset(pids)
        meta = dict(taken_at=taken_at, source="live", hostname=hostname, kernel=kernel,
                    backend="bpf", scope="all" if pids is None else "pids", smaps=smaps)
        memo = self._memo
        gate = self._gates
        if memo is not None and isinstance(raw[1], _Pending):
            raw = (raw[0], raw[1].get()) + raw[2:]
        stale = self._stale() if self._state is not None else set()
        if (memo is not None and not smaps and raw[2] is not None and not stale
                and memo[0] == (raw, want, hostname, kernel)
                and all(gate(pid) is None for pid in self._gated)
                and _others_denied(set(self._gated), want, gate) == self._others):
            snap = replace(memo[1], taken_at=taken_at)
            self.reparsed = 0
        else:
            # tens of thousands of small objects and no cycles: the cyclic GC would only
            # rescan them, again and again as they are made (half the build time at 20k fds)
            with no_gc():
                got = None
                state = self._state
                self.reparsed = None
                if state is not None and state[0] == (want, hostname, kernel) and not smaps:
                    try:
                        got = self._rescan(raw, want, meta, stale)
                    except BaseException:
                        # nothing half-done may serve the next scan: it starts afresh
                        self._state = self._memo = None
                        self._rebuilder = Rebuilder()
                        raise
                if got is None:
                    got = self._scan_whole(raw, pids, want, smaps, meta)
            snap, obs = got
            if not self.reuse:
                keep_to_exit(obs)           # a one-shot command's: left to the exit, not freed
            raw = (raw[0], _resolved(raw[1])) + raw[2:]
            # DRM clients' fdinfo (engine time, resident memory) moves without the records
            # moving: a scan that read any is never reused
            gated = set(self._gated)
            clean = not (self.drm_fds or [p for p in obs.denied + obs.vanished if p in gated])
            # (a one-shot scanner keeps none: its next scan would wait for the VMA walk to
            # compare the inputs, where it parses the files meanwhile)
            self._memo = ((raw, want, hostname, kernel), snap) \
                if clean and not smaps and self.reuse else None
        return replace(snap, backend_reason=reason) if reason else snap

    def _scan_whole(self, raw, pids, want, smaps, meta):
        """collect() and build everything; a reused scanner keeps the pieces for _rescan."""
        from ..build import build
        from ..rebuild import Part
        from .records import FD_REC, VMA_REC
        obs = self.collect(pids, smaps, raw=raw)
        self._state = None
        if not self.reuse or smaps or self.drm_fds:
            return build(obs, **meta), obs
        fds_by, maps_by = _by_pid(obs.fds), _by_pid(obs.maps)
        parts = {p.pid: Part(fds_by.get(p.pid, []), maps_by.get(p.pid, []), p) for p in obs.procs}
        gated = set(self._gated)
        status = {pid: "denied" for pid in obs.denied if pid in gated}
        status.update((pid, "vanished") for pid in obs.vanished if pid in gated)
        vparts = self._vma_parts
        if vparts is None:
            vparts = self._vma_parts = _split_by_tgid(_resolved(raw[1]), VMA_REC.size)
        fparts = raw[0] if isinstance(raw[0], dict) else _split_by_tgid(raw[0], FD_REC.size)
        self._state = ((want, meta["hostname"], meta["kernel"]), fparts, vparts, parts, status)
        return self._rebuilder.build(obs, parts, None, **meta), obs

    def _stale(self) -> set:
        """Holders whose records may be unchanged while what a scan says of them moved: an
        exec, a new uid or comm (the task's identity); a link the parse resolved that now
        reads otherwise (a /dev/shm directory renamed); and, in a rotating slice (each
        holder once every verify_every scans), a cmdline rewritten in place."""
        out = set()
        last, now = self._last_tasks, self._tasks
        parts, status = self._state[3], self._state[4]
        for holders in (parts, status):
            for pid in holders:
                a, b = last.get(pid), now.get(pid)
                # (start, seq, cred, mm, comm): equal for nearly all; the sequence alone
                # moving is the VMA walk's business
                if a != b and a is not None and b is not None and (
                        a[0] != b[0] or a[2] != b[2] or a[3] != b[3] or a[4] != b[4]):
                    out.add(pid)
        cache = self._cmdlines
        if out and cache:                   # an exec: its cmdline is read again
            self._cmdlines = cache = {key: v for key, v in cache.items() if key[0] not in out}
        for pid, links in self._links.items():
            if any(_readlink(path) != target for path, target in links.items()):
                out.add(pid)
        k, gen = self.verify_every, self._gates.gen
        if k:
            for pid, part in parts.items():
                if (pid + gen) % k == 0 and pid not in out:
                    try:
                        cmdline = _proc_cmdline(pid)
                    except OSError:
                        continue            # gone: the scan's own checks say so
                    if cmdline != part.proc.cmdline:
                        out.add(pid)
                        task = now.get(pid)
                        if cache is not None and task is not None:
                            cache[(pid, task[0])] = cmdline     # what describing it reads
        return out

    def _rescan(self, raw, want, meta, stale=frozenset()):
        """The scan after a reused scanner's last one: only the processes whose records (or
        access verdict, or what _stale() found) changed are parsed and described again, and
        the snapshot is patched; None where that cannot be done (DRM fds appeared)."""
        from ..rebuild import Part
        from .records import FD_REC, VMA_REC, parse_files, parse_vmas
        files, vmas, dmabufs, sysv = raw
        key, old_f, old_v, old_parts, old_status = self._state
        fparts = files if isinstance(files, dict) else _split_by_tgid(files, FD_REC.size)
        vparts = self._vma_parts
        if vparts is None:
            vparts = self._vma_parts = _split_by_tgid(_resolved(vmas), VMA_REC.size)
        pids = set(fparts) | set(vparts) | set(old_f) | set(old_v)
        if want is not None:
            pids &= want
        changed = {p for p in pids if fparts.get(p) != old_f.get(p) or vparts.get(p) != old_v.get(p)}
        changed |= stale & pids
        gate = self._gates
        for pid in (set(old_parts) | set(old_status)) - changed:
            if gate(pid) != old_status.get(pid):
                changed.add(pid)
        order = sorted(changed)
        tasks: dict = {}
        fds: list = []
        maps: list = []
        drm: list = []
        links = _Links()
        parse_files(b"".join(fparts.get(p, b"") for p in order), tasks, fds, drm, want, links)
        if drm:
            return None
        parse_vmas(b"".join(vparts.get(p, b"") for p in order), tasks, maps, set(), want, links)
        fds_by, maps_by = _by_pid(fds), _by_pid(maps)
        parts, status = dict(old_parts), dict(old_status)
        cache = self._cmdlines
        for pid in order:
            parts.pop(pid, None)
            status.pop(pid, None)
            f, m = fds_by.get(pid, []), maps_by.get(pid, [])
            if not f and not m:
                continue                    # holds nothing (any more)
            why = gate(pid)
            if why is not None:
                status[pid] = why
                continue
            info = self._describe(pid, tasks.get(pid), cache, cache)
            if info is None:
                status[pid] = "vanished"
                continue
            parts[pid] = Part(f, m, info)
        if cache is not None and len(cache) > 2 * len(parts) + 64:
            self._cmdlines = {k: v for k, v in cache.items() if k[0] in parts}
        obs = self._tables(dmabufs, sysv)
        holders = sorted(set(parts) | set(status))
        self._gated = holders
        self._others = _others_denied(set(holders), want, gate)
        obs.denied.extend(self._others[0])
        obs.vanished.extend(self._others[1])
        obs.denied.extend(p for p, why in status.items() if why == "denied")
        obs.vanished.extend(p for p, why in status.items() if why == "vanished")
        self.drm_fds = []
        self.reparsed = len(changed)
        snap = self._rebuilder.build(obs, parts, changed, **meta)
        for pid in order:
            self._links.pop(pid, None)
        self._links.update(links.by_pid)
        self._state = (key, fparts, vparts, parts, status)
        return snap, obs

    # -- lifetime ------------------------------------------------------------------------
    def close(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is None:                    # __init__ did not get that far
            return
        with lock:                          # not under another thread's scan
            obj = getattr(self, "_obj", None)
            if obj is not None:
                obj.close()
                self._obj = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def fallback_reason(requested: str, exc: BpfUnavailable) -> str:
    """A bpf scan failed after loading: under --backend bpf that is the command's error
    (raised); under auto procfs takes over, and this says why (Snapshot.backend_reason)."""
    if requested == "bpf":
        raise BpfUnavailable(f"--backend bpf: {exc}") from None
    return f"auto: bpf failed: {exc}"


def open_backend(requested: str = "auto", live: bool = True, reuse: bool = False,
                 verify_every: int = 30):
    """(scanner or None, reason) for --backend: a BpfScanner when bpf is to run, None for
    procfs; `reason` says why, for Snapshot.backend_reason (None for a non-live source). `bpf`
    that cannot run raises BpfUnavailable naming the missing piece. `reuse`: a scanner that
    will scan again (top, serve, record), keeping what the next scan can reuse."""
    if requested == "procfs":
        return None, "requested (--backend procfs)"
    if not live:
        if requested == "bpf":
            raise BpfUnavailable("--backend bpf scans this machine; it cannot read --root")
        return None, None          # files are read as files: there is no choice to explain
    if requested == "bpf":
        try:
            return BpfScanner(reuse=reuse, verify_every=verify_every), "requested (--backend bpf)"
        except BpfUnavailable as exc:
            raise BpfUnavailable(f"--backend bpf: {exc}") from None
    try:
        return (BpfScanner(reuse=reuse, verify_every=verify_every),
                "auto: root, libbpf, BTF and the iterators are present")
    except BpfUnavailable as exc:
        return None, f"auto: bpf unavailable: {exc}"
