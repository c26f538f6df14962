"""The archive fuzzer in CI: a bounded run of fuzz/fuzz_archive.py under atheris (coverage
guided, libFuzzer) when atheris is installed, else a hypothesis-driven mutation of the same
seeds through the same harness. Either way: no input may raise anything but SourceError,
break the pss invariant, change in a JSON round trip, hang (libFuzzer -timeout) or grow
past the memory limit (-rss_limit_mb)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
FUZZ_DIR = os.path.join(os.path.dirname(HERE), "fuzz")
RUNS = int(os.environ.get("MEMTRACK_FUZZ_RUNS", "2000"))

try:
    import atheris  # noqa: F401
    HAVE_ATHERIS = True
except ImportError:
    HAVE_ATHERIS = False


@pytest.mark.skipif(not HAVE_ATHERIS, reason="atheris not installed: the hypothesis fallback runs instead")
def test_atheris_bounded_run(tmp_path):
    corpus = tmp_path / "corpus"
    env = dict(os.environ, PYTHONPATH=os.path.join(os.path.dirname(HERE), "src"))
    r = subprocess.run(
        [sys.executable, os.path.join(FUZZ_DIR, "fuzz_archive.py"), f"-runs={RUNS}", "-seed=1",
         "-timeout=20", "-rss_limit_mb=1536", "-max_len=200000", f"-artifact_prefix={tmp_path}/",
         "-dict=" + os.path.join(FUZZ_DIR, "archive.dict"),
         str(corpus)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    m = re.search(r"Done (\d+) runs", out)
    assert m and int(m.group(1)) >= RUNS, out[-2000:]
    assert not [f for f in os.listdir(tmp_path) if f.startswith(("crash-", "timeout-", "oom-", "leak-"))]


@pytest.mark.skipif(HAVE_ATHERIS, reason="atheris installed: the coverage-guided run is the test")
def test_hypothesis_fallback(monkeypatch):
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import given, settings, strategies as st
    sys.path.insert(0, FUZZ_DIR)
    try:
        import fuzz_archive
    finally:
        sys.path.remove(FUZZ_DIR)
    fuzz_archive.apply_caps(monkeypatch.setattr)
    pool = fuzz_archive.seeds()
    edit = st.tuples(st.floats(0, 1), st.integers(0, 64), st.binary(max_size=24))

    @settings(max_examples=max(50, RUNS // 10), deadline=None, database=None)
    @given(st.sampled_from(range(len(pool))), st.lists(edit, max_size=6), st.floats(0, 1))
    def prop(i, edits, keep):
        b = bytearray(pool[i])
        for where, cut, data in edits:
            pos = int(where * len(b))
            b[pos:pos + cut] = data
        fuzz_archive.one_input(bytes(b[: max(1, int(keep * len(b))) if keep < 0.3 else len(b)]))
    prop()
