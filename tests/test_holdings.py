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


def _holders_of(dev_ino, pids):
    """{pid: [(start, end, st_size)]} of the given processes mapping the file dev_ino."""
    out = {}
    for pid in pids:
        with open("/proc/%d/maps" % pid) as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) < 6 or int(parts[4]) != dev_ino[1]:
                    continue
                s, e = parts[0].split("-")
                st = os.stat("/proc/%d/map_files/%s-%s" % (pid, s, e))
                if (st.st_dev, st.st_ino) == dev_ino:
                    out.setdefault(pid, []).append((int(s, 16), int(e, 16), st.st_size))
    return out


@ROOT_ONLY
def test_postgresql_huge_pages_shared_buffers():
    """PostgreSQL with huge_pages=on: its shared_buffers segment is one shmem buffer held by
    the postmaster and every child, sized as map_files says, in both backends."""
    import shutil
    from helpers.holdings import bpf_scan, comparable
    from helpers.postgres_huge import find_bindir, huge_server, server_pids
    bindir = find_bindir()
    if bindir is None or not shutil.which("setpriv"):
        pytest.skip("no PostgreSQL server (/usr/lib/postgresql/*/bin) or no setpriv")
    with huge_pages(24) as hp:                 # 16 MB shared_buffers and the rest, in 2 MB pages
        if not hp:
            pytest.skip("the kernel gives no huge pages here")
        try:
            server = huge_server(bindir)
            postmaster = server.__enter__()
        except RuntimeError as exc:
            pytest.skip(f"PostgreSQL with huge_pages=on did not start: {exc}")
        try:
            pids = server_pids(postmaster)
            seg = _map_files(postmaster, "/anon_hugepage (deleted)")
            assert len(seg) == 1, seg
            st = os.stat("/proc/%d/map_files/%x-%x" % (postmaster, seg[0][0], seg[0][1]))
            want = _holders_of((st.st_dev, st.st_ino), pids)
            a = procfs_scan(pids)
            b = bpf_scan(pids)
        finally:
            server.__exit__(None, None, None)
    bufs = [x for x in a.buffers if x.inode == st.st_ino and x.name == "anon_hugepage"]
    assert len(bufs) == 1
    buf = bufs[0]
    assert buf.size == st.st_size >= 16 << 20
    assert buf.holders == tuple(sorted(want)) and len(want) >= 4    # postmaster + its workers
    for pid, vmas in want.items():
        assert ref_of(a, pid, buf.id).vmas == tuple((s, e, 0) for s, e, _ in vmas)
    if b is not None:
        assert comparable(b, pids) == comparable(a, pids)


def test_a_process_whose_main_thread_exited_is_read_through_a_live_thread():
    with holdkid("exited") as (pid,):
        assert os.listdir("/proc/%d/fd" % pid) == [] if os.geteuid() == 0 else True
        snap = procfs_scan([pid])
    fd_only, mapped = by_name(snap, "left-by-main"), by_name(snap, "mapped-left-by-main")
    assert (fd_only.holders, fd_only.size, fd_only.fd_refs) == ((pid,), 5 * PAGE, 1)
    assert (mapped.holders, mapped.size, mapped.fd_refs, mapped.map_refs) == ((pid,), 6 * PAGE, 0, 1)
    assert not snap.skipped.total


def test_a_thread_with_its_own_fd_table_holds_for_the_process():
    with holdkid("ownfiles") as (pid,):
        snap = procfs_scan([pid])
    own, both = by_name(snap, "thread-table-only"), by_name(snap, "in-both-tables")
    assert (own.holders, own.size, own.fd_refs) == ((pid,), 3 * PAGE, 1)
    # the thread's table began as a copy of the leader's: the same fd is not counted twice
    assert (both.holders, both.size, both.fd_refs) == ((pid,), 2 * PAGE, 1)


def _lines_of(pid, path):
    """(start, end, offset, perms) of pid's mappings of `path`, from maps."""
    out = []
    with open("/proc/%d/maps" % pid) as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].rstrip("\n") == path:
                s, e = parts[0].split("-")
                out.append((int(s, 16), int(e, 16), int(parts[2], 16), parts[1]))
    return out


