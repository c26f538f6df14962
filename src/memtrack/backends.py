"""Which backend scans a source: the choice `backend="auto"` makes, and why, recorded in the
snapshot (backend, backend_reason). The CLI's --backend and memtrack.scan() both come here."""
from __future__ import annotations

from dataclasses import replace

from .model import Snapshot


def scan_source(src, backend: str = "auto", pids=None, smaps: bool = False) -> Snapshot:
    """Scan the open source src with the backend named ("auto", "procfs" or "bpf"). bpf runs
    only on this machine (a live source); auto falls back to procfs where bpf cannot run, or
    fails after loading, and says why."""
    from .bpf import BpfUnavailable, fallback_reason, open_backend
    from .procfs import scan
    scanner, reason = open_backend(backend, live=getattr(src, "live", False))
    if scanner is not None:
        try:
            return scanner.scan(pids=pids, smaps=smaps, reason=reason)
        except BpfUnavailable as exc:
            reason = fallback_reason(backend, exc)
        finally:
            scanner.close()
    snap = scan(src, pids=pids, smaps=smaps)
    return replace(snap, backend_reason=reason) if reason else snap
