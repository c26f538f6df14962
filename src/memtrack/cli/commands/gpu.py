"""memtrack gpu: DRM clients (GEM memory) per process, and per device totals."""
from __future__ import annotations

from ... import gpu as gpuacct
from ...views.table import Column, human, render, to_csv
from ..common import emit, emit_json, name_cap, prepare, table_width

NAME = "gpu"
HELP = "DRM GPU clients (GEM memory from drm fdinfo): one row per client and process"
ORDER = 4


def add_arguments(p):
    pass


def _regions_text(g, raw) -> str:
    parts = []
    for region, vals in g.regions.items():
        v = vals.get("total", vals.get("resident"))
        parts.append(f"{region}={human(v, raw)}")
    return " ".join(parts) or "-"


def run(args) -> int:
    snap, view = prepare(args)
    if args.json:
        return emit_json(view, args)
    share = gpuacct.per_process(snap)
    procs = snap.process_map
    rows_src = sorted(view.gpu, key=lambda g: (str(g.pdev or g.device), g.client_id or 0, g.pid))
    if args.csv:
        rows = []
        for g in rows_src:
            for region, vals in (g.regions.items() or [("", {})]):
                rows.append([g.pid, g.driver, g.pdev, g.device, g.client_id, g.client_name,
                             " ".join(map(str, g.holders)), region] +
                            [vals.get(s) for s in gpuacct.STATS] +
                            [gpuacct.private_resident(g), share.get(g.pid, 0)])
        emit(to_csv(["pid", "driver", "pdev", "device", "client_id", "client_name", "holders", "region"]
                    + list(gpuacct.STATS) + ["private_resident", "gpu_pss"], rows), args)
        return 0
    raw = args.bytes
    if not rows_src:
        emit("no DRM GPU clients\n", args)
        return 0
    cols = [Column("PID"), Column("Driver", "<"), Column("Device", "<"), Column("Client"),
            Column("nr_procs"), Column("Total"), Column("Resident"), Column("Shared"), Column("Gpu"),
            Column("Regions", "<"), Column("Name", "<")]
    rows = []
    for g in rows_src:
        p = procs.get(g.pid)
        rows.append([str(g.pid), g.driver, g.pdev or g.device or "?",
                     "-" if g.client_id is None else str(g.client_id), str(len(g.holders)),
                     _opt(gpuacct.stat_sum(g, "total"), raw), _opt(gpuacct.stat_sum(g, "resident"), raw),
                     _opt(gpuacct.stat_sum(g, "shared"), raw), human(share.get(g.pid, 0), raw),
                     _regions_text(g, raw), (p.name if p else "?")])
    out = render(cols, rows, max_last=name_cap(args, 80), width=table_width(args))
    dcols = [Column("Driver", "<"), Column("Device", "<"), Column("Region", "<")] + \
        [Column(s.capitalize()) for s in gpuacct.STATS]
    drows = []
    ncl = {}
    for g in gpuacct.clients(view):
        k = (g.driver, g.pdev or g.device or "?")
        ncl[k] = ncl.get(k, 0) + 1
    for (driver, dev), regions in sorted(gpuacct.device_totals(view).items()):
        for region, vals in regions.items():
            drows.append([driver, dev, region] + [_opt(vals.get(s), raw) for s in gpuacct.STATS])
        if not regions:
            drows.append([driver, dev, "-"] + ["-"] * len(gpuacct.STATS))
    out += "\nper device (each client once; an object shared by clients counts in each):\n"
    out += render(dcols, drows, width=table_width(args))
    out += ("distinct clients: " + ", ".join(f"{n} on {dev}" for (_d, dev), n in sorted(ncl.items())) + "\n"
            "GEM memory is not part of the dma-buf totals of the other views "
            "(shared GEM objects are dma-bufs too)\n")
    emit(out, args)
    return 0


def _opt(n, raw):
    return "-" if n is None else human(n, raw)
