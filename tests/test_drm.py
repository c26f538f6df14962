"""DRM clients: fdinfo in each driver's exact format, dedup by (pdev or device, client-id),
the "gpu" snapshot section, its JSON round trip, capture recording, and the views."""
from __future__ import annotations

import io
import json
import contextlib

import pytest

import kfixture
import memtrack
from memtrack import gpu as gpuacct
from memtrack.account import account
from memtrack.capture import RecordingSource, write_archive
from memtrack.cli import main
from memtrack.readers.drm import is_drm_path, parse_drm_fdinfo
from memtrack.procfs import scan
from memtrack.sources.tree import DirSource
from memtrack.json_out import to_json
from memtrack.json_in import from_dict

from helpers.drm import AMDGPU, AMDGPU_LEGACY, ENGINE_ONLY, I915, MSM, PANFROST, XE, drm_fdinfo, gpu_tree

KiB, MiB = 1024, 1024 * 1024


def test_amdgpu_regions_units_and_driver_keys():
    d = parse_drm_fdinfo(AMDGPU)
    assert d["driver"] == "amdgpu" and d["pdev"] == "0000:04:00.0" and d["client_id"] == 30
    assert d["client_name"] == "firefox"
    assert d["regions"] == {
        "vram": {"total": 36152 * KiB, "shared": 2048 * KiB, "active": 1024 * KiB,
                 "resident": 36152 * KiB, "purgeable": 0},
        "gtt": {"total": 15892 * KiB, "resident": 15892 * KiB},
        "cpu": {"resident": 0},                           # legacy drm-memory-cpu only
    }
    assert d["engines"] == {"gfx": {"busy_ns": 4087540}, "compute": {"busy_ns": 0}}
    assert d["driver_keys"]["pasid"] == "32770"
    assert d["driver_keys"]["amd-requested-gtt"] == "15892 KiB"
    assert not any(k.startswith("drm-") for k in d["driver_keys"])


def test_legacy_memory_is_resident_but_standard_key_wins():
    d = parse_drm_fdinfo(AMDGPU_LEGACY)
    assert d["regions"] == {"vram": {"resident": 1024 * KiB}, "gtt": {"resident": 512 * KiB},
                            "cpu": {"resident": 0}}
    both = drm_fdinfo(1, "drm-driver:\tamdgpu\ndrm-memory-vram:\t10 KiB\ndrm-resident-vram:\t7 KiB\n")
    assert parse_drm_fdinfo(both)["regions"] == {"vram": {"resident": 7 * KiB}}
    assert parse_drm_fdinfo(both)["client_id"] is None


def test_i915_dashed_region_and_engine_names():
    d = parse_drm_fdinfo(I915)
    assert d["regions"]["system0"] == {"total": 4 * MiB, "shared": 0, "active": 0,
                                       "resident": 4 * MiB, "purgeable": 0}
    assert d["regions"]["local0"] == {"total": 256 * MiB, "shared": 16 * MiB, "active": 8 * MiB,
                                      "resident": 200 * MiB, "purgeable": 0}
    assert d["regions"]["stolen-local0"] == dict.fromkeys(gpuacct.STATS, 0)
    assert d["engines"] == {"render": {"busy_ns": 25662044495}, "copy": {"busy_ns": 0},
                            "video": {"busy_ns": 0, "capacity": 2},
                            "video-enhance": {"busy_ns": 0}}


def test_xe_cycles_are_not_a_region():
    d = parse_drm_fdinfo(XE)
    assert set(d["regions"]) == {"system0", "stolen"}
    assert d["regions"]["stolen"]["resident"] == 8192 * KiB
    assert d["engines"] == {"rcs": {"cycles": 28257900, "total_cycles": 7655183225},
                            "vcs": {"cycles": 0, "total_cycles": 7655183225, "capacity": 2}}


def test_msm_and_panfrost_region_memory_and_frequencies():
    m = parse_drm_fdinfo(MSM)
    assert m["pdev"] is None
    assert m["regions"] == {"memory": {"total": 28672 * KiB, "shared": 0, "active": 4096 * KiB,
                                       "resident": 28672 * KiB, "purgeable": 0}}
    assert m["engines"] == {"gpu": {"busy_ns": 12345, "cycles": 6789, "maxfreq_hz": 900000000}}
    p = parse_drm_fdinfo(PANFROST)
    assert p["regions"] == {"memory": {"total": 290 * MiB, "shared": 0, "active": 0,
                                       "resident": 38 * MiB, "purgeable": 0}}
    assert p["engines"]["vertex-tiler"] == {"busy_ns": 71932239, "cycles": 52617357,
                                            "maxfreq_hz": 799999987, "curfreq_hz": 799999987}


def test_engine_only_client_has_no_regions():
    d = parse_drm_fdinfo(ENGINE_ONLY)
    assert d["regions"] == {} and d["driver_keys"] == {}
    assert d["engines"] == {"bin": {"busy_ns": 1234}, "render": {"busy_ns": 5678}}


