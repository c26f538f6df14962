"""The POSIX sh capture script, run for real with dash and busybox sh against live holders:
what it captures must analyze to the numbers of memtrack's own live scan."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

import memtrack
from memtrack import remote
from memtrack.errors import SourceError
from memtrack.procfs import scan

from helpers.nobody import NOBODY
from remote_util import SCRIPT, SRC, Holders, android_path, assert_rich, busybox_path, numbers



needs_root = pytest.mark.requires_root("map_files sizes need root")


def run_script(cmd, args, env=None):
    p = subprocess.run(cmd + [SCRIPT] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    assert p.stderr == b"", p.stderr.decode()
    return p.stdout


def shell(tmp_path, name):
    """(command, env) running the script on dash + this machine's tools, busybox alone, or
    Android's mksh + toybox."""
    if name == "dash":
        return ["dash"], None
    d = busybox_path(tmp_path) if name == "busybox" else android_path(tmp_path)
    return [os.path.join(d, "sh")], dict(os.environ, PATH=d)


@needs_root
@pytest.mark.parametrize("fmt", ["stream", "tar"])
@pytest.mark.parametrize("sh", ["dash", "busybox", "mksh+toybox"])
def test_script_capture_matches_live_scan(holders, tmp_path, sh, fmt):
    cmd, env = shell(tmp_path, sh)
    live = memtrack.scan(None, pids=holders.pids)
    out = run_script(cmd, ["-f", fmt, "-p", ",".join(map(str, holders.pids))], env)
    if fmt == "tar":
        assert out[257:262] == b"ustar"
    else:
        assert out.startswith(b"memtrack-stream 1 --mt-")
    tree = remote.decode(out)
    assert tree.format == fmt
    path = str(tmp_path / "cap.tar.gz")
    remote.write_tree(tree, path, "test")
    from_archive = memtrack.scan(path, pids=holders.pids)
    want = numbers(live, holders.pids)
    assert_rich(want[0], holders.pids)
    assert numbers(from_archive, holders.pids) == want
    for pid in holders.pids:            # the sidecars the sizes came from
        assert f"proc/{pid}/fdstat" in tree.files and f"proc/{pid}/mapstat" in tree.files
    meta = tree.meta()
    assert meta["format"] == fmt and meta["stat"] is True and meta["scope"] == "pids"
    assert meta["pids"] == sorted(holders.pids)


@needs_root
def test_whole_machine_capture_with_busybox(holders, tmp_path):
    """No -p: every process, as `memtrack --adb` does; the holders still agree."""
    bb = busybox_path(tmp_path)
    out = run_script([os.path.join(bb, "sh")], ["-f", "stream"], dict(os.environ, PATH=bb))
    snap = scan(remote.TreeSource(remote.decode(out), "t"))
    assert snap.scope == "all"
    assert len(snap.processes) >= 2
    live = memtrack.scan(None, pids=holders.pids)
    assert numbers(snap.restrict(pids=set(holders.pids)), holders.pids)[0] == numbers(live, holders.pids)[0]


@pytest.mark.parametrize("sh", ["dash", "busybox", "mksh+toybox"])
def test_fdstat_dev_matches_os_stat(holders, tmp_path, sh):
    """dev as MM:mm hex from GNU, busybox and toybox stat's %d/%D, checked against os.stat."""
    from memtrack.sources.base import fmt_dev, parse_statfile
    cmd, env = shell(tmp_path, sh)
    out = run_script(cmd, ["-f", "stream", "-p", str(holders.pid)], env)
    tree = remote.decode(out)
    st = parse_statfile(tree.files[f"proc/{holders.pid}/fdstat"].decode(), False)
    assert len(st) >= 4
    for fd, (dev, ino, size, mode) in st.items():
        real = os.stat(f"/proc/{holders.pid}/fd/{fd}")
        assert (dev, ino, size, mode) == (fmt_dev(real.st_dev), real.st_ino, real.st_size, real.st_mode)


