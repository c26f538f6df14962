"""Hostile captures in bounded memory (issue 15, point 3): a maps repeating one line, or
holding more distinct mappings than the memory cap allows, run under an address-space limit
in a child process. The result is the right snapshot or a one-line refusal, never a
MemoryError or a traceback. bench/hostile.py measures the same shapes at full size."""
from __future__ import annotations

import io
import json
import os
import random
import resource
import subprocess
import sys
import tarfile

import pytest

import memtrack
from memtrack.account import account
from memtrack.readers.maps import parse_shared
from memtrack.sources import archive as archive_mod
from memtrack.sources.archive import ArchiveSource
from livehelpers import SRC

LINE = b"7f0000000000-7f0000001000 rw-s 00000000 00:01 4242 /memfd:pool (deleted)\n"
PIDS = list(range(100, 106))
MAPS_MIB = 12          # per process: 170,000 lines, which the reader before this kept as objects
AS_LIMIT = 384 << 20   # the reader before this peaked at 618 MiB RSS on this archive; this one at 23 MiB


def add(tf, name, data=b"", link=None):
    ti = tarfile.TarInfo(name)
    if link is not None:
        ti.type, ti.linkname = tarfile.SYMTYPE, link
        tf.addfile(ti)
    else:
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))


def capture(path, maps_of, pids=PIDS):
    """A capture of pids, each holding memfd 4242 (4096 bytes) by fd 3, with maps_of(pid)."""
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tf:
        for pid in pids:
            add(tf, f"proc/{pid}/comm", b"app\n")
            add(tf, f"proc/{pid}/cmdline", b"app\0")
            add(tf, f"proc/{pid}/status", b"Name:\tapp\nUid:\t0\t0\t0\t0\n")
            add(tf, f"proc/{pid}/fd/3", link="/memfd:pool (deleted)")
            add(tf, f"proc/{pid}/fdstat", b"3 00:01 4242 4096 100777\n")
            add(tf, f"proc/{pid}/maps", maps_of(pid))
    return str(path)


def repeated(_pid):
    return LINE * ((MAPS_MIB << 20) // len(LINE))


def run_limited(*argv, patch=""):
    """memtrack ARGV in a child under AS_LIMIT; patch: Python run before main (a cap lowered)."""
    code = ("import sys\n" + patch + "\nfrom memtrack.cli import main\nsys.exit(main(sys.argv[1:]))")

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))

    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MEMTRACK_DEBUG", None)
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          env=env, preexec_fn=limit, timeout=600)


def test_repeated_mapping_costs_nothing_per_repetition(tmp_path):
    """6 processes, each a 12 MiB maps repeating one shared-memfd line: the memfd is mapped
    once per process (a repeated address range is the same VMA printed again), and the
    whole run fits an address-space limit the old reader could not live in."""
    path = capture(tmp_path / "rep.tgz", repeated)
    r = run_limited("--root", path, "--json")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "MemoryError" not in r.stderr
    doc = json.loads(r.stdout)
    (buf,) = doc["buffers"]
    assert (buf["kind"], buf["inode"], buf["size"]) == ("memfd", 4242, 4096)
    assert buf["holders"] == PIDS and buf["fd_refs"] == 6 and buf["map_refs"] == 6
    for p in doc["processes"]:
        (ref,) = p["refs"]
        assert ref["vmas"] == [[0x7f0000000000, 0x7f0000001000, 0]], ref
    n = (MAPS_MIB << 20) // len(LINE)
    assert f"{6 * (n - 1)} duplicate maps lines ignored" in r.stderr
    snap = memtrack.scan(path)
    acct = account(snap)
    assert acct.total.pss == acct.held_bytes == 4096
    for pid in PIDS:
        assert acct.processes[pid].total.rss == 4096 and acct.processes[pid].total.mapped == 4096


