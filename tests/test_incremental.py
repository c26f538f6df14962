"""IncrementalScanner: the same snapshot as a full scan, re-reading only what changed."""
from __future__ import annotations

from helpers.rebuild import rebuilder_ids_exact
from livekids import Kid

from memtrack.incremental import IncrementalScanner, live_signature
from memtrack.procfs import scan
from memtrack.sources.live import LiveSource
from memtrack.json_out import to_dict


def facts(snap):
    d = to_dict(snap)
    d.pop("taken_at")
    # the cgroups' charges move with the whole machine between two reads
    d["cgroups"] = [c["path"] for c in d.get("cgroups", ())]
    return d


def names(snap, pid):
    p = snap.process_map.get(pid)
    if p is None:
        return []
    return sorted(snap.buffer(r.buffer).name for r in p.refs)


def test_refresh_rereads_only_changed_processes():
    with Kid() as a, Kid() as b:
        fa = a.add("alpha", 8192)
        b.add("beta", 4096)
        sc = IncrementalScanner(pids=[a.pid, b.pid], verify_every=0)
        first = sc.refresh()
        assert sc.stats.reread == 2 and sc.stats.reused == 0
        assert names(first, a.pid) == ["alpha"] and names(first, b.pid) == ["beta"]

        same = sc.refresh()
        assert sc.stats.reread == 0 and sc.stats.reused == 2
        assert facts(same) == facts(scan(LiveSource(), pids=[a.pid, b.pid]))

        a.add("gamma", 4096)                        # fd count moves: a is re-read, b is not
        snap = sc.refresh()
        assert sc.stats.reread == 1 and sc.stats.reused == 1
        assert names(snap, a.pid) == ["alpha", "gamma"]

        a.map(fa)                                   # a mapping: vsize moves
        snap = sc.refresh()
        assert sc.stats.reread == 1
        ref = [r for r in snap.process_map[a.pid].refs if snap.buffer(r.buffer).name == "alpha"][0]
        assert ref.mapped == 8192 and len(ref.fds) == 1
        assert facts(snap) == facts(scan(LiveSource(), pids=[a.pid, b.pid]))

        b.stop()                                    # gone: dropped, not served from cache
        snap = sc.refresh()
        assert b.pid not in snap.process_map and names(snap, a.pid) == ["alpha", "gamma"]
        assert facts(snap) == facts(scan(LiveSource(), pids=[a.pid, b.pid]))
        assert sc._rebuilder.partial_builds >= 3   # the changed refreshes were patched


def test_whole_machine_refresh_is_patched_right():
    """Over every process: after each change the refreshed view of the kids equals a full
    scan's, and the refreshes were patches of the last snapshot, not whole builds."""
    with Kid() as a, Kid() as b:
        kids = {a.pid, b.pid}
        sc = IncrementalScanner(verify_every=0)

        def check():
            got = sc.refresh().restrict(pids=kids)
            want = scan(LiveSource()).restrict(pids=kids)
            assert got.buffers == want.buffers and got.processes == want.processes

        check()
        fa = a.add("w-alpha", 8192)
        check()
        fb = b.add("w-beta", 4096)
        b.map(fb)
        a.map(fa)
        check()
        a.close(fa)
        b.dup2(fb, 42)
        check()
        assert sc._rebuilder.partial_builds >= 3


def test_verification_bounds_staleness():
    """A swap the signature cannot see (same fd count, no mapping) shows within verify_every."""
    with Kid() as a:
        fd = a.add("old", 4096)
        sc = IncrementalScanner(pids=[a.pid], verify_every=3)
        sc.refresh()
        tmp = a.add("new", 4096)
        a.dup2(tmp, fd)                             # fd now refers to "new"; "old" is freed
        a.close(tmp)                                # back to the same number of fds
        seen = [names(sc.refresh(), a.pid) for _ in range(3)]
        assert seen[-1] == ["new"]
        assert all(s in (["old"], ["new"]) for s in seen)


def test_non_live_source_is_reread_whole(tmp_path):
    from kfixture import Tree
    from memtrack.sources.tree import DirSource
    t = Tree()
    t.proc(10, "app").memfd(3, "pool", 77, 4096)
    t.proc(11, "other").memfd(4, "pool", 77, 4096)
    root = t.write_dir(str(tmp_path / "root"))
    sc = IncrementalScanner(DirSource(root))
    s1, s2 = sc.refresh(), sc.refresh()
    assert sc.stats.reread == 2
    assert facts(s1) == facts(s2) == facts(scan(DirSource(root)))


