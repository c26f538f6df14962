"""Prometheus metrics from a snapshot: pure functions building prometheus_client metric
families (the client is imported lazily: the core library stays stdlib-only).

  memtrack_buffer_bytes{kind,category,exporter}   sizes of every buffer (held + kernel-only)
  memtrack_buffers{kind,category,exporter}        how many buffers
  memtrack_buffers_unknown_size{kind}             buffers whose size could not be known
  memtrack_buffer_allocated_bytes{kind,category,exporter}  bytes those buffers really hold
                                                  (RAM + swap; a dma-buf's: its size)
  memtrack_buffer_swapped_bytes{kind,category,exporter}    the part of it in swap, where the
                                                  kernel tells it apart (SysV)
  memtrack_buffers_unknown_allocated{kind}        buffers whose allocated bytes are unknown
  memtrack_process_pss_bytes{comm,kind[,pid]}     pss summed over processes of one name
  memtrack_process_rss_bytes{comm,kind[,pid]}     rss likewise (a buffer counts once per process)
  memtrack_process_mem_bytes{comm,kind[,pid]}     mem likewise: allocated bytes split as pss
  memtrack_processes{comm[,pid]}                  processes of that name holding buffers
  memtrack_held_bytes, memtrack_held_allocated_bytes, memtrack_kernel_only_bytes (absent when unknown),
  memtrack_dmabuf_exported_bytes (absent without a kernel dma-buf table)
  memtrack_gpu_resident_bytes{driver,device,region}  DRM clients, each (device, client) once
  memtrack_scrape_duration_seconds, memtrack_scrape_skipped_processes{reason}
With group_by (unit, container, pod or cgroup; the label is named so), per group of
processes, the top `top` groups by pss and the others summed in one `rest` group:
  memtrack_group_pss_bytes{<by>,kind}, memtrack_group_rss_bytes{<by>},
  memtrack_group_uss_bytes{<by>}, memtrack_group_mem_bytes{<by>}, memtrack_group_processes{<by>}
  memtrack_cgroup_charged_shmem_bytes{<by>}, memtrack_cgroup_charged_file_mapped_bytes{<by>},
  memtrack_cgroup_dmem_bytes{<by>}: what the memory controller charged the group's cgroups
  (groups.charged), where read
Labels are never absent: an unknown category or exporter is "". Label values are names from
other processes (a comm, an exporter): control characters and undecodable bytes are escaped
as in the tables (printable()), so every value is valid UTF-8 and none reaches a terminal raw.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, Iterable, List, Optional, Tuple

from ..account import account
from ..util.text import printable

KIND_HELP = "dmabuf, memfd, shm (POSIX), sysv, shmem (shared anonymous), ashmem"


def _get(obj, key):
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def _label(value) -> str:
    return "" if value is None else printable(str(value))


def gpu_resident(snap) -> Dict[Tuple[str, str, str], int]:
    """(driver, device, region) -> resident bytes. Read defensively: the gpu section of the
    snapshot (DRM client fdinfo) may be absent, dicts or objects. A client appears once per
    holding process; it is counted once per (driver, device, client id)."""
    out: Dict[Tuple[str, str, str], int] = defaultdict(int)
    seen = set()
    for g in getattr(snap, "gpu", None) or ():
        driver = _label(_get(g, "driver"))
        device = _label(_get(g, "pdev") or _get(g, "device") or _get(g, "dev"))
        cid = _get(g, "client_id")
        if cid is not None:
            if (driver, device, cid) in seen:
                continue
            seen.add((driver, device, cid))
        regions = _get(g, "regions") or {}
        if not isinstance(regions, dict):
            continue
        for region, r in regions.items():
            res = _get(r, "resident") if not isinstance(r, int) else r
            if isinstance(res, int) and not isinstance(res, bool):
                out[(driver, device, _label(region))] += res
    return dict(out)


REST = "rest"


def group_families(snap, by: Optional[str], top: int) -> List:
    """The group-level families (see the module doc): bounded to top + 1 label values.
    Without a grouping (by None) the families are declared with no samples, so that what
    a dashboard may query is always described."""
    from prometheus_client.core import GaugeMetricFamily
    from ..groups import CHARGED, account_groups, charged
    groups = account_groups(snap, by).sorted() if by else []
    shown, rest = groups[:max(0, top)], groups[max(0, top):]
    rows = []                     # (label, pss by kind, rss, uss, processes, charged, mem)
    for g in shown:
        rows.append((_label(g.group), dict(g.by_kind), g.rss, g.uss, len(g.pids), charged(snap, g.cgroups),
                     g.mem))
    if rest:
        kinds: Dict[str, int] = defaultdict(int)
        ch: Dict[str, int] = {}
        for g in rest:
            for k, v in g.by_kind.items():
                kinds[k] += v
            for k, v in (charged(snap, g.cgroups) or {}).items():
                ch[k] = ch.get(k, 0) + v
        rows.append((REST, dict(kinds), sum(g.rss for g in rest), sum(g.uss for g in rest),
                     sum(len(g.pids) for g in rest), ch or None, sum(g.mem for g in rest)))
    by = by or "group"
    what = f"per {by} (the top groups by pss, the others summed as {REST!r})"
    pss = GaugeMetricFamily("memtrack_group_pss_bytes", "Proportional share of shared buffers of a "
                            f"group of processes held as one holder, {what}", labels=[by, "kind"])
    rss = GaugeMetricFamily("memtrack_group_rss_bytes", f"Shared buffers a group holds, each once, {what}",
                            labels=[by])
    uss = GaugeMetricFamily("memtrack_group_uss_bytes", f"Shared buffers held by one group alone, {what}",
                            labels=[by])
    mem = GaugeMetricFamily("memtrack_group_mem_bytes", "Allocated bytes (RAM + swap) of the shared "
                            f"buffers a group holds, split as pss, {what}", labels=[by])
    nproc = GaugeMetricFamily("memtrack_group_processes", f"Processes holding shared buffers, {what}",
                              labels=[by])
    names = {"shmem": ("memtrack_cgroup_charged_shmem_bytes", "shmem"),
             "file_mapped": ("memtrack_cgroup_charged_file_mapped_bytes", "file_mapped"),
             "dmem": ("memtrack_cgroup_dmem_bytes", "device memory (dmem.current, all regions)")}
    chg = {k: GaugeMetricFamily(names[k][0], f"What the memory controller charged the group's cgroups "
                                f"(memory.stat {names[k][1]}, with descendants), whoever holds it, {what}",
                                labels=[by]) for k in CHARGED}
    for label, kinds, r, u, n, c, m in rows:
        for kind in sorted(kinds):
            pss.add_metric([label, kind], kinds[kind])
        rss.add_metric([label], r)
        mem.add_metric([label], m)
        uss.add_metric([label], u)
        nproc.add_metric([label], n)
        for k, v in (c or {}).items():
            chg[k].add_metric([label], v)
    return [pss, rss, uss, mem, nproc] + [chg[k] for k in CHARGED]


def families(snap, per_pid: bool = False, scan_seconds: Optional[float] = None,
             group_by: Optional[str] = None, top: int = 20) -> List:
    from prometheus_client.core import GaugeMetricFamily

    acct = account(snap)
    fams = []

    size = GaugeMetricFamily("memtrack_buffer_bytes",
                             f"Bytes of shared buffers by kind ({KIND_HELP}), category and exporter: "
                             "every buffer the snapshot knows, held or kernel-only",
                             labels=["kind", "category", "exporter"])
    count = GaugeMetricFamily("memtrack_buffers", "Number of shared buffers",
                              labels=["kind", "category", "exporter"])
    unknown = GaugeMetricFamily("memtrack_buffers_unknown_size",
                                "Buffers whose size could not be known (not in memtrack_buffer_bytes)",
                                labels=["kind"])
    alloc = GaugeMetricFamily("memtrack_buffer_allocated_bytes",
                              "Bytes of memory shared buffers really hold (RAM + swap; a dma-buf: its "
                              "size), by kind, category and exporter; buffers of unknown allocated "
                              "bytes left out", labels=["kind", "category", "exporter"])
    swapped = GaugeMetricFamily("memtrack_buffer_swapped_bytes",
                                "Of those, bytes swapped out, where the kernel tells them apart (SysV)",
                                labels=["kind", "category", "exporter"])
    unknown_alloc = GaugeMetricFamily("memtrack_buffers_unknown_allocated",
                                      "Buffers whose allocated bytes could not be known "
                                      "(not in memtrack_buffer_allocated_bytes)", labels=["kind"])
    by: Dict[tuple, List[int]] = defaultdict(lambda: [0, 0, 0, None])
    unk: Dict[str, int] = defaultdict(int)
    unk_alloc: Dict[str, int] = defaultdict(int)
    for b in snap.buffers:
        key = (b.kind, _label(b.category), _label(b.exporter))
        row = by[key]
        row[1] += 1
        if b.size is None:
            unk[b.kind] += 1
        else:
            row[0] += b.size
        if b.allocated is None:
            unk_alloc[b.kind] += 1
        else:
            row[2] += b.allocated
        if b.swapped is not None:
            row[3] = (row[3] or 0) + b.swapped
    for key in sorted(by):
        size.add_metric(list(key), by[key][0])
        count.add_metric(list(key), by[key][1])
        alloc.add_metric(list(key), by[key][2])
        if by[key][3] is not None:
            swapped.add_metric(list(key), by[key][3])
    for kind in sorted(unk):
        unknown.add_metric([kind], unk[kind])
    for kind in sorted(unk_alloc):
        unknown_alloc.add_metric([kind], unk_alloc[kind])
    fams += [size, count, unknown, alloc, swapped, unknown_alloc]

    labels = ["comm", "kind"] + (["pid"] if per_pid else [])
    pss = GaugeMetricFamily("memtrack_process_pss_bytes",
                            "Proportional share of shared buffers, summed over the processes of one name"
                            + (" (per pid)" if per_pid else ""), labels=labels)
    rss = GaugeMetricFamily("memtrack_process_rss_bytes",
                            "Shared buffers a process holds, each once, summed over the processes of one name"
                            + (" (per pid)" if per_pid else ""), labels=labels)
    mem = GaugeMetricFamily("memtrack_process_mem_bytes",
                            "Share of the allocated bytes (memory really there) of the shared buffers "
                            "held, split as pss is, summed over the processes of one name"
                            + (" (per pid)" if per_pid else ""), labels=labels)
    nproc = GaugeMetricFamily("memtrack_processes", "Processes holding shared buffers",
                              labels=["comm"] + (["pid"] if per_pid else []))
    agg: Dict[tuple, List[int]] = defaultdict(lambda: [0, 0, 0])
    nagg: Dict[tuple, int] = defaultdict(int)
    for p in snap.processes:
        pu = acct.processes.get(p.pid)
        if pu is None:
            continue
        who = (_label(p.comm or "?"),) + ((str(p.pid),) if per_pid else ())
        nagg[who] += 1
        for kind, u in pu.by_kind.items():
            a = agg[(who[0], kind) + who[1:]]
            a[0] += u.pss
            a[1] += u.rss
            a[2] += u.mem
    for key in sorted(agg):
        pss.add_metric(list(key), agg[key][0])
        rss.add_metric(list(key), agg[key][1])
        mem.add_metric(list(key), agg[key][2])
    for key in sorted(nagg):
        nproc.add_metric(list(key), nagg[key])
    fams += [pss, rss, mem, nproc]
    fams += group_families(snap, group_by, top)

    fams.append(GaugeMetricFamily("memtrack_held_bytes",
                                  "Bytes of buffers some process holds (fd or mapping), each once",
                                  value=acct.held_bytes))
    fams.append(GaugeMetricFamily("memtrack_held_allocated_bytes",
                                  "Allocated bytes (RAM + swap) of buffers some process holds, each once: "
                                  "the sum of memtrack_process_mem_bytes", value=acct.held_allocated))
    if acct.kernel_only_bytes is not None:
        fams.append(GaugeMetricFamily("memtrack_kernel_only_bytes",
                                      "Bytes of buffers the kernel reports that no process holds",
                                      value=acct.kernel_only_bytes))
    if snap.kernel.dmabuf_exported_bytes is not None:
        fams.append(GaugeMetricFamily("memtrack_dmabuf_exported_bytes",
                                      f"All dma-buf bytes the kernel table lists ({snap.kernel.dmabuf_source})",
                                      value=snap.kernel.dmabuf_exported_bytes))
    gpu = GaugeMetricFamily("memtrack_gpu_resident_bytes",
                            "DRM client memory resident per driver, device and region (fdinfo drm-resident-*)",
                            labels=["driver", "device", "region"])
    for key, v in sorted(gpu_resident(snap).items()):
        gpu.add_metric(list(key), v)
    fams.append(gpu)
    if scan_seconds is not None:
        fams.append(GaugeMetricFamily("memtrack_scrape_duration_seconds",
                                      "Seconds the scan behind these numbers took", value=scan_seconds))
    sk = GaugeMetricFamily("memtrack_scrape_skipped_processes",
                           "Processes the scan could not read, by reason", labels=["reason"])
    for reason in ("denied", "vanished", "unreadable"):
        sk.add_metric([reason], len(getattr(snap.skipped, reason)))
    fams.append(sk)
    return fams


class _Static:
    def __init__(self, fams: Iterable):
        self.fams = list(fams)

    def collect(self):
        return iter(self.fams)


def render(fams: Iterable) -> bytes:
    """The text exposition format of these families."""
    from prometheus_client import CollectorRegistry, generate_latest
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Static(fams))
    return generate_latest(reg)


def require_client() -> None:
    from ..errors import MemtrackError
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise MemtrackError("prometheus_client is not installed: pip install 'memtrack[prometheus]'") from None
