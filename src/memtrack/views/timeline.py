"""Time series out of a recorded History, for plots and traces (no plotting library here)."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from ..history import History, oneline


def sample(n: int, limit: int = 2000) -> List[int]:
    """Up to limit snapshot indexes spread evenly over n, first and last included."""
    if n <= limit:
        return list(range(n))
    step = (n - 1) / (limit - 1)
    return sorted({int(round(i * step)) for i in range(limit)})


def process_label(h: History, prow_id: int) -> str:
    p = h.processes[prow_id]
    return f"{p.pid} {oneline(p.comm or p.name, 24)}"


def by_process(h: History, top: int = 8, col: int = 1, pids: Optional[set] = None
               ) -> Tuple[List[str], List[List[int]], List[int]]:
    """(labels, series, prow ids): the top processes by peak of column col (1 = pss), plus
    "rest" for everyone else; a process row absent at a snapshot counts 0 there."""
    dense: Dict[int, List[int]] = {}
    for prow_id, spans in h.usage.items():
        if pids is not None and h.processes[prow_id].pid not in pids:
            continue
        dense[prow_id] = h.series(spans, col)
    ranked = sorted(dense, key=lambda k: (-max(dense[k]), h.processes[k].pid))
    keep, rest = ranked[:top], ranked[top:]
    labels = [process_label(h, k) for k in keep]
    series = [dense[k] for k in keep]
    if rest:
        labels.append(f"rest ({len(rest)} processes)")
        series.append([sum(dense[k][i] for k in rest) for i in range(len(h))])
    return labels, series, keep


def by_category(h: History) -> Tuple[List[str], List[List[int]]]:
    cats = sorted(h.categories, key=lambda c: -max(h.series(h.categories[c], 0)))
    return cats, [h.series(h.categories[c], 0) for c in cats]


def process_timeline(h: History, prow_id: int) -> Dict[str, List[int]]:
    spans = h.usage.get(prow_id, [])
    return {name: h.series(spans, i) for i, name in enumerate(("rss", "pss", "uss", "buffers"))}


def pick(values: Sequence, idx: Sequence[int]) -> List:
    return [values[i] for i in idx]
