"""Kernel-format trees for shapes a live test here can't make (dma-buf, old kernels, a
process vanishing mid-read). Every tree is scanned as a directory and as a capture archive,
which must agree, and every result must keep the pss invariant."""
from __future__ import annotations

import json
import os

import pytest

import memtrack
from memtrack.account import account
from memtrack.json_out import to_dict, to_json
from memtrack.json_in import from_dict
from kfixture import Tree, fdinfo_dmabuf, fdinfo_generic

MiB = 1 << 20


def scan_both(tree: Tree, tmp_path, smaps=False):
    d = tree.write_dir(str(tmp_path / "tree"))
    t = tree.write_tar(str(tmp_path / "cap.tar.gz"))
    a = memtrack.scan(d, smaps=smaps)
    b = memtrack.scan(t, smaps=smaps)
    da, db = to_dict(a), to_dict(b)
    for k in ("source", "taken_at"):
        da.pop(k), db.pop(k)
    assert da == db
    acct = account(a)
    assert acct.total.pss == acct.held_bytes           # the pss invariant
    assert from_dict(json.loads(to_json(a))) == a   # lossless JSON
    return a, acct


def bid(snap, kind, inode):
    return [b for b in snap.buffers if b.kind == kind and b.inode == inode][0]


def test_dup_and_fork_inherited_dmabuf(tmp_path):
    t = Tree()
    t.proc(100, "surfaceflinger").dmabuf(3, 5, 4097, "system", "fb0", count=3).dmabuf(4, 5, 4097, "system", "fb0", count=3)
    t.proc(101, "child").dmabuf(3, 5, 4097, "system", "fb0", count=3)
    snap, acct = scan_both(t, tmp_path)
    b = bid(snap, "dmabuf", 5)
    assert (b.size, b.holders, b.fd_refs, b.map_refs, b.exporter, b.name) == (4097, (100, 101), 3, 0, "system", "fb0")
    assert acct.processes[100].total.rss == 4097 and acct.processes[101].total.rss == 4097
    # 4097 split over two holders, to the byte: the lower pid gets the odd byte
    assert (acct.processes[100].total.pss, acct.processes[101].total.pss) == (2049, 2048)
    assert acct.processes[100].total.uss == 0
    assert b.id == "dmabuf:5"


def test_map_only_dmabuf_sized_by_debugfs(tmp_path):
    t = Tree()
    t.proc(200, "camera").map(0x7f0000000000, 0x7f0000400000, "/dmabuf:preview", "00:0c", 9)
    t.bufinfo([{"size": 8 * MiB, "exporter": "system", "ino": 9, "name": "preview", "count": 1},
               {"size": 3 * MiB, "exporter": "qcom,display", "ino": 12, "count": 2}])
    snap, acct = scan_both(t, tmp_path)
    b = bid(snap, "dmabuf", 9)
    assert (b.size, b.size_from, b.holders, b.fd_refs, b.map_refs) == (8 * MiB, "debugfs", (200,), 0, 1)
    u = acct.processes[200].total
    assert (u.rss, u.pss, u.uss, u.mapped) == (8 * MiB, 8 * MiB, 8 * MiB, 4 * MiB)
    ko = bid(snap, "dmabuf", 12)
    assert ko.holders == () and ko.exporter == "qcom,display"
    assert acct.kernel_only_bytes == 3 * MiB and acct.kernel_only_buffers == 1
    assert snap.kernel.dmabuf_exported_bytes == 11 * MiB == acct.held_bytes + acct.kernel_only_bytes


def test_sysfs_stats_when_no_debugfs(tmp_path):
    t = Tree()
    t.proc(300, "gralloc").dmabuf(7, 40, 65536, "system")
    t.sysfs_buffer(40, 65536, "system").sysfs_buffer(41, 131072, "ion")
    snap, acct = scan_both(t, tmp_path)
    assert snap.kernel.dmabuf_source == "sysfs"
    assert acct.kernel_only_bytes == 131072 and snap.kernel.dmabuf_exported_bytes == 65536 + 131072


