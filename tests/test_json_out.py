"""to_json(Snapshot) (memtrack/json_out.py writes it without to_dict's document) gives the
bytes json.dumps(to_dict()) gives, on every snapshot we can make: each kernel-format tree the
fixture tests build, the real capture, a live scan, generated snapshots, hostile names."""
from __future__ import annotations

import gc
import inspect
import json
import os
from dataclasses import replace

import pytest

import kfixture
import memtrack
from helpers.drm import gpu_tree
from helpers.paths import REAL_CAPTURE
from memtrack.categories import categorize, load_rules
from memtrack.json_out import snapshot_json
from memtrack.model import Buffer, GpuClient, Host, KernelInfo, Process, Ref, Skipped, Snapshot
from memtrack.json_out import to_dict, to_json

RULES = load_rules(use_user_file=False)


def old_json(snap, filt=None):
    return json.dumps(to_dict(snap, filt), ensure_ascii=False, separators=(",", ":"))


def check(snap):
    """The snapshot, and views of it as -p and --kind make them, written both ways."""
    views = [(snap, None)]
    pids = [p.pid for p in snap.processes]
    if pids:
        views.append((snap.restrict(pids={pids[0]}), {"pids": [pids[0]]}))
        views.append((snap.restrict(pids=set(pids[1:])), {"pids": sorted(pids[1:])}))
    kinds = sorted({b.kind for b in snap.buffers})
    if kinds:
        views.append((snap.restrict(kinds={kinds[0]}), {"kinds": [kinds[0]]}))
        views.append((snap.restrict(pids=set(pids[:2]), kinds=set(kinds[1:])),
                      {"pids": sorted(pids[:2]), "kinds": kinds[1:]}))
    for view, filt in views:
        want = old_json(view, filt)
        got = snapshot_json(view, filt)
        assert got == want
        assert to_json(view, filt=filt) == want
    return snap


# -- every kernel-format tree the fixture tests build --------------------------------------

def fixture_trees(tmp_path_factory, monkeypatch):
    """Each kfixture.Tree written by the tests of these modules that need only tmp_path: run
    them again with Tree.write_dir/write_tar watched."""
    import test_drm
    import test_kernel_trees
    import test_hostile
    trees = []
    for method in ("write_dir", "write_tar"):
        real = getattr(kfixture.Tree, method)

        def watched(self, path, real=real):
            if all(t is not self for t in trees):
                trees.append(self)
            return real(self, path)
        monkeypatch.setattr(kfixture.Tree, method, watched)
    ran = 0
    for mod in (test_kernel_trees, test_drm, test_hostile):
        for name, fn in sorted(vars(mod).items()):
            if name.startswith("test_") and callable(fn) and \
                    list(inspect.signature(fn).parameters) == ["tmp_path"]:
                fn(tmp_path_factory.mktemp(name))
                ran += 1
    trees.append(gpu_tree())
    monkeypatch.undo()
    assert ran > 20 and len(trees) > 20, (ran, len(trees))
    return trees


def test_every_fixture_tree(tmp_path_factory, monkeypatch):
    trees = fixture_trees(tmp_path_factory, monkeypatch)
    seen = set()
    for i, tree in enumerate(trees):
        root = tree.write_dir(str(tmp_path_factory.mktemp(f"tree{i}")))
        for smaps in (False, True):
            snap = check(categorize(memtrack.scan(root, smaps=smaps), RULES))
            seen.update(b.kind for b in snap.buffers)
            seen.update(("smaps",) if snap.smaps else ())
            seen.update(("gpu",) if snap.gpu else ())
            seen.update(("unknown size",) if any(b.size is None for b in snap.buffers) else ())
            seen.update(("skipped",) if snap.skipped.total else ())
    # the trees cover what the writer formats differently
    assert seen >= {"dmabuf", "memfd", "shm", "sysv", "shmem", "ashmem", "smaps", "gpu",
                    "unknown size", "skipped"}, seen


@pytest.mark.skipif(not os.path.exists(REAL_CAPTURE), reason="shared fixtures absent")
@pytest.mark.parametrize("smaps", [False, True])
def test_real_capture(smaps):
    snap = check(categorize(memtrack.scan(REAL_CAPTURE, smaps=smaps), RULES))
    assert len(snap.buffers) >= 5 and any(b.kind == "dmabuf" for b in snap.buffers)


@pytest.mark.parametrize("smaps", [False, True])
def test_live_scan(holders, smaps):
    snap = check(categorize(memtrack.scan(smaps=smaps), RULES))
    assert set(holders.pids) <= set(snap.process_map)


