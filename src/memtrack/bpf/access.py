"""The bpf backend's access check: the iterators see every process, so each holder is checked
against /proc's own access rule and counted as denied where procfs would be refused.
"""
from __future__ import annotations

import errno
import os
import threading
from typing import Dict, NamedTuple, Optional

from ..bpf_policy import (kcmp_gate, mac_facts, mac_problem, own_creds, reads_every_fd_dir,
                          status_fields)
from ..sources.live import read_at


class Caller(threading.local):
    """What the access check knows of the calling thread's rights during its scan (set by
    as_caller(); credentials are per thread, and so is this): fast, its kcmp_gate() or False; exe_only, whether a readlink of /proc/PID/exe alone answers as
    procfs would (DAC lets it list every /proc/PID/fd, and no MAC module mediates the way
    there). Outside a scan both are False, so /proc is asked everything."""
    fast = False
    exe_only = False
    scanning = False


caller = Caller()


def _open_fd_dir(pid: int) -> None:
    """Open /proc/PID/fd as procfs lists it (its DAC and MAC checks), or raise OSError."""
    os.close(os.open("/proc/%d/fd" % pid, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))


def gate(pid: int) -> Optional[str]:
    """None if procfs would let this caller read the process, else "denied" or "vanished".

    The iterators see every process; /proc still applies its checks (an LSM, a process out
    of this caller's reach...). Ask /proc with the check its fd links use
    (proc_fd_access_allowed): a readlink of /proc/PID/exe, one syscall. Where kcmp(2) makes
    the same check (bpf_policy.kcmp_gate), a pass there is taken without the path walk; any
    other answer is asked of /proc. A caller without the DAC capabilities, or under a MAC
    module (whose file hooks may judge a directory apart from a link), also needs to open
    /proc/PID/fd, as procfs lists it (mode 0500: its owner's, or the capable's)."""
    me = caller
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


class Skipped(NamedTuple):
    """The processes holding nothing that a scan counts all the same (others_denied)."""
    denied: tuple
    vanished: tuple


def others_denied(exclude, want, gate=gate, listing=None) -> Skipped:
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
    return Skipped(tuple(denied), tuple(vanished))


PF_KTHREAD = 0x00200000


def _holds_nothing(pid: int) -> bool:
    """Whether a process that holds no buffer and that gate() finds denied is one procfs
    does not count denied: a zombie (read_process drops a denied zombie), or a kernel thread
    whose /proc/PID/fd this caller may list (it has no fd whose link needs the ptrace check,
    and no mm for /proc/PID/maps to check). /proc/PID/stat's state and flags, which it shows
    every caller."""
    try:
        stat = read_at("/proc/%d/stat" % pid, single=True)
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
    if caller.exe_only:
        return True
    try:
        _open_fd_dir(pid)
    except OSError:
        return False
    return True


class GateCache:
    """gate() verdicts kept between scans of a reused scanner, each for as long as the
    process keeps its identity: start time, credentials (a task gets a new struct cred on
    every change: setuid, capabilities...) and mm (a new one on exec), the inputs of /proc's
    ptrace check that can move. What the iterators cannot see (an LSM policy changed under
    a running process) is caught by re-asking every process once every `every` scans, a
    rotating slice."""

    def __init__(self, every: int):
        self.every = max(0, int(every))
        self.memo: Dict[int, tuple] = {}    # pid -> (its ident when asked, the verdict)
        self.ident: Dict[int, tuple] = {}   # pid -> (start_time, cred, mm), this scan
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
        why = gate(pid)
        if ident is not None and why != "vanished":
            self.memo[pid] = (ident, why)
        else:
            self.memo.pop(pid, None)
        return why


def as_caller(gates: GateCache) -> None:
    """A scan starts on this thread's credentials as they are now (caller); verdicts
    kept from scans on others are dropped."""
    try:
        status = status_fields()
    except OSError:
        status = {}
    facts = mac_facts()
    caller.fast = kcmp_gate(status, mac=facts)
    caller.exe_only = reads_every_fd_dir(status) and not mac_problem(*facts)
    caller.scanning = True
    gates.caller(own_creds(status) + facts)


def no_caller() -> None:
    """The scan is over: outside one, /proc is asked everything."""
    caller.fast = caller.exe_only = caller.scanning = False
