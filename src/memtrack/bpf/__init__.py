"""The BPF scan backend: the observations of the procfs backend, from kernel iterators.

    from memtrack.bpf import BpfScanner
    with BpfScanner() as s:          # loads and attaches once (tens of ms)
        snap = s.scan()              # each scan: three iterator reads (a few ms)

It runs only where the caller could already read every process through /proc (root, or
CAP_SYS_PTRACE with CAP_SYS_ADMIN): the iterators bypass per-process ptrace checks, so the
backend must never show more than procfs would; on top of that every process is checked
against /proc's own access rule and counted as denied where procfs would be refused.
`unavailable()` says what is missing.

Its modules: scanner (BpfScanner: parse, check, build, what a reused scanner carries over),
reads (the iterator reads, in threads, per process where records moved), access (the
per-process access check, as /proc makes it), records (the iterators' binary records).

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

from ..bpf_policy import unavailable
from ..errors import BpfUnavailable
from .scanner import BpfScanner

__all__ = ["BpfScanner", "BpfUnavailable", "fallback_reason", "open_backend", "unavailable"]


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