def test_no_kernel_table_means_kernel_only_unknown(tmp_path):
    t = Tree()
    t.proc(300, "gralloc").dmabuf(7, 40, 65536, "system")
    snap, acct = scan_both(t, tmp_path)
    assert acct.kernel_only_bytes is None
    assert any("kernel-only dma-bufs cannot be known" in n for n in snap.notes)
    assert to_dict(snap)["kernel"]["kernel_only_bytes"] is None


def test_mapped_and_held_with_partial_maps(tmp_path):
    t = Tree()
    p = t.proc(400, "compositor")
    p.memfd(10, "wl_shm-pool", 3000, size=1 * MiB)
    p.map(0x7f1000000000, 0x7f1000040000, "/memfd:wl_shm-pool (deleted)", "00:01", 3000, offset=0)
    p.map(0x7f1000100000, 0x7f1000110000, "/memfd:wl_shm-pool (deleted)", "00:01", 3000, offset=0x80000)
    p.private_map(0x400000, 0x401000)
    snap, acct = scan_both(t, tmp_path)
    b = bid(snap, "memfd", 3000)
    assert (b.size, b.size_from, b.fd_refs, b.map_refs, b.dev) == (1 * MiB, "stat", 1, 2, "00:01")
    u = acct.processes[400].total
    assert (u.rss, u.pss, u.uss, u.mapped) == (1 * MiB, 1 * MiB, 1 * MiB, 0x40000 + 0x10000)
    ref = snap.process_map[400].refs[0]
    assert ref.fds == (10,) and ref.vmas == ((0x7f1000000000, 0x7f1000040000, 0),
                                             (0x7f1000100000, 0x7f1000110000, 0x80000))


def test_names_with_spaces(tmp_path):
    t = Tree()
    p = t.proc(500, "app", "/usr/bin/app --flag x")
    p.memfd(3, "my pool (v2)", 77, size=4096)
    p.dmabuf(4, 78, 8192, "system", "camera preview")
    p.shm(5, "a b", 3, size=12288)
    p.map(0x7f2000000000, 0x7f2000001000, "/memfd:my pool (v2) (deleted)", "00:01", 77)
    p.map(0x7f2000010000, 0x7f2000013000, "/dev/shm/a b (deleted)", "00:1b", 3)
    snap, acct = scan_both(t, tmp_path)
    names = {b.kind: b.name for b in snap.buffers}
    assert names == {"memfd": "my pool (v2)", "dmabuf": "camera preview", "shm": "a b"}
    assert bid(snap, "memfd", 77).map_refs == 1 and bid(snap, "shm", 3).map_refs == 1
    assert snap.process_map[500].cmdline == "/usr/bin/app --flag x"
    assert acct.processes[500].total.rss == 4096 + 8192 + 12288


def test_pre_5_3_anon_inode_dmabuf(tmp_path):
    t = Tree()
    p = t.proc(600, "old")
    # Linux < 5.3: anon inode link, and fdinfo has only the generic part
    p.fd(3, "anon_inode:dmabuf", "pos:\t0\nflags:\t02\nmnt_id:\t11\n")
    p.fd(4, "anon_inode:dmabuf", "pos:\t0\nflags:\t02\nmnt_id:\t11\n")
    p.stat(3, "00:0b", 4321, 0).stat(4, "00:0b", 4321, 0)      # the shared anon inode
    snap, acct = scan_both(t, tmp_path)
    anon = [b for b in snap.buffers if b.kind == "dmabuf"]
    assert len(anon) == 2 and all(b.inode is None and b.size is None for b in anon)
    assert {b.id for b in anon} == {"dmabuf:anon:600:3", "dmabuf:anon:600:4"}
    assert any("before 5.3" in n for n in snap.notes)
    assert acct.processes[600].total.unknown == 2


