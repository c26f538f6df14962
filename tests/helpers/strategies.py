"""Hypothesis strategies the tests share: the `memtrack` settings profile (FUZZ), text as
sources hand it to the parsers (CHARS), and valid snapshots (snapshots())."""
from __future__ import annotations

import os
from collections import defaultdict

from hypothesis import HealthCheck, settings, strategies as st

from memtrack.model import KINDS, Buffer, Host, KernelInfo, Process, Ref, Skipped, Snapshot

U64 = 1 << 64
_examples = int(os.environ.get("MEMTRACK_FUZZ_EXAMPLES", "0")) or \
    (5000 if os.environ.get("MEMTRACK_FUZZ") == "long" else 60)
settings.register_profile("memtrack", max_examples=_examples, deadline=None, derandomize=False,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FUZZ = settings.get_profile("memtrack")


# What sources hand the parsers: any text, with undecodable bytes as \udc80-\udcff
# (surrogateescape), never other surrogates.
CHARS = st.one_of(st.characters(blacklist_categories=("Cs",)),
                  st.sampled_from([chr(c) for c in range(0xDC80, 0xDD00)]))

NAT = st.integers(0, 1 << 45)
OPT_TEXT = st.one_of(st.none(), st.text(CHARS, max_size=20))


@st.composite
def snapshots(draw):
    smaps = draw(st.booleans())
    pids = draw(st.lists(st.integers(1, 1 << 22), unique=True, max_size=6))
    refs = defaultdict(list)
    buffers = []
    for i in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(KINDS))
        inode = draw(st.integers(0, U64 - 1))
        bid = f"{kind}:{inode}" if all(not b.id.startswith(f"{kind}:{inode}") for b in buffers) \
            else f"{kind}:{inode}@{i}"
        holders = sorted(draw(st.sets(st.sampled_from(pids), max_size=len(pids)))) if pids else []
        nfds = nmaps = 0
        for pid in holders:
            fds = tuple(sorted(draw(st.lists(st.integers(0, 1 << 20), max_size=3))))
            vmas = []
            for _ in range(draw(st.integers(0 if fds else 1, 2))):
                start = draw(st.integers(0, U64 - 2))
                vmas.append((start, draw(st.integers(start, U64 - 1)), draw(st.integers(0, U64 - 1))))
            nfds += len(fds)
            nmaps += len(vmas)
            refs[pid].append(Ref(bid, fds, tuple(sorted(vmas)), draw(st.one_of(st.none(), NAT)) if smaps else None))
        buffers.append(Buffer(
            id=bid, kind=kind, inode=inode, dev=draw(st.one_of(st.none(), st.just("00:01"))),
            size=draw(st.one_of(st.none(), NAT)), exporter=draw(OPT_TEXT), name=draw(OPT_TEXT),
            category=draw(OPT_TEXT), holders=tuple(holders), fd_refs=nfds, map_refs=nmaps,
            kernel_count=draw(st.one_of(st.none(), NAT)), size_from=draw(OPT_TEXT)))
    procs = tuple(Process(pid, draw(st.text(CHARS, max_size=15)), draw(st.text(CHARS, max_size=40)),
                          draw(st.one_of(st.none(), st.integers(0, (1 << 32) - 1))), tuple(refs[pid]))
                  for pid in sorted(refs))
    return Snapshot(
        taken_at=draw(st.text(CHARS, max_size=20)), source=draw(st.text(CHARS, max_size=20)),
        host=Host(draw(OPT_TEXT), draw(OPT_TEXT)), backend=draw(st.sampled_from(["procfs", "bpf"])),
        scope=draw(st.sampled_from(["all", "pids"])), smaps=smaps, buffers=tuple(buffers), processes=procs,
        kernel=KernelInfo(draw(st.sampled_from([None, "debugfs", "sysfs"])), draw(st.one_of(st.none(), NAT)),
                          draw(st.one_of(st.none(), NAT)), draw(st.sampled_from([None, "sysvipc"]))),
        skipped=Skipped(*(tuple(sorted(draw(st.sets(st.integers(1, 1 << 22), max_size=3)))) for _ in range(3))),
        notes=tuple(draw(st.lists(st.text(CHARS, max_size=30), max_size=3))))