def test_without_stat_the_capture_still_reads(holders, tmp_path):
    """Only sh, cat, ls, readlink: the stream format, no sidecars, sizes from the kernel tables."""
    bb = busybox_path(tmp_path, applets=("sh", "cat", "ls", "readlink"))
    out = run_script([os.path.join(bb, "sh")], ["-p", ",".join(map(str, holders.pids))],
                     dict(os.environ, PATH=bb))
    tree = remote.decode(out)
    assert tree.format == "stream"
    meta = tree.meta()
    assert meta["stat"] is False and "taken_at" not in meta       # no date either
    assert not [k for k in tree.files if k.endswith(("fdstat", "mapstat"))]
    snap = scan(remote.TreeSource(tree, "t"), pids=holders.pids)
    live = memtrack.scan(None, pids=holders.pids)
    ids = lambda s: sorted((b.kind, b.inode, b.holders) for b in s.buffers if b.holders)
    assert ids(snap) == ids(live) and len(ids(live)) == 6
    sysv = [b for b in snap.buffers if b.kind == "sysv" and b.holders]
    assert [b.size for b in sysv] == [5 << 20]


def test_names_and_bytes_survive_the_stream(tmp_path):
    """Buffer names with spaces, backslashes, a newline and the boundary's own prefix; a
    cmdline with NULs and bytes that are not UTF-8: all arrive byte for byte."""
    tag = "a b\\n\\\\c\n--mt- x"
    h = Holders(tag)
    try:
        for sh in ("dash", "busybox", "mksh+toybox"):
            cmd, env = shell(tmp_path, sh)
            out = run_script(cmd, ["-f", "stream", "-p", str(h.pid)], env)
            tree = remote.decode(out)
            base = f"proc/{h.pid}"
            with open(f"/proc/{h.pid}/cmdline", "rb") as f:
                assert tree.files[base + "/cmdline"] == f.read()
            with open(f"/proc/{h.pid}/maps", "rb") as f:
                assert tree.files[base + "/maps"] == f.read()
            links = {k.rsplit("/", 1)[1]: v for k, v in tree.links.items() if k.startswith(base + "/fd/")}
            assert links, "no buffer fd links captured"
            for fd, target in links.items():
                assert target == os.readlink(f"/proc/{h.pid}/fd/{fd}")
            assert any(tag in t for t in links.values())
            snap = scan(remote.TreeSource(tree, "t"), pids=[h.pid])
            assert ("pool " + tag) in {b.name for b in snap.buffers}
    finally:
        h.close()


