"""Cgroups, units, containers and pods: the naming conventions on /proc/PID/cgroup texts of
each runtime (written from their documented formats), group accounting to the byte, the
JSON and capture round trips, and the capture script recording the cgroup files."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

import memtrack
from memtrack import remote
from memtrack.account import account
from memtrack.cgroups import (container_of, group_key, parse_dmem, parse_memory_stat,
                              parse_proc_cgroup, pod_of, safe_path, unit_of)
from memtrack.groups import account_groups, charged
from memtrack.json_in import from_dict
from memtrack.json_out import to_dict, to_json
from memtrack.model import Buffer, CgroupInfo, Process, Ref, Snapshot
from memtrack.summarize import grand_total, summarize

from remote_util import SCRIPT

C = "0123456789abcdef" * 4                 # a 64-hex container id
UID = "8a3f6c2e-1b2d-4e5f-9a8b-7c6d5e4f3a2b"
UID_ = UID.replace("-", "_")

V1_HYBRID = """12:hugetlb:/
11:memory:{path}
10:cpu,cpuacct:{path}
9:pids:{path}
1:name=systemd:{path}
0::{path}
"""
V2 = "0::{path}\n"

# (runtime, how its cgroup shows in /proc/PID/cgroup, unit, container, pod)
CASES = [
    ("systemd service (v2)", V2, "/system.slice/nginx.service", "nginx.service", None, None),
    ("systemd user app scope (v2)", V2,
     "/user.slice/user-1000.slice/user@1000.service/app.slice/app-firefox-1234.scope",
     "app-firefox-1234.scope", None, None),
    ("systemd user app service (v2)", V2,
     "/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-org.gnome.Terminal@1.service",
     "app-gnome-org.gnome.Terminal@1.service", None, None),
    ("systemd slice only (v2)", V2, "/user.slice/user-1000.slice", "user-1000.slice", None, None),
    ("pid 1 (v2)", V2, "/init.scope", "init.scope", None, None),
    ("root cgroup (v2)", V2, "/", "-.slice", None, None),
    ("docker, cgroupfs driver (v1)", V1_HYBRID, f"/docker/{C}", None, f"docker://{C}", None),
    ("docker, systemd driver (v2)", V2, f"/system.slice/docker-{C}.scope",
     f"docker-{C}.scope", f"docker://{C}", None),
    ("containerd CRI, systemd driver, burstable pod (v2)", V2,
     f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{C}.scope",
     f"cri-containerd-{C}.scope", f"containerd://{C}", UID),
    ("containerd CRI, cgroupfs driver, besteffort pod (v1)", V1_HYBRID,
     f"/kubepods/besteffort/pod{UID}/{C}", None, C, UID),
    ("guaranteed pod, cgroupfs driver (v1)", V1_HYBRID, f"/kubepods/pod{UID}/{C}", None, C, UID),
    ("guaranteed pod, systemd driver (v2)", V2,
     f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{C}.scope",
     f"cri-containerd-{C}.scope", f"containerd://{C}", UID),
    ("pod sandbox cgroup itself (v2)", V2,
     f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice",
     f"kubepods-besteffort-pod{UID_}.slice", None, UID),
    ("cri-o, systemd driver (v2)", V2,
     f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{C}.scope",
     f"crio-{C}.scope", f"cri-o://{C}", UID),
    ("cri-o conmon, the monitor (v2)", V2,
     f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{C}.scope",
     f"crio-conmon-{C}.scope", None, UID),
    ("cri-o, cgroupfs driver (v1)", V1_HYBRID, f"/kubepods/burstable/pod{UID}/crio-{C}", None, f"cri-o://{C}", UID),
    ("podman rootful, systemd (v2)", V2, f"/machine.slice/libpod-{C}.scope", f"libpod-{C}.scope",
     f"podman://{C}", None),
    ("podman rootless (v2)", V2,
     f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{C}.scope",
     f"libpod-{C}.scope", f"podman://{C}", None),
    ("podman, systemd inside the container (v2)", V2,
     f"/machine.slice/libpod-{C}.scope/system.slice/nginx.service", "nginx.service", f"podman://{C}", None),
    ("podman cgroupfs (v1)", V1_HYBRID, f"/libpod_parent/libpod-{C}", None, f"podman://{C}", None),
    ("podman conmon (v2)", V2, f"/machine.slice/libpod-conmon-{C}.scope", f"libpod-conmon-{C}.scope", None, None),
    ("a 64-hex name elsewhere is no container (v1)", V1_HYBRID, f"/batch/{C}", None, None, None),
]


@pytest.mark.parametrize("what,text,path,unit,container,pod", CASES, ids=[c[0] for c in CASES])
def test_conventions_on_recorded_texts(what, text, path, unit, container, pod):
    got = parse_proc_cgroup(text.format(path=path))
    assert got == (path, "v1" if text is V1_HYBRID else "v2")
    assert unit_of(path) == unit
    assert container_of(path) == container
    assert pod_of(path) == pod
    assert group_key(path, "cgroup") == path
    assert group_key(path, "unit") == (unit or "(no unit)")
    assert group_key(path, "container") == (container or "(host)")
    assert group_key(path, "pod") == (pod or "(no pod)")
    assert group_key(None, "pod") == "(unknown)"


def test_v1_memory_line_wins_over_v2_and_other_controllers():
    # this machine's kind: v1 controllers, name=systemd, and an empty 0:: line
    text = ("9:name=systemd:/\n8:pids:/\n4:memory:/process_api/7ce25a5f\n3:cpuset:/\n"
            "0::/\n")
    assert parse_proc_cgroup(text) == ("/process_api/7ce25a5f", "v1")
    assert parse_proc_cgroup("4:cpu,memory:/a\n0::/b\n") == ("/a", "v1")
    assert parse_proc_cgroup("4:memoryx:/a\n0::/b\n") == ("/b", "v2")
    assert parse_proc_cgroup("") is None
    assert parse_proc_cgroup("garbage\n1:cpu:relative\n") is None


def test_unsafe_paths_and_stat_parsing():
    assert safe_path("/a/b") and not safe_path("/../../etc") and not safe_path("a")
    v1 = "cache 1\nshmem 4096\nmapped_file 8192\ntotal_shmem 12288\ntotal_mapped_file 8192\nbad line x\n"
    assert parse_memory_stat(v1, "v1") == {"shmem": 4096, "file_mapped": 8192,
                                           "total_shmem": 12288, "total_file_mapped": 8192}
    v2 = "anon 0\nfile 10\nshmem 20\nfile_mapped 30\nshmem_thp 0\n"
    assert parse_memory_stat(v2, "v2") == {"shmem": 20, "file_mapped": 30}
    assert parse_memory_stat("shmem 99999999999999999999999\n", "v2") == {}
    assert parse_dmem("drm/0000:03:00.0/vram0 1048576\ndrm/0000:03:00.0/stolen max\n") == \
        {"drm/0000:03:00.0/vram0": 1048576, "drm/0000:03:00.0/stolen": None}


def _snap():
    """Five processes in three cgroups (two of one docker container's scope tree, one pod)."""
    svc = "/system.slice/db.service"
    dock = f"/system.slice/docker-{C}.scope"
    pod = f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{C[::-1]}.scope"
    bufs = [
        Buffer("memfd:1", "memfd", 1, "00:01", 10, holders=(1, 2, 3)),      # 3 groups: 4/3/3
        Buffer("memfd:2", "memfd", 2, "00:01", 7, holders=(1, 4)),          # one group: its uss
        Buffer("shm:3", "shm", 3, "00:02", 1001, holders=(2, 5)),           # two groups
        Buffer("memfd:4", "memfd", 4, "00:01", None, holders=(3,)),         # unknown size
        Buffer("sysv:5", "sysv", 5, None, 64, holders=()),                  # unheld
    ]
    refs = {1: ["memfd:1", "memfd:2"], 2: ["memfd:1", "shm:3"], 3: ["memfd:1", "memfd:4"],
            4: ["memfd:2"], 5: ["shm:3"]}
    cg = {1: svc, 2: dock, 3: pod, 4: svc, 5: pod}
    procs = tuple(Process(pid, f"p{pid}", refs=tuple(Ref(b, fds=(3,)) for b in refs[pid]), cgroup=cg[pid])
                  for pid in sorted(refs))
    cgroups = (CgroupInfo(dock, "v2", {"shmem": 5000, "file_mapped": 4000}),
               CgroupInfo(svc, "v2", {"shmem": 7, "file_mapped": 0},
                          {"drm/0000:03:00.0/vram0": 1 << 20}, {"drm/0000:03:00.0/vram0": None}))
    return Snapshot(buffers=tuple(bufs), processes=procs, cgroups=cgroups), svc, dock, pod


def test_group_accounting_splits_to_the_byte_and_reconciles():
    snap, svc, dock, pod = _snap()
    ga = account_groups(snap, "cgroup")
    g = ga.groups
    # memfd:1 (10 bytes) over 3 groups in name order (pod < svc < dock): the first gets the byte
    assert sorted([dock, pod, svc]) == [pod, svc, dock]
    assert ga.shares["memfd:1"] == {pod: 4, dock: 3, svc: 3}
    assert ga.shares["shm:3"] == {pod: 501, dock: 500}
    assert g[svc].uss == 7 and g[svc].pss == 3 + 7 and g[svc].rss == 17
    assert g[dock].uss == 0 and g[dock].pss == 3 + 500
    assert g[pod].pss == 4 + 501 and g[pod].unknown == 1 and g[pod].buffers == 3
    assert g[svc].pids == [1, 4] and g[pod].pids == [3, 5]
    acct = account(snap)
    assert sum(u.pss for u in g.values()) == acct.held_bytes == acct.total.pss == 1018
    for by in ("unit", "container", "pod"):
        gb = account_groups(snap, by)
        assert sum(u.pss for u in gb.groups.values()) == acct.total.pss
    assert set(account_groups(snap, "container").groups) == {"(host)", f"docker://{C}", f"containerd://{C[::-1]}"}
    assert set(account_groups(snap, "pod").groups) == {"(no pod)", UID}
    rows = summarize(snap, "cgroup")
    assert sum(r.bytes for r in rows if r.bytes is not None) == grand_total(snap).bytes
    assert [r.group for r in rows][:3] == [pod, dock, svc]
    # charged: v2 figures as printed; dmem summed over regions; an unread cgroup: None
    assert charged(snap, [dock]) == {"shmem": 5000, "file_mapped": 4000}
    assert charged(snap, [svc]) == {"shmem": 7, "file_mapped": 0, "dmem": 1 << 20}
    assert charged(snap, [pod]) is None
    assert charged(snap, [svc, svc + "/child"]) == charged(snap, [svc])


def test_json_round_trip_and_old_snapshots():
    snap, svc, dock, pod = _snap()
    text = to_json(snap)
    assert json.loads(text) == to_dict(snap)
    back = from_dict(json.loads(text))
    assert back.cgroups == snap.cgroups
    assert [p.cgroup for p in back.processes] == [p.cgroup for p in snap.processes]
    doc = json.loads(text)
    del doc["cgroups"]
    for p in doc["processes"]:
        del p["cgroup"]
    old = from_dict(doc)          # a snapshot from before cgroups were recorded
    assert old.cgroups == () and all(p.cgroup is None for p in old.processes)
    assert account_groups(old, "unit").groups.keys() == {"(unknown)"}
    doc = json.loads(text)
    doc["cgroups"][0]["hierarchy"] = "v3"
    with pytest.raises(memtrack.SourceError):
        from_dict(doc)


def test_cli_group_views_on_a_saved_snapshot(tmp_path):
    snap, svc, dock, pod = _snap()
    path = tmp_path / "s.json"
    path.write_text(to_json(snap))
    run = lambda *a: subprocess.run([sys.executable, "-m", "memtrack", *a, "--root", str(path)],
                                    capture_output=True, text=True, env=dict(os.environ, COLUMNS="200"))
    r = run("ps", "--group", "container", "--bytes")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "ChgShmem" in lines[0] and lines[0].split()[-1] == "Container"
    row = next(line for line in lines if line.endswith(f"docker://{C}"))
    assert row.split()[:5] == ["1", "1011", "503", "?", "0"] and "5000" in row.split()
    r = run("ps", "--group", "pod", "--json")
    doc = json.loads(r.stdout)
    assert {g["group"]: g["pss"] for g in doc["groups"]} == {UID: 505, "(no pod)": 513}
    r = run("summary", "--by", "unit", "--csv")
    assert r.returncode == 0 and "db.service,2,10" in r.stdout


@pytest.mark.requires_root("the capture reads every process's cgroup")
def test_capture_archive_and_script_record_cgroups(holders, tmp_path):
    live = memtrack.scan(None, pids=holders.pids)
    mine = {p.pid: p.cgroup for p in live.processes}
    assert all(mine[pid] for pid in holders.pids)
    assert live.cgroups and all(c.stat for c in live.cgroups)
    out = tmp_path / "cap.tar.gz"
    r = subprocess.run([sys.executable, "-m", "memtrack", "capture", "-q", "-p",
                        ",".join(map(str, holders.pids)), "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    back = memtrack.scan(str(out), pids=holders.pids)
    assert {p.pid: p.cgroup for p in back.processes} == mine
    assert [c.path for c in back.cgroups] == [c.path for c in live.cgroups]
    assert all(set(c.stat) == set(b.stat) for c, b in zip(live.cgroups, back.cgroups))


@pytest.mark.requires_root("the capture reads every process's cgroup")
@pytest.mark.parametrize("fmt", ["stream", "tar"])
@pytest.mark.parametrize("sh", ["dash", "busybox", "mksh+toybox"])
def test_capture_script_records_cgroups(holders, tmp_path, sh, fmt):
    """The sh script keeps proc/PID/cgroup and the memory.stat of each cgroup, under dash
    with coreutils, busybox alone, and Android's mksh with toybox."""
    from remote_util import android_path, busybox_path
    from memtrack.procfs import scan
    live = memtrack.scan(None, pids=holders.pids)
    if sh == "dash":
        cmd, env = ["dash"], None
    else:
        d = busybox_path(tmp_path) if sh == "busybox" else android_path(tmp_path)
        cmd, env = [os.path.join(d, "sh")], dict(os.environ, PATH=d)
    p = subprocess.run(cmd + [SCRIPT, "-f", fmt, "-p", ",".join(map(str, holders.pids))],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=120)
    assert p.returncode == 0 and p.stderr == b"", p.stderr
    tree = remote.decode(p.stdout)
    for pid in holders.pids:
        assert f"proc/{pid}/cgroup" in tree.files
    snap = scan(remote.TreeSource(tree, "t"), pids=holders.pids)
    assert {p.pid: p.cgroup for p in snap.processes} == {p.pid: p.cgroup for p in live.processes}
    assert [c.path for c in snap.cgroups] == [c.path for c in live.cgroups]
    assert all(set(c.stat) == set(b.stat) for c, b in zip(live.cgroups, snap.cgroups))


def _samples(text):
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        name_labels, value = line.rsplit(" ", 1)
        name, _, labels = name_labels.partition("{")
        lab = dict(kv.split("=", 1) for kv in labels.rstrip("}").split(",")) if labels else {}
        out.setdefault(name, {})[tuple(sorted((k, v.strip('"')) for k, v in lab.items()))] = float(value)
    return out


def test_textfile_group_by_bounded_with_a_rest_row(tmp_path):
    pytest.importorskip("prometheus_client")
    snap, svc, dock, pod = _snap()
    path = tmp_path / "s.json"
    path.write_text(to_json(snap))
    r = subprocess.run([sys.executable, "-m", "memtrack", "--root", str(path), "textfile", "-q", "-o", "-",
                        "--group-by", "cgroup", "--top", "1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    s = _samples(r.stdout)
    pss = {}
    for lab, v in s["memtrack_group_pss_bytes"].items():
        d = dict(lab)
        pss[d["cgroup"]] = pss.get(d["cgroup"], 0) + v
    assert pss == {pod: 505, "rest": 503 + 10}                  # the top group, the others summed
    assert s["memtrack_group_processes"] == {(("cgroup", pod),): 2, (("cgroup", "rest"),): 3}
    assert s["memtrack_group_uss_bytes"][(("cgroup", "rest"),)] == 7
    # charged: the pod's cgroup was not read (no sample); rest = docker's 5000 + the service's 7
    assert s["memtrack_cgroup_charged_shmem_bytes"] == {(("cgroup", "rest"),): 5007}
    assert s["memtrack_cgroup_dmem_bytes"] == {(("cgroup", "rest"),): 1 << 20}
    r = subprocess.run([sys.executable, "-m", "memtrack", "--root", str(path), "textfile", "-q", "-o", "-",
                        "--group-by", "pod", "--top", "x"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--top" in r.stderr


def test_grafana_dashboard_has_a_panel_per_grouping():
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "..", "contrib", "grafana", "memtrack.json")) as f:
        dash = json.load(f)
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", ())]
    for by in ("unit", "container", "pod", "cgroup"):
        assert any(f"sum by ({by}) (memtrack_group_pss_bytes" in e for e in exprs), by
        assert any(f"sum by ({by}) (memtrack_cgroup_charged_shmem_bytes" in e for e in exprs), by


def test_group_mem_splits_allocated_bytes_as_pss_splits_sizes(tmp_path):
    import dataclasses
    snap, svc, dock, pod = _snap()
    alloc = {"memfd:1": 5, "shm:3": 3, "memfd:4": 4096}     # memfd:2 allocated unknown
    snap = dataclasses.replace(snap, buffers=tuple(
        dataclasses.replace(b, allocated=alloc.get(b.id)) for b in snap.buffers))
    ga = account_groups(snap, "cgroup")
    g = ga.groups
    assert ga.mem_shares["memfd:1"] == {pod: 2, svc: 2, dock: 1}
    assert ga.mem_shares["shm:3"] == {pod: 2, dock: 1}
    assert (g[pod].mem, g[svc].mem, g[dock].mem) == (2 + 2 + 4096, 2, 1 + 1)
    assert g[svc].unknown_alloc == 1 and g[pod].unknown_alloc == 0
    acct = account(snap)
    assert sum(u.mem for u in g.values()) == acct.held_allocated == acct.total.mem == 5 + 3 + 4096
    rows = summarize(snap, "cgroup", measure="allocated")
    assert {r.group: r.bytes for r in rows if r.group in g} == {k: u.mem for k, u in g.items()}
    if importlib.util.find_spec("prometheus_client") is None:
        return
    path = tmp_path / "s.json"
    path.write_text(to_json(snap))
    r = subprocess.run([sys.executable, "-m", "memtrack", "--root", str(path), "textfile", "-q", "-o", "-",
                        "--group-by", "cgroup", "--top", "1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert _samples(r.stdout)["memtrack_group_mem_bytes"] == {(("cgroup", pod),): 4100,
                                                              (("cgroup", "rest"),): 2 + 2}
