"""Plain-text tables (procrank/smem style) and CSV: fast, pipe-friendly, no dependencies."""
from __future__ import annotations

import csv
import io
from typing import List, Optional, Sequence

from ..util.text import clip, human, printable  # noqa: F401 (the commands take both from here)


class Column:
    __slots__ = ("title", "align", "width_cap")

    def __init__(self, title: str, align: str = ">", width_cap: Optional[int] = None):
        self.title, self.align, self.width_cap = title, align, width_cap


def render(columns: Sequence[Column], rows: List[Sequence[str]], footer: Optional[List[Sequence[str]]] = None,
           max_last: Optional[int] = None, width: Optional[int] = None) -> str:
    """Aligned columns separated by two spaces; the last column is never padded. width: no
    line takes more terminal cells than that (a terminal's width): the last column, the
    name, is cut first, as ps and top cut theirs; None: whole lines."""
    body = [[printable(str(c)) for c in r] for r in rows]
    foot = [[printable(str(c)) for c in r] for r in (footer or [])]
    titles = [printable(c.title) for c in columns]   # a matrix column is named after a comm
    widths = [len(t) for t in titles]
    for r in body + foot:
        for i, cell in enumerate(r[:-1]):
            widths[i] = max(widths[i], len(cell))
    lines = []

    def line(cells):
        out = []
        for i, (c, cell) in enumerate(zip(columns, cells)):
            if i == len(columns) - 1:
                if max_last and len(cell) > max_last:
                    cell = cell[: max_last - 1] + "…"
                out.append(cell)
            else:
                out.append(cell.rjust(widths[i]) if c.align == ">" else cell.ljust(widths[i]))
        return "  ".join(out).rstrip()

    lines.append(line(titles))
    lines.extend(line(r) for r in body)
    if foot:
        lines.append(line(["-" * w if i < len(columns) - 1 else "" for i, w in enumerate(widths)]))
        lines.extend(line(r) for r in foot)
    if width is not None:
        # the rule under the body is cut plainly: it stays a rule, with nothing to elide
        lines = [x[:width] if x and set(x) <= {"-", " "} else clip(x, width) for x in lines]
    return "\n".join(lines) + "\n"


def to_csv(header: Sequence[str], rows: List[Sequence]) -> str:
    """CSV, one rule for every text field, header included (a matrix column is named after a
    comm): control characters and undecodable bytes are escaped as printable() does for the
    tables (\\x1b, \\xff), so no name reaches a terminal or a spreadsheet raw, and every
    field reads the same way. Numbers are written as they are."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([printable(h) for h in header])
    for r in rows:
        w.writerow(["" if v is None else printable(v) if isinstance(v, str) else v for v in r])
    return buf.getvalue()
