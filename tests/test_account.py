"""account() against the accounting rules of README.md written the plain way, on generated
snapshots: every per-process, per-kind and machine-wide figure, and every pss share."""
from __future__ import annotations

from collections import defaultdict

import pytest

from memtrack.account import account, pss_shares

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402

from helpers.strategies import FUZZ, snapshots  # noqa: E402

FIELDS = ("rss", "pss", "uss", "mapped", "in_rss", "buffers", "unknown")


def by_the_rules(snap):
    """({pid: {kind: figures}}, shares, held, kernel-only bytes, count, unattributed)."""
    buffers = {b.id: b for b in snap.buffers}
    shares = {b.id: pss_shares(b.size, b.holders) for b in snap.buffers if b.size is not None and b.holders}
    usage = {}
    for p in snap.processes:
        kinds = defaultdict(lambda: dict.fromkeys(FIELDS, 0))
        for r in p.refs:
            b = buffers[r.buffer]
            u = kinds[b.kind]
            u["buffers"] += 1
            u["mapped"] += sum(end - start for start, end, _ in r.vmas)
            if b.size is None:
                u["unknown"] += 1
                continue
            u["rss"] += b.size
            u["in_rss"] += r.in_rss or 0
            u["pss"] += shares[b.id][p.pid]
            u["uss"] += b.size if b.holders == (p.pid,) else 0
        usage[p.pid] = dict(kinds)
    held = sum(b.size for b in snap.buffers if b.holders and b.size is not None)
    unheld = [b for b in snap.buffers if not b.holders]
    surely = [b for b in unheld if (b.kind == "sysv" and not b.kernel_count) or (b.kind != "sysv" and snap.complete)]
    knowable = snap.complete and snap.kernel.dmabuf_source is not None
    return (usage, shares, held, sum(b.size or 0 for b in surely) if knowable else None,
            len(surely) if knowable else None,
            sum(b.size or 0 for b in unheld if all(b is not s for s in surely)))


def figures(u):
    return {f: getattr(u, f) for f in FIELDS}


@FUZZ
@given(snapshots())
def test_account_follows_the_rules(snap):
    acct = account(snap)
    usage, shares, held, ko_bytes, ko_count, unattributed = by_the_rules(snap)
    assert {pid: {k: figures(u) for k, u in pu.by_kind.items()} for pid, pu in acct.processes.items()} == usage
    for pid, pu in acct.processes.items():
        assert figures(pu.total) == {f: sum(u[f] for u in usage[pid].values()) for f in FIELDS}
    for f in FIELDS:
        assert getattr(acct.total, f) == sum(u[f] for kinds in usage.values() for u in kinds.values())
        for kind, u in acct.by_kind.items():
            assert getattr(u, f) == sum(k[f] for kinds in usage.values() for name, k in kinds.items() if name == kind)
    assert acct.shares == shares
    assert (acct.held_bytes, acct.kernel_only_bytes, acct.kernel_only_buffers, acct.unattributed_bytes) == \
        (held, ko_bytes, ko_count, unattributed)