@pytest.mark.requires_root("needs root to drop to another user")
def test_non_root_capture_counts_what_it_could_not_read(holders, tmp_path):
    """As nobody: root's holders are denied; meta.json says so and the scan reports them
    skipped, so the capture does not pass for a complete one."""
    import shutil
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    with open(SCRIPT, "rb") as f:
        script = f.read()
    p = subprocess.run(NOBODY + ["dash", "-s", "--", "-p", ",".join(map(str, holders.pids))],
                       input=script, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/", timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    tree = remote.decode(p.stdout)
    meta = tree.meta()
    assert meta["uid"] == 65534
    assert sorted(meta["skipped"]["denied"]) == sorted(holders.pids)
    assert not [k for k in tree.files if k.startswith(f"proc/{holders.pid}/")]
    path = str(tmp_path / "nobody.tar.gz")
    remote.write_tree(tree, path, "test")
    snap = memtrack.scan(path, pids=holders.pids)
    assert sorted(snap.skipped.denied) == sorted(holders.pids)
    assert not snap.complete


def test_script_parses_in_every_shell(tmp_path):
    for sh in ("dash", "busybox", "mksh+toybox"):
        cmd = shell(tmp_path, sh)[0] + ["-n"]
        p = subprocess.run(cmd + [SCRIPT], capture_output=True)
        assert p.returncode == 0, p.stderr


def test_script_rejects_bad_arguments():
    for args, msg in ((["-f", "zip"], b"-f must be"), (["-p", "1;rm"], b"comma-separated"),
                      (["--nope"], b"unknown argument"), (["-p"], b"needs a value")):
        p = subprocess.run(["dash", SCRIPT] + args, capture_output=True)
        assert p.returncode == 2 and msg in p.stderr and p.stdout == b"", (args, p)


def test_print_script_is_the_shipped_script():
    p = subprocess.run([sys.executable, "-m", "memtrack", "capture", "--print-script"],
                       capture_output=True, env=dict(os.environ, PYTHONPATH=SRC))
    assert p.returncode == 0
    with open(SCRIPT, "rb") as f:
        assert p.stdout == f.read()


def test_script_output_of_old_kernel_layout_is_a_capture(tmp_path):
    """A saved stream file is a valid --root source, like an archive."""
    out = run_script(["dash"], ["-f", "stream", "-p", str(os.getpid())])
    path = tmp_path / "cap.stream"
    path.write_bytes(out)
    p = subprocess.run([sys.executable, "-m", "memtrack", "--root", str(path), "--json"],
                       capture_output=True, env=dict(os.environ, PYTHONPATH=SRC))
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["source"] == f"archive:{path}"


@pytest.mark.parametrize("data,msg", [
    (b"hello\n", "not a memtrack capture"),
    (b"memtrack-stream 1 --mt-0123456789\n\n--mt-0123456789 F proc/1/comm\nx\n", "truncated"),
    (b"memtrack-stream 1 --mt-0123456789\n\n--mt-0123456789 F ../../etc/passwd\nx\n--mt-0123456789 E 0\n", "unsafe path"),
    (b"memtrack-stream 1 --mt-0123456789\n\n--mt-0123456789 Q proc\nx\n--mt-0123456789 E 0\n", "unknown type"),
    (b"memtrack-stream 1 --mt-0123456789\njunk\n--mt-0123456789 E 0\n", "before the first record"),
    (b"memtrack-stream 2 --mt-0123456789\n", "bad first line"),
])
def test_bad_streams_are_refused(data, msg):
    with pytest.raises(SourceError, match=msg):
        remote.decode(data)


def test_stream_drop_records():
    b = b"--mt-0123456789"
    data = (b"memtrack-stream 1 " + b + b"\n"
            b"\n" + b + b" D proc/5/fd\n"
            b"\n" + b + b" F proc/5/maps\npartial"
            b"\n" + b + b" X proc/5/maps\n"
            b"\n" + b + b" F proc/6/status\nName:\tx\n"
            b"\n" + b + b" L proc/6/fd/3\n/memfd:a b (deleted)"
            b"\n" + b + b" Z proc/6\n"
            b"\n" + b + b" F proc/7/comm\nno newline at end"
            b"\n" + b + b" E 1\n")
    t = remote.parse_stream(data)
    assert t.files == {"proc/7/comm": b"no newline at end"}
    assert t.links == {} and t.dirs == {"proc/5/fd"}


def test_script_captures_a_real_dmabuf_where_cuda_exists(tmp_path):
    """Where a GPU is: a CUDA dma-buf (nv_dmabuf) through the script, fdinfo and all."""
    from helpers.cuda import cuda_dmabuf_holder
    with cuda_dmabuf_holder() as (holder, _fd):
        pids = [holder.pid]
        live = memtrack.scan(None, pids=pids)
        tree = remote.decode(run_script(["dash"], ["-f", "stream", "-p", str(holder.pid)]))
        snap = scan(remote.TreeSource(tree, "t"), pids=pids)
        assert numbers(snap, pids) == numbers(live, pids)
        bufs = [b for b in snap.buffers if b.kind == "dmabuf" and b.holders == (holder.pid,)]
        assert [(b.size, b.exporter) for b in bufs] == [(2 << 20, "nv_dmabuf")]


@needs_root
@pytest.mark.parametrize("sh", ["dash", "mksh+toybox"])
def test_smaps_travel_with_the_capture(holders, tmp_path, sh):
    """--smaps: the script sends smaps of processes mapping buffers; in_rss agrees with live."""
    from memtrack.account import account
    cmd, env = shell(tmp_path, sh)
    pids = holders.pids
    out = run_script(cmd, ["--smaps", "-p", ",".join(map(str, pids))], env)
    tree = remote.decode(out)
    assert all(f"proc/{pid}/smaps" in tree.files for pid in pids)
    snap = scan(remote.TreeSource(tree, "t"), pids=pids, smaps=True)
    live = memtrack.scan(None, pids=pids, smaps=True)
    got = {pid: account(snap).processes[pid].total.in_rss for pid in pids}
    assert got == {pid: account(live).processes[pid].total.in_rss for pid in pids}
    assert got[holders.pid] >= 16 << 10             # the pages the holder wrote


@pytest.mark.requires_root("needs root to drop to another user")
def test_non_root_capture_of_own_processes_matches_non_root_scan(tmp_path):
    """The Android shell-user case: as nobody, of nobody's own processes. Map-only sizes are
    unknown to both (map_files needs CAP_SYS_ADMIN); everything else agrees."""
    import shutil
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    drop = NOBODY
    probe = subprocess.run(drop + [sys.executable, "-c", "import memtrack"], capture_output=True,
                           env=dict(os.environ, PYTHONPATH=SRC), cwd="/")
    if probe.returncode != 0:
        pytest.skip("nobody cannot run this interpreter or read src/: " + probe.stderr.decode()[-200:])
    here = os.path.dirname(os.path.abspath(__file__))
    h = subprocess.Popen(drop + [sys.executable, os.path.join(here, "helpers", "holder.py")],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
    try:
        pids = [int(x) for x in h.stdout.readline().split()[:2]]
        code = ("import json, memtrack; from remote_util import numbers; "
                f"print(json.dumps(numbers(memtrack.scan(None, pids={pids}), {pids})))")
        r = subprocess.run(drop + [sys.executable, "-c", code], capture_output=True, text=True, cwd="/",
                           env=dict(os.environ, PYTHONPATH=f"{SRC}:{here}"))
        assert r.returncode == 0, r.stderr
        with open(SCRIPT, "rb") as f:
            p = subprocess.run(drop + ["dash", "-s", "--", "-p", ",".join(map(str, pids))], stdin=f,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/", timeout=60)
        assert p.returncode == 0, p.stderr
        tree = remote.decode(p.stdout)
        assert not [k for k in tree.files if k.endswith("mapstat")]
        got = numbers(scan(remote.TreeSource(tree, "t"), pids=pids), pids)
        assert json.loads(json.dumps(got)) == json.loads(r.stdout)
        total = got[0][pids[0]][0]
        assert total["unknown_size"] == 2           # the map-only memfd and the shared anonymous map
        assert total["rss"] == (3 + 7 + 2 + 5) << 20
    finally:
        h.stdin.write("\n")
        h.stdin.close()
        h.wait()


def test_a_cut_tar_is_refused(tmp_path):
    """The tar is followed by the script's end line; without it (cut at a member boundary,
    which tar readers would take for a whole archive) the capture is refused."""
    out = run_script(["dash"], ["-f", "tar", "-p", str(os.getpid())])
    assert out.endswith(b"\nmemtrack-tar-end 1\n")
    assert remote.decode(out, complete=True).format == "tar"
    end = out.rindex(b"\nmemtrack-tar-end")
    cut = out[:512 * 3]                                # whole blocks: a clean member boundary
    for bad in (out[:end], cut):
        with pytest.raises(SourceError, match="truncated"):
            remote.decode(bad, complete=True)


@pytest.mark.requires_root("needs root for a mount namespace")
def test_boundary_without_the_kernel_uuid(tmp_path):
    """/proc/sys/kernel/random/uuid hidden (bind-mounted /dev/null in a private mount
    namespace): the script makes its boundary from what the shell has, and still works."""
    import shutil
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                        "mount --bind /dev/null /proc/sys/kernel/random/uuid && exec dash \"$0\" -f stream -p $1",
                        SCRIPT, str(os.getpid())], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    if p.returncode != 0 and b"mount" in p.stderr:
        pytest.skip("cannot bind-mount here: " + p.stderr.decode()[-200:])
    assert p.returncode == 0, p.stderr
    first = p.stdout.split(b"\n", 1)[0]
    assert re.fullmatch(rb"memtrack-stream 1 --mt-\d+-0-0-0-[\d.]+", first), first
    tree = remote.decode(p.stdout)
    assert f"proc/{os.getpid()}/status" in tree.files
