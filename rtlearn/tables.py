"""Markdown tables of results: the one formatter every chapter uses.

:func:`markdown_table` turns a header and rows into a GitHub-style Markdown
table (what ``IPython.display.Markdown`` renders in the book). Rows are
sequences of cells, or mappings read in the order of ``columns``. Cells are
formatted by type:

* a real number (Python ``float`` or a NumPy floating scalar): ``fmt`` when
  finite, else the ``nan`` placeholder;
* a ``(mean, sd)`` pair: ``"<mean> ± <sd>"``, both with ``fmt``;
* anything else (text, integers, booleans): ``str(cell)``.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["markdown_table", "format_cell", "Markdown"]


def format_cell(value, fmt: str = "{:.2f}", nan: str = "–") -> str:
    """One table cell as text (see the module docstring for the rules)."""
    if isinstance(value, tuple) and len(value) == 2:
        return f"{fmt.format(value[0])} ± {fmt.format(value[1])}"
    if isinstance(value, (float, np.floating)):
        return nan if not np.isfinite(value) else fmt.format(value)
    return str(value)


def markdown_table(header, rows, fmt: str = "{:.2f}", *, columns=None, nan: str = "–", rule: str = "---") -> str:
    """A Markdown table of ``rows`` under ``header``.

    Parameters
    ----------
    header : sequence
        Column titles (converted with ``str``).
    rows : iterable of sequences or mappings
        One entry per table row. A sequence gives the cells in column order; a
        mapping is read at the keys ``columns`` (default: ``header``), a missing
        key giving an empty cell.
    fmt : str
        Format of numbers (``"{:.2f}"``; e.g. ``"{:.3f}"`` for three decimals).
    columns : sequence, optional
        Keys of mapping rows, when they differ from the titles.
    nan : str
        Text of a NaN or infinite number (``"–"``; the region chapter uses ``"n/a"``).
    rule : str
        Text of each cell of the rule under the header (``"---"``, or ``" --- "``).

    Examples
    --------
    >>> print(markdown_table(["loss", "DSC"], [["Dice", 0.8123], ["CE", float("nan")]]))
    | loss | DSC |
    |---|---|
    | Dice | 0.81 |
    | CE | – |
    >>> print(markdown_table(["loss", "DSC"], [{"loss": "Dice", "dsc": (0.8, 0.05)}], "{:.3f}",
    ...                      columns=["loss", "dsc"]))
    | loss | DSC |
    |---|---|
    | Dice | 0.800 ± 0.050 |
    """
    header = [str(h) for h in header]
    keys = list(header if columns is None else columns)
    if len(keys) != len(header):
        raise ValueError(f"columns has {len(keys)} keys but the header {len(header)} titles; give one per column")
    lines = ["| " + " | ".join(header) + " |", "|" + f"{rule}|" * len(header)]
    for r in rows:
        cells = [r.get(k, "") for k in keys] if isinstance(r, Mapping) else list(r)
        lines.append("| " + " | ".join(format_cell(c, fmt, nan) for c in cells) + " |")
    return "\n".join(lines)


class Markdown(str):
    """Markdown text that a notebook renders as Markdown and whose plain repr is the text itself.

    Return it as the last expression of a cell: the book shows the rendered
    table (``text/markdown``), and the stored ``text/plain`` output is the table's
    source, so a cell marked ``# NBVAL_CHECK_OUTPUT`` compares the actual numbers
    (``IPython.display.Markdown`` stores only ``<IPython.core.display.Markdown object>``).

    Examples
    --------
    >>> Markdown("| a |\\n|---|\\n| 1 |")
    | a |
    |---|
    | 1 |
    """

    def _repr_markdown_(self) -> str:
        return str(self)

    def __repr__(self) -> str:
        return str(self)

    def __add__(self, other):
        return Markdown(str(self) + str(other))