def test_private_mappings_of_buffer_files_hold_them(tmp_path):
    from memtrack.cli import main
    shm = "/dev/shm/memtrack-private-%d" % os.getpid()
    try:
        with holdkid("private", shm) as (pid,):
            want_memfd = _lines_of(pid, "/memfd:private-memfd (deleted)")
            want_shm = _lines_of(pid, shm)
            snap = procfs_scan([pid], smaps=True)
            out = tmp_path / "show.txt"
            main(["show", str(pid), "-o", str(out)])
            shown = out.read_text()
    finally:
        os.unlink(shm)
    assert [p for *_, p in want_memfd + want_shm] == ["rw-p", "rw-p"]
    for b, want, size in ((by_name(snap, "private-memfd"), want_memfd, 4 * PAGE),
                          (by_name(snap, os.path.basename(shm)), want_shm, 3 * PAGE)):
        assert (b.holders, b.fd_refs, b.map_refs) == ((pid,), 0, 0)    # map_refs: shared ones
        if os.geteuid() == 0:
            assert b.size == size              # map_files: root
        r = ref_of(snap, pid, b.id)
        assert r.private == tuple((s, e, o) for s, e, o, _ in want) and r.vmas == ()
        # the page written is a private copy: neither mapped nor resident in the buffer
        assert r.mapped == 0 and r.in_rss == 0
    assert "0+1p" in shown and "MAP_PRIVATE" in shown
    import json
    from memtrack.json_in import from_dict
    from memtrack.json_out import to_dict, to_json
    doc = to_dict(snap)
    assert json.loads(to_json(snap))["processes"] == json.loads(json.dumps(doc))["processes"]
    assert doc["processes"][0]["refs"][0]["private_vmas"]
    again = from_dict(doc)
    assert [p.refs for p in again.processes] == [p.refs for p in snap.processes]


def test_a_program_run_from_a_memfd_holds_it():
    import shutil
    with holdkid("fexec") as (child,):
        want = _lines_of(child, "/memfd:fexec-sleep (deleted)")
        snap = procfs_scan([child])
    b = by_name(snap, "fexec-sleep")
    assert len(want) >= 2 and all(p.endswith("p") for *_, p in want)
    assert (b.kind, b.holders, b.fd_refs, b.map_refs) == ("memfd", (child,), 0, 0)
    if os.geteuid() == 0:
        assert b.size == os.path.getsize(shutil.which("sleep"))
    assert ref_of(snap, child, b.id).private == tuple((s, e, o) for s, e, o, _ in want)


@ROOT_ONLY
def test_a_shm_file_through_a_bind_mount_is_one_buffer_with_both_holders(tmp_path):
    name = "memtrack-bind-%d" % os.getpid()
    where = tmp_path / "shm"
    where.mkdir()
    with open("/dev/shm/" + name, "wb") as f:
        f.truncate(5 * PAGE)
    try:
        with holdkid("bind", str(where), name) as (parent, child):
            snap = procfs_scan([parent, child])
            ino = os.stat("/dev/shm/" + name).st_ino
    finally:
        os.unlink("/dev/shm/" + name)
    bufs = [b for b in snap.buffers if b.inode == ino]
    assert len(bufs) == 1, [(b.id, b.name, b.holders) for b in bufs]
    b = bufs[0]
    assert (b.kind, b.name, b.size, b.holders) == ("shm", name, 5 * PAGE, (parent, child))
    assert (b.fd_refs, b.map_refs) == (2, 2)
    from memtrack.account import account
    acct = account(snap)
    assert acct.shares[b.id] == {parent: 5 * PAGE // 2, child: 5 * PAGE // 2}


@ROOT_ONLY
def test_a_file_on_a_hugetlbfs_mount_is_a_buffer(tmp_path):
    where = tmp_path / "huge"
    where.mkdir()
    with huge_pages(1) as hp:
        if not hp:
            pytest.skip("the kernel gives no huge pages here")
        with holdkid("hugefs", str(where)) as (pid,):
            path = str(where / "hugefile")
            want = _lines_of(pid, path)
            st = [os.stat("/proc/%d/map_files/%x-%x" % (pid, s, e)) for s, e, _o, _p in want]
            snap = procfs_scan([pid])
    b = by_name(snap, path)
    assert len(want) == 1 and st[0].st_size == hp
    assert (b.kind, b.inode, b.size, b.holders, b.fd_refs, b.map_refs) == \
        ("hugetlb", st[0].st_ino, hp, (pid,), 1, 1)


@pytest.mark.parametrize("case", ["exited", "ownfiles"])
def test_an_incremental_scanner_reads_thread_holdings_every_time(case):
    """The incremental procfs scanner (top, serve, record) knows a process by its leader's fd
    count and vsize, which a thread's own table does not move: such a process is re-read."""
    from memtrack.incremental import IncrementalScanner
    with holdkid(case) as pids:
        sc = IncrementalScanner(pids=pids, verify_every=0)
        first = sc.refresh()
        again = sc.refresh()
        assert sc.stats.reread == 1
        fresh = procfs_scan(pids)
    names = {b.name for b in first.buffers}
    assert names >= ({"left-by-main"} if case == "exited" else {"thread-table-only"})
    assert {b.name for b in again.buffers} == names == {b.name for b in fresh.buffers}
