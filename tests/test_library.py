"""The library's front door (memtrack.scan, load, account): it chooses the backend as the
CLI does and records the choice and its reason in the snapshot."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import memtrack
from conftest import SRC
from kfixture import Tree
from memtrack import bpf
from memtrack.errors import BpfUnavailable


def cli_json(*args):
    env = dict(os.environ, PYTHONPATH=SRC)
    p = subprocess.run([sys.executable, "-m", "memtrack", "--json", "-q", *args], capture_output=True,
                       text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_scan_chooses_the_backend_and_says_why_as_the_cli_does():
    me = os.getpid()
    why = bpf.unavailable()
    auto = memtrack.scan(pids=[me])
    if why is None:
        assert (auto.backend, auto.backend_reason) == ("bpf", "auto: root, libbpf, BTF and the iterators are present")
    else:
        assert auto.backend == "procfs" and auto.backend_reason.startswith("auto: bpf unavailable: ")
    doc = cli_json("-p", str(me))
    assert (doc["backend"], doc["backend_reason"]) == (auto.backend, auto.backend_reason)
    procfs = memtrack.scan(pids=[me], backend="procfs")
    assert (procfs.backend, procfs.backend_reason) == ("procfs", "requested (--backend procfs)")
    doc = cli_json("-p", str(me), "--backend", "procfs")
    assert (doc["backend"], doc["backend_reason"]) == (procfs.backend, procfs.backend_reason)
    if why is None:
        forced = memtrack.scan(pids=[me], backend="bpf")
        assert (forced.backend, forced.backend_reason) == ("bpf", "requested (--backend bpf)")
        assert forced.buffers == procfs.buffers
    else:
        with pytest.raises(BpfUnavailable):
            memtrack.scan(pids=[me], backend="bpf")


def test_a_path_is_read_as_files_whatever_the_backend(tmp_path):
    t = Tree()
    t.proc(100, "app").memfd(3, "buf", 7, 4096)
    root = t.write_dir(str(tmp_path / "tree"))
    for backend in ("auto", "procfs"):
        snap = memtrack.scan(root, backend=backend)
        assert (snap.backend, [b.size for b in snap.buffers]) == ("procfs", [4096])
        assert snap.backend_reason == (None if backend == "auto" else "requested (--backend procfs)")
    with pytest.raises(BpfUnavailable):
        memtrack.scan(root, backend="bpf")
    with pytest.raises(ValueError, match="backend"):
        memtrack.scan(root, backend="ebpf")
