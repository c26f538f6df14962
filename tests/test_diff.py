"""diff(): hand-built snapshot pairs with the exact events expected."""
from __future__ import annotations

import json
import subprocess
import sys

from memtrack.diff import diff
from memtrack.json_out import to_json

from helpers.snapshots import MFD, snap


def ev(d):
    return [(e.action, e.buffer.id, e.reused) for e in d.buffers]


def refs(d):
    return [(e.pid, e.action, e.via, e.buffer.id, e.fd if e.via == "fd" else e.vma) for e in d.refs]


def test_identical_snapshots_have_no_events():
    s = snap({"memfd:10": dict(inode=10, size=4096, name="a", **MFD)}, {100: ("app", {"memfd:10": ([3], [])})})
    d = diff(s, s)
    assert d.buffers == () and d.refs == () and d.processes == ()


def test_create_free_and_refs():
    a = snap({"memfd:10": dict(inode=10, size=4096, name="a", **MFD),
              "dmabuf:7": dict(kind="dmabuf", inode=7, size=1 << 20, exporter="system", name="cam")},
             {100: ("app", {"memfd:10": ([3], []), "dmabuf:7": ([5], [(0x1000, 0x101000, 0)])}),
              200: ("comp", {"dmabuf:7": ([9], [])})})
    b = snap({"dmabuf:7": dict(kind="dmabuf", inode=7, size=1 << 20, exporter="system", name="cam"),
              "memfd:11": dict(inode=11, size=8192, name="b", **MFD)},
             {100: ("app", {"dmabuf:7": ([5], []), "memfd:11": ([4], [(0x2000, 0x4000, 0)])}),
              300: ("new", {"dmabuf:7": ([6], [])})})
    d = diff(a, b)
    assert ev(d) == [("free", "memfd:10", False), ("create", "memfd:11", False)]
    assert refs(d) == [
        (100, "release", "map", "dmabuf:7", (0x1000, 0x101000, 0)),
        (100, "release", "fd", "memfd:10", 3),
        (100, "acquire", "fd", "memfd:11", 4),
        (100, "acquire", "map", "memfd:11", (0x2000, 0x4000, 0)),
        (200, "release", "fd", "dmabuf:7", 9),
        (300, "acquire", "fd", "dmabuf:7", 6),
    ]
    byp = {p.pid: p for p in d.processes}
    # 100: A holds memfd 4096 alone + dmabuf shared by 2; B: memfd 8192 alone + dmabuf shared by 2
    assert byp[100].before == {"rss": 4096 + (1 << 20), "pss": 4096 + (1 << 19), "uss": 4096, "buffers": 2}
    assert byp[100].after == {"rss": 8192 + (1 << 20), "pss": 8192 + (1 << 19), "uss": 8192, "buffers": 2}
    assert byp[200].status == "gone" and byp[200].after["rss"] == 0
    assert byp[300].status == "new" and byp[300].after["pss"] == 1 << 19
    # largest |pss delta| first: 200 and 300 move half a MiB, 100 moves 4 KiB
    assert [p.pid for p in d.processes] == [200, 300, 100]
    assert d.totals["held_bytes"] == {"a": 4096 + (1 << 20), "b": 8192 + (1 << 20), "delta": 4096}


def test_inode_reuse_is_free_plus_create():
    # same dma-buf inode, different exporter: a new buffer; the process's fd 5 now points to it
    a = snap({"dmabuf:7": dict(kind="dmabuf", inode=7, size=4096, exporter="system", name="x")},
             {100: ("app", {"dmabuf:7": ([5], [])})})
    b = snap({"dmabuf:7": dict(kind="dmabuf", inode=7, size=4096, exporter="i915", name="x")},
             {100: ("app", {"dmabuf:7": ([5], [])})})
    d = diff(a, b)
    assert ev(d) == [("free", "dmabuf:7", True), ("create", "dmabuf:7", True)]
    assert d.of("free")[0].buffer.exporter == "system" and d.of("create")[0].buffer.exporter == "i915"
    assert refs(d) == [(100, "release", "fd", "dmabuf:7", 5), (100, "acquire", "fd", "dmabuf:7", 5)]
    assert d.processes == ()          # same size, same holder: usage unchanged


