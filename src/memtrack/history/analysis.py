"""Analysis of a loaded history: trends (least squares over spans) and suspected leaks."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from ..util.text import human
from .load import History, prefix_sums


@dataclass
class Trend:
    start: int
    end: int
    peak: int
    peak_t: float
    slope: float            # per second, least squares over every snapshot in the range
    r2: float
    rises: int
    drops: int
    rise_total: int
    drop_total: int

    @property
    def growth(self) -> int:
        return self.end - self.start

    @property
    def steady_growth(self) -> bool:
        """Grows, keeps growing, and almost never gives back: how a leak looks."""
        return (self.rises >= 3 and self.end > self.start and self.slope > 0 and self.r2 >= 0.8
                and self.drop_total <= 0.1 * self.rise_total)

    def as_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "peak": self.peak, "peak_t": self.peak_t,
                "growth": self.growth, "slope_per_s": round(self.slope, 3), "r2": round(self.r2, 3),
                "rises": self.rises, "drops": self.drops}


def runs_of(values: Sequence[Optional[int]]) -> List[Tuple[int, int, int]]:
    """(i0, i1, v): the maximal runs of one value; None (unknown) leaves a hole."""
    out: List[Tuple[int, int, int]] = []
    i0 = 0
    n = len(values)
    while i0 < n:
        v = values[i0]
        i1 = i0
        while i1 + 1 < n and values[i1 + 1] == v:
            i1 += 1
        if v is not None:
            out.append((i0, i1, v))
        i0 = i1 + 1
    return out


def trend(times: Sequence[float], values: Sequence[Optional[int]]) -> Optional[Trend]:
    return trend_runs(times, runs_of(values), prefix_sums(times))


def trend_runs(times: Sequence[float], runs: Sequence[Tuple[int, int, int]],
               prefix: Tuple[List[int], List[int]]) -> Optional[Trend]:
    """The least-squares trend of a series given as runs of one value (as spans store it):
    the cost is per run, so a million snapshots with a few changes take no time."""
    if not runs:
        return None
    p1, p2 = prefix
    # exact integer sums (microseconds, bytes): neither a 2^64 level nor a late window loses
    # the changes to rounding; one division per result
    n = st = sv = stt = svv = stv = 0
    for i0, i1, v in runs:
        k = i1 - i0 + 1
        s1 = p1[i1 + 1] - p1[i0]
        n += k
        st += s1
        stt += p2[i1 + 1] - p2[i0]
        sv += v * k
        svv += v * v * k
        stv += v * s1
    dt = n * stt - st * st
    dv = n * svv - sv * sv
    cov = n * stv - st * sv
    slope = cov * 1_000_000 / dt if dt > 0 else 0.0         # per second
    r2 = (cov * cov) / (dt * dv) if dt > 0 and dv > 0 else 0.0
    rises = drops = up = down = 0
    peak, peak_t = runs[0][2], times[runs[0][0]]
    for (_, _, a), (i0, _, b) in zip(runs, runs[1:]):
        if b > a:
            rises += 1
            up += b - a
        elif b < a:
            drops += 1
            down += a - b
        if b > peak:
            peak, peak_t = b, times[i0]
    return Trend(runs[0][2], runs[-1][2], peak, peak_t, slope, r2, rises, drops, up, down)


@dataclass
class Finding:
    kind: str               # "growth" | "unreleased" | "sysv-unattached" | "kernel-only-growth"
    subject: str
    message: str
    evidence: dict

    def as_dict(self) -> dict:
        return {"kind": self.kind, "subject": self.subject, "message": self.message, "evidence": self.evidence}


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def group_spans(h: History, by: str) -> Tuple[Dict[str, list], Dict[str, set]]:
    """Per group of processes (cgroups.GROUPINGS: cgroup, unit, container, pod), a group
    being one holder as groups.account_groups accounts it, from the recorded holds and
    cgroups: ({group: [(i0, i1, (pss, rss, buffers, mem))]}, {group: pids seen in it}).
    pss splits each buffer between the groups of its recorded holders to the byte
    (account.pss_shares, as account_groups does), mem its allocated bytes likewise (None
    while one of the group's buffers has them unknown). A process with no cgroup recorded
    at a snapshot is in cgroups.UNKNOWN there. Only what changes is recomputed: the buffers
    whose holders, or whose holders' groups, changed at that snapshot."""
    from ..account import pss_shares
    from ..cgroups import UNKNOWN, group_key
    end = len(h.times) - 1
    events: Dict[int, list] = {}           # index -> [(order, what, process, arg)]
    for x in h.holds:
        events.setdefault(x.first, []).append((1, "hold", x.process, x.buffer))
        if x.last < end:
            events.setdefault(x.last + 1, []).append((0, "drop", x.process, x.buffer))
    for proc, spans in (h.cgroups or {}).items():
        for i0, i1, cg in spans:
            events.setdefault(i0, []).append((1, "join", proc, cg))
            if i1 < end:
                events.setdefault(i1 + 1, []).append((0, "leave", proc, None))
    holders: Dict[int, set] = {}           # buffer -> processes
    held: Dict[int, set] = {}              # process -> buffers
    gof: Dict[int, str] = {}               # process -> group (absent: UNKNOWN)
    contrib: Dict[int, Dict[str, tuple]] = {}   # buffer -> group -> (pss, rss, mem or None)
    totals: Dict[str, list] = {}           # group -> [pss, rss, buffers, mem, buffers of unknown mem]
    pids: Dict[str, set] = {}
    out: Dict[str, list] = {}
    opened: Dict[str, Tuple[int, tuple]] = {}
    for i in sorted(events):
        touched = set()
        for _, what, proc, arg in sorted(events[i], key=lambda e: e[0]):
            if what == "hold":
                holders.setdefault(arg, set()).add(proc)
                held.setdefault(proc, set()).add(arg)
                touched.add(arg)
            elif what == "drop":
                holders.get(arg, set()).discard(proc)
                held.get(proc, set()).discard(arg)
                touched.add(arg)
            elif what == "join":
                gof[proc] = group_key(arg, by)
                touched |= held.get(proc, set())
            else:
                gof.pop(proc, None)
                touched |= held.get(proc, set())
        changed = set()
        for bid in touched:
            for g, (pss, rss, mem) in contrib.pop(bid, {}).items():
                t = totals[g]
                t[0] -= pss
                t[1] -= rss
                t[2] -= 1
                if mem is None:
                    t[4] -= 1
                else:
                    t[3] -= mem
                changed.add(g)
            who = holders.get(bid)
            if not who:
                continue
            b = h.buffers[bid]
            gs = sorted({gof.get(p, UNKNOWN) for p in who})
            sizes = pss_shares(b.size, gs) if b.size is not None else {}
            mems = pss_shares(b.allocated, gs) if b.allocated is not None else {}
            c = contrib[bid] = {}
            for g in gs:
                c[g] = (sizes.get(g, 0), b.size or 0, mems.get(g))
                t = totals.setdefault(g, [0, 0, 0, 0, 0])
                t[0] += c[g][0]
                t[1] += c[g][1]
                t[2] += 1
                if c[g][2] is None:
                    t[4] += 1
                else:
                    t[3] += c[g][2]
                changed.add(g)
                pids.setdefault(g, set()).update(h.processes[p].pid for p in who
                                                  if gof.get(p, UNKNOWN) == g)
        for g in changed:
            t = totals[g]
            value = (t[0], t[1], t[2], t[3] if t[4] == 0 else None) if t[2] else None
            if g in opened:
                if opened[g][1] == value:
                    continue
                i0, v = opened.pop(g)
                out.setdefault(g, []).append((i0, i - 1, v))
            if value is not None:
                opened[g] = (i, value)
    for g, (i0, v) in opened.items():
        out.setdefault(g, []).append((i0, end, v))
    return out, pids


def analyze(h: History, pids=None, min_unreleased: int = 3, by: Optional[str] = None) -> dict:
    """Per process and per category: peak, growth, slope; suspected leaks with evidence.
    by (a cgroups grouping): per group as well (the history must hold cgroups)."""
    T = h.times
    n = len(T)
    procs_out, findings = [], []
    for prow_id, spans in h.usage.items():
        prow = h.processes[prow_id]
        if pids is not None and prow.pid not in pids:
            continue
        i0, i1 = spans[0][0], max(s[1] for s in spans)
        tr_pss, tr_rss, tr_buf = (trend_runs(T, h.value_runs(spans, col, i0, i1), h.prefix)
                                  for col in (1, 0, 3))
        entry = {"pid": prow.pid, "comm": prow.comm, "name": prow.short, "cmdline": prow.cmdline,
                 "first_seen": _iso(T[i0]), "last_seen": _iso(T[i1]), "snapshots": i1 - i0 + 1,
                 "pss": tr_pss.as_dict(), "rss": tr_rss.as_dict(), "buffers": tr_buf.as_dict(),
                 "mem": None}
        if all(v[5] is not None for _, _, v in spans):     # an older history kept no mem
            entry["mem"] = trend_runs(T, h.value_runs(spans, 5, i0, i1), h.prefix).as_dict()
        procs_out.append(entry)
        subject = f"pid {prow.pid} ({prow.short})"
        for label, tr, fmt in (("held bytes", tr_rss, human), ("buffer count", tr_buf, str)):
            if tr.steady_growth:
                rate = (fmt(int(round(tr.slope))) if fmt is human else f"{tr.slope:.2f}")
                findings.append(Finding("growth", subject,
                                        f"{label} grew steadily from {fmt(tr.start)} to {fmt(tr.end)} "
                                        f"(+{rate}/s, {tr.rises} rises, {tr.drops} drops)",
                                        dict(tr.as_dict(), metric=label, pid=prow.pid,
                                             first_seen=_iso(T[i0]), last_seen=_iso(T[i1]))))
    # buffers acquired after a process was first seen and never released
    first_seen = {pid: min(s[0] for s in spans) for pid, spans in h.usage.items()}
    acquired: Dict[int, list] = {}
    for hold in h.holds:
        if hold.first > first_seen.get(hold.process, 0):
            acquired.setdefault(hold.process, []).append(hold)
    for prow_id, holds in acquired.items():
        prow = h.processes[prow_id]
        if pids is not None and prow.pid not in pids:
            continue
        kept = [x for x in holds if x.open_at_end]
        if len(kept) >= min_unreleased and len(kept) * 2 >= len(holds):
            bufs = [h.buffers[x.buffer] for x in kept]
            total = sum(b.size or 0 for b in bufs)
            findings.append(Finding(
                "unreleased", f"pid {prow.pid} ({prow.short})",
                f"{len(kept)} of {len(holds)} buffers acquired during the recording were never "
                f"released ({human(total)})",
                {"pid": prow.pid, "acquired": len(holds), "never_released": len(kept), "bytes": total,
                 "first_acquired": _iso(T[kept[0].first]), "last_acquired": _iso(T[kept[-1].first]),
                 "buffers": [b.label for b in bufs[:20]]}))
    # SysV segments no process ever attached while we watched
    for bid, life in h.buffer_life.items():
        b = h.buffers[bid]
        if b.kind != "sysv" or b.nattch not in (0, None):
            continue
        if any(x.buffer == bid for x in h.holds):
            continue
        f0, f1 = life[0][0], life[-1][1]
        if f1 > f0:
            findings.append(Finding("sysv-unattached", f"SysV segment {b.name or ''} shmid {b.inode}",
                                    f"{human(b.size)} with no process attached (nattch 0) for the "
                                    f"whole time it was seen",
                                    {"shmid": b.inode, "key": b.name, "size": b.size,
                                     "first_seen": _iso(T[f0]), "last_seen": _iso(T[f1])}))
    ko = trend_runs(T, runs_of(h.kernel_only), h.prefix)
    if ko is not None and ko.steady_growth:
        findings.append(Finding("kernel-only-growth", "kernel",
                                f"kernel-only bytes grew steadily from {human(ko.start)} to {human(ko.end)} "
                                f"(+{human(int(round(ko.slope)))}/s)",
                                ko.as_dict()))
    cats_out = []
    for cat, spans in sorted(h.categories.items()):
        tr = trend_runs(T, h.value_runs(spans, 0), h.prefix)
        trb = trend_runs(T, h.value_runs(spans, 1), h.prefix)
        cats_out.append({"category": cat, "bytes": tr.as_dict(), "buffers": trb.as_dict()})
        if tr.steady_growth and pids is None:
            findings.append(Finding("growth", f"category {cat}",
                                    f"held bytes grew steadily from {human(tr.start)} to {human(tr.end)} "
                                    f"(+{human(int(round(tr.slope)))}/s)",
                                    dict(tr.as_dict(), category=cat)))
    groups_out = None
    if by is not None:
        groups_out = []
        gspans, gpids = group_spans(h, by)
        for g, spans in gspans.items():
            if pids is not None and not gpids.get(g, set()) & set(pids):
                continue
            i0, i1 = spans[0][0], spans[-1][1]
            tr_pss, tr_rss, tr_buf = (trend_runs(T, h.value_runs(spans, col, i0, i1), h.prefix)
                                      for col in (0, 1, 2))
            entry = {"group": g, "by": by, "pids": sorted(gpids.get(g, ())),
                     "first_seen": _iso(T[i0]), "last_seen": _iso(T[i1]), "snapshots": i1 - i0 + 1,
                     "pss": tr_pss.as_dict(), "rss": tr_rss.as_dict(), "buffers": tr_buf.as_dict(),
                     "mem": None}
            if all(v[3] is not None for _, _, v in spans):
                entry["mem"] = trend_runs(T, h.value_runs(spans, 3, i0, i1), h.prefix).as_dict()
            groups_out.append(entry)
            # a group is one holder: what it holds is its pss (a buffer shared with another
            # group counts half), so a leak shared across groups shows in each of them
            for label, tr, fmt in (("held bytes", tr_pss, human), ("buffer count", tr_buf, str)):
                if tr.steady_growth:
                    rate = (fmt(int(round(tr.slope))) if fmt is human else f"{tr.slope:.2f}")
                    findings.append(Finding("growth", f"{by} {g}",
                                            f"{label} grew steadily from {fmt(tr.start)} to {fmt(tr.end)} "
                                            f"(+{rate}/s, {tr.rises} rises, {tr.drops} drops)",
                                            dict(tr.as_dict(), metric=label, by=by, group=g,
                                                 first_seen=_iso(T[i0]), last_seen=_iso(T[i1]))))
        groups_out.sort(key=lambda e: (-e["pss"]["peak"], e["group"]))
    # allocated bytes held by processes (None: a history from before they were kept)
    ha = trend_runs(T, runs_of(h.held_allocated), h.prefix) if h.held_allocated is not None else None
    procs_out.sort(key=lambda e: (-e["pss"]["peak"], e["pid"]))
    cats_out.sort(key=lambda e: -e["bytes"]["peak"])
    doc = {"history": h.path, "snapshots": n, "runs": h.runs,
           "start": _iso(T[0]), "end": _iso(T[-1]), "seconds": round(T[-1] - T[0], 3),
           "processes": procs_out, "categories": cats_out,
           "kernel_only": ko.as_dict() if ko else None,
           "held_allocated": ha.as_dict() if ha else None,
           "suspects": [f.as_dict() for f in findings]}
    if groups_out is not None:
        doc["groups"] = {"by": by, "groups": groups_out}
    return doc


def dumps(doc: dict) -> str:
    return json.dumps(doc, indent=1)
