"""A scan by the procfs backend alone, of this machine or a path: what a capture is compared
with (a capture is what procfs read), without memtrack.scan's choice of backend."""
from __future__ import annotations

from memtrack.procfs import scan
from memtrack.sources import open_source


def procfs_scan(path=None, pids=None, smaps=False):
    src = open_source(path)
    try:
        return scan(src, pids=pids, smaps=smaps)
    finally:
        src.close()
