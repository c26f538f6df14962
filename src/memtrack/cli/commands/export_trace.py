"""memtrack export-trace history.db -o trace.json: Chrome trace-event JSON (Perfetto, chrome://tracing).

Counter tracks per process (rss/pss/uss, buffers) and per category (held bytes), a kernel-only
track, and instant events where a process acquired or released a buffer. Counters are emitted
where a value changes (trace viewers hold a counter until its next sample)."""
from __future__ import annotations

import json
import sys

from ..common import Progress, emit, load_history, output_arg, output_name, refuse

NAME = "export-trace"
HELP = "write a recorded history as Chrome trace-event JSON that Perfetto's UI opens"
ORDER = 33

#: the pseudo-process that carries machine-wide tracks (pid 0 is never a user process)
MACHINE_PID = 0


def add_arguments(p):
    p.add_argument("history", metavar="history.db")
    p.add_argument("-o", "--output", type=output_arg, required=True, metavar="trace.json",
                   help="file to write (-: stdout)")


def run(args) -> int:
    refuse(args, "export-trace", "csv", why="it writes trace-event JSON")
    prog = Progress(args)
    try:
        h = load_history(args, "export-trace", prog)
        prog(f"tracing {len(h)} snapshots")
        doc = trace(h, pids=args.pid)
        prog(f"writing {len(doc['traceEvents'])} events")
        text = json.dumps(doc, separators=(",", ":")) + "\n"
    finally:
        prog.done()
    emit(text, args)
    if not args.quiet:
        n = len(doc["traceEvents"])
        print(f"memtrack: wrote {output_name(args.output)}: {n} events over {len(h)} snapshots", file=sys.stderr)
    return 0


def trace(h, pids=None) -> dict:
    from ...util.text import oneline
    t0 = h.times[0]
    n = len(h)

    def ts(i):
        return round((h.times[i] - t0) * 1e6)

    meta, events = [], []
    meta.append({"ph": "M", "name": "process_name", "pid": MACHINE_PID, "tid": 0,
                 "args": {"name": "memtrack: machine"}})
    named = {}
    for prow_id, spans in sorted(h.usage.items()):
        p = h.processes[prow_id]
        if pids is not None and p.pid not in pids:
            continue
        named[p.pid] = oneline(f"{p.comm} ({p.cmdline})" if p.cmdline else p.comm or "?", 120)
        prev_end = None
        for i0, i1, (rss, pss, uss, nbuf, mapped, *_mem) in spans:
            if prev_end is not None and i0 > prev_end + 1:
                events.append(_counters(p.pid, ts(prev_end + 1), 0, 0, 0, 0))
            events.append(_counters(p.pid, ts(i0), rss, pss, uss, nbuf))
            prev_end = i1
        if prev_end is not None and prev_end + 1 < n:
            events.append(_counters(p.pid, ts(prev_end + 1), 0, 0, 0, 0))
    for pid, name in sorted(named.items()):
        meta.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": name}})
    for cat, spans in sorted(h.categories.items()):
        prev_end = None
        for i0, i1, (nbytes, nbuf) in spans:
            if prev_end is not None and i0 > prev_end + 1:
                events.append(_cat(cat, ts(prev_end + 1), 0, 0))
            events.append(_cat(cat, ts(i0), nbytes, nbuf))
            prev_end = i1
        if prev_end is not None and prev_end + 1 < n:
            events.append(_cat(cat, ts(prev_end + 1), 0, 0))
    last = object()
    for i, v in enumerate(h.kernel_only):
        if v != last and v is not None:
            events.append({"ph": "C", "name": "kernel-only", "pid": MACHINE_PID, "tid": 0, "ts": ts(i),
                           "args": {"bytes": v}})
        last = v
    for hold in h.holds:
        p = h.processes[hold.process]
        if pids is not None and p.pid not in pids:
            continue
        b = h.buffers[hold.buffer]
        args = {"buffer": f"{b.kind}:{b.inode}", "kind": b.kind, "size": b.size, "name": b.name,
                "exporter": b.exporter}
        if hold.first > 0:     # held since before the recording: no acquire seen
            events.append({"ph": "i", "s": "p", "name": f"acquire {b.label}", "cat": "acquire",
                           "pid": p.pid, "tid": p.pid, "ts": ts(hold.first), "args": args})
        if not hold.open_at_end:
            events.append({"ph": "i", "s": "p", "name": f"release {b.label}", "cat": "release",
                           "pid": p.pid, "tid": p.pid, "ts": ts(hold.last + 1), "args": args})
    events.sort(key=lambda e: (e["ts"], e["pid"], e["ph"]))
    import time
    return {"traceEvents": meta + events, "displayTimeUnit": "ms",
            "otherData": {"source": h.path, "start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)),
                          "snapshots": n, "generator": "memtrack export-trace"}}


def _counters(pid, ts, rss, pss, uss, nbuf):
    return {"ph": "C", "name": "shared memory", "pid": pid, "tid": 0, "ts": ts,
            "args": {"rss": rss, "pss": pss, "uss": uss, "buffers": nbuf}}


def _cat(cat, ts, nbytes, nbuf):
    return {"ph": "C", "name": f"category {cat}", "pid": MACHINE_PID, "tid": 0, "ts": ts,
            "args": {"bytes": nbytes, "buffers": nbuf}}
