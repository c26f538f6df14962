"""build.build (optimized for big scans) against the plain reference builder, on random
observations shaped to reach every rule: shared and anonymous dma-bufs, fds without a
device, one inode on two devices, map-only and kernel-only buffers, sizes from each
source, smaps, and records in any order."""
from __future__ import annotations

import random

import pytest

from memtrack.build import build
from memtrack.observe import FdRef, KernelBuffer, MapRef, Observations, ProcInfo, VmaRss
from reference_build import reference_build

DEVS = ["00:01", "00:05", "00:1a"]


def random_observations(rng: random.Random) -> Observations:
    obs = Observations()
    pids = rng.sample(range(1, 80), rng.randint(1, 8))
    inodes = list(range(1, rng.choice([3, 10, 40])))    # few: inodes meet across kinds and devices
    kinds = ["memfd", "memfd", "shm", "dmabuf", "dmabuf", "shmem", "ashmem"]
    if rng.random() < 0.1:
        kinds.append("sysv")
    if rng.random() < 0.1:
        kinds += ["zzz", "aaa"]        # kinds no reader makes: ordered last, as they come

    def sized():
        size = rng.choice([None, 4096, 65536, 1 << 20])
        return size, None if size is None else rng.choice(["stat", "fdinfo"])

    seen_fds = set()
    for _ in range(rng.randint(0, 60)):
        pid, fd = rng.choice(pids), rng.randint(0, 40)
        if (pid, fd) in seen_fds:
            continue
        seen_fds.add((pid, fd))
        kind = rng.choice(kinds)
        inode = rng.choice(inodes)
        size, size_from = sized()
        if kind == "dmabuf":
            if rng.random() < 0.1:
                inode = None           # before 5.3: one anonymous inode for all
            obs.fds.append(FdRef(pid, fd, kind, rng.choice(["dmabuf", None]), inode, size,
                                 rng.choice([None, "", "cam"]), rng.choice([None, "system", "nv"]),
                                 rng.choice([None, 1, 3]), size_from))
        else:
            obs.fds.append(FdRef(pid, fd, kind, rng.choice(DEVS + [None, None]), inode, size,
                                 rng.choice([None, "a", "b"]), None, None, size_from,
                                 rng.choice([None, 0, 4096])))
    seen_vmas = set()
    for _ in range(rng.randint(0, 30)):
        pid, start = rng.choice(pids), rng.randrange(0x1000, 0x40000, 0x1000)
        if (pid, start) in seen_vmas:
            continue
        seen_vmas.add((pid, start))
        kind = rng.choice(kinds)
        obs.maps.append(MapRef(pid, start, start + rng.choice([0x1000, 0x3000]), rng.choice([0, 0x1000]),
                               kind, kind if kind in ("dmabuf", "sysv") else rng.choice(DEVS),
                               rng.choice(inodes), rng.choice([None, "m"]),
                               rng.choice([None, None, 8192]), rng.choice([None, 0, 8192]),
                               kind not in ("sysv", "shmem") and rng.random() < 0.2))
    for _ in range(rng.randint(0, 10)):
        kind = rng.choice(["dmabuf", "dmabuf", "sysv"])
        size = rng.choice([None, 4096, 1 << 20])
        obs.kernel.append(KernelBuffer(kind, None if rng.random() < 0.1 else rng.choice(inodes),
                                       size, rng.choice([None, "system"]), rng.choice([None, "k"]),
                                       rng.choice([None, 0, 2]), rng.choice(["debugfs", "sysvipc"]),
                                       *rng.choice([(None, None), (4096, 0), (8192, 4096)])))
    for m in obs.maps:
        if rng.random() < 0.7:
            obs.rss.append(VmaRss(m.pid, m.start, rng.choice([0, 4096, 1 << 21])))
    obs.rss.append(VmaRss(pids[0], 0x7000_0000, 4096))    # a mapping no buffer has
    for pid in pids:
        if rng.random() < 0.8:
            obs.procs.append(ProcInfo(pid, f"c{pid}", rng.choice(["", f"/bin/p{pid}"]), rng.choice([0, 1000, None])))
    obs.denied = rng.sample(range(100, 120), rng.randint(0, 3))
    obs.vanished = rng.sample(range(120, 140), rng.randint(0, 3))
    obs.notes = rng.choice([[], ["a note"]])
    if rng.random() < 0.5:             # procfs order (pid, then fd); else any order
        obs.fds.sort(key=lambda r: (r.pid, r.fd))
        obs.maps.sort(key=lambda m: (m.pid, m.start))
    else:
        rng.shuffle(obs.fds)
        rng.shuffle(obs.maps)
    return obs


