"""Captures carry the holdings the live scan learned to see (issue 14, part 2): private
mappings of buffer files, a process whose main thread exited, a thread with its own fd
table, a /dev/shm file reached through a bind mount, a hugetlbfs file. A capture of the
holding processes, by `memtrack capture` and by capture.sh in every shell, reads back to
the live scan's snapshot."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from memtrack import remote

from helpers.holdings import by_name, comparable, holdkid, huge_pages, procfs_scan
from remote_util import SCRIPT, SRC, android_path, busybox_path

ROOT = pytest.mark.requires_root("map_files stat, other processes' threads and mounts need root")
SHELLS = ["python", "dash", "busybox", "mksh+toybox"]


def _capture(tmp_path, how, pids):
    """The snapshot read back from a capture of pids made by `how`."""
    from memtrack.procfs import scan
    out = str(tmp_path / ("cap-%s.tar.gz" % how.replace("+", "-")))
    if how == "python":
        p = subprocess.run([sys.executable, "-m", "memtrack", "capture", "-q", "-o", out,
                            "-p", ",".join(map(str, pids))], env=dict(os.environ, PYTHONPATH=SRC),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
        assert p.returncode == 0, p.stderr.decode()
    else:
        if how == "dash":
            cmd, env = ["dash"], None
        else:
            d = busybox_path(tmp_path) if how == "busybox" else android_path(tmp_path)
            cmd, env = [os.path.join(d, "sh")], dict(os.environ, PATH=d)
        p = subprocess.run(cmd + [SCRIPT, "-p", ",".join(map(str, pids))], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
        assert p.returncode == 0 and p.stderr == b"", p.stderr.decode()
        remote.write_tree(remote.decode(p.stdout), out, "test")
    from memtrack.sources import open_source
    src = open_source(out)
    try:
        return scan(src, pids=pids)
    finally:
        src.close()


def _same(tmp_path, how, pids, live):
    got = _capture(tmp_path, how, pids)
    assert comparable(got, pids) == comparable(live, pids)
    assert not got.skipped.total
    return got


@ROOT
@pytest.mark.parametrize("how", SHELLS)
def test_private_mappings_travel_in_a_capture(tmp_path, how):
    shm = "/dev/shm/memtrack-capprivate-%d" % os.getpid()
    try:
        with holdkid("private", shm) as pids:
            live = procfs_scan(pids)
            got = _same(tmp_path, how, pids, live)
    finally:
        os.unlink(shm)
    b = by_name(got, "private-memfd")
    assert b.holders == tuple(pids) and b.size == 4 * os.sysconf("SC_PAGE_SIZE")


@ROOT
@pytest.mark.parametrize("how", SHELLS)
def test_an_exited_main_thread_travels_in_a_capture(tmp_path, how):
    with holdkid("exited") as pids:
        live = procfs_scan(pids)
        got = _same(tmp_path, how, pids, live)
    assert by_name(got, "left-by-main").holders == tuple(pids)
    assert by_name(got, "mapped-left-by-main").holders == tuple(pids)


@ROOT
@pytest.mark.parametrize("how", SHELLS)
def test_a_thread_fd_table_travels_in_a_capture(tmp_path, how):
    with holdkid("ownfiles") as pids:
        live = procfs_scan(pids)
        got = _same(tmp_path, how, pids, live)
    assert by_name(got, "thread-table-only").holders == tuple(pids)
    assert by_name(got, "in-both-tables").fd_refs == 1


@ROOT
@pytest.mark.parametrize("how", SHELLS)
def test_a_bind_mounted_shm_file_travels_in_a_capture(tmp_path, how):
    name = "memtrack-capbind-%d" % os.getpid()
    where = tmp_path / "shm"
    where.mkdir()
    with open("/dev/shm/" + name, "wb") as f:
        f.truncate(5 * os.sysconf("SC_PAGE_SIZE"))
    try:
        with holdkid("bind", str(where), name) as pids:
            live = procfs_scan(pids)
            got = _same(tmp_path, how, pids, live)
    finally:
        os.unlink("/dev/shm/" + name)
    b = by_name(got, name)
    assert b.holders == tuple(sorted(pids)) and (b.fd_refs, b.map_refs) == (2, 2)


@ROOT
@pytest.mark.parametrize("how", SHELLS)
def test_a_hugetlbfs_file_travels_in_a_capture(tmp_path, how):
    where = tmp_path / "huge"
    where.mkdir()
    with huge_pages(1) as hp:
        if hp is None:
            pytest.skip("no huge page can be reserved here")
        with holdkid("hugefs", str(where)) as pids:
            live = procfs_scan(pids)
            got = _same(tmp_path, how, pids, live)
    b = by_name(got, str(where / "hugefile"))
    assert (b.kind, b.holders) == ("hugetlb", tuple(pids))
