"""The BPF backend: record parsing (everywhere), and on a live machine where BPF can run,
the same snapshot as the procfs backend on every way of holding a buffer."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from memtrack import bpf as mbpf
from memtrack.bpf import access, records as R
from memtrack.bpf.reads import Pending, resolved
from memtrack.bpf import stamp
from memtrack.observe import FdRef, MapRef
from memtrack.json_out import to_dict, to_json
from memtrack.json_in import from_dict

from helpers.nobody import NOBODY
from helpers.snapshots import comparable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SRC = os.path.join(ROOT, "src")

_scanner = None


def _why_not():
    """Why the bpf backend cannot run here (rights, libbpf, BTF, the kernel refusing the
    object), or None."""
    global _scanner
    why = mbpf.unavailable()
    if why:
        return why
    try:
        _scanner = mbpf.BpfScanner(reuse=False)
    except mbpf.BpfUnavailable as exc:
        return str(exc)
    return None


WHY_NOT = _why_not()


def scanner():
    """One loaded scanner for the module (loading is the slow part), or a skip."""
    if WHY_NOT:
        pytest.skip(f"bpf backend cannot run here: {WHY_NOT}")
    return _scanner


def cli(*args, env=None, preexec=None):
    e = dict(os.environ, PYTHONPATH=SRC)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "memtrack", *args], capture_output=True,
                          text=True, env=e, timeout=120)


# -- records -> observations (no kernel needed) --------------------------------------------
def fd_rec(tgid, fd, ino=0, size=0, dev=0, flags=0, count=0, name=b"", exp=b"", blocks=0):
    return R.FD_REC.pack(tgid, fd, ino, size, dev, flags, count, name, exp, blocks)


def vma_rec(tgid, flags, start, end, pgoff=0, ino=0, size=0, dev=0, name=b"", blocks=0):
    return R.VMA_REC.pack(tgid, flags, start, end, pgoff, ino, size, dev, 0, name, blocks)


def test_fmt_dev_decodes_the_kernel_encoding():
    assert R.fmt_dev(1) == "00:01"
    assert R.fmt_dev(259 << 20 | 3) == "103:03"
    assert R.fmt_dev(0x1b) == "00:1b"


def test_file_records_become_the_procfs_observations():
    links = {"/proc/7/fd/9": "/dev/shm/pool (deleted)", "/proc/7/fd/10": "/tmp/not-a-buffer"}
    data = b"".join([
        fd_rec(7, 1000, ino=555, flags=R.R_TASK, name=b"comm"),
        fd_rec(7, 3, 11, 4096, 1, R.R_PSEUDO, 0, b"memfd:wl_shm pool", blocks=8),
        fd_rec(7, 4, 12, 8192, 1, R.R_PSEUDO, 0, b"dev/zero"),
        fd_rec(7, 5, 13, 100, 1, R.R_PSEUDO, 0, b"SYSV00000000"),        # not an fd kind
        fd_rec(7, 6, 2, 2 << 20, 0, R.R_DMABUF | R.R_PSEUDO | R.R_NAMED, 3, b" cam ", b"nv_dmabuf"),
        fd_rec(7, 7, 3, 4096, 0, R.R_DMABUF | R.R_PSEUDO, 1, b"", b"system"),
        fd_rec(7, 8, 0, 0, 226 << 20 | 128, R.R_DRM),
        fd_rec(7, 9, 14, 65536, 0x1b, 0, 0, b"pool", blocks=16),         # real path: readlink
        fd_rec(7, 10, 15, 1, 0x1b, 0, 0, b"x"),
        fd_rec(8, 3, 16, 1, 1, R.R_PSEUDO, 0, b"memfd:other"),           # filtered out by pid
    ])
    tasks, fds, drm = {}, [], []
    R.parse_files(data, tasks, fds, drm, want={7}, readlink=links.get)
    assert tasks[7].comm == "comm" and tasks[7].uid == 1000 and tasks[7].start_time == 555
    assert drm == [(7, 8, 226 << 20 | 128)]
    assert fds == [
        FdRef(7, 3, "memfd", "00:01", 11, 4096, "wl_shm pool", None, None, "stat", 4096),
        FdRef(7, 4, "shmem", "00:01", 12, 8192, None, None, None, "stat", 0),
        FdRef(7, 6, "dmabuf", "dmabuf", 2, 2 << 20, "cam", "nv_dmabuf", 3, "fdinfo"),
        FdRef(7, 7, "dmabuf", "dmabuf", 3, 4096, None, "system", 1, "fdinfo"),
        FdRef(7, 9, "shm", "00:1b", 14, 65536, "pool", None, None, "stat", 8192),
    ]


def test_truncated_names_are_read_from_proc():
    long = "memfd:" + "n" * 100
    data = fd_rec(5, 3, 9, 10, 1, R.R_PSEUDO | R.R_TRUNC, 0, long[:63].encode())
    fds = []
    R.parse_files(data, {}, fds, [], readlink={"/proc/5/fd/3": "/" + long + " (deleted)"}.get)
    assert fds[0].name == "n" * 100
    fds = []
    R.parse_files(data, {}, fds, [], readlink=lambda p: None)           # closed meanwhile
    assert fds == []


def test_vma_records_become_the_procfs_observations():
    page = R.PAGE_SIZE
    data = b"".join([
        vma_rec(7, R.R_TASK, 555, 1000, name=b"comm"),
        vma_rec(7, R.R_PSEUDO, 0x1000, 0x3000, 1, 11, 8192, 1, b"memfd:a", blocks=16),
        vma_rec(7, R.R_PSEUDO, 0x5000, 0x6000, 0, 3, 4096, 1, b"SYSV0000abcd"),
        vma_rec(7, R.R_DMABUF | R.R_PSEUDO | R.R_PFNMAP, 0x7000, 0x9000, 0, 4, 1 << 20, 0, b""),
        vma_rec(7, 0, 0xa000, 0xb000, 0, 20, 4096, 0x1b, b"f"),
        vma_rec(7, R.R_PSEUDO, 0xc000, 0xd000, 0, 21, 4096, 1, b"i915"),  # GEM shmem: not a kind
    ])
    tasks, maps, pfn = {}, [], set()
    R.parse_vmas(data, tasks, maps, pfn,
                 readlink={"/proc/7/map_files/a000-b000": "/dev/shm/f"}.get)
    assert tasks[7].uid == 1000
    assert pfn == {(7, 0x7000)}
    assert maps == [
        MapRef(7, 0x1000, 0x3000, page, "memfd", "00:01", 11, "a", 8192, 8192),
        MapRef(7, 0x5000, 0x6000, 0, "sysv", "sysv", 3, "0x0000abcd", None),
        MapRef(7, 0x7000, 0x9000, 0, "dmabuf", "dmabuf", 4, None, 1 << 20),
        MapRef(7, 0xa000, 0xb000, 0, "shm", "00:1b", 20, "f", 4096, 0),
    ]


def test_dmabuf_records_become_the_kernel_table():
    data = R.DMABUF_REC.pack(2, 2 << 20, 4, R.R_NAMED, 0, b"nv_dmabuf", b"camera-preview")
    data += R.DMABUF_REC.pack(3, 4096, 1, 0, 0, b"system", b"")
    bufs = R.parse_dmabufs(data)
    assert [(b.inode, b.size, b.exporter, b.name, b.count) for b in bufs] == [
        (2, 2 << 20, "nv_dmabuf", "camera-preview", 4), (3, 4096, "system", None, 1)]


# -- the shipped object --------------------------------------------------------------------
def test_shipped_object_is_built_from_the_current_source():
    assert stamp.problems() == []


@pytest.mark.skipif(not (shutil.which("clang") and shutil.which("llvm-strip")
                         and os.path.exists("/usr/include/bpf/bpf_helpers.h")),
                    reason="needs clang, llvm-strip and libbpf headers (Debian: clang llvm libbpf-dev)")
def test_rebuilt_object_compiles_and_loads(tmp_path):
    src = os.path.join(SRC, "memtrack", "bpf")
    out = tmp_path / "memtrack.bpf.o"
    subprocess.run(["clang", "-O2", "-g", "-target", "bpf", "-Wall", "-Werror", "-c",
                    os.path.join(src, "memtrack.bpf.c"), "-o", str(out)], check=True)
    subprocess.run(["llvm-strip", "-g", str(out)], check=True)
    if WHY_NOT:
        pytest.skip(f"built; cannot load here: {WHY_NOT}")
    with mbpf.BpfScanner(obj=str(out)) as s:
        snap = s.scan(pids=[os.getpid()])
    assert snap.backend == "bpf"


# -- choosing the backend ------------------------------------------------------------------
def test_bpf_with_root_is_a_one_line_error(tmp_path):
    r = cli("--backend", "bpf", "--root", str(tmp_path))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "--backend bpf" in r.stderr
    assert "Traceback" not in r.stderr


DROP = NOBODY + ["--inh-caps=-all", "--bounding-set=-all"]


@pytest.fixture
def nobody_pythonpath(nobody):
    """A copy of the package the nobody user can read (the checkout may be under /root)."""
    return nobody.pkg_for_this_interpreter()

def test_unprivileged_callers_never_get_bpf(nobody_pythonpath):
    env = dict(os.environ, PYTHONPATH=nobody_pythonpath)
    r = subprocess.run(DROP + [sys.executable, "-m", "memtrack", "--backend", "bpf"],
                       capture_output=True, text=True, env=env, timeout=120, cwd="/")
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("memtrack: --backend bpf: needs root"), r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    r = subprocess.run(DROP + [sys.executable, "-m", "memtrack", "--json", "-q"],
                       capture_output=True, text=True, env=env, timeout=120, cwd="/")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["backend"] == "procfs"
    assert doc["backend_reason"].startswith("auto: bpf unavailable: needs root")


@pytest.mark.requires_root("needs root and unshare")
def test_never_inside_a_pid_namespace():
    """Inside `unshare --pid --mount-proc` the iterators would report host pids that /proc
    there does not have (NSpid reads like the host's there: the namespace inode tells)."""
    if not shutil.which("unshare"):
        pytest.skip("needs root and unshare")
    env = dict(os.environ, PYTHONPATH=SRC)
    base = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "memtrack"]
    r = subprocess.run(base + ["--backend", "bpf"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "pid namespace" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = subprocess.run(base + ["--json", "-q"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["backend"] == "procfs"


def test_auto_records_its_choice():
    r = cli("--json", "-q", "-p", str(os.getpid()))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    if WHY_NOT is None:
        assert doc["backend"] == "bpf" and doc["backend_reason"].startswith("auto:")
    else:
        assert doc["backend"] == "procfs" and WHY_NOT in doc["backend_reason"]
    r = cli("--json", "-q", "--backend", "procfs", "-p", str(os.getpid()))
    doc = json.loads(r.stdout)
    assert doc["backend"] == "procfs" and doc["backend_reason"] == "requested (--backend procfs)"


# -- live: both backends, one scenario -----------------------------------------------------
@pytest.fixture(scope="module")
def scenario():
    p = subprocess.Popen([sys.executable, os.path.join(HERE, "bpf_scenario.py")],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        line = p.stdout.readline().split()
        assert line and line[0] == "ready", "scenario did not start"
        yield [int(x) for x in line[1:]]
    finally:
        p.stdin.close()
        try:
            os.killpg(p.pid, 9)
        except ProcessLookupError:
            pass
        p.wait()


def failing_read(real, failing: str):
    """BpfObject.read, but reading iterator `failing` raises EIO."""
    def read(name, *args):
        if name == failing:
            raise OSError(5, "injected")
        return real(name, *args)
    return read


def procfs_scan(pids=None, smaps=False):
    from memtrack.procfs import scan
    from memtrack.sources.live import LiveSource
    return scan(LiveSource(), pids=pids, smaps=smaps)


def test_scenario_holds_what_it_should(scenario):
    snap = scanner().scan(pids=scenario)
    kinds = sorted({b.kind for b in snap.buffers})
    assert kinds == ["memfd", "shm", "shmem", "sysv"]
    names = {b.name for b in snap.buffers}
    assert {"fd only with spaces", "mapped", "map-only", "L" * 90, "M" * 80, "passed"} <= names
    parent, child, receiver = scenario
    passed = [b for b in snap.buffers if b.name == "passed"][0]
    assert passed.holders == tuple(sorted(scenario)) and passed.size == 8 * R.PAGE_SIZE
    maponly = [b for b in snap.buffers if b.name == "map-only"][0]
    assert maponly.fd_refs == 0 and maponly.size == 2 * R.PAGE_SIZE


def test_same_snapshot_as_procfs(scenario):
    s = scanner()
    full_a = procfs_scan()
    full_b = s.scan()
    a, b = comparable(full_a, scenario), comparable(full_b, scenario)
    assert len(a["buffers"]) >= 10
    assert b == a
    # the processes /proc will not let this caller read (an LSM, another namespace's init):
    # the iterators see them, the bpf backend must still count them as denied, not show them
    assert set(full_b.skipped.denied) == set(full_a.skipped.denied)
    assert not set(full_b.skipped.denied) & {p.pid for p in full_b.processes}


def test_same_snapshot_as_procfs_for_some_pids(scenario):
    a = procfs_scan(pids=scenario)
    b = scanner().scan(pids=scenario)
    assert a.scope == b.scope == "pids"
    assert comparable(b, scenario) == comparable(a, scenario)


def test_same_in_rss_with_smaps(scenario):
    a = comparable(procfs_scan(pids=scenario, smaps=True), scenario)
    b = comparable(scanner().scan(pids=scenario, smaps=True), scenario)
    assert any(r.get("in_rss") for p in b["processes"] for r in p["refs"])
    assert b == a


def test_cli_json_same_as_procfs(scenario):
    if WHY_NOT:
        pytest.skip(f"bpf backend cannot run here: {WHY_NOT}")
    pids = ",".join(map(str, scenario))
    docs = []
    # bpf twice: with the object loaded beside the imports (memtrack._preload), and after
    for backend, env in (("procfs", None), ("bpf", None), ("bpf", {"MEMTRACK_PRELOAD": "0"})):
        r = cli("--json", "-q", "--backend", backend, "-p", pids, env=env)
        assert r.returncode == 0, r.stderr
        d = json.loads(r.stdout)
        assert d["backend"] == backend
        docs.append({k: d[k] for k in ("buffers", "processes", "totals")})
    assert docs[0] == docs[1] == docs[2]


# -- the CLI's early load (memtrack._preload) ---------------------------------------------
@pytest.mark.parametrize("argv,orig,euid,env,want", [
    (["/usr/bin/memtrack"], None, 0, {}, True),                       # ps, the default
    (["/usr/bin/memtrack", "--json", "-q"], None, 0, {}, True),
    (["memtrack", "summary", "--kind", "dmabuf"], None, 0, {}, True),
    (["memtrack", "--backend", "bpf", "dmabuf-dump"], None, 0, {}, True),
    (["memtrack", "top"], None, 0, {}, False),                        # a reused scanner
    (["memtrack", "serve"], None, 0, {}, False),
    (["memtrack", "report", "h.db"], None, 0, {}, False),             # reads files
    (["memtrack", "--root", "/tmp/t"], None, 0, {}, False),
    (["memtrack", "--root=/tmp/t", "summary"], None, 0, {}, False),
    (["memtrack", "--adb", "buffers"], None, 0, {}, False),
    (["memtrack", "--backend", "procfs"], None, 0, {}, False),
    (["memtrack", "--backend=procfs"], None, 0, {}, False),
    (["memtrack", "--help"], None, 0, {}, False),
    (["memtrack", "-h"], None, 0, {}, False),
    # argparse takes unambiguous prefixes of long options: the guess does too
    (["memtrack", "--ro", "/tmp/t"], None, 0, {}, False),
    (["memtrack", "--ss", "board", "buffers"], None, 0, {}, False),
    (["memtrack", "--ad"], None, 0, {}, False),
    (["memtrack", "--he"], None, 0, {}, False),
    (["memtrack", "--vers"], None, 0, {}, False),
    (["memtrack", "ps", "--back", "procfs"], None, 0, {}, False),
    (["memtrack", "--backe=procfs"], None, 0, {}, False),
    (["memtrack", "--back", "bpf"], None, 0, {}, True),
    (["memtrack", "--json", "-q", "-o", "/tmp/x"], None, 0, {}, True),
    (["memtrack"], None, 1000, {}, False),                            # not root
    (["memtrack"], None, 0, {"MEMTRACK_PRELOAD": "0"}, False),
    (["-m"], ["python3", "-m", "memtrack", "buffers"], 0, {}, True),
    (["-m"], ["python3", "-m", "memtrack", "top"], 0, {}, False),
    (["-m"], ["python3", "-m", "memtrack.cli"], 0, {}, False),
    (["-c"], ["python3", "-c", "import memtrack"], 0, {}, False),     # a library user
    (["/usr/bin/pytest"], None, 0, {}, False),
])
def test_the_early_load_is_guessed_from_the_command_line(argv, orig, euid, env, want):
    from memtrack import _preload
    assert _preload.wanted(argv, orig, euid=euid, env=env) is want


def test_a_scanner_takes_the_early_load_once(scenario, monkeypatch):
    from memtrack import _preload
    scanner()                                   # skips where bpf cannot run
    monkeypatch.setattr(sys, "argv", ["memtrack", "--json"])
    monkeypatch.delenv("MEMTRACK_PRELOAD", raising=False)
    monkeypatch.setattr(_preload, "_job", None)
    _preload.early()
    job = _preload._job
    assert job is not None
    with mbpf.BpfScanner(reuse=False) as s:
        assert _preload._job is None and s._obj is job.result[0]
        early = comparable(s.scan(pids=scenario), scenario)
    with mbpf.BpfScanner(reuse=False) as s:     # nothing left to take: loads its own
        assert s._obj is not job.result[0]
        assert comparable(s.scan(pids=scenario), scenario) == early
    assert early == comparable(procfs_scan(pids=scenario), scenario)


def test_an_early_load_made_for_other_parameters_is_closed(scenario, monkeypatch):
    from memtrack import _preload
    scanner()
    monkeypatch.setattr(sys, "argv", ["memtrack"])
    monkeypatch.delenv("MEMTRACK_PRELOAD", raising=False)
    monkeypatch.setattr(_preload, "_job", None)
    _preload.early()
    job = _preload._job
    with mbpf.BpfScanner(reuse=True) as s:      # top's scanner loads more programs
        obj = job.result[0]
        assert s._obj is not obj and obj._obj is None      # the early one, closed
        assert comparable(s.scan(pids=scenario), scenario) == \
            comparable(procfs_scan(pids=scenario), scenario)


def test_a_failed_early_load_leaves_the_scanner_to_report(monkeypatch, tmp_path):
    from memtrack import _preload
    scanner()
    monkeypatch.setattr(sys, "argv", ["memtrack"])
    monkeypatch.delenv("MEMTRACK_PRELOAD", raising=False)
    monkeypatch.setattr(_preload, "_job", None)
    from memtrack import _libbpf
    bad = tmp_path / "bad.bpf.o"
    bad.write_bytes(b"\x7fELF not an object")
    monkeypatch.setattr(_libbpf, "OBJECT", str(bad))
    _preload.early()
    assert _preload._job is not None
    _preload._job.thread.join()
    assert _preload._job.result is None
    with pytest.raises(mbpf.BpfUnavailable, match="cannot open"):
        mbpf.BpfScanner(obj=str(bad), reuse=False)
    assert _preload._job is None


def test_a_reused_scanner_sees_changes(scenario):
    s = scanner()
    first = s.scan(pids=scenario)
    fd = os.memfd_create("appears-later")
    os.ftruncate(fd, 3 * R.PAGE_SIZE)
    try:
        me = os.getpid()
        later = s.scan(pids=scenario + [me])
        mine = [b for b in later.buffers if b.name == "appears-later"]
        assert len(mine) == 1 and mine[0].holders == (me,)
        assert not [b for b in first.buffers if b.name == "appears-later"]
    finally:
        os.close(fd)
    assert not [b for b in s.scan(pids=[os.getpid()]).buffers if b.name == "appears-later"]


def test_cuda_dmabufs_same_with_both_backends():
    """Real dma-bufs (NVIDIA): tests/cuda_dmabuf_compare.py; skipped without CUDA."""
    import ctypes.util
    if not ctypes.util.find_library("cuda"):
        pytest.skip("no CUDA driver (libcuda): the dma-buf comparison needs an NVIDIA GPU")
    r = subprocess.run([sys.executable, os.path.join(HERE, "cuda_dmabuf_compare.py")],
                       capture_output=True, text=True, timeout=300)
    if r.returncode == 77:
        pytest.skip(r.stdout.strip().splitlines()[-1])
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_reused_scanner_never_returns_a_stale_size():
    scanner()
    me = os.getpid()
    fd = os.memfd_create("grows")
    try:
        with mbpf.BpfScanner() as s:           # reuse: the memo is on
            os.ftruncate(fd, R.PAGE_SIZE)
            first = s.scan(pids=[me])
            again = s.scan(pids=[me])
            assert again.buffers == first.buffers
            os.ftruncate(fd, 3 * R.PAGE_SIZE)
            grown = s.scan(pids=[me])
            assert [b.size for b in grown.buffers if b.name == "grows"] == [3 * R.PAGE_SIZE]
    finally:
        os.close(fd)


def test_backend_reason_survives_json():
    from memtrack.model import Snapshot
    snap = Snapshot(backend="bpf", backend_reason="auto: root, libbpf, BTF and the iterators")
    back = from_dict(json.loads(to_json(snap)))
    assert (back.backend, back.backend_reason) == ("bpf", snap.backend_reason)
    assert from_dict(json.loads(to_json(Snapshot()))).backend_reason is None


def test_a_failing_read_falls_back_under_auto(monkeypatch, capsys):
    """auto: a scanner that loads but cannot read gives way to procfs, and says so;
    bpf: a one-line error."""
    from memtrack.backends import scan_source
    from memtrack.sources.live import LiveSource

    class Broken:
        def scan(self, **kw):
            raise mbpf.BpfUnavailable("reading the BPF iterators failed: boom")

        def close(self):
            pass
    monkeypatch.setattr(mbpf, "open_backend", lambda backend, live: (Broken(), "auto: test"))
    snap = scan_source(LiveSource(), "auto", pids=[os.getpid()])
    assert snap.backend == "procfs" and "boom" in snap.backend_reason
    with pytest.raises(mbpf.BpfUnavailable, match="^--backend bpf: reading"):
        scan_source(LiveSource(), "bpf", pids=[os.getpid()])


@pytest.fixture
def many_small_processes():
    """400 processes holding one shared memfd by two fds (bench/load.py): the iterators'
    output spans many read() buffers, with a task's first records at the boundaries."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        from load import Load
    finally:
        sys.path.pop(0)
    with Load(procs=400, per_proc=1) as load:
        yield load.pids


def test_every_task_described_once_across_read_buffers(many_small_processes):
    s = scanner()
    pids = set(many_small_processes)
    files, vmas, _dmabufs, _sysv = s._read()
    vmas = resolved(vmas)
    for records, flag_at in ((R.FD_REC.iter_unpack(files), 5), (R.VMA_REC.iter_unpack(vmas), 1)):
        described, holding = [], set()
        for r in records:
            if r[0] in pids:
                (described.append(r[0]) if r[flag_at] & R.R_TASK else holding.add(r[0]))
        assert holding == pids
        assert sorted(described) == sorted(pids)          # each exactly once
    a = comparable(procfs_scan(pids=pids), pids)
    b = comparable(s.scan(pids=pids), pids)
    assert [(p["pid"], p["comm"], p["uid"]) for p in b["processes"]] == \
        [(p["pid"], p["comm"], p["uid"]) for p in a["processes"]]
    assert b == a


def test_top_record_serve_refresh_with_one_loaded_object(scenario):
    """The long-running views keep the bpf object loaded across refreshes."""
    from memtrack.incremental import BpfRefresher, IncrementalScanner, live_refresher
    assert isinstance(live_refresher("procfs"), IncrementalScanner)
    if WHY_NOT is not None:
        pytest.skip(WHY_NOT)
    r = live_refresher("auto")
    try:
        assert isinstance(r, BpfRefresher)
        scanner = r.scanner
        first = r.refresh()
        second = r.refresh()
        assert r.scanner is scanner and r.fallback is None
        assert first.backend == second.backend == "bpf"
        assert set(scenario) <= {p.pid for p in second.processes}
    finally:
        r.close()


def _same(a, b):
    return a.buffers == b.buffers and a.processes == b.processes and a.skipped == b.skipped


def test_a_reused_scanner_walks_only_the_mappings_that_moved():
    """Reuse re-walks a process's VMAs only when iter/task says its mm moved: after each
    change (map, close leaving the map only, unmap, dup2, exit) the reused scanner's snapshot
    equals a fresh full scan's, with verification off so the mm sequence alone decides."""
    from livekids import Kid
    fresh = scanner()
    with Kid() as a, Kid() as b, mbpf.BpfScanner(verify_every=0) as s:
        pids = [a.pid, b.pid]

        def check(moved):
            """moved: the kids whose VMAs must have been walked again, and only those (other
            processes on the machine may move too)"""
            got = s.scan(pids=pids)
            assert _same(got, fresh.scan(pids=pids))
            if moved is not None:
                assert s.walked is not None and s.reused_vmas > 0
                assert s.walked & set(pids) == set(moved)
            return got

        fa = a.add("pool-a", 4 * R.PAGE_SIZE)
        fb = b.add("pool-b", 2 * R.PAGE_SIZE)
        check(None)
        check([])                           # nothing moved: no walk
        a.map(fa)
        snap = check([a.pid])
        assert [p.refs[0].vmas for p in snap.processes if p.pid == a.pid][0]
        a.close(fa)                         # map-only now: fds moved, the mm did not
        snap = check([])
        ref = [p.refs for p in snap.processes if p.pid == a.pid][0]
        assert len(ref) == 1 and ref[0].fds == () and len(ref[0].vmas) == 1
        b.map(fb)
        b.dup2(fb, 40)
        check([b.pid])
        a.unmap(fa)
        snap = check([a.pid])
        assert a.pid not in {p.pid for p in snap.processes}
        b.stop()
        snap = check([])
        assert b.pid in snap.skipped.vanished
        assert s._rebuilder.partial_builds >= 5          # patched, not built again


def test_a_reused_whole_machine_scan_is_patched_right():
    """The same over the whole machine (no pid list): the reused scanner's view of the kids
    equals a fresh full scan's after each change, from patched snapshots."""
    from livekids import Kid
    fresh = scanner()
    with Kid() as a, Kid() as b, mbpf.BpfScanner(verify_every=0) as s:
        kids = {a.pid, b.pid}

        def check():
            got, want = s.scan().restrict(pids=kids), fresh.scan().restrict(pids=kids)
            assert got.buffers == want.buffers and got.processes == want.processes

        check()
        fa = a.add("whole-a", 4 * R.PAGE_SIZE)
        check()
        fb = b.add("whole-b", R.PAGE_SIZE)
        b.map(fb)
        a.map(fa)
        check()
        a.close(fa)
        b.dup2(fb, 41)
        check()
        a.unmap(fa)
        b.close(fb)
        check()
        assert s._rebuilder.partial_builds >= 4


def test_a_kernel_without_per_process_iterators_walks_everything(monkeypatch):
    from memtrack._libbpf import LibbpfError
    from livekids import Kid
    with Kid() as k, mbpf.BpfScanner(verify_every=0) as s:
        fd = k.add("pool", R.PAGE_SIZE)
        s.scan(pids=[k.pid])

        def refuse(name, pid):
            raise LibbpfError("attach iter task_vma for pid: Invalid argument")
        monkeypatch.setattr(s._obj, "read_pid", refuse)
        k.map(fd)
        snap = s.scan(pids=[k.pid])
        assert snap.processes[0].refs[0].vmas
        assert s._per_pid is False and s.walked is None and s.reused_vmas == 0


def test_records_split_by_process():
    from memtrack.bpf.reads import split_by_tgid as _split_by_tgid
    recs = [fd_rec(5, 3), fd_rec(5, 4), fd_rec(7, 3), fd_rec(9, 3), fd_rec(9, 8)]
    parts = _split_by_tgid(b"".join(recs), R.FD_REC.size)
    assert parts == {5: recs[0] + recs[1], 7: recs[2], 9: recs[3] + recs[4]}
    assert _split_by_tgid(b"", R.FD_REC.size) == {}
    out_of_order = _split_by_tgid(recs[2] + recs[0] + recs[3] + recs[1], R.FD_REC.size)
    assert out_of_order == {7: recs[2], 5: recs[0] + recs[1], 9: recs[3]}


def test_a_reused_scanner_sees_a_renamed_shm_file():
    """The light records stand for a name by its dentry hash: a rename must show, as in a
    fresh scan (a /dev/shm file's path comes from readlink)."""
    scanner()
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    me = os.getpid()
    path = f"/dev/shm/mt-rename-{me}"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, R.PAGE_SIZE)
        with mbpf.BpfScanner(verify_every=0) as s:
            first = s.scan(pids=[me])
            assert [b.name for b in first.buffers if b.kind == "shm"] == [os.path.basename(path)]
            os.rename(path, path + "-moved")
            path += "-moved"
            again = s.scan(pids=[me])
            assert [b.name for b in again.buffers if b.kind == "shm"] == [os.path.basename(path)]
            assert _same(again, scanner().scan(pids=[me]))
    finally:
        os.close(fd)
        os.unlink(path)


def test_verification_bounds_a_stale_map_only_size():
    """A map-only memfd resized through another process moves no mm sequence: a reused
    scanner sees it when its rotating verification reaches the mapping process, within
    verify_every scans (and, with verification off, never: the known limit)."""
    from livekids import Kid
    fresh = scanner()

    def size(snap):
        return [b.size for b in snap.buffers if b.name == "grows-unseen"]

    for every in (0, 3):
        with Kid() as k, mbpf.BpfScanner(verify_every=every) as s:
            fd = k.add("grows-unseen", R.PAGE_SIZE)
            k.map(fd)
            k.close(fd)                                 # map-only now
            first = s.scan(pids=[k.pid])
            assert size(first) == [R.PAGE_SIZE]
            start, end, _ = first.processes[0].refs[0].vmas[0]
            other = os.open(f"/proc/{k.pid}/map_files/{start:x}-{end:x}", os.O_RDWR)
            os.ftruncate(other, 4 * R.PAGE_SIZE)
            os.close(other)
            assert size(fresh.scan(pids=[k.pid])) == [4 * R.PAGE_SIZE]
            seen = [size(s.scan(pids=[k.pid])) for _ in range(3)]
            if every:
                assert [4 * R.PAGE_SIZE] in seen
            else:
                assert seen == [[R.PAGE_SIZE]] * 3


# -- what a reused scanner must not miss (each once seen stale for good) ---------------------
_KID_EXEC = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_long]
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
step = sys.argv[1]
if step == "first":
    fd = os.memfd_create("kept-over-exec", 0)        # no CLOEXEC: it survives the exec
    os.ftruncate(fd, 8192)
    if "map" in sys.argv[2:]:
        libc.mmap(None, 8192, 3, 1, fd, 0)
        os.close(fd)                                   # map-only
print("ready", flush=True)
line = sys.stdin.readline().strip()
if line == "exec":
    os.execv(sys.executable, [sys.executable, "-c", sys.argv[-1], "second", sys.argv[-1]])
if line == "rename":
    libc.prctl(15, b"renamed-kid", 0, 0, 0)           # PR_SET_NAME
    os.setresuid(1000, 1000, 1000)
    print("done", flush=True)
sys.stdin.readline()
"""


def _kid(*args):
    k = subprocess.Popen([sys.executable, "-c", _KID_EXEC, "first", *args, _KID_EXEC],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert k.stdout.readline().strip() == "ready"
    return k


def _told(k, what):
    k.stdin.write(what + "\n")
    k.stdin.flush()


def test_a_reused_scanner_sees_an_exec():
    """An exec keeps the pid, the start time and (without CLOEXEC) the buffer fds: the
    records do not move, but the cmdline does, and the cmdline cache was keyed by start time."""
    fresh = scanner()
    k = _kid("fd")
    try:
        with mbpf.BpfScanner(verify_every=0) as s:
            before = s.scan(pids=[k.pid])
            assert "first" in before.processes[0].cmdline
            _told(k, "exec")
            assert k.stdout.readline().strip() == "ready"
            for _ in range(2):
                got = s.scan(pids=[k.pid])
                assert "second" in got.processes[0].cmdline
                assert _same(got, fresh.scan(pids=[k.pid]))
    finally:
        k.kill()
        k.wait()


def test_a_reused_scanner_sees_a_map_only_holder_renamed_and_setuid():
    """A process that only maps a buffer is described by its VMA walk's task record; a new
    comm (PR_SET_NAME) or uid moves no mm sequence, but must show (verification off)."""
    fresh = scanner()
    k = _kid("map")
    try:
        with mbpf.BpfScanner(verify_every=0) as s:
            first = s.scan(pids=[k.pid])
            assert first.processes[0].uid == 0 and first.processes[0].refs[0].fds == ()
            _told(k, "rename")
            assert k.stdout.readline().strip() == "done"
            got = s.scan(pids=[k.pid])
            assert (got.processes[0].comm, got.processes[0].uid) == ("renamed-kid", 1000)
            assert _same(got, fresh.scan(pids=[k.pid]))
    finally:
        k.kill()
        k.wait()


def test_a_reused_scanner_sees_a_shm_directory_renamed():
    """A /dev/shm file's name is its link: renaming its directory moves no record and no
    dentry of the file, yet the link reads otherwise."""
    scanner()
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    me = os.getpid()
    d = f"/dev/shm/mt-dir-{me}"
    os.mkdir(d)
    fd = os.open(f"{d}/buf", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, R.PAGE_SIZE)
        with mbpf.BpfScanner(verify_every=0) as s:
            assert [b.name for b in s.scan(pids=[me]).buffers if b.kind == "shm"] == [f"mt-dir-{me}/buf"]
            os.rename(d, d + "-moved")
            d += "-moved"
            got = s.scan(pids=[me])
            assert [b.name for b in got.buffers if b.kind == "shm"] == [f"mt-dir-{me}-moved/buf"]
            assert _same(got, scanner().scan(pids=[me]))
    finally:
        os.close(fd)
        os.unlink(f"{d}/buf")
        os.rmdir(d)


def test_a_change_undone_across_the_sum_read_is_not_kept():
    """task_sum is read before a process's records: a buffer opened between the two reads
    and closed after leaves the process's sum as it was. The records of that passing state
    must not be kept by later scans (here the open is timed into that window by a hook)."""
    from livekids import Kid
    fresh = scanner()
    with Kid() as k, mbpf.BpfScanner(verify_every=0) as s:
        k.add("steady", R.PAGE_SIZE)
        s.scan(pids=[k.pid])
        k.add("moved", R.PAGE_SIZE)                 # the sum moves: the records are read
        real, passing = s._obj.read_pid, []

        def read_pid(name, pid):
            if name == "task_file" and pid == k.pid and not passing:
                passing.append(k.add("passing", 1 << 20))
            return real(name, pid)
        s._obj.read_pid = read_pid
        assert "passing" in {b.name for b in s.scan(pids=[k.pid]).buffers}
        s._obj.read_pid = real
        k.close(passing[0])
        for _ in range(2):
            got = s.scan(pids=[k.pid])
            assert "passing" not in {b.name for b in got.buffers}
            assert _same(got, fresh.scan(pids=[k.pid]))


def test_a_failed_refresh_leaves_nothing_half_done(monkeypatch):
    """A scan that fails while patching (memory, a bug) must not leave the next scans
    diffing against state it never finished: they see every change since."""
    from livekids import Kid
    fresh = scanner()
    with Kid() as k, mbpf.BpfScanner(verify_every=0) as s:
        k.add("before", R.PAGE_SIZE)
        s.scan(pids=[k.pid])
        k.add("during", 1 << 20)
        monkeypatch.setattr(s._rebuilder, "build", lambda *a, **kw: (_ for _ in ()).throw(MemoryError("injected")))
        with pytest.raises(MemoryError):
            s.scan(pids=[k.pid])
        monkeypatch.undo()
        for _ in range(2):
            got = s.scan(pids=[k.pid])
            assert "during" in {b.name for b in got.buffers}
            assert _same(got, fresh.scan(pids=[k.pid]))


def test_collect_restores_the_switch_interval_when_it_fails(monkeypatch):
    s = scanner()
    before = sys.getswitchinterval()

    def broken(*a, **kw):
        raise ValueError("injected")
    monkeypatch.setattr(R, "parse_files", broken)
    with pytest.raises(ValueError):
        s.collect()
    assert sys.getswitchinterval() == before


def test_a_scan_leaves_the_switch_interval_alone(monkeypatch):
    """Library code does not change process-wide settings behind the caller's back: not
    even while the VMA walk runs in its thread beside the parse."""
    s = scanner()
    seen = []
    real = R.parse_files

    def watched(*a, **kw):
        seen.append(sys.getswitchinterval())
        return real(*a, **kw)
    monkeypatch.setattr(R, "parse_files", watched)
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.01)
    try:
        s.collect()
    finally:
        sys.setswitchinterval(before)
    assert seen and set(seen) == {0.01}


_KID_TITLE = r"""
import os, sys
fd = os.memfd_create("titled", 0)
os.ftruncate(fd, 4096)
print("ready", flush=True)
sys.stdin.readline()
stat = open("/proc/self/stat").read()
arg_start = int(stat[stat.rindex(")") + 2:].split()[45])      # field 48, arg_start
with open("/proc/self/mem", "r+b", buffering=0) as mem:     # setproctitle's way: argv in place
    mem.seek(arg_start)
    mem.write(b"retitled\0")
print("done", flush=True)
sys.stdin.readline()
"""


def test_a_cmdline_rewritten_in_place_shows_within_verify_every():
    """setproctitle moves no record: the rotating slice reads cmdlines again (and, with
    verification off, the cached one stays: the known limit)."""
    fresh = scanner()
    for every in (0, 1):
        k = subprocess.Popen([sys.executable, "-c", _KID_TITLE, "x" * 16], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        try:
            assert k.stdout.readline().strip() == "ready"
            with mbpf.BpfScanner(verify_every=every) as s:
                assert s.scan(pids=[k.pid]).processes[0].cmdline != "retitled"
                _told(k, "go")
                assert k.stdout.readline().strip() == "done"
                assert fresh.scan(pids=[k.pid]).processes[0].cmdline.startswith("retitled")
                got = s.scan(pids=[k.pid])
                if every:
                    assert got.processes[0].cmdline.startswith("retitled")
                    assert _same(got, fresh.scan(pids=[k.pid]))
                else:
                    assert not got.processes[0].cmdline.startswith("retitled")
        finally:
            k.kill()
            k.wait()


def test_the_early_load_makes_the_scanners_checks_first(monkeypatch):
    """Where the scanner would not load (no rights, a pid namespace...), the early load makes
    no bpf() call either: a seccomp filter that kills on bpf() must not kill memtrack."""
    from memtrack import _libbpf, _preload, bpf_policy
    monkeypatch.setattr(sys, "argv", ["memtrack"])
    monkeypatch.delenv("MEMTRACK_PRELOAD", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(_preload, "_job", None)
    monkeypatch.setattr(bpf_policy, "rights_problem", lambda: "runs in a pid namespace")
    loads = []
    monkeypatch.setattr(_libbpf, "open_iterators", lambda *a: loads.append(a))
    _preload.early()
    job = _preload._job
    assert job is not None
    job.thread.join()
    assert job.result is None and loads == []
    assert _preload.take(*job.params) is None and _preload._job is None


# -- cmdlines copied by task_cmd ------------------------------------------------------------
_KID_CMD = r"""
import os, sys
fd = os.memfd_create("cmd-" + os.fsdecode(sys.argv[1].encode("utf-8", "surrogateescape")[:8]), 0)
os.ftruncate(fd, 4096)
stat = [0, 0, 0] + [int(v) if v.lstrip("-").isdigit() else 0
                    for v in open("/proc/self/stat").read().rsplit(")", 1)[1].split()]
if sys.argv[1] == "overflow":                 # setproctitle past argv: its last NUL overwritten
    with open("/proc/self/mem", "r+b", buffering=0) as mem:
        mem.seek(stat[49] - 1)                # field 49, arg_end
        mem.write(b"!")
elif sys.argv[1] in ("memfd", "anon"):        # the argument area moved (PR_SET_MM_MAP)
    import ctypes, mmap
    libc = ctypes.CDLL(None, use_errno=True)
    if sys.argv[1] == "memfd":                # into a memfd mapping: /proc will not read it
        afd = os.memfd_create("args")
        os.ftruncate(afd, 4096)
        m = mmap.mmap(afd, 4096)
    else:                                     # into anonymous memory: /proc reads it
        m = mmap.mmap(-1, 4096, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m[:14] = b"moved\0cmdline\0"
    at = ctypes.addressof(ctypes.c_char.from_buffer(m))

    class MmMap(ctypes.Structure):            # struct prctl_mm_map
        _fields_ = [(n, ctypes.c_uint64) for n in (
            "start_code", "end_code", "start_data", "end_data", "start_brk", "brk",
            "start_stack", "arg_start", "arg_end", "env_start", "env_end", "auxv")] + \
            [("auxv_size", ctypes.c_uint32), ("exe_fd", ctypes.c_uint32)]
    libc.sbrk.restype = ctypes.c_void_p
    mm = MmMap(stat[26], stat[27], stat[45], stat[46], stat[47], libc.sbrk(0), stat[28],
               at, at + 14, stat[50], stat[51], 0, 0, 0xFFFFFFFF)
    if libc.prctl(35, 14, ctypes.byref(mm), ctypes.sizeof(mm), 0):   # PR_SET_MM, PR_SET_MM_MAP
        print("unsupported", ctypes.get_errno(), flush=True)
        sys.exit(0)
print("ready", flush=True)
sys.stdin.readline()
"""


def test_cmdlines_copied_by_task_cmd_are_what_proc_prints(tmp_path):
    """task_cmd copies the argument area only where /proc/PID/cmdline prints exactly it; a
    longer one, one whose last NUL was overwritten (setproctitle past argv: /proc then
    follows into the environment), or one moved into a memfd mapping (which /proc does not
    read), is left to /proc. Either way the snapshot equals a scan that reads every
    cmdline from /proc."""
    s = scanner()
    if not s._obj.has("task_cmd"):
        pytest.skip("this kernel cannot run task_cmd (Linux >= 5.18)")
    cases = {"plain": ["plain", "two words"], "long": ["long", "L" * 300],
             "bytes": [os.fsdecode(b"bytes\xff\xfe"), "x"], "overflow": ["overflow", "y" * 8],
             "memfd": ["memfd"], "anon": ["anon"]}
    script = tmp_path / "k.py"                 # short cmdlines: the code is not in them
    script.write_text(_KID_CMD)
    kids = {}
    try:
        for name, args in cases.items():
            k = subprocess.Popen([sys.executable, str(script), *args], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
            kids[name] = k
            said = k.stdout.readline().strip()
            if said.startswith("unsupported"):          # a kernel without CHECKPOINT_RESTORE
                del kids[name], cases[name]
                continue
            assert said == "ready"
        pids = [k.pid for k in kids.values()]
        recs = {r[0]: r for r in R.CMD_REC.iter_unpack(s._obj.read("task_cmd"))}
        sure = {name: bool(recs[k.pid][1] & R.C_OK) for name, k in kids.items()}
        assert sure == {name: ok for name, ok in (("plain", True), ("long", False), ("bytes", True),
                                                  ("overflow", False), ("memfd", False),
                                                  ("anon", True)) if name in kids}
        for name in ("plain", "bytes"):
            rec = recs[kids[name].pid]
            with open(f"/proc/{kids[name].pid}/cmdline", "rb") as f:
                assert rec[5][:rec[3]] == f.read()
        copied = s.scan(pids=pids)
        s._obj._links["task_cmd_off"] = s._obj._links.pop("task_cmd")   # every cmdline from /proc
        try:
            read = s.scan(pids=pids)
        finally:
            s._obj._links["task_cmd"] = s._obj._links.pop("task_cmd_off")
        assert [p.cmdline for p in copied.processes] == [p.cmdline for p in read.processes]
        assert comparable(copied, pids) == comparable(read, pids) == \
            comparable(procfs_scan(pids=pids), pids)
        by_pid = {p.pid: p.cmdline for p in copied.processes}
        assert by_pid[kids["bytes"].pid] == f"{sys.executable} {script} {cases['bytes'][0]} x"
        assert by_pid[kids["long"].pid].endswith("L" * 300)
        # /proc's setproctitle case: the string from arg_start on, to its NUL
        assert by_pid[kids["overflow"].pid] == sys.executable
        if "memfd" in kids:
            # /proc reads the argument area with FOLL_ANON: not from a memfd mapping
            assert by_pid[kids["memfd"].pid] == "" and by_pid[kids["anon"].pid] == "moved cmdline"
    finally:
        for k in kids.values():
            k.kill()
            k.wait()


def test_a_kernel_refusing_task_cmd_loads_the_rest(scenario, monkeypatch):
    """task_cmd is an extra: where the kernel refuses it (before 5.18, a sleepable iterator
    it will not run) the object loads without it, with no note, and cmdlines come from /proc."""
    scanner()
    from memtrack import _libbpf
    real = _libbpf.BpfObject
    tried = []

    def refuse(path, init=None, skip=()):
        tried.append("task_cmd" in skip)
        if "task_cmd" not in skip:
            raise _libbpf.LibbpfError("BPF object load failed: Invalid argument")
        return real(path, init, skip)
    monkeypatch.setattr(_libbpf, "BpfObject", refuse)
    with mbpf.BpfScanner(reuse=False) as s:
        assert tried == [False, True]
        assert not s._obj.has("task_cmd") and not s.notes
        assert comparable(s.scan(pids=scenario), scenario) == \
            comparable(procfs_scan(pids=scenario), scenario)


def test_a_kernel_refusing_iter_dmabuf_keeps_task_cmd(monkeypatch):
    """Each extra is dropped alone: a kernel refusing iter/dmabuf (a 6.16 version string
    without it) keeps task_cmd, and the snapshot notes the dma-buf table's other source."""
    scanner()
    from memtrack import _libbpf
    if _libbpf.kernel_version() < (6, 16):
        pytest.skip("iter/dmabuf is not asked for before Linux 6.16")
    real = _libbpf.BpfObject
    tried = []

    def refuse(path, init=None, skip=()):
        tried.append(("dmabuf" not in skip, "task_cmd" not in skip))
        if "dmabuf" not in skip:
            raise _libbpf.LibbpfError("BPF object load failed: Invalid argument")
        return real(path, init, skip)
    monkeypatch.setattr(_libbpf, "BpfObject", refuse)
    obj, dmabuf, notes = _libbpf.open_iterators(_libbpf.OBJECT, _libbpf.DRM_MAJOR, False)
    try:
        assert tried == [(True, True), (True, False), (False, True)]
        assert not dmabuf and obj.has("task_cmd") and not obj.has("dmabuf")
        assert len(notes) == 1 and notes[0].startswith("iter/dmabuf unavailable")
    finally:
        obj.close()


def test_a_refresh_failing_beside_the_sums_read_leaves_no_thread(monkeypatch):
    """A reused scanner reads task_sum in a thread while it reads tasks and mappings: where
    those fail, the scan waits for the thread (no read outlives it) and restores the GIL
    switch interval; the next refresh works."""
    scanner()
    import threading
    before = sys.getswitchinterval()
    with mbpf.BpfScanner() as s:
        s.scan()
        threads = threading.active_count()
        real = s._obj.read
        monkeypatch.setattr(s._obj, "read", failing_read(real, "task_mm"))
        with pytest.raises(mbpf.BpfUnavailable, match="injected"):
            s.scan()
        assert threading.active_count() == threads and sys.getswitchinterval() == before
        monkeypatch.setattr(s._obj, "read", real)
        assert _same(s.scan(), scanner().scan())


def test_the_early_loads_command_lists_name_every_command():
    """_preload cannot import the CLI (it runs before it): its lists of command names are
    written out, and must name exactly the commands the CLI has."""
    from memtrack import _preload
    from memtrack.cli import _commands
    assert _preload.COMMANDS == set(_commands())
    assert _preload.ONE_SHOT <= _preload.COMMANDS


def test_proc_listing_is_made_by_the_walking_thread(monkeypatch):
    """A whole walk's thread lists /proc once its walk is done (with task_cmd failing, still),
    and the scan counts the processes it may not read from that listing: the same denied set
    as procfs, with no listing made on the scan's own thread."""
    import threading
    s = scanner()
    real_listdir = os.listdir
    on = []

    def listdir(path="."):
        on.append((path, threading.current_thread() is threading.main_thread()))
        return real_listdir(path)
    monkeypatch.setattr(os, "listdir", listdir)
    snap = s.scan()
    assert ("/proc", False) in on and ("/proc", True) not in on
    assert set(snap.skipped.denied) == set(procfs_scan().skipped.denied)
    monkeypatch.setattr(s._obj, "read", failing_read(s._obj.read, "task_cmd"))
    cmds, listing = s._after_walk(True)
    assert cmds is None
    assert str(os.getpid()) in listing and "self" in listing


@pytest.mark.parametrize("how", ["map", "outgrown", "no map"])
def test_big_reads_give_the_same_records(how, scenario, monkeypatch):
    """A one-shot scanner reads its two big walks into a huge-page map: the records are the
    bytes a plain read gives, and the scan is the same, also when the output outgrows the
    map (the rest read as usual) or no map can be made."""
    from memtrack import _libbpf
    s = scanner()
    if how == "outgrown":
        monkeypatch.setattr(_libbpf, "BIG_READ", 1000)         # 7 records and a part
    elif how == "no map":
        def refuse(*a, **k):
            raise OSError(12, "Cannot allocate memory")
        monkeypatch.setattr(_libbpf.mmap, "mmap", refuse)
    plain = s._obj.read("task_file")
    big = s._obj.read("task_file", big=True)
    assert type(big) is (memoryview if how == "map" else bytes)
    assert len(plain) > 1000
    # the scenario's own records (other processes may change between the reads)
    mine = lambda data: sorted(r for r in R.FD_REC.iter_unpack(data) if r[0] in scenario)
    assert mine(big) == mine(plain) and mine(big)
    if how == "map":
        assert big.readonly
    assert comparable(s.scan(pids=scenario), scenario) == comparable(procfs_scan(pids=scenario), scenario)


@pytest.mark.parametrize("gone", [False, True])
def test_fds_merged_while_the_walk_goes_on(gone, scenario, monkeypatch):
    """Where the VMA walk is still running when the files are parsed, a one-shot scan merges
    the fds for build() meanwhile; build takes that work instead of doing it again, unless
    the fds changed after it (a holder gone at its access check), when it merges afresh."""
    import memtrack.build as B
    s = scanner()
    calls = []
    real = B.accumulate_fds

    def spy(*a, **kw):
        calls.append(kw.get("whole", True))
        return real(*a, **kw)
    monkeypatch.setattr(B, "accumulate_fds", spy)
    monkeypatch.setattr(Pending, "ready", lambda self: False)
    lost = max(scenario)
    if gone:
        real_gate = access.gate          # a one-shot scanner's access check
        monkeypatch.setattr(access, "gate", lambda pid: "vanished" if pid == lost else real_gate(pid))
    snap = s.scan(pids=scenario)
    assert len(calls) == (2 if gone else 1)          # merged while waiting; again if it changed
    monkeypatch.setattr(Pending, "ready", lambda self: True)     # the usual way
    del calls[:]
    plain = s.scan(pids=scenario)
    assert len(calls) == 1                              # by build() only
    assert comparable(snap, scenario) == comparable(plain, scenario)
    if gone:
        assert lost in snap.skipped.vanished and lost not in {p.pid for p in snap.processes}
        assert all(lost not in b.holders for b in snap.buffers)
    else:
        assert comparable(snap, scenario) == comparable(procfs_scan(pids=scenario), scenario)


@pytest.mark.parametrize("reuse", [False, True])
def test_no_read_outlives_its_scan(reuse, scenario, monkeypatch):
    """The walking thread (and the reads it runs after the walk) has ended when scan()
    returns: close() frees the links its reads use. Also for a reused scanner on a kernel
    whose task records carry no mm sequence, which walks every process each refresh."""
    import threading
    scanner()
    with mbpf.BpfScanner(reuse=reuse) as s:
        if reuse:
            real = s._read_tasks
            monkeypatch.setattr(s, "_read_tasks",
                                lambda: {p: t._replace(seq=None) for p, t in real().items()})
        base = threading.active_count()
        for _ in range(5):
            s.scan(pids=scenario)
            assert threading.active_count() == base


def test_name_lengths_from_the_kernel(scenario):
    """The object writes each copied dentry name's length in flags bits 8-15; the parse cuts
    names with it, and reads a record without it (0) the same way as one with it."""
    s = scanner()
    data = s._obj.read("task_file")
    named = [r for r in R.FD_REC.iter_unpack(data)
             if r[0] in scenario and r[5] & R.R_PSEUDO and not r[5] & (R.R_TASK | R.R_DMABUF)]
    assert named
    for r in named:
        assert r[5] >> R.R_LEN_SHIFT & 0xFF == r[7].index(b"\0"), r
    recs = [fd_rec(7, 3, 11, 4096, 1, R.R_PSEUDO | ln << R.R_LEN_SHIFT, 0, name, b"")
            for name in (b"memfd:pool", b"memfd:", b"SYSV00001234", b"dev/zero")
            for ln in (0, len(name))]
    for without, with_len in zip(recs[::2], recs[1::2]):
        got = []
        for rec in (without, with_len):
            fds: list = []
            R.parse_files(rec, {}, fds, [], None, lambda p: None)
            got.append(fds)
        assert got[0] == got[1]
    fds: list = []
    R.parse_files(recs[1], {}, fds, [], None, lambda p: None)
    assert fds[0].kind == "memfd" and fds[0].name == "pool"


def test_a_reused_scanner_forgets_the_buffers_gone():
    """A process replacing its memfd again and again (a new inode each time, as under process
    churn): the reused scanner's refreshes patch the last snapshot, and the Rebuilder keeps
    per-id counts only for the buffers there now (a count left at 0 for every buffer gone
    grew `serve`, `record` and `top` without bound)."""
    scanner()
    from livekids import Kid
    from helpers.rebuild import rebuilder_ids_exact
    with Kid() as k, mbpf.BpfScanner() as s:
        fd = k.add("churn-0", 4096)
        s.scan()
        for i in range(1, 30):
            new = k.add(f"churn-{i}", 4096)
            k.close(fd)
            fd = new
            snap = s.scan()
            p = snap.process_map[k.pid]
            assert [snap.buffer(r.buffer).name for r in p.refs] == [f"churn-{i}"]
        rb = s._rebuilder
        assert rb.partial_builds >= 20 and rebuilder_ids_exact(rb)


def test_a_per_process_read_leaves_no_garbage_cycle():
    """A reused scanner runs an iterator per changed process, hundreds a second under churn:
    each left a ctypes.cast() cycle for the collector, which a refresher's paused
    collections did not reach (speed.no_gc)."""
    scanner()
    import gc
    fd = os.memfd_create("cycle-probe", 0)
    os.ftruncate(fd, 4096)
    with mbpf.BpfScanner() as s:
        s._obj.read_pid("task_file", os.getpid())
        gc.collect()
        was = gc.isenabled()
        gc.disable()
        try:
            for _ in range(100):
                assert s._obj.read_pid("task_file", os.getpid())
            assert gc.collect() < 50
        finally:
            if was:
                gc.enable()
            os.close(fd)


# -- holdings memtrack once missed (test_holdings.py): both backends agree ------------------
def _holding_case(case, *args):
    from contextlib import ExitStack
    from helpers.holdings import holdkid, huge_pages
    s = scanner()
    with ExitStack() as stack:
        if case in ("huge", "hugefs"):
            if os.geteuid() != 0 or not stack.enter_context(huge_pages(3)):
                pytest.skip("the kernel gives no huge pages here")
        pids = stack.enter_context(holdkid(case, *args))
        a, b = procfs_scan(pids=pids), s.scan(pids=pids)
        full_b = s.scan()
        a_rss, b_rss = procfs_scan(pids=pids, smaps=True), s.scan(pids=pids, smaps=True)
    assert comparable(b_rss, pids) == comparable(a_rss, pids)
    assert comparable(b, pids) == comparable(a, pids)
    assert comparable(full_b, pids) == comparable(a, pids)
    return a


def test_huge_pages_same_as_procfs():
    a = _holding_case("huge")
    assert {b.name for b in a.buffers} >= {"anon_hugepage", "huge-memfd"}


def test_an_exited_leaders_process_same_as_procfs():
    a = _holding_case("exited")
    assert {b.name for b in a.buffers} >= {"left-by-main", "mapped-left-by-main"}


def test_a_threads_own_fd_table_same_as_procfs():
    a = _holding_case("ownfiles")
    assert {b.name for b in a.buffers} >= {"thread-table-only", "in-both-tables"}


@pytest.mark.parametrize("case", ["exited", "ownfiles"])
def test_a_reused_scanner_sees_thread_holdings(case):
    """A reused scanner's refreshes (per-process sums and walks) keep a process read through
    its threads, and see them gone."""
    from helpers.holdings import holdkid
    scanner()
    s = mbpf.BpfScanner(reuse=True)
    try:
        with holdkid(case) as pids:
            first = s.scan(pids=pids)
            again = s.scan(pids=pids)
            whole = s.scan()
            a = procfs_scan(pids=pids)
        assert comparable(first, pids) == comparable(again, pids) == comparable(a, pids)
        assert comparable(whole, pids) == comparable(a, pids)
        gone = s.scan(pids=pids)
        assert not [b for b in gone.buffers if set(b.holders) & set(pids)]
    finally:
        s.close()


def test_private_mappings_same_as_procfs():
    shm = "/dev/shm/memtrack-bpf-private-%d" % os.getpid()
    try:
        a = _holding_case("private", shm)
    finally:
        os.unlink(shm)
    assert {b.name for b in a.buffers} >= {"private-memfd", os.path.basename(shm)}


def test_a_program_run_from_a_memfd_same_as_procfs():
    a = _holding_case("fexec")
    assert "fexec-sleep" in {b.name for b in a.buffers}


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")
def test_a_shm_file_through_a_bind_mount_same_as_procfs(tmp_path):
    name = "memtrack-bpf-bind-%d" % os.getpid()
    where = tmp_path / "shm"
    where.mkdir()
    with open("/dev/shm/" + name, "wb") as f:
        f.truncate(5 * R.PAGE_SIZE)
    try:
        a = _holding_case("bind", str(where), name)
    finally:
        os.unlink("/dev/shm/" + name)
    assert [len(b.holders) for b in a.buffers if b.name == name] == [2]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")
def test_a_file_on_a_hugetlbfs_mount_same_as_procfs(tmp_path):
    where = tmp_path / "huge"
    where.mkdir()
    a = _holding_case("hugefs", str(where))
    assert [b.kind for b in a.buffers if b.name == str(where / "hugefile")] == ["hugetlb"]
