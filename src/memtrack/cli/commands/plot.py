"""memtrack plot history.db -o FILE.png|.svg: stacked areas over time and one process's timeline
(needs matplotlib: pip install 'memtrack[plot]')."""
from __future__ import annotations

import io
import json
import os
import sys

from ...errors import MemtrackError
from ..common import Progress, load_history, output_arg, refuse

NAME = "plot"
HELP = "plot a recorded history: stacked pss by process (top N + rest) or by category, and a process timeline"
ORDER = 32


def add_arguments(p):
    p.add_argument("history", metavar="history.db")
    p.add_argument("-o", "--output", type=output_arg, required=True, metavar="FILE.png|FILE.svg")
    p.add_argument("--by", choices=("process", "category"), default="process",
                   help="stack by process (pss, top N + rest) or by category (held bytes)")
    p.add_argument("-t", "--top", type=int, default=8, metavar="N", help="processes stacked before 'rest' (default 8)")
    p.add_argument("--timeline", type=int, default=None, metavar="PID",
                   help="process shown in the lower panel (default: the largest)")


def run(args) -> int:
    ext = os.path.splitext(args.output)[1].lower()
    if ext not in (".png", ".svg"):
        raise MemtrackError(f"{args.output}: the output must end in .png or .svg")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MemtrackError("memtrack plot needs matplotlib: pip install 'memtrack[plot]' "
                            "(or pip install matplotlib)") from None
    refuse(args, "plot", "json", "csv", why="it draws a PNG or SVG")
    if args.top < 1:
        raise MemtrackError("--top must be at least 1")
    prog = Progress(args)
    try:
        h = load_history(args, "plot", prog)
        prog(f"sampling {len(h)} snapshots")
        data = figure_data(h, args)
        prog(f"drawing {len(data['x'])} points")
        buf = draw(plt, matplotlib, data, ext)
    finally:
        prog.done()
    from ...util.atomic import atomic_write
    try:
        atomic_write(args.output, buf)
    except OSError as exc:
        raise MemtrackError(f"{args.output}: {exc.strerror or exc}") from None
    if not args.quiet:
        print(f"memtrack: wrote {args.output}: {len(data['labels'])} series, {len(data['x'])} points",
              file=sys.stderr)
    return 0


def figure_data(h, args) -> dict:
    from ...views import timeline as tl
    idx = tl.sample(len(h))
    t0 = h.times[0]
    x = [h.times[i] - t0 for i in idx]
    if args.by == "process":
        labels, series, keep = tl.by_process(h, args.top, pids=args.pid, idx=idx)
        title = "shared-buffer pss by process"
    else:
        labels, series = tl.by_category(h, idx)
        keep = None
        title = "held bytes by category"
    prow = None
    if args.timeline is not None:
        cands = [k for k, p in h.processes.items() if p.pid == args.timeline and k in h.usage]
        if not cands:
            raise MemtrackError(f"pid {args.timeline} holds no buffers in {h.path}")
        prow = max(cands)
    elif keep:
        prow = keep[0]
    elif h.usage:
        prow = max(h.usage, key=lambda k: max(s[2][1] for s in h.usage[k]))
    tline = None
    if prow is not None:
        tline = {"label": tl.process_label(h, prow), **tl.process_timeline(h, prow, idx)}
    return {"x": x, "labels": labels, "series": series, "title": title,
            "start": h.times[0], "timeline": tline, "by": args.by}


def draw(plt, matplotlib, d, ext) -> bytes:
    import time
    matplotlib.rcParams["svg.fonttype"] = "none"          # text stays text: searchable, smaller
    mib = 1024.0 * 1024.0
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 7.5), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 2]})
    start = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(d["start"]))
    if d["series"]:
        polys = ax1.stackplot(d["x"], [[v / mib for v in s] for s in d["series"]], labels=d["labels"],
                              step="post")
        for i, poly in enumerate(polys):
            poly.set_gid(f"series-{i}")
        ax1.legend(loc="upper left", fontsize="small", ncol=2)
    ax1.set_title(d["title"])
    ax1.set_ylabel("MiB")
    ax1.grid(alpha=0.3)
    t = d["timeline"]
    if t:
        for key in ("rss", "pss", "uss", "mem"):
            if key not in t:
                continue                              # mem: not in an older history
            line, = ax2.step(d["x"], [v / mib for v in t[key]], where="post", label=key)
            line.set_gid(f"timeline-{key}")
        ax2.set_ylabel("MiB")
        ax3 = ax2.twinx()
        line, = ax3.step(d["x"], t["buffers"], where="post", color="grey", linestyle=":", label="buffers")
        line.set_gid("timeline-buffers")
        ax3.set_ylabel("buffers")
        h1, l1 = ax2.get_legend_handles_labels()
        h2, l2 = ax3.get_legend_handles_labels()
        ax2.legend(h1 + h2, l1 + l2, loc="upper left", fontsize="small")
        ax2.set_title(f"timeline of {t['label']}")
    ax2.set_xlabel(f"seconds since {start}")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    meta = {"series": d["labels"], "by": d["by"], "timeline": t["label"] if t else None}
    out = io.BytesIO()
    fig.savefig(out, format=ext[1:], metadata={"Title": "memtrack " + d["title"],
                                               "Description": json.dumps(meta)})
    plt.close(fig)
    return out.getvalue()
