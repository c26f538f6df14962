"""`memtrack serve` and `memtrack textfile`: the live endpoint parsed with prometheus_client's
parser, single-flight scans counted (never timed), a bad --listen, atomic textfiles."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import urllib.request
from types import SimpleNamespace

import pytest

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import memtrack  # noqa: E402
from memtrack.exporter import SingleFlight  # noqa: E402
from memtrack.views.prometheus import families, gpu_resident, render  # noqa: E402

from remote_util import SRC, Holders  # noqa: E402

MiB = 1 << 20
REPO = os.path.dirname(SRC)
ENV = dict(os.environ, PYTHONPATH=SRC)


# the metrics sum processes by comm: one of this run's own, so that another suite's holders,
# running at the same time, do not add to it
COMM = "mt-h%d" % (os.getpid() % 10 ** 8)


@pytest.fixture(scope="module")
def holders():
    h = Holders(comm=COMM)
    yield h
    h.close()


class Server:
    def __init__(self, *args):
        self.proc = subprocess.Popen([sys.executable, "-m", "memtrack", "serve", "--listen", "127.0.0.1:0"]
                                     + list(args), stderr=subprocess.PIPE, text=True, env=ENV)
        line = self.proc.stderr.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", line)
        if not m:
            self.close()
            raise AssertionError(f"serve did not start: {line!r}")
        self.url = f"http://127.0.0.1:{m.group(1)}/metrics"

    def scrape(self) -> str:
        with urllib.request.urlopen(self.url, timeout=120) as r:
            assert r.status == 200
            return r.read().decode()

    def close(self) -> str:
        """Stop the server; returns what it said on stderr after starting."""
        self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err or ""


def samples(text):
    """name -> list of (labels, value), through prometheus_client's own parser."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def holder_pss(s, comm=COMM):
    return {lab["kind"]: v for lab, v in s["memtrack_process_pss_bytes"] if lab["comm"] == comm}


def test_live_endpoint(holders):
    srv = Server("--min-interval", "3600")
    try:
        s = samples(srv.scrape())
    finally:
        srv.close()
    assert s["memtrack_up"] == [({}, 1.0)]
    # parent and child share every buffer: together they hold each once
    assert holder_pss(s) == {"memfd": 16 * MiB, "shm": 2 * MiB, "sysv": 5 * MiB, "shmem": 4 * MiB}
    assert all("pid" not in lab for lab, _ in s["memtrack_process_pss_bytes"])
    assert ({"comm": COMM}, 2.0) in s["memtrack_processes"]
    sizes = {}
    for lab, v in s["memtrack_buffer_bytes"]:
        assert set(lab) == {"kind", "category", "exporter"}
        sizes[lab["kind"]] = sizes.get(lab["kind"], 0) + v
    assert sizes["memfd"] >= 16 * MiB and sizes["sysv"] >= 5 * MiB
    assert sorted(lab["reason"] for lab, _ in s["memtrack_scrape_skipped_processes"]) == \
        ["denied", "unreadable", "vanished"]
    assert s["memtrack_scrape_duration_seconds"][0][1] > 0
    assert s["memtrack_held_bytes"][0][1] >= 27 * MiB
    assert s["memtrack_scans_total"] == [({}, 1.0)]


def test_per_pid(holders):
    srv = Server("--per-pid", "--min-interval", "3600")
    try:
        s = samples(srv.scrape())
    finally:
        srv.close()
    got = {}
    for lab, v in s["memtrack_process_pss_bytes"]:
        if lab["comm"] == COMM:
            got[int(lab["pid"])] = got.get(int(lab["pid"]), 0) + v
    assert got == {holders.pid: 27 * MiB / 2, holders.child: 27 * MiB / 2}


def test_fifty_concurrent_scrapes_one_scan(holders):
    srv = Server("--min-interval", "3600")
    results, errors = [], []
    barrier = threading.Barrier(50)

    def scrape():
        try:
            barrier.wait()
            results.append(samples(srv.scrape()))
        except Exception as exc:        # noqa: BLE001 - reported below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=scrape) for _ in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not errors, errors[:3]
        assert len(results) == 50
        after = samples(srv.scrape())
    finally:
        srv.close()
    assert after["memtrack_scans_total"] == [({}, 1.0)]
    assert {r["memtrack_scans_total"][0][1] for r in results} == {1.0}
    assert all(holder_pss(r) == holder_pss(after) for r in results)