def test_not_a_drm_client_and_bad_values():
    assert parse_drm_fdinfo(kfixture.fdinfo_generic(5)) is None
    bad = drm_fdinfo(1, "drm-driver:\tx\ndrm-total-vram:\t12 PiB\ndrm-resident-vram:\tmany\n"
                        "drm-shared-vram:\t-3\ndrm-engine-gfx:\t5 ms\ndrm-active-vram:\t1 GiB\n")
    assert parse_drm_fdinfo(bad)["regions"] == {"vram": {"active": 1 << 30}}
    assert parse_drm_fdinfo(bad)["engines"] == {}


def test_drm_paths():
    assert is_drm_path("/dev/dri/card0") and is_drm_path("/dev/dri/renderD128")
    assert not is_drm_path("/dev/dri/by-path") and not is_drm_path("/dev/dri/card")
    assert not is_drm_path("/dev/nvidia0") and not is_drm_path("/dev/dri/renderD128 (deleted)")


# -- the scan: one tree with every driver --------------------------------------------------

@pytest.fixture
def gpu_dir(tmp_path):
    return gpu_tree().write_dir(str(tmp_path / "root"))


def entries(snap, pid):
    return [g for g in snap.gpu if g.pid == pid]


def test_scan_dedups_the_shared_client(gpu_dir):
    snap = memtrack.scan(gpu_dir)
    shared = [g for g in snap.gpu if g.client_id == 30 and g.pdev == "0000:04:00.0"]
    assert [g.pid for g in shared] == [200, 201, 202]
    assert all(g.holders == (200, 201, 202) for g in shared)
    assert [g.fds for g in shared] == [(5, 9), (5,), (7,)]
    assert len(gpuacct.clients(snap)) == 8
    other = entries(snap, 500)[0]
    assert other.client_id == 30 and other.holders == (500,)
    # one entry per (client, holder): 3 for the shared client, 1 for each of the 7 others
    assert len(snap.gpu) == 3 + 7


def test_private_resident_split_like_pss(gpu_dir):
    snap = memtrack.scan(gpu_dir)
    g = entries(snap, 202)[0]
    # vram 36152-2048 KiB, gtt 15892 KiB, cpu 0
    assert gpuacct.private_resident(g) == (36152 - 2048 + 15892) * KiB == 51195904
    per = gpuacct.per_process(snap)
    # 51195904 / 3 = 17065301 rest 1: the lowest pid gets the byte
    assert per[200] == 17065302 and per[202] == 17065301
    assert per[201] == 17065301 + (1024 + 512) * KiB            # plus its own legacy client
    assert per[300] == 4 * MiB + 184 * MiB
    assert per[301] == 12 * MiB + 8 * MiB
    assert per[400] == 28672 * KiB and per[401] == 38 * MiB
    assert per[402] == 0
    assert per[500] == 51195904
    assert sum(per.values()) == sum(gpuacct.private_resident(c) for c in gpuacct.clients(snap))


def test_gem_never_enters_buffer_totals(gpu_dir):
    snap = memtrack.scan(gpu_dir)
    acct = account(snap)
    assert acct.total.rss == MiB and acct.held_bytes == MiB
    assert [b.id for b in snap.buffers] == ["dmabuf:40"]
    # gpu-only holders are processes of the snapshot, with no buffer usage
    assert acct.process(402).total.rss == 0
    assert snap.process_map[402].comm == "compute"


def test_device_totals_count_each_client_once(gpu_dir):
    snap = memtrack.scan(gpu_dir)
    t = gpuacct.device_totals(snap)
    amd = t[("amdgpu", "0000:04:00.0")]
    assert amd["vram"] == {"total": 36152 * KiB, "shared": 2048 * KiB, "active": 1024 * KiB,
                           "resident": (36152 + 1024) * KiB, "purgeable": 0}
    assert amd["gtt"] == {"total": 15892 * KiB, "resident": (15892 + 512) * KiB}
    assert t[("msm", "/dev/dri/renderD128")]["memory"]["resident"] == 28672 * KiB
    assert t[("v3d", "/dev/dri/renderD130")] == {}


def test_json_keeps_absent_keys_absent_and_round_trips(gpu_dir):
    snap = memtrack.scan(gpu_dir)
    doc = json.loads(to_json(snap))
    v3d = [g for g in doc["gpu"] if g["driver"] == "v3d"][0]
    assert v3d == {"pid": 402, "driver": "v3d", "client_id": 3,
                   "device": "/dev/dri/renderD130", "holders": [402], "fds": [3], "regions": {},
                   "engines": {"bin": {"busy_ns": 1234}, "render": {"busy_ns": 5678}}}
    amd = [g for g in doc["gpu"] if g["pid"] == 201 and g["client_id"] == 31][0]
    assert amd["regions"]["vram"] == {"resident": 1024 * KiB} and amd["pdev"] == "0000:04:00.0"
    assert "client_name" not in amd and "driver_keys" in amd
    back = from_dict(doc)
    assert back.gpu == snap.gpu
    assert json.loads(to_json(back)) == doc


