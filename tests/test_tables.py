"""rtlearn.tables.markdown_table: the one table formatter, byte for byte what the chapters printed before."""
from __future__ import annotations

import numpy as np
import pytest

from rtlearn.tables import format_cell, markdown_table


def test_markdown_table():
    s = markdown_table(["a", "b"], [["x", 1.234], ["y", float("nan")]])
    assert s.splitlines() == ["| a | b |", "|---|---|", "| x | 1.23 |", "| y | – |"]


# ---- the three formatters it replaced, verbatim: reference implementations ----------------------------------------
def _sharp_markdown_table(header, rows, fmt: str = "{:.2f}") -> str:
    # was in the sharp chapter's driver (chapters 4, 5)
    def cell(x):
        if isinstance(x, (float, np.floating)):
            return "–" if not np.isfinite(x) else fmt.format(x)
        return str(x)

    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)


def _region_markdown_table(rows, columns, header=None, digits: int = 3) -> str:
    # was in the region chapter's driver (chapter 7)
    header = header or columns
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, "")
            if isinstance(v, tuple):
                cells.append(f"{v[0]:.{digits}f} ± {v[1]:.{digits}f}")
            elif isinstance(v, float):
                cells.append("n/a" if not np.isfinite(v) else f"{v:.{digits}f}")
            else:
                cells.append(str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def _pareto_format_table(tables: dict, digits: int = 2) -> str:
    # was the DVH-conditioned driver's format_table (chapter 6)
    labels = list(tables)
    names = list(next(iter(tables.values())))
    head = "| structure | " + " | ".join(f"{lab}: mean diff (%) | {lab}: max diff (%)" for lab in labels) + " |"
    rows = [head, "|" + " --- |" * (1 + 2 * len(labels))]
    f = f"{{:.{digits}f}} ± {{:.{digits}f}}"
    for n in names:
        cells = []
        for lab in labels:
            a, b, c, d = tables[lab][n]
            cells += [f.format(a, b), f.format(c, d)]
        rows.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def test_same_bytes_as_the_sharp_chapter_formatter():
    rows = [["MAD", 1.234, np.float32(2.5), np.float64(np.nan), 7, "12.3 ± 1.0", True],
            ("PTV", float("inf"), -0.005, 1e6, np.int64(3), None, "p")]
    header = ["ROI", "MSE", "SL γ=1", "SL γ=100", "n", "ours", "x"]
    for fmt in ("{:.2f}", "{:.3f}", "{:.3g}"):
        assert markdown_table(header, rows, fmt) == _sharp_markdown_table(header, rows, fmt)
    assert markdown_table(header, []) == _sharp_markdown_table(header, [])


def test_same_bytes_as_the_region_chapter_formatter():
    rows = [{"loss": "Baseline", "dsc": (0.81234, 0.0512), "hd95": (3.2, float("nan")), "missed": 2,
             "paper PDDCA": 0.751, "Mandible": float("nan"), "p": 0.00012, "n": 12},
            {"loss": "Baseline+ARS", "dsc": (0.8, 0.05), "missed": 0, "paper PDDCA": float("nan")}]
    cols = ["loss", "dsc", "hd95", "Mandible", "missed", "paper PDDCA", "p", "n"]
    titles = ["loss", "DSC", "HD95 (mm)", "Mandible", "missed", "paper", "p", "n"]
    for digits in (3, 4):
        fmt = f"{{:.{digits}f}}"
        assert markdown_table(cols, rows, fmt, nan="n/a") == _region_markdown_table(rows, cols, digits=digits)
        assert (markdown_table(titles, rows, fmt, columns=cols, nan="n/a")
                == _region_markdown_table(rows, cols, header=titles, digits=digits))


def test_same_bytes_as_the_dvh_conditioned_chapter_formatter():
    from rtlearn.experiments.dvh_conditioned import format_table

    rng = np.random.default_rng(0)
    tables = {lab: {s: tuple(float(v) for v in rng.normal(size=4)) for s in ("PTV", "Rectum", "Bladder", "body")}
              for lab in ("conditional", "baseline")}
    tables["paper (3D, 77/20 patients)"] = {"PTV": (0.52, 0.23, 1.83, 1.09), "Rectum": (0.54, 4.83, 0.64, 1.46),
                                            "Bladder": (1.63, 4.48, 0.02, 1.17), "body": (0.33, 0.73, 1.21, 1.90)}
    for digits in (1, 2):
        assert format_table(tables, digits) == _pareto_format_table(tables, digits)


def test_cells_and_bad_columns():
    assert format_cell((1.0, 0.25), "{:.1f}") == "1.0 ± 0.2"
    assert format_cell(float("nan"), nan="n/a") == "n/a" and format_cell(np.float32(1.5)) == "1.50"
    assert format_cell(3) == "3" and format_cell("x") == "x"
    assert markdown_table(["a"], [{"a": 1.0}, {}]).splitlines()[2:] == ["| 1.00 |", "|  |"]
    with pytest.raises(ValueError, match="columns"):
        markdown_table(["a", "b"], [], columns=["a"])


def test_markdown_renders_and_its_plain_repr_is_the_source():
    from rtlearn.tables import Markdown

    md = Markdown("| a |\n|---|\n| 1.00 |")
    assert repr(md) == str(md) and md._repr_markdown_() == str(md)
    assert isinstance(md + "\n\nnote", Markdown) and (md + "x").endswith("x")
    from IPython.core.formatters import DisplayFormatter

    data, _ = DisplayFormatter().format(md)
    assert data["text/plain"] == str(md) and data["text/markdown"] == str(md)
