"""Plain-text tables for a terminal: columns as wide as their widest cell, nothing cut off.

    print(render(["method", "SDC rate"], [["save", "0.0000"]], align="lr",
                 notes=["SDC rate: changed and not detected"]))
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence


def render(headers: Sequence[str], rows: Iterable[Sequence[object]], align: str = "",
           notes: Sequence[str] = (), gap: int = 2, width: int = 100) -> str:
    """The table as text: a header, a rule, one line per row, then the notes (a legend).

    `align` has one letter per column, `l` or `r` (default: the first column left, the rest
    right). Cells are `str()`-ed; a column is as wide as its widest cell or header. Notes are
    wrapped at `width`.
    """
    body = [[str(c) for c in row] for row in rows]
    n = len(headers)
    for row in body:
        if len(row) != n:
            raise ValueError(f"row {row} has {len(row)} cells for {n} columns")
    align = align or "l" + "r" * (n - 1)
    if len(align) != n or set(align) - {"l", "r"}:
        raise ValueError(f"align {align!r}: one of l/r per column ({n})")
    widths = [max([len(h)] + [len(row[i]) for row in body]) for i, h in enumerate(headers)]
    sep = " " * gap

    def line(cells: Sequence[str]) -> str:
        return sep.join(c.ljust(w) if a == "l" else c.rjust(w)
                        for c, w, a in zip(cells, widths, align, strict=True)).rstrip()

    out = [line(list(headers)), "-" * (sum(widths) + gap * (n - 1))]
    out += [line(row) for row in body]
    for note in notes:
        out += textwrap.wrap(note, width, subsequent_indent="  ")
    return "\n".join(out)


def counts_text(counts: object) -> str:
    """`range 4, dmr 2` from a {name: count} dict (anything else as it is)."""
    if isinstance(counts, dict):
        return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"
    return str(counts)
