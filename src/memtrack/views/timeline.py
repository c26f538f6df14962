"""Time series out of a recorded History, for plots and traces (no plotting library here)."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from ..history import History
from ..util.text import oneline


def sample(n: int, limit: int = 2000) -> List[int]:
    """Up to limit snapshot indexes spread evenly over n, first and last included."""
    if n <= limit:
        return list(range(n))
    step = (n - 1) / (limit - 1)
    return sorted({int(round(i * step)) for i in range(limit)})


def process_label(h: History, prow_id: int) -> str:
    p = h.processes[prow_id]
    return f"{p.pid} {oneline(p.comm or p.name, 24)}"


def by_process(h: History, top: int = 8, col: int = 1, pids: Optional[set] = None,
               idx: Optional[Sequence[int]] = None) -> Tuple[List[str], List[List[int]], List[int]]:
    """(labels, series, prow ids): the top processes by peak of column col (1 = pss), plus
    "rest" for everyone else; a process row absent at a snapshot counts 0 there. The series
    hold the snapshots idx (default: every one); the peaks are over every snapshot."""
    idx = range(len(h)) if idx is None else idx
    peak: Dict[int, int] = {}
    for prow_id, spans in h.usage.items():
        if pids is not None and h.processes[prow_id].pid not in pids:
            continue
        peak[prow_id] = max(v for _, _, v in h.value_runs(spans, col))
    ranked = sorted(peak, key=lambda k: (-peak[k], h.processes[k].pid))
    keep, rest = ranked[:top], ranked[top:]
    labels = [process_label(h, k) for k in keep]
    series = [h.sampled(h.usage[k], col, idx) for k in keep]
    if rest:
        labels.append(f"rest ({len(rest)} processes)")
        total = [0] * len(idx)
        for k in rest:
            total = [a + b for a, b in zip(total, h.sampled(h.usage[k], col, idx))]
        series.append(total)
    return labels, series, keep


def by_category(h: History, idx: Optional[Sequence[int]] = None) -> Tuple[List[str], List[List[int]]]:
    idx = range(len(h)) if idx is None else idx
    peak = {c: max(v for _, _, v in h.value_runs(spans, 0)) for c, spans in h.categories.items()}
    cats = sorted(h.categories, key=lambda c: -peak[c])
    return cats, [h.sampled(h.categories[c], 0, idx) for c in cats]


def process_timeline(h: History, prow_id: int, idx: Optional[Sequence[int]] = None) -> Dict[str, List[int]]:
    idx = range(len(h)) if idx is None else idx
    spans = h.usage.get(prow_id, [])
    out = {name: h.sampled(spans, i, idx) for i, name in enumerate(("rss", "pss", "uss", "buffers"))}
    mem = h.sampled(spans, 5, idx)
    if all(v is not None for v in mem):       # an older history kept no mem: no series
        out["mem"] = mem
    return out


def pick(values: Sequence, idx: Sequence[int]) -> List:
    return [values[i] for i in idx]