def test_live_bpf_scan(holders):
    from memtrack import bpf
    why = bpf.unavailable()
    if why:
        pytest.skip(f"bpf backend: {why}")
    scanner = bpf.BpfScanner()
    try:
        snap = check(categorize(scanner.scan(), RULES))
    finally:
        scanner.close()
    assert set(holders.pids) <= set(snap.process_map)


def test_saved_snapshot_reads_back_to_the_same_bytes(tmp_path):
    snap = categorize(memtrack.scan(REAL_CAPTURE if os.path.exists(REAL_CAPTURE) else None), RULES)
    path = tmp_path / "s.json"
    path.write_text(to_json(snap))
    again = memtrack.load(str(path))
    assert to_json(check(again)) == path.read_text()


# -- names and values that need escaping ----------------------------------------------------

# quotes, backslashes, every control character, DEL, non-ASCII, surrogateescape bytes, lone
# surrogates of both halves and a pair written as two code points, a NUL, JSON-looking text
NASTY = ['"', "\\", '\\"', "".join(map(chr, range(32))), "\x7f", "é", "名前", "\U0001f600",
         "\udcff\udc80", "\ud800", "\udbff\udfff", "a\x00b", '","inode":1,"dev":"', "null",
         "\u2028\u2029", "", " ", "}]"]


def nasty_snapshot(smaps: bool, i: int = 0) -> Snapshot:
    names = NASTY[i:] + NASTY[:i]
    bufs, refs = [], {10: [], 11: []}
    for n, name in enumerate(names):
        bid = f"memfd:{n}{name}"
        holders = (10, 11) if n % 3 == 0 else (10,)
        for pid in holders:
            vmas = ((0x1000 * n, 0x1000 * n + 4096 + n, n),) * (n % 3)
            refs[pid].append(Ref(bid, fds=tuple(range(n % 4)), vmas=vmas,
                                 in_rss=(None if n % 2 else 4096 * n) if smaps else None))
        bufs.append(Buffer(
            id=bid, kind=("memfd", "dmabuf", "sysv", "shm", "shmem", "ashmem")[n % 6],
            inode=None if n % 5 == 1 else n, dev=None if n % 2 else name, size=None if n % 4 == 1 else 4096 * n,
            exporter=name if n % 3 else None, name=None if n % 7 == 3 else name,
            category=name if n % 2 else None, holders=holders, fd_refs=n, map_refs=2 * n,
            kernel_count=None if n % 3 else n, size_from=name if n % 4 else None))
    procs = tuple(Process(pid, comm=names[pid % len(names)], cmdline="".join(names[:pid - 8]),
                          uid=None if pid == 11 else 0, refs=tuple(refs[pid])) for pid in (10, 11))
    gpu = (GpuClient(pid=10, driver=names[1], client_id=None, pdev=names[2], device=None,
                     client_name=names[3], holders=(10, 11), fds=(3, 4),
                     regions={names[4]: {"total": 1, names[5]: 2}}, engines={"gfx": {"busy_ns": 3}},
                     driver_keys={names[6]: names[7]}),
           GpuClient(pid=11, driver="amdgpu", client_id=7))
    return Snapshot(taken_at=names[8], source=names[9], host=Host(names[10], None), backend_reason=names[11],
                    smaps=smaps, buffers=tuple(bufs), processes=procs,
                    kernel=KernelInfo("debugfs", 5, None, "sysvipc"),
                    skipped=Skipped(denied=(1, 2), vanished=(), unreadable=(3,)),
                    notes=tuple(names[:3]), gpu=gpu)


@pytest.mark.parametrize("smaps", [False, True])
def test_names_that_need_escaping(smaps):
    for i in range(len(NASTY)):
        check(nasty_snapshot(smaps, i))
    # json.dumps (ensure_ascii=False) keeps a lone surrogate as it is; so does the writer
    assert '"\ud800"' in snapshot_json(nasty_snapshot(smaps))


def test_undecodable_bytes_from_a_tree(tmp_path):
    t = kfixture.Tree()
    p = t.proc(12, "badcomm", "/bin/x\"y\\z\x01 --flag=\u00e9")
    # link targets are written with surrogateescape: the name reads back as these bytes
    p.memfd(5, "na\udcfeme\x1b[2J \"q\" \\", 300, 1000).shm(6, "sh\udc80m", 301, 2000)
    t.proc(13, "peer").memfd(4, "na\udcfeme\x1b[2J \"q\" \\", 300, 1000)
    root = t.write_dir(str(tmp_path / "root"))
    for name in ("comm", "status"):
        path = os.path.join(root, "proc", "12", name)
        with open(path, "rb") as f:
            data = f.read().replace(b"badcomm", b"bad\xffcomm")
        with open(path, "wb") as f:
            f.write(data)
    snap = check(categorize(memtrack.scan(root), RULES))
    assert any("\udcfe" in (b.name or "") for b in snap.buffers)
    assert snap.process_map[12].comm == "bad\udcffcomm"