@pytest.mark.parametrize("seed", range(400))
def test_build_is_the_reference(seed):
    obs = random_observations(random.Random(seed))
    for smaps in (False, True):
        kw = dict(taken_at="t", source="test", smaps=smaps, extra_notes=["extra"])
        got, want = build(obs, **kw), reference_build(obs, **kw)
        assert got.buffers == want.buffers
        assert got.processes == want.processes
        assert got == want


def test_random_observations_reach_every_rule():
    """The generator is worth its name: across the seeds, every rule's case occurs."""
    seen = set()
    for seed in range(400):
        snap = reference_build(random_observations(random.Random(seed)), smaps=True)
        for b in snap.buffers:
            seen.add("anon" if ":anon:" in b.id else "qualified" if "@" in b.id else "plain")
            seen.add(f"size_from={b.size_from}")
            seen.add("shared" if len(b.holders) > 1 else "kernel-only" if not b.holders else "one holder")
            seen.add(f"kind={b.kind}")
        for p in snap.processes:
            for r in p.refs:
                if len(r.fds) > 1:
                    seen.add("several fds")
                if r.fds and r.vmas:
                    seen.add("fd and map")
                if r.in_rss:
                    seen.add("in_rss")
    for case in ("anon", "qualified", "plain", "size_from=map_files", "size_from=debugfs",
                 "size_from=stat", "size_from=None", "shared", "kernel-only", "one holder",
                 "kind=zzz", "kind=sysv", "several fds", "fd and map", "in_rss"):
        assert case in seen, case


def test_hand_made_instances_are_plain_instances():
    """new_buffer/new_ref/with_category skip the frozen __init__ (and Buffer, Ref are slotted
    by hand, for 3.9); nothing else may tell the difference."""
    import copy
    import dataclasses
    import pickle

    from memtrack.model import Buffer, Ref, new_buffer, new_ref, with_category
    args = ("memfd:7", "memfd", 7, "00:01", 4096, None, "pool", None, (3, 9), 2, 1, None, "stat",
            4096, None)
    for fast, slow in ((new_buffer(*args), Buffer(*args)),
                       (new_ref("memfd:7", (4,), ((0x1000, 0x2000, 0),), 4096),
                        Ref("memfd:7", (4,), ((0x1000, 0x2000, 0),), 4096))):
        assert type(fast) is type(slow)
        assert fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
        assert not hasattr(fast, "__dict__") and not hasattr(slow, "__dict__")
        assert dataclasses.asdict(fast) == dataclasses.asdict(slow)
        assert dataclasses.astuple(fast) == args[:len(dataclasses.fields(fast))] or type(fast) is Ref
        for proto in range(pickle.HIGHEST_PROTOCOL + 1):
            back = pickle.loads(pickle.dumps(fast, proto))
            assert back == slow and type(back) is type(slow)
        assert copy.copy(fast) == slow and copy.deepcopy(fast) == slow
        for name in [f.name for f in dataclasses.fields(fast)] + ["other"]:
            with pytest.raises((dataclasses.FrozenInstanceError, AttributeError)):
                setattr(fast, name, ())
            with pytest.raises((dataclasses.FrozenInstanceError, AttributeError)):
                delattr(fast, name)
        assert fast == slow
        first = dataclasses.fields(fast)[0].name
        assert dataclasses.replace(fast, **{first: "x"}) != slow
    # the defaults survive the remake
    assert Buffer("memfd:1", "memfd", 1) == new_buffer("memfd:1", "memfd", 1, None, None, None, None,
                                                       None, (), 0, 0, None, None)
    assert Ref("memfd:1") == new_ref("memfd:1", (), (), None)
    b = Buffer(*args)
    c = with_category(b, "gl")
    assert type(c) is Buffer and c == dataclasses.replace(b, category="gl") and b.category is None


def test_hand_made_constructors_take_every_field():
    """new_buffer and new_ref are written out by hand: their parameters are the classes'
    fields, in order, with the same defaults, and with_category copies every field (so a
    field added to Buffer or Ref cannot be forgotten there)."""
    import dataclasses
    import inspect

    from memtrack.model import Buffer, Ref, new_buffer, new_ref, with_category
    for make, cls in ((new_buffer, Buffer), (new_ref, Ref)):
        params = [(p.name, p.kind, p.default) for p in inspect.signature(make).parameters.values()]
        want = [(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                 inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default)
                for f in dataclasses.fields(cls)]
        assert params == want, cls
        values = [object() for _ in want]      # each field its own value, to see it copied
        made = make(*values)
        assert [getattr(made, f.name) for f in dataclasses.fields(cls)] == values
    b = new_buffer(*[object() for _ in dataclasses.fields(Buffer)])
    c = with_category(b, "gl")
    for f in dataclasses.fields(Buffer):
        assert getattr(c, f.name) is ("gl" if f.name == "category" else getattr(b, f.name)), f.name


