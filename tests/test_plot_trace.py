"""plot (PNG/SVG with the expected series) and export-trace (Chrome trace-event JSON)."""
from __future__ import annotations

import json
import struct
import xml.etree.ElementTree as ET
import zlib
from dataclasses import replace

import pytest

from livehelpers import run_memtrack
from helpers.snapshots import MFD, snap

from memtrack.history import Recorder

KIB = 1024


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """app (pid 100) leaks a 64 KiB memfd per step; comp (200) shares a dma-buf with app;
    a third process holds a memfd for steps 2-3 only."""
    db = str(tmp_path_factory.mktemp("h") / "h.db")
    rec = Recorder(db)
    for i in range(6):
        bufs = {"dmabuf:1": dict(kind="dmabuf", inode=1, size=1 << 20, exporter="system", name="scanout",
                                 category="GRAPHICS")}
        app = {"dmabuf:1": ([4], [])}
        for j in range(i + 1):
            bufs[f"memfd:{10 + j}"] = dict(inode=10 + j, size=64 * KIB, name=f"leak-{j}", **MFD)
            app[f"memfd:{10 + j}"] = ([5 + j], [])
        procs = {100: ("app", app), 200: ("comp", {"dmabuf:1": ([7], [])})}
        if i in (2, 3):
            bufs["memfd:99"] = dict(inode=99, size=4 * KIB, name="tmp", **MFD)
            procs[300] = ("blip", {"memfd:99": ([3], [])})
        s = snap(bufs, procs)
        rec.add(replace(s, kernel=replace(s.kernel, dmabuf_source="debugfs")), t=1000.0 + i)
    rec.close()
    return db


def png_chunks(data: bytes):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, out = 8, []
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        crc, = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc, kind
        out.append((kind, body))
        pos += 12 + n
    assert out[0][0] == b"IHDR" and out[-1][0] == b"IEND"
    return out


def test_plot_png_is_valid_and_names_its_series(history, tmp_path):
    pytest.importorskip("matplotlib")
    out = str(tmp_path / "p.png")
    r = run_memtrack("plot", history, "-o", out, "--top", "2")
    assert r.returncode == 0, r.stderr
    data = open(out, "rb").read()
    chunks = png_chunks(data)
    w, h = struct.unpack(">II", chunks[0][1][:8])
    assert w > 400 and h > 300
    text = {k: v for kind, body in chunks if kind == b"tEXt" for k, v in [body.split(b"\0", 1)]}
    meta = json.loads(text[b"Description"])
    # by peak pss: app (64 KiB x 6 + half the dma-buf), comp (half the dma-buf), then the rest
    assert meta["series"] == ["100 app", "200 comp", "rest (1 processes)"]
    assert meta["timeline"] == "100 app"
    import matplotlib.image
    img = matplotlib.image.imread(out)          # decodes every pixel: the IDAT stream is whole
    assert img.shape[0] == h and img.shape[1] == w


def test_plot_svg_has_one_area_per_series(history, tmp_path):
    pytest.importorskip("matplotlib")
    out = str(tmp_path / "p.svg")
    r = run_memtrack("plot", history, "-o", out, "--by", "category", "--timeline", "200")
    assert r.returncode == 0, r.stderr
    root = ET.parse(out).getroot()
    ids = {el.get("id") for el in root.iter() if el.get("id")}
    assert {"series-0", "series-1"} <= ids and "series-2" not in ids
    assert {"timeline-rss", "timeline-pss", "timeline-uss", "timeline-buffers"} <= ids
    texts = {"".join(el.itertext()).strip() for el in root.iter() if el.tag.endswith("text")}
    assert {"GRAPHICS", "memfd"} <= texts
    assert "timeline of 200 comp" in texts


def test_plot_errors_are_one_line(history, tmp_path):
    r = run_memtrack("plot", history, "-o", str(tmp_path / "p.jpg"))
    assert r.returncode == 2 and "png or .svg" in r.stderr and r.stderr.count("\n") == 1
    r = run_memtrack("plot", history, "-o", str(tmp_path / "p.png"), "--timeline", "4242")
    if "matplotlib" not in r.stderr:
        assert r.returncode == 2 and "4242" in r.stderr and r.stderr.count("\n") == 1


def test_export_trace_counters_and_instant_events(history, tmp_path):
    out = str(tmp_path / "t.json")
    r = run_memtrack("export-trace", history, "-o", out)
    assert r.returncode == 0, r.stderr
    doc = json.load(open(out))
    ev = doc["traceEvents"]
    for e in ev:
        assert e["ph"] in ("M", "C", "i") and isinstance(e["pid"], int) and isinstance(e["tid"], int)
        if e["ph"] != "M":
            assert isinstance(e["ts"], int) and e["ts"] >= 0
        if e["ph"] == "C":
            assert all(isinstance(v, int) for v in e["args"].values())
    names = {e["pid"]: e["args"]["name"] for e in ev if e["ph"] == "M"}
    assert names[100] == "app (app)" and names[300] == "blip (blip)" and 0 in names
    app = [e for e in ev if e["ph"] == "C" and e["pid"] == 100]
    assert [(e["ts"], e["args"]["buffers"]) for e in app] == [(i * 1_000_000, i + 2) for i in range(6)]
    assert app[-1]["args"]["rss"] == 6 * 64 * KIB + (1 << 20)
    blip = [(e["ts"], e["args"]["rss"]) for e in ev if e["ph"] == "C" and e["pid"] == 300]
    assert blip == [(2_000_000, 4 * KIB), (4_000_000, 0)]          # gone after step 3: back to 0
    inst = sorted((e["ts"], e["pid"], e["name"]) for e in ev if e["ph"] == "i")
    expected = [(i * 1_000_000, 100, f"acquire memfd:{10 + i} (leak-{i})") for i in range(1, 6)]
    expected += [(2_000_000, 300, "acquire memfd:99 (tmp)"), (4_000_000, 300, "release memfd:99 (tmp)")]
    assert inst == sorted(expected)
    cats = {e["name"] for e in ev if e["ph"] == "C" and e["pid"] == 0}
    assert {"category GRAPHICS", "category memfd", "kernel-only"} <= cats


def test_plot_without_matplotlib_says_how_to_get_it(history, tmp_path):
    import os
    import subprocess
    import sys
    from livehelpers import SRC
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            f"from memtrack.cli import main; sys.exit(main(['plot', {history!r}, '-o', {str(tmp_path / 'x.png')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=SRC))
    assert r.returncode == 2 and "memtrack[plot]" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "x.png").exists()
