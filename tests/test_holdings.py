"""Holdings memtrack once missed (issue 14, part 2), on real processes, with the procfs
backend; test_bpf.py requires the BPF backend's snapshots of the same cases to be equal."""
from __future__ import annotations

import os

import pytest

from helpers.holdings import by_name, holdkid, huge_pages, procfs_scan, ref_of

PAGE = os.sysconf("SC_PAGE_SIZE")
ROOT_ONLY = pytest.mark.requires_root("map_files stat, huge page reservation and mounts need root")


def _map_files(pid, name):
    """(start, end, st_size, st_ino) of pid's mappings whose path is `name`, from maps and a
    stat of map_files: what the kernel says, for the expected figures."""
    out = []
    with open("/proc/%d/maps" % pid) as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].rstrip("\n") == name:
                s, e = parts[0].split("-")
                st = os.stat("/proc/%d/map_files/%s-%s" % (pid, s, e))
                out.append((int(s, 16), int(e, 16), st.st_size, st.st_ino))
    return out


@ROOT_ONLY
def test_shared_anonymous_huge_pages_and_hugetlb_memfds_are_buffers():
    with huge_pages(3) as hp:
        if not hp:
            pytest.skip("the kernel gives no huge pages here")
        with holdkid("huge") as pids:
            parent, child = pids
            want = _map_files(parent, "/anon_hugepage (deleted)")
            snap = procfs_scan(pids)
    assert len(want) == 1
    start, end, size, ino = want[0]
    b = [b for b in snap.buffers if b.name == "anon_hugepage"]
    assert len(b) == 1
    b = b[0]
    assert (b.kind, b.inode, b.size, b.holders) == ("shmem", ino, size, (parent, child))
    assert size == 2 * hp
    assert ref_of(snap, parent, b.id).vmas == ((start, end, 0),)
    m = by_name(snap, "huge-memfd")
    assert (m.kind, m.size, m.holders, m.fd_refs, m.map_refs) == ("memfd", hp, (parent, child), 2, 2)