def test_no_generated_code_or_class_reassignment():
    """Issue 16: the package makes no code with exec/eval/compile and never reassigns an
    object's __class__ (the instances a debugger or profiler sees are what they say)."""
    import ast
    import pathlib

    import memtrack
    found = []
    for path in sorted(pathlib.Path(memtrack.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("exec", "eval", "compile")):
                found.append(f"{path.name}:{node.lineno}: {node.func.id}()")
            targets = (node.targets if isinstance(node, ast.Assign)
                       else [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else [])
            for t in targets:
                if isinstance(t, ast.Attribute) and t.attr == "__class__":
                    found.append(f"{path.name}:{node.lineno}: __class__ assigned")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "__setattr__" and len(node.args) >= 2
                    and isinstance(node.args[1], ast.Constant) and node.args[1].value == "__class__"):
                found.append(f"{path.name}:{node.lineno}: __class__ set")
    assert found == []


def test_slotted_model_keeps_weak_references_and_subclasses():
    """What the unslotted classes allowed still works: weak references to a Buffer or Ref,
    and categorize() on a caller's subclass of Buffer keeps its class and its own fields."""
    import dataclasses
    import gc
    import weakref

    from memtrack.categories import categorize, parse_rules
    from memtrack.model import Buffer, Ref, Snapshot, new_buffer, with_category
    makers = (lambda: Buffer("memfd:1", "memfd", 1), lambda: Ref("memfd:1"),
              lambda: new_buffer("memfd:2", "memfd", 2, None, None, None, None, None, (), 0, 0,
                                 None, None))
    for make in makers:
        obj = make()
        ref = weakref.ref(obj)
        assert ref() is obj
        del obj
        gc.collect()
        assert ref() is None

    @dataclasses.dataclass(frozen=True)
    class Tagged(Buffer):
        tag: str = "keep"

    t = Tagged("memfd:3", "memfd", 3, name="wayland-shm", tag="mine")
    c = with_category(t, "gl")
    assert type(c) is Tagged and c.tag == "mine" and c.category == "gl" and c.name == "wayland-shm"
    rules, _ = parse_rules('[[rule]]\ncategory = "wl"\nname = "wayland-*"\n')
    got = categorize(Snapshot(taken_at="", source="live", buffers=(t,)), rules).buffers
    assert [type(x) for x in got] == [Tagged] and got[0].tag == "mine" and got[0].category == "wl"


def test_in_order_is_order_key_order():
    """The C-sorted path gives order_key's order wherever it is taken, and falls back where
    it cannot be sure (anonymous dma-bufs, a shared inode, a kind outside KINDS)."""
    from memtrack.build import _in_order, _shared_ids, order_key
    rnd = random.Random(7)
    cases = [
        [("memfd", "00:01", i) for i in rnd.sample(range(10 ** 6), 50)],
        [(k, fs, rnd.randrange(10 ** 6)) for k, fs in
         [("sysv", "sysv"), ("memfd", "00:01"), ("dmabuf", "dmabuf"), ("shm", "00:19"),
          ("shmem", "00:05"), ("ashmem", "00:1a")] * 20],
        [("memfd", "00:01", 5), ("memfd", "00:02", 5), ("shm", "00:19", 1)],      # shared
        [("dmabuf", "dmabuf", 9), ("dmabuf", "anon", (3, 4)), ("memfd", "00:01", 2)],
        [("zzz", "00:01", 3), ("memfd", "00:01", 9), ("zzz", "00:01", 1)],
        [("shmem", None, 4), ("shm", "00:19", 4), ("shmem", None, 2)],
        [],
    ]
    for keys in cases:
        accs = dict.fromkeys(keys)
        assert _in_order(accs, _shared_ids(accs)) == sorted(accs, key=order_key), keys


def test_slotted_model_reads_the_states_older_pickles_hold():
    """A Buffer or Ref pickled before they had slots carries a dict of its fields: it loads
    as the same value; a state that does not name exactly the fields is refused."""
    import dataclasses

    from memtrack.model import Buffer, Ref
    b = Buffer("memfd:1", "memfd", 1, size=10)
    d = dataclasses.asdict(b)
    for state in (d, (d, None), (None, d), list(d.values())):
        got = Buffer.__new__(Buffer)
        got.__setstate__(state)
        assert got == b
    for bad in (dict(d, extra=1), {"id": "x"}, list(d.values())[:3]):
        with pytest.raises(TypeError):
            Buffer.__new__(Buffer).__setstate__(bad)
    r = Ref("memfd:1", (3,))
    got = Ref.__new__(Ref)
    got.__setstate__(dataclasses.asdict(r))
    assert got == r