def test_signature_of_self_moves_with_fds():
    import os
    s1 = live_signature("/proc", os.getpid())
    fd = os.memfd_create("x", 0)
    try:
        s2 = live_signature("/proc", os.getpid())
    finally:
        os.close(fd)
    assert s1 is not None and s2 is not None and s1[0] != s2[0]
    assert live_signature("/proc", 2 ** 22 + 1) is None


def test_non_root_refresh_caches_denied_processes_too(nobody):
    import json
    import subprocess
    from helpers.nobody import NOBODY
    exe, d = nobody.exe, nobody.pkg
    code = ("import json; from memtrack.incremental import IncrementalScanner as S\n"
            "s = S(verify_every=0); out = []\n"
            "for _ in range(3):\n"
            "    snap = s.refresh(); out.append([s.stats.reread, s.stats.processes, list(snap.skipped.denied)])\n"
            "print(json.dumps(out))")
    with Kid() as root_kid:
        root_kid.add("roots", 4096)
        r = subprocess.run(NOBODY + [exe, "-c", code],
                           capture_output=True, text=True, env={"PYTHONPATH": d, "PATH": "/usr/bin:/bin"}, cwd=d)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert root_kid.pid in out[0][2] and root_kid.pid in out[2][2]     # denied, and still counted
    # the first refresh reads everyone; later ones only what moved (at least the denied are reused)
    assert out[0][0] == out[0][1]
    assert out[2][0] < out[2][1] - len(out[2][2]) // 2


def test_refreshes_leave_nothing_frozen_even_if_the_interpreter_froze_some():
    """Python 3.12 starts with some objects frozen. A refresher's snapshots must still go
    back to the collector after each scan: kept frozen, every later scan paid a walk of all
    of them (gc.get_freeze_count() was 5-7 ms per top refresh on 3.12)."""
    import gc
    keep = [[i] for i in range(50)]
    gc.freeze()                                     # as the interpreter may have done
    try:
        base = gc.get_freeze_count()
        with Kid() as a:
            a.add("alpha", 8192)
            sc = IncrementalScanner(pids=[a.pid], verify_every=0)
            for _ in range(3):
                snap = sc.refresh()
                a.add("more", 4096)
            assert gc.get_freeze_count() <= base, "a refresh left its snapshot frozen"
            # (the machine's SysV segments are listed whoever holds them: another suite's may be)
            assert len([b for b in snap.buffers if b.kind == "memfd"]) == 3
    finally:
        gc.unfreeze()
        del keep


def test_refresher_state_stays_bounded_under_buffer_churn():
    """A process replacing its memfd again and again (a new inode each time, as under
    process churn) leaves the refresher holding nothing of the buffers gone."""
    with Kid() as k:
        # (a new fd in place of one closed leaves the signature as it was: read every time)
        sc = IncrementalScanner(pids=[k.pid], verify_every=1)
        fd = k.add("churn-0", 4096)
        sc.refresh()
        for i in range(1, 40):
            new = k.add(f"churn-{i}", 4096)
            k.close(fd)
            fd = new
            snap = sc.refresh()
            assert names(snap, k.pid) == [f"churn-{i}"]
        rb = sc._rebuilder
        assert rb.partial_builds >= 30 and rebuilder_ids_exact(rb)


def test_cycles_left_by_paused_collections_are_collected():
    """A refresher pauses the collector for each refresh and moves what it made to the
    oldest generation (speed.no_gc), where CPython's own rule never collects it again: a
    cycle of garbage each refresh (a ctypes cast, an exception's traceback) stayed for
    good. no_gc counts those objects and collects the oldest generation by the same rule."""
    import gc
    import weakref
    from memtrack.speed import no_gc

    class Cycle:
        pass

    gc.collect()
    alive = []
    for _ in range(1000):
        with no_gc():
            junk = [Cycle() for _ in range(200)]
            for c in junk:
                c.me = c                        # garbage the moment `junk` goes
            alive.extend(weakref.ref(c) for c in junk)
            del junk, c
    left = sum(r() is not None for r in alive)
    # at most what the pauses made since the last collection (a quarter of the heap, which
    # the weak references make about the size of all that was made)
    assert left < len(alive) // 4