def test_snapshot_without_gpu_key_still_loads(gpu_dir):
    doc = json.loads(to_json(memtrack.scan(gpu_dir)))
    del doc["gpu"]
    assert from_dict(doc).gpu == ()
    doc["gpu"] = [{"pid": "x", "driver": "v3d"}]
    with pytest.raises(memtrack.SourceError):
        from_dict(doc)


def test_restrict_by_pid_keeps_that_pids_clients(gpu_dir):
    snap = memtrack.scan(gpu_dir).restrict(pids={201})
    assert sorted(g.client_id for g in snap.gpu) == [30, 31]
    assert entries(snap, 201)[0].holders == (200, 201, 202)


def test_notes_for_drm_fds_without_stats_or_client_id(tmp_path):
    t = kfixture.Tree()
    t.proc(10, "old").fd(3, "/dev/dri/card0", kfixture.fdinfo_generic(77))
    noid = drm_fdinfo(5, "drm-driver:\tfoo\ndrm-resident-memory:\t4 KiB\n")
    t.proc(11, "noid").fd(3, "/dev/dri/card0", noid).fd(4, "/dev/dri/card0", noid)
    snap = memtrack.scan(t.write_dir(str(tmp_path / "r")))
    assert [(g.pid, g.fds) for g in snap.gpu] == [(11, (3,)), (11, (4,))]   # each fd its own client
    assert any("no drm-driver" in n for n in snap.notes)
    assert any("no drm-client-id" in n for n in snap.notes)


def test_capture_records_drm_fdinfo(tmp_path, gpu_dir):
    rec = RecordingSource(DirSource(gpu_dir))
    snap = scan(rec)
    out = str(tmp_path / "cap.tar.gz")
    write_archive(rec, snap, out)
    again = memtrack.scan(out)
    assert again.gpu == snap.gpu and len(again.gpu) == 10


# -- views ----------------------------------------------------------------------------------

def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def test_ps_gpu_column(gpu_dir):
    rc, out, _ = run_cli("--root", gpu_dir, "--csv", "-q")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split(",")[:7] == ["pid", "rss", "pss", "uss", "mapped", "dmabuf_pss", "gpu"]
    rows = {int(r.split(",")[0]): r.split(",") for r in lines[1:]}
    assert rows[200][6] == "17065302" and rows[200][1] == str(MiB)
    assert rows[402][6] == "0"
    rc, out, _ = run_cli("--root", gpu_dir, "-q")
    assert out.splitlines()[0].split() == ["PID", "Rss", "Pss", "Uss", "Mapped", "dmabuf", "Gpu", "Name"]
    rc, out, _ = run_cli("--root", gpu_dir, "-q", "--csv", "-s", "gpu")
    # the largest Gpu shares: 300 188 MiB, 500 48.8 MiB, 401 38 MiB
    assert [r.split(",")[0] for r in out.splitlines()[1:4]] == ["300", "500", "401"]


def test_ps_has_no_gpu_column_without_clients(tmp_path):
    t = kfixture.Tree()
    t.proc(1, "a").dmabuf(3, ino=2, size=4096)
    rc, out, _ = run_cli("--root", t.write_dir(str(tmp_path / "r")), "-q")
    assert rc == 0 and "Gpu" not in out.splitlines()[0]


def test_gpu_command(gpu_dir):
    rc, out, _ = run_cli("gpu", "--root", gpu_dir, "--csv", "-q")
    assert rc == 0
    rows = [r.split(",") for r in out.splitlines()[1:]]
    i915 = [r for r in rows if r[1] == "i915" and r[7] == "local0"]
    assert i915 == [["300", "i915", "0000:03:00.0", "/dev/dri/card1", "18", "", "300", "local0",
                     str(256 * MiB), str(16 * MiB), str(200 * MiB), "0", str(8 * MiB),
                     str(188 * MiB), str(188 * MiB)]]
    v3d = [r for r in rows if r[1] == "v3d"]
    assert v3d == [["402", "v3d", "", "/dev/dri/renderD130", "3", "", "402", "", "", "", "", "", "",
                    "0", "0"]]
    rc, out, _ = run_cli("gpu", "--root", gpu_dir, "-q", "-b")
    assert "distinct clients: 2 on 0000:04:00.0" in out
    row = [line.split() for line in out.splitlines() if line.startswith("202 ")][0]
    assert row[:9] == ["202", "amdgpu", "0000:04:00.0", "30", "3", str((36152 + 15892) * KiB),
                       str((36152 + 15892) * KiB), str(2048 * KiB), "17065301"]
    assert "not part of the dma-buf totals" in out