def test_missing_ino_falls_back_to_stat(tmp_path):
    t = Tree()
    # Linux 5.3..5.13: dma-buf fdinfo without ino:, stat of the fd gives the dmabuf inode
    t.proc(700, "a").fd(5, "/dmabuf:", fdinfo_dmabuf(None, 16384, "i915", 2)).stat(5, "00:0c", 31, 16384)
    t.proc(701, "b").map(0x7f3000000000, 0x7f3000004000, "/dmabuf:", "00:0c", 31)
    snap, acct = scan_both(t, tmp_path)
    b = bid(snap, "dmabuf", 31)
    assert (b.holders, b.size, b.exporter, b.fd_refs, b.map_refs) == ((700, 701), 16384, "i915", 1, 1)
    assert acct.processes[701].total.pss == 8192


def test_vanished_mid_scan_and_unreadable_fdinfo(tmp_path):
    t = Tree()
    gone = t.proc(800, "gone")
    gone.memfd(3, "x", 90, size=4096)
    gone.missing |= {"maps", "status", "smaps", "cmdline", "comm"}   # exited after fd/ was read
    t.proc(801, "ok").dmabuf(3, 91, 4096, "system", "y")
    t.proc(802, "ok2").memfd(4, "z", 92, size=8192)
    t.proc(803, "weird").dmabuf(3, 93, 4096, "system", "w")
    d = t.write_dir(str(tmp_path / "tree"))
    # fdinfo that can't be read (a directory where the file should be)
    os.unlink(os.path.join(d, "proc/803/fdinfo/3"))
    os.mkdir(os.path.join(d, "proc/803/fdinfo/3"))
    snap = memtrack.scan(d)
    assert snap.skipped.vanished == (800,)
    assert sorted(p.pid for p in snap.processes) == [801, 802, 803]
    assert any("fdinfo unreadable for 1 buffer fds" in n for n in snap.notes)
    w = [b for b in snap.buffers if 803 in b.holders][0]
    assert w.exporter is None and w.size is None       # no fdinfo, and no stat data in a tree
    acct = account(snap)
    assert acct.total.pss == acct.held_bytes == 4096 + 8192


def test_sysv_attached_and_orphaned(tmp_path):
    t = Tree()
    t.proc(900, "x").map(0x7f4000000000, 0x7f4000300000, "/SYSV0000002a (deleted)", "00:01", 65538)
    t.proc(901, "y").map(0x7f4000000000, 0x7f4000100000, "/SYSV0000002a (deleted)", "00:01", 65538)
    t.sysv([{"key": 42, "shmid": 65538, "size": 3 * MiB, "nattch": 2},
            {"key": 0, "shmid": 65539, "size": 5 * MiB, "nattch": 0}])
    t.bufinfo([])
    snap, acct = scan_both(t, tmp_path)
    seg = bid(snap, "sysv", 65538)
    assert (seg.size, seg.holders, seg.kernel_count, seg.name) == (3 * MiB, (900, 901), 2, "0x0000002a")
    assert acct.processes[900].total.pss == acct.processes[901].total.pss == 3 * MiB // 2
    orphan = bid(snap, "sysv", 65539)
    assert orphan.holders == () and acct.kernel_only_bytes == 5 * MiB


def test_sysv_shmid_does_not_merge_with_memfd_inode(tmp_path):
    # SysV files live on the same internal shm mount as memfds, with i_ino = shmid: the
    # numbers can coincide, the objects never do
    t = Tree()
    p = t.proc(1000, "x")
    p.memfd(3, "m", 7, size=4096)
    p.map(0x7f5000000000, 0x7f5000002000, "/SYSV00000000 (deleted)", "00:01", 7)
    t.sysv([{"shmid": 7, "size": 8192, "nattch": 1}])
    snap, acct = scan_both(t, tmp_path)
    assert sorted(b.id for b in snap.buffers) == ["memfd:7", "sysv:7"]
    assert acct.processes[1000].total.rss == 4096 + 8192


def test_same_inode_on_two_tmpfs_mounts(tmp_path):
    t = Tree()
    t.proc(1100, "host").shm(3, "pool", 2, size=4096)
    t.proc(1101, "container").shm(3, "pool", 2, size=8192, dev="00:2a")
    snap, acct = scan_both(t, tmp_path)
    shm = sorted((b.id, b.size, b.holders) for b in snap.buffers)
    assert shm == [("shm:2@00:1b", 4096, (1100,)), ("shm:2@00:2a", 8192, (1101,))]
    assert acct.processes[1100].total.uss == 4096