def test_single_flight_shares_a_run_in_flight(holders):
    """min_interval 0: every call wants a fresh scan, yet the 49 that arrive while one runs
    share it. The scan itself is real; it only waits until the others are waiting."""
    box = {}

    def produce():
        if box.pop("gate", False):
            with cond:
                ok = cond.wait_for(lambda: box["flight"].waiting == 49, timeout=120)
            assert ok, f"only {box['flight'].waiting} callers waiting"
        return memtrack.scan(None, pids=holders.pids)

    cond = threading.Condition()
    flight = box["flight"] = SingleFlight(produce, min_interval=0)
    box["gate"] = True
    got = []

    def call():
        got.append(flight.get())

    def poke():
        while len(got) < 50 and not stop.is_set():
            with cond:
                cond.notify_all()
            stop.wait(0.01)

    stop = threading.Event()
    poker = threading.Thread(target=poke)
    poker.start()
    threads = [threading.Thread(target=call) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    stop.set()
    poker.join()
    assert flight.runs == 1
    assert len(got) == 50 and len({id(x) for x in got}) == 1
    assert sorted(p.pid for p in got[0].processes) == sorted(holders.pids)
    flight.get()                         # nothing in flight, interval 0: a new run
    assert flight.runs == 2
    slow = SingleFlight(lambda: object(), min_interval=3600)
    first = slow.get()
    assert slow.get() is first and slow.runs == 1


@pytest.mark.parametrize("listen,text", [
    ("nope:x", "the port must be a number"),
    ("127.0.0.1:99999", "the port must be a number"),
    ("::1:80", "put an IPv6 address in brackets"),
    ("[::1", "want [ADDRESS]:PORT"),
    ("192.0.2.1:9846", "cannot listen on 192.0.2.1:9846"),
    # ports are ASCII digits, and every interface is bound only when named
    (":\u0663", "the port must be a number from 0 to 65535"),        # ARABIC-INDIC DIGIT THREE
    ("127.0.0.1:\u0663", "the port must be a number from 0 to 65535"),
    ("\uff19\uff18\uff14\uff16", "the port must be a number from 0 to 65535"),  # fullwidth 9846
    ("127.0.0.1:+80", "the port must be a number from 0 to 65535"),
    ("127.0.0.1: 80", "the port must be a number from 0 to 65535"),
    (":9846", "name the address: 127.0.0.1:9846 for this machine, 0.0.0.0:9846 or [::]:9846"),
    ("[]:9846", "name the address"),
    ("\u0661\u0662\u0667.0.0.1:9846", "not a host name or address"),
    ("local host:9846", "not a host name or address"),
])
def test_bad_listen(listen, text):
    p = subprocess.run([sys.executable, "-m", "memtrack", "serve", "--listen", listen],
                       capture_output=True, text=True, env=ENV, timeout=60)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and text in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_listen_in_use():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        port = s.getsockname()[1]
        p = subprocess.run([sys.executable, "-m", "memtrack", "serve", "--listen", f"127.0.0.1:{port}"],
                           capture_output=True, text=True, env=ENV, timeout=60)
    finally:
        s.close()
    assert p.returncode == 2
    assert p.stderr == f"memtrack: cannot listen on 127.0.0.1:{port}: Address already in use\n"


def test_textfile_cli(holders, tmp_path):
    out = tmp_path / "memtrack.prom"
    p = subprocess.run([sys.executable, "-m", "memtrack", "textfile", "-q", "-o", str(out)],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 0, p.stderr
    assert os.listdir(tmp_path) == ["memtrack.prom"]
    assert oct(os.stat(out).st_mode & 0o777) == "0o644"
    s = samples(out.read_text())
    assert holder_pss(s) == {"memfd": 16 * MiB, "shm": 2 * MiB, "sysv": 5 * MiB, "shmem": 4 * MiB}
    assert "memtrack_scans_total" not in s and "memtrack_up" not in s
    p = subprocess.run([sys.executable, "-m", "memtrack", "textfile", "-o", str(tmp_path)],
                       capture_output=True, text=True, env=ENV, timeout=60)
    assert p.returncode == 2 and "is a directory" in p.stderr and p.stderr.count("\n") == 1


def test_textfile_is_never_seen_half_written(holders, tmp_path):
    """A reader polling while the file is rewritten 300 times sees one of the two complete
    texts every time, never a prefix or a mix; no temp file is left behind."""
    from memtrack.cli.commands.textfile import write
    snap = memtrack.scan(None)
    texts = [render(families(snap, scan_seconds=0.5)), render(families(snap, per_pid=True, scan_seconds=0.25))]
    assert len(texts[0]) != len(texts[1])
    out = str(tmp_path / "memtrack.prom")
    write(out, texts[0])
    stop = threading.Event()
    seen, bad = set(), []

    def reader():
        while not stop.is_set():
            with open(out, "rb") as f:
                data = f.read()
            if data in texts:
                seen.add(texts.index(data))
            else:
                bad.append(len(data))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(300):
            write(out, texts[i % 2])
    finally:
        stop.set()
        t.join()
    assert not bad, f"{len(bad)} partial reads, sizes {bad[:5]}"
    assert seen == {0, 1}
    assert os.listdir(tmp_path) == ["memtrack.prom"]


def test_gpu_resident_reads_either_shape_and_dedupes_clients():
    region = SimpleNamespace(total=10, resident=4)
    snap = SimpleNamespace(gpu=[
        {"pid": 1, "driver": "amdgpu", "pdev": "0000:03:00.0", "client_id": 7,
         "regions": {"vram": {"total": 100, "resident": 60}, "gtt": {"resident": 5}}},
        {"pid": 2, "driver": "amdgpu", "pdev": "0000:03:00.0", "client_id": 7,    # same client, 2nd holder
         "regions": {"vram": {"total": 100, "resident": 60}}},
        {"pid": 3, "driver": "amdgpu", "pdev": "0000:03:00.0", "client_id": 8,
         "regions": {"vram": {"resident": 1}}},
        SimpleNamespace(pid=4, driver="i915", pdev="0000:00:02.0", client_id=1, regions={"system0": region}),
        {"driver": "xe", "regions": {"vram0": {"total": 3}}},                      # no resident key
    ])
    assert gpu_resident(snap) == {("amdgpu", "0000:03:00.0", "vram"): 61, ("amdgpu", "0000:03:00.0", "gtt"): 5,
                                  ("i915", "0000:00:02.0", "system0"): 4}
    assert gpu_resident(SimpleNamespace()) == {}


def test_grafana_dashboard_uses_only_exported_metrics(holders):
    with open(os.path.join(REPO, "contrib", "grafana", "memtrack.json")) as f:
        dash = json.load(f)
    exprs = []

    def walk(o):
        if isinstance(o, dict):
            if isinstance(o.get("expr"), str):
                exprs.append(o["expr"])
            if isinstance(o.get("query"), str):
                exprs.append(o["query"])
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(dash)
    used = {m for e in exprs for m in re.findall(r"\bmemtrack_[a-z_]+", e)}
    from memtrack.model import KernelInfo, Snapshot
    full = Snapshot(kernel=KernelInfo(dmabuf_source="debugfs", dmabuf_exported_bytes=0, dmabuf_exported_count=0))
    assert full.complete               # so kernel-only is known and its gauge present
    exported = {f.name for f in families(full, scan_seconds=1.0)} | {"memtrack_up", "memtrack_scans"}
    exported |= {n + "_total" for n in exported}
    assert used, "the dashboard queries no memtrack metric"
    assert used <= exported, used - exported
    for needed in ("memtrack_buffer_bytes", "memtrack_process_pss_bytes", "memtrack_kernel_only_bytes",
                   "memtrack_gpu_resident_bytes", "memtrack_scrape_duration_seconds",
                   "memtrack_scrape_skipped_processes"):
        assert needed in used, needed


def test_serve_refuses_a_source_it_cannot_read(tmp_path):
    p = subprocess.run([sys.executable, "-m", "memtrack", "serve", "--root", str(tmp_path / "nope.tar.gz"),
                        "--listen", "127.0.0.1:0"], capture_output=True, text=True, env=ENV, timeout=60)
    assert p.returncode == 2
    assert p.stderr == f"memtrack: {tmp_path / 'nope.tar.gz'}: no such file or directory\n"


def test_serve_says_up_0_when_its_source_goes(holders, tmp_path):
    """A capture served with --root, deleted while serving: memtrack_up 0, the reason said
    once on stderr, the server still answers."""
    cap = tmp_path / "cap.tar.gz"
    p = subprocess.run([sys.executable, "-m", "memtrack", "capture", "-q", "-p",
                        ",".join(map(str, holders.pids)), "-o", str(cap)], capture_output=True, text=True,
                       env=ENV, timeout=120)
    assert p.returncode == 0, p.stderr
    srv = Server("--root", str(cap), "--min-interval", "0")
    try:
        before = samples(srv.scrape())
        os.unlink(cap)
        after = [samples(srv.scrape()) for _ in range(3)]
    finally:
        err = srv.close()
    assert err.count("memtrack: scan failed:") == 1 and "no such file or directory" in err, err
    assert before["memtrack_up"] == [({}, 1.0)]
    assert holder_pss(before)["memfd"] == 16 * MiB
    for s in after:
        assert s["memtrack_up"] == [({}, 0.0)]
        assert "memtrack_process_pss_bytes" not in s
    assert after[-1]["memtrack_scans_total"][0][1] >= 4


def test_textfile_of_a_fixture_exact_numbers(tmp_path):
    """dma-bufs by exporter, kernel-only bytes and GPU resident memory, from a tree in the
    kernel's formats: one amdgpu client shared by two processes counts once."""
    import kfixture
    amd = kfixture.fdinfo_generic(1082, "02100002", 24) + (
        "drm-driver:\tamdgpu\ndrm-client-id:\t30\ndrm-pdev:\t0000:04:00.0\n"
        "drm-total-vram:\t36152 KiB\ndrm-resident-vram:\t36152 KiB\n"
        "drm-total-gtt:\t15892 KiB\ndrm-resident-gtt:\t15892 KiB\ndrm-engine-gfx:\t4087540 ns\n")
    t = kfixture.Tree()
    t.proc(100, "compositor").dmabuf(3, 7, 8 * MiB, "system", "fb0").fd(4, "/dev/dri/renderD128", amd)
    t.proc(101, "game").dmabuf(5, 7, 8 * MiB, "system", "fb0").fd(6, "/dev/dri/renderD128", amd) \
        .dmabuf(7, 9, 3 * MiB, "amdgpu")
    t.bufinfo([{"size": 8 * MiB, "exporter": "system", "ino": 7, "count": 2, "name": "fb0"},
               {"size": 3 * MiB, "exporter": "amdgpu", "ino": 9},
               {"size": 5 * MiB, "exporter": "amdgpu", "ino": 11}])      # held by no process
    root = t.write_dir(str(tmp_path / "tree"))
    out = tmp_path / "m.prom"
    p = subprocess.run([sys.executable, "-m", "memtrack", "--root", root, "textfile", "-q", "-o", str(out)],
                       capture_output=True, text=True, env=ENV, timeout=60)
    assert p.returncode == 0, p.stderr
    s = samples(out.read_text())
    by_exp = {}
    for lab, v in s["memtrack_buffer_bytes"]:
        by_exp[(lab["kind"], lab["exporter"])] = by_exp.get((lab["kind"], lab["exporter"]), 0) + v
    assert by_exp == {("dmabuf", "system"): 8 * MiB, ("dmabuf", "amdgpu"): 8 * MiB}
    assert s["memtrack_kernel_only_bytes"] == [({}, 5 * MiB)]
    assert s["memtrack_held_bytes"] == [({}, 11 * MiB)]
    assert s["memtrack_dmabuf_exported_bytes"] == [({}, 16 * MiB)]
    assert {(lab["comm"], lab["kind"]): v for lab, v in s["memtrack_process_pss_bytes"]} == \
        {("compositor", "dmabuf"): 4 * MiB, ("game", "dmabuf"): 7 * MiB}
    assert {(lab["driver"], lab["device"], lab["region"]): v for lab, v in s["memtrack_gpu_resident_bytes"]} == \
        {("amdgpu", "0000:04:00.0", "vram"): 36152 * 1024, ("amdgpu", "0000:04:00.0", "gtt"): 15892 * 1024}


def test_without_prometheus_client_one_line(tmp_path):
    """The core stays stdlib-only: on a Python without prometheus_client (3.9 -S here), serve
    and textfile say what to install, in one line, exit 2."""
    from helpers.pythons import PY39
    if PY39 is None:
        pytest.skip("no Python 3.9 interpreter on this machine")
    for args in (["serve"], ["textfile", "-o", str(tmp_path / "m.prom")]):
        p = subprocess.run([PY39, "-S", "-m", "memtrack"] + args, capture_output=True, text=True,
                           env=ENV, timeout=60)
        assert p.returncode == 2
        assert p.stderr == "memtrack: prometheus_client is not installed: pip install 'memtrack[prometheus]'\n"
    assert os.listdir(tmp_path) == []
