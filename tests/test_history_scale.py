"""Long histories: record has a floor on its interval, the analysis works per span (exactly,
even on a 2^64 level), plots sample the spans, and long jobs say what they are doing on a
terminal. Speed itself is measured by bench/history_scale.py, not asserted here."""
from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
from fractions import Fraction

from livehelpers import SRC, run_memtrack
from helpers.snapshots import MFD, snap

from memtrack.history import Recorder, load, trend
from memtrack.views import timeline as tl

U64 = 2 ** 64 - 1


def _count(db):
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT count(*) FROM snapshots").fetchone()[0]
    finally:
        con.close()


def test_record_interval_has_a_floor(tmp_path):
    db = str(tmp_path / "h.db")
    # -i 0 used to scan back to back: hundreds of snapshots a second
    r = run_memtrack("record", "-o", db, "-i", "0", "--duration", "1s", "-p", str(os.getpid()))
    assert r.returncode == 0, r.stderr
    n = _count(db)
    assert 1 <= n <= 11, n                          # 0, 0.1, ... 1.0 s at most
    assert "below the floor; recording every 0.1 s" in r.stderr and f"recorded {n} snapshots" in r.stderr
    q = run_memtrack("record", "-o", db, "-i", "10ms", "-n", "1", "-q", "-p", str(os.getpid()))
    assert q.returncode == 0 and "floor" not in q.stderr
    assert "at least 0.1" in run_memtrack("record", "--help").stdout


def _exact_slope(times, values):
    t = [Fraction(x) - Fraction(times[0]) for x in times]
    n = len(t)
    st, sv = sum(t), sum(values)
    cov = n * sum(a * b for a, b in zip(t, values)) - st * sv
    return float(cov / (n * sum(a * a for a in t) - st * st))


def test_trend_is_exact_on_a_level_beyond_64_bits():
    times = [1.7e9 + i * 0.1 for i in range(50)]
    leak = [2 * U64 + i * 4096 for i in range(50)]          # 2 x 2^64 held, 4 KiB more each time
    tr = trend(times, leak)
    # float sums of the raw values cancel out: r2 came out 0 and the leak went unseen
    assert tr.steady_growth and tr.r2 > 0.999
    assert abs(tr.slope - _exact_slope(times, leak)) < 1e-6 * 40960
    assert (tr.start, tr.end, tr.peak, tr.growth) == (2 * U64, 2 * U64 + 49 * 4096, 2 * U64 + 49 * 4096, 49 * 4096)
    # a short window at the end of a long history: no rounding of sums over the whole of it
    long = [1.7e9 + i * 0.1 for i in range(300000)]
    late = [None] * (len(long) - 10) + [i * 4096 for i in range(10)]
    tr = trend(long, late)
    assert tr.steady_growth and abs(tr.slope - 40960) < 1e-3 and tr.r2 > 0.999
    flat = trend(times, [U64] * 25 + [None] * 5 + [U64] * 20)
    assert (flat.rises, flat.drops, flat.slope, flat.steady_growth) == (0, 0, 0.0, False)


def _random_history(db, n=300, seed=3):
    rnd = random.Random(seed)
    rec = Recorder(db)
    try:
        held = {100: set(), 101: set(), 102: set()}
        for i in range(n):
            if rnd.random() < 0.2:
                pid = rnd.choice(list(held))
                held[pid] ^= {rnd.randrange(6)}
            bufs = {f"memfd:{k}": dict(inode=k, size=(U64 if k == 5 else (k + 1) * 4096), name=f"b{k}", **MFD)
                    for k in range(6)}
            procs = {pid: (f"p{pid}", {f"memfd:{k}": ([3 + k], []) for k in ks})
                     for pid, ks in held.items() if ks}
            rec.add(snap(bufs, procs), t=1.7e9 + i)
    finally:
        rec.close()
    return load(db)


def test_sampled_series_are_the_dense_ones_at_the_samples(tmp_path):
    h = _random_history(str(tmp_path / "h.db"))
    idx = tl.sample(len(h), limit=37)
    assert len(idx) == 37 and idx[0] == 0 and idx[-1] == len(h) - 1
    for spans in list(h.usage.values()) + list(h.categories.values()):
        for col in range(len(spans[0][2])):
            dense = h.series(spans, col)
            assert h.sampled(spans, col, idx) == tl.pick(dense, idx)
            assert [v for i0, i1, v in h.value_runs(spans, col) for _ in range(i0, i1 + 1)] == dense
    labels, series, keep = tl.by_process(h, top=1, idx=idx)
    full = tl.by_process(h, top=1)
    assert labels == full[0] and keep == full[2] and series == [tl.pick(s, idx) for s in full[1]]
    assert tl.by_category(h, idx)[1] == [tl.pick(s, idx) for s in tl.by_category(h)[1]]


def test_long_jobs_show_progress_on_a_terminal_only(tmp_path):
    db = str(tmp_path / "h.db")
    _random_history(db, n=20)
    master, slave = os.openpty()
    try:
        p = subprocess.run([sys.executable, "-m", "memtrack", "report", db], stdout=subprocess.PIPE,
                           stderr=slave, env=dict(os.environ, PYTHONPATH=SRC), timeout=120)
        os.close(slave)
        slave = None
        seen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:                         # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if slave is not None:
            os.close(slave)
        os.close(master)
    assert p.returncode == 0 and b"suspected leaks" in p.stdout
    assert b"memtrack: reading 20 snapshots ..." in seen and b"analyzing 20 snapshots" in seen
    assert seen.endswith(b"\r\x1b[K")                  # the status line is cleared at the end
    piped = run_memtrack("report", db)
    assert piped.returncode == 0 and "\r" not in piped.stderr and "reading" not in piped.stderr