def test_fd_only_memfd_without_stat_is_unknown_size_but_joins_maps(tmp_path):
    t = Tree()
    t.proc(1200, "a").memfd(3, "pw", 55)                  # no fdstat sidecar: no size
    t.proc(1201, "b").map(0x7f6000000000, 0x7f6000010000, "/memfd:pw (deleted)", "00:01", 55)
    snap, acct = scan_both(t, tmp_path)
    b = bid(snap, "memfd", 55)
    assert b.size is None and b.holders == (1200, 1201) and b.dev == "00:01"
    assert acct.processes[1200].total.unknown == 1 and acct.processes[1200].total.rss == 0


def test_map_files_size_for_shared_anonymous(tmp_path):
    t = Tree()
    t.proc(1300, "a").map(0x7f7000000000, 0x7f7000010000, "/dev/zero (deleted)", "00:01", 4000, size=65536)
    t.proc(1301, "b").map(0x7f7000000000, 0x7f7000008000, "/dev/zero (deleted)", "00:01", 4000)
    snap, acct = scan_both(t, tmp_path)
    b = bid(snap, "shmem", 4000)
    assert (b.size, b.size_from, b.holders) == (65536, "map_files", (1300, 1301))
    assert acct.processes[1301].total.pss == 32768 and acct.processes[1301].total.mapped == 0x8000


def test_ashmem_fdinfo(tmp_path):
    t = Tree()
    t.proc(1400, "zygote").fd(9, "/dev/ashmem/dalvik-heap (deleted)",
                              fdinfo_generic(None) + "inode:\t1234\nname:\tdalvik-heap\nsize:\t262144\n")
    snap, acct = scan_both(t, tmp_path)
    b = bid(snap, "ashmem", 1234)
    assert (b.size, b.name) == (262144, "dalvik-heap")


def test_ashmem_device_link_without_fdinfo_is_left_out_and_said(tmp_path):
    t = Tree()
    t.proc(1401, "old-android").fd(9, "/dev/ashmem", fdinfo_generic(None))
    snap, _ = scan_both(t, tmp_path)
    assert snap.buffers == () and any("no inode" in n for n in snap.notes)


def test_smaps_in_rss(tmp_path):
    t = Tree()
    p = t.proc(1500, "a")
    p.memfd(3, "m", 60, size=65536)
    p.map(0x7f8000000000, 0x7f8000010000, "/memfd:m (deleted)", "00:01", 60, rss_kb=12)
    p.dmabuf(4, 61, 65536, "nv_dmabuf")
    p.map(0x7f8000100000, 0x7f8000110000, "/dmabuf:", "00:0c", 61, rss_kb=0)   # PFN map: not in RSS
    snap, acct = scan_both(t, tmp_path, smaps=True)
    u = acct.processes[1500].total
    assert (u.rss, u.in_rss, u.hidden) == (131072, 12 * 1024, 131072 - 12 * 1024)


def test_restrict_keeps_pss(tmp_path):
    t = Tree()
    t.proc(1600, "a").memfd(3, "m", 70, size=3000)
    t.proc(1601, "b").memfd(3, "m", 70, size=3000)
    t.proc(1602, "c").memfd(3, "m", 70, size=3000)
    snap, _ = scan_both(t, tmp_path)
    view = snap.restrict(pids={1602})
    assert account(view).processes[1602].total.pss == 1000
    assert [p.pid for p in view.processes] == [1602]


def test_capture_without_a_dmabuf_fdinfo_falls_back_to_fdstat(tmp_path):
    # fdinfo could not be read when the capture was taken, but stat could
    t = Tree()
    t.proc(1700, "a").fd(3, "/dmabuf:", None).stat(3, "00:0c", 44, 8192)
    snap, acct = scan_both(t, tmp_path)
    b = bid(snap, "dmabuf", 44)
    assert (b.size, b.size_from, b.exporter, b.holders) == (8192, "stat", None, (1700,))
    assert any("fdinfo unreadable for 1 buffer fds" in n for n in snap.notes)