def test_empty_and_default_snapshots():
    check(Snapshot())
    check(Snapshot(smaps=True, notes=("x",), skipped=Skipped(denied=(4,))))
    # a process without references, a buffer nobody holds
    check(Snapshot(buffers=(Buffer("dmabuf:1", "dmabuf", 1, size=10),),
                   processes=(Process(5, "", ""),), kernel=KernelInfo("sysfs", 10, 1)))


def test_indent_keeps_the_generic_path():
    snap = nasty_snapshot(True)
    assert to_json(snap, indent=1) == json.dumps(to_dict(snap), indent=1, ensure_ascii=False)


def test_cli_json_bytes(tmp_path):
    """What `memtrack --json -o FILE` writes: the old document, line-terminated, undecodable
    bytes as \\udcXX escapes."""
    from memtrack.cli import main
    root = kfixture.Tree()
    root.proc(20, "app\"1").memfd(3, "pool\\x", 100, 4096).dmabuf(4, 7, 8192, "system", "fb")
    root.proc(21, "peer").memfd(3, "pool\\x", 100, 4096).memfd(9, "bad\udcff", 101, 4096)
    root.bufinfo([{"size": 8192, "exporter": "system", "ino": 7}])
    path = root.write_dir(str(tmp_path / "root"))
    snap = categorize(memtrack.scan(path), RULES)
    out = tmp_path / "out.json"
    for argv, pids, kinds, filt in ((["--json"], None, None, None),
                                    (["--json", "-p", "21"], {21}, None, {"pids": [21]}),
                                    (["--json", "--kind", "dmabuf"], None, {"dmabuf"}, {"kinds": ["dmabuf"]})):
        assert main(["--root", path, "-q", "-o", str(out)] + argv) == 0
        assert gc.get_freeze_count() == 0         # what the command froze is back to the collector
        data = out.read_bytes()
        view = replace(snap, taken_at=json.loads(data)["taken_at"]).restrict(pids=pids, kinds=kinds)
        assert data == (old_json(view, filt) + "\n").encode("utf-8", "backslashreplace")
        assert kinds or b"bad\\udcff" in data


# -- generated snapshots --------------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, strategies as st  # noqa: E402

from helpers.strategies import FUZZ, snapshots  # noqa: E402

ANY_CHARS = st.characters()           # every code point, lone surrogates and controls included
ANY_TEXT = st.text(ANY_CHARS, max_size=12)
COUNTERS = st.dictionaries(ANY_TEXT, st.dictionaries(ANY_TEXT, st.integers(0, 1 << 64), max_size=3), max_size=3)


@st.composite
def with_names_and_gpu(draw):
    snap = draw(snapshots())
    names = st.one_of(st.none(), ANY_TEXT)
    bufs = tuple(replace(b, name=draw(names), exporter=draw(names), category=draw(names))
                 for b in snap.buffers)
    procs = tuple(replace(p, comm=draw(ANY_TEXT), cmdline=draw(ANY_TEXT)) for p in snap.processes)
    gpu = tuple(GpuClient(pid=draw(st.integers(0, 1 << 22)), driver=draw(ANY_TEXT),
                          client_id=draw(st.one_of(st.none(), st.integers(0, 1 << 40))),
                          pdev=draw(names), device=draw(names), client_name=draw(names),
                          holders=tuple(sorted(draw(st.sets(st.integers(0, 99), max_size=3)))),
                          fds=tuple(draw(st.lists(st.integers(0, 99), max_size=3))),
                          regions=draw(COUNTERS), engines=draw(COUNTERS),
                          driver_keys=draw(st.dictionaries(ANY_TEXT, ANY_TEXT, max_size=2)))
                for _ in range(draw(st.integers(0, 2))))
    return replace(snap, buffers=bufs, processes=procs, gpu=gpu, backend_reason=draw(names))


@FUZZ
@given(snapshots())
def test_generated_snapshots(snap):
    check(snap)


@FUZZ
@given(with_names_and_gpu())
def test_generated_names_and_gpu_clients(snap):
    check(snap)