def test_reuse_by_name_and_by_fixed_size():
    a = snap({"memfd:10": dict(inode=10, size=4096, name="pool-1", **MFD),
              "sysv:3": dict(kind="sysv", inode=3, size=4096, name="0x00000001")}, {})
    b = snap({"memfd:10": dict(inode=10, size=4096, name="pool-2", **MFD),
              "sysv:3": dict(kind="sysv", inode=3, size=8192, name="0x00000001")}, {})
    assert ev(diff(a, b)) == [("free", "memfd:10", True), ("free", "sysv:3", True),
                              ("create", "memfd:10", True), ("create", "sysv:3", True)]


def test_memfd_resize_is_not_reuse():
    a = snap({"memfd:10": dict(inode=10, size=4096, name="pool", **MFD)}, {100: ("app", {"memfd:10": ([3], [])})})
    b = snap({"memfd:10": dict(inode=10, size=65536, name="pool", **MFD)}, {100: ("app", {"memfd:10": ([3], [])})})
    d = diff(a, b)
    assert [(e.action, e.old_size, e.buffer.size) for e in d.buffers] == [("resize", 4096, 65536)]
    assert d.refs == ()
    assert d.processes[0].delta("pss") == 65536 - 4096


def test_unknown_size_or_dev_on_one_side_still_matches():
    a = snap({"memfd:10": dict(kind="memfd", inode=10, size=None, dev=None, name="p")},
             {100: ("app", {"memfd:10": ([3], [])})})
    b = snap({"memfd:10": dict(kind="memfd", inode=10, size=4096, dev="00:01", name="p")},
             {100: ("app", {"memfd:10": ([3], [])})})
    d = diff(a, b)
    assert ev(d) == [] and d.refs == ()


def test_same_inode_on_two_devices_are_two_buffers():
    a = snap({"shm:5@00:1b": dict(kind="shm", inode=5, dev="00:1b", size=10, name="a"),
              "shm:5@00:2c": dict(kind="shm", inode=5, dev="00:2c", size=10, name="a")}, {})
    b = snap({"shm:5": dict(kind="shm", inode=5, dev="00:2c", size=10, name="a")}, {})
    assert ev(diff(a, b)) == [("free", "shm:5@00:1b", False)]


def test_cli_diff_json_of_two_snapshot_files(tmp_path):
    a = snap({"memfd:10": dict(inode=10, size=4096, name="a", **MFD)}, {100: ("app", {"memfd:10": ([3], [])})})
    b = snap({}, {})
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(to_json(a))
    pb.write_text(to_json(b))
    r = subprocess.run([sys.executable, "-m", "memtrack", "diff", str(pa), str(pb), "--json"],
                       capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [e["buffer"] for e in doc["buffers"]["freed"]] == ["memfd:10"]
    assert doc["events"] == [{"pid": 100, "comm": "app", "action": "release", "via": "fd",
                              "buffer": "memfd:10", "kind": "memfd", "size": 4096, "name": "a", "fd": 3}]
    assert doc["processes"][0]["delta"]["pss"] == -4096
    r = subprocess.run([sys.executable, "-m", "memtrack", "diff", str(pa), str(pb)],
                       capture_output=True, text=True, env=_env())
    assert r.returncode == 0 and "1 freed" in r.stdout and "-fd 3 memfd:10" in r.stdout


def test_cli_diff_bad_source_is_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{\"schema\": 99}")
    r = subprocess.run([sys.executable, "-m", "memtrack", "diff", str(bad), "-"],
                       capture_output=True, text=True, env=_env())
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "schema" in r.stderr and "Traceback" not in r.stderr


def _env():
    import os
    from helpers.paths import SRC
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC
    return env


def test_cli_diff_capture_against_live(tmp_path):
    """A capture archive then this machine: the memfd made in between is created and acquired."""
    from livekids import Kid
    with Kid() as k:
        k.add("before", 4096)
        cap = str(tmp_path / "c.tar.gz")
        r = subprocess.run([sys.executable, "-m", "memtrack", "capture", "-o", cap, "-p", str(k.pid)],
                           capture_output=True, text=True, env=_env())
        assert r.returncode == 0, r.stderr
        fd = k.add("after", 8192)
        r = subprocess.run([sys.executable, "-m", "memtrack", "diff", cap, "-", "-p", str(k.pid), "--json"],
                           capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [(e["name"], e["size"]) for e in doc["buffers"]["created"]] == [("after", 8192)]
    assert doc["buffers"]["created"][0]["category"]          # categorized like every view
    assert doc["buffers"]["freed"] == []
    assert [(e["pid"], e["action"], e["fd"], e["name"]) for e in doc["events"]] == [(k.pid, "acquire", fd, "after")]
    assert doc["processes"][0]["delta"]["pss"] == 8192