def test_repeated_mapping_in_a_tree_too(tmp_path):
    root = tmp_path / "tree"
    with tarfile.open(capture(tmp_path / "rep.tgz", repeated)) as tf:
        tf.extractall(root)
    r = run_limited("--root", str(root), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [len(p["refs"][0]["vmas"]) for p in doc["processes"]] == [1] * 6
    assert "duplicate maps lines ignored" in r.stderr


def test_repeated_mapping_in_a_capture_stream_too(tmp_path):
    """The capture script's stream format (what adb and ssh bring back) keeps what an archive
    keeps: each address range once."""
    boundary = b"b0undary-1234"
    out = [b"memtrack-stream 1 " + boundary + b"\n"]
    with tarfile.open(capture(tmp_path / "rep.tgz", repeated)) as tf:
        for m in tf:
            body = m.linkname.encode() if m.issym() else tf.extractfile(m).read()
            out.append(b"\n" + boundary + (b" L " if m.issym() else b" F ") + m.name.encode() + b"\n" + body)
    out.append(b"\n" + boundary + b" E end\n")
    path = tmp_path / "rep.stream"
    path.write_bytes(b"".join(out))
    r = run_limited("--root", str(path), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [p["refs"][0]["vmas"] for p in doc["processes"]] == [[[0x7f0000000000, 0x7f0000001000, 0]]] * 6
    assert "duplicate maps lines ignored" in r.stderr


def distinct(pid):
    lines = []
    for i in range(40_000):
        a = 0x100000000 + i * 0x2000
        lines.append(b"%x-%x rw-s 00000000 00:01 %d /memfd:m (deleted)\n" % (a, a + 0x1000, pid * 100_000 + i))
    return b"".join(lines)


@pytest.mark.parametrize("tree", [False, True])
def test_more_mappings_than_the_cap_holds_is_refused_in_one_line(tmp_path, tree):
    """240,000 distinct buffer mappings, the memory cap lowered to 256 MiB: refused with one
    line naming the cap, before the objects are made (the old reader built them all)."""
    path = capture(tmp_path / "many.tgz", distinct)
    if tree:
        with tarfile.open(path) as tf:
            tf.extractall(tmp_path / "tree")
        path = str(tmp_path / "tree")
    r = run_limited("--root", path, patch="import memtrack.sources.archive as a; a.MAX_TOTAL = 256 << 20")
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("memtrack: "), r.stderr[-2000:]
    assert "more than 256 MiB of" in r.stderr and "distinct buffer mappings" in r.stderr


def distinct_private(pid):
    lines = []
    for i in range(40_000):
        a = 0x100000000 + i * 0x2000
        lines.append(b"%x-%x r--p 00000000 00:01 %d /memfd:m (deleted)\n" % (a, a + 0x1000, pid * 100_000 + i))
    return b"".join(lines)


@pytest.mark.parametrize("tree", [False, True])
def test_private_mappings_of_a_thread_past_the_cap_are_refused_in_one_line(tmp_path, tree):
    """The members captures gained keep to the same cap: 240,000 distinct private memfd
    mappings in the maps of threads of exited leaders (proc/PID/task/TID/maps)."""
    path = tmp_path / "threads.tgz"
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tf:
        for pid in PIDS:
            add(tf, f"proc/{pid}/status", b"Name:\tapp\nState:\tZ (zombie)\nUid:\t0\t0\t0\t0\n")
            add(tf, f"proc/{pid}/cmdline", b"app\0")
            add(tf, f"proc/{pid}/maps", b"")
            add(tf, f"proc/{pid}/task/{pid + 1}/fd/3", link="/memfd:pool (deleted)")
            add(tf, f"proc/{pid}/task/{pid + 1}/maps", distinct_private(pid))
    path = str(path)
    if tree:
        with tarfile.open(path) as tf:
            tf.extractall(tmp_path / "tree")
        path = str(tmp_path / "tree")
    r = run_limited("--root", path, patch="import memtrack.sources.archive as a; a.MAX_TOTAL = 256 << 20")
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("memtrack: "), r.stderr[-2000:]
    assert "more than 256 MiB of" in r.stderr, r.stderr


def test_gzip_member_declaring_past_the_cap_is_refused_on_its_header(tmp_path, monkeypatch):
    """A member whose declared size the rest of the file can hold, past the decompression
    cap: refused when its header is read, not after inflating the cap's worth."""
    monkeypatch.setattr(archive_mod, "MAX_STREAM", 16 << 20)
    path = tmp_path / "bomb.tgz"
    with tarfile.open(path, "w:gz", compresslevel=9) as tf:
        add(tf, "proc/1/comm", b"x\n")
        ti = tarfile.TarInfo("proc/1/smaps")
        ti.size = 64 << 20
        tf.addfile(ti, io.BytesIO(bytes(ti.size)))
    with pytest.raises(memtrack.errors.SourceError, match=r"a member declares 67108864 bytes"):
        ArchiveSource(str(path))


def test_kept_maps_is_only_the_shared_buffer_lines(tmp_path):
    """What an archive keeps of a maps: its shared-buffer lines, each range once."""
    other = b"55d0c0000000-55d0c0001000 r--p 00000000 08:01 77 /usr/bin/app\n"
    dup = b"7f0000000000-7f0000009000 rw-s 00000000 00:01 4243 /memfd:other (deleted)\n"
    path = capture(tmp_path / "one.tgz", lambda pid: (other + LINE) * 1000 + dup, pids=[100])
    src = ArchiveSource(path)
    assert src.read("proc/100/maps") == LINE
    assert any("1000 duplicate maps lines ignored" in p and "100" in p for p in src.problems)


def test_filter_is_the_same_whatever_the_chunks():
    """SharedFilter fed in random pieces keeps exactly the shared-buffer lines of the whole
    text, in order, first of each start address, and counts the rest as duplicates."""
    from memtrack.readers.maps import SharedFilter, filter_shared
    rng = random.Random(15)
    lines = []
    for i in range(3000):
        a = 0x7f0000000000 + rng.randrange(500) * 0x1000
        kind = rng.choice([b"rw-s", b"r--p", b"rw-s", b"r-xs"])
        path = rng.choice([b"/memfd:a (deleted)", b"/dev/shm/x", b"/usr/lib/x.so", b"/dev/zero (deleted)"])
        lines.append(b"%x-%x %s 00000000 00:01 %d %s\n" % (a, a + 0x1000, kind, 10 + i % 7, path))
    text = b"".join(lines)
    want, seen, dups = [], set(), 0
    for m in parse_shared(text):
        if m[0] in seen:
            dups += 1
            continue
        seen.add(m[0])
        want.append(m)
    for _ in range(20):
        f = SharedFilter()
        pos = 0
        while pos < len(text):
            step = rng.choice([1, 7, 100, 4096, 70000])
            f.feed(text[pos:pos + step])
            pos += step
        kept = f.finish()
        assert list(parse_shared(kept)) == want
        assert f.dups == dups and f.kept == len(want)
    assert filter_shared(text).text == kept


def test_json_snapshot_past_the_memory_cap_is_refused_in_one_line(tmp_path):
    """A JSON snapshot becomes about 8.5 times its size in objects: one over 96 MiB would
    take the process past 1 GiB, so it is refused before it is read (a sparse file here)."""
    from memtrack.sources.snapshot_file import MAX_SNAPSHOT
    path = tmp_path / "big.json"
    with open(path, "wb") as f:
        f.write(b'{"schema": 1, ')
        f.truncate(MAX_SNAPSHOT + 1)
    r = run_limited("--root", str(path), "--json")
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "a JSON snapshot over 96 MiB, refusing" in r.stderr, r.stderr
