"""The book as a course: exercises with executed solutions, takeaways, the taught code on the page,
a full and a student edition that both build without a warning, and chapters that run without
the book's tooling (Colab)."""
import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rtlearn import book

ROOT = Path(__file__).resolve().parent.parent
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
CHAPTERS = sorted(ROOT / f"{c['file']}.ipynb" for part in TOC["parts"] for c in part["chapters"]
                  if (ROOT / f"{c['file']}.ipynb").exists())
# The method chapters (4-8) show the loss they teach, included from the package.
METHOD_CHAPTERS = [p for p in CHAPTERS if p.name[:2] in {"04", "05", "06", "07", "08"}]
MIN_EXERCISES = 4

_EXERCISE = re.compile(r"^:::\{exercise\}[^\n]*\n(?::[a-z-]+:[^\n]*\n)*?:label:\s*(\S+)", re.M)
_SOLUTION_START = re.compile(r"^:::\{solution-start\}\s+(\S+)", re.M)
_SOLUTION_END = re.compile(r"^:::\{solution-end\}", re.M)


def _src(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def exercises(cells) -> dict:
    """``{label: [source of each code cell of its solution]}`` from a notebook's cells.

    Every exercise must be followed by a gated solution (``solution-start`` label, code cells,
    ``solution-end``) before the next exercise; anything else raises ``ValueError``.
    """
    found, open_label, pending = {}, None, None
    for i, cell in enumerate(cells):
        src = _src(cell)
        if cell["cell_type"] == "code":
            if open_label is not None:
                found[open_label].append(src)
            continue
        if cell["cell_type"] != "markdown":
            continue
        for m in _EXERCISE.finditer(src):
            if open_label is not None or pending is not None:
                raise ValueError(f"cell {i}: exercise {m.group(1)} starts before the previous one's "
                                 "solution is closed")
            if m.group(1) in found:
                raise ValueError(f"cell {i}: exercise label {m.group(1)} used twice")
            pending = m.group(1)
        start, end = _SOLUTION_START.search(src), _SOLUTION_END.search(src)
        if start:
            if start.group(1) != pending:
                raise ValueError(f"cell {i}: solution to {start.group(1)} does not follow its exercise "
                                 f"(expected {pending})")
            open_label, pending = pending, None
            found[open_label] = []
        if end:
            if open_label is None:
                raise ValueError(f"cell {i}: solution-end without solution-start")
            open_label = None
    if open_label is not None or pending is not None:
        raise ValueError(f"exercise {open_label or pending} has no closed solution")
    return found


def _md(text):
    return {"cell_type": "markdown", "source": text}


def _code(text):
    return {"cell_type": "code", "source": text}


_EX = ":::{{exercise}}\n:label: {0}\n\nDo it.\n:::\n"
_START = ":::{{solution-start}} {0}\n:class: dropdown\n:::\n"
_END = ":::{solution-end}\n:::\n"


def test_exercise_parser_accepts_the_gated_form_and_rejects_others():
    good = [_md(_EX.format("a")), _md(_START.format("a")), _code("assert 1"), _md(_END),
            _md(":::{exercise} A title\n:label: b\n:::"), _md(_START.format("b")), _code("x = 1"),
            _code("assert x"), _md(_END)]
    assert exercises(good) == {"a": ["assert 1"], "b": ["x = 1", "assert x"]}
    bad = {
        "no solution": [_md(_EX.format("a"))],
        "unclosed": [_md(_EX.format("a")), _md(_START.format("a")), _code("assert 1")],
        "wrong label": [_md(_EX.format("a")), _md(_START.format("b")), _md(_END)],
        "end alone": [_md(_END)],
        "twice": good + [_md(_EX.format("a")), _md(_START.format("a")), _md(_END)],
        "nested": [_md(_EX.format("a")), _md(_START.format("a")), _md(_EX.format("c"))],
    }
    for name, cells in bad.items():
        with pytest.raises(ValueError):
            exercises(cells)
        assert name


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.name)
def test_exercises_with_executed_asserting_solutions(nb):
    cells = json.loads(nb.read_text())["cells"]
    found = exercises(cells)
    assert len(found) >= MIN_EXERCISES, f"{nb.name}: {len(found)} exercises, want at least {MIN_EXERCISES}"
    prefix = f"ch{int(nb.name[:2])}-ex"
    for label, code in found.items():
        assert label.startswith(prefix), f"{nb.name}: exercise label {label} should start with {prefix}"
        assert code, f"{nb.name}: the solution to {label} has no code cell"
        joined = "\n".join(code)
        # nbval runs every code cell (make test); a skipped cell would not check anything.
        assert "NBVAL_SKIP" not in joined, f"{nb.name}: a solution cell of {label} is skipped"
        tree = ast.parse("\n".join(ln for ln in joined.splitlines() if not ln.lstrip().startswith(("%", "!"))))
        assert any(isinstance(n, ast.Assert) for n in ast.walk(tree)), \
            f"{nb.name}: the solution to {label} asserts nothing, so it cannot fail"


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.name)
def test_takeaways(nb):
    """Each chapter ends with 3-6 points to remember."""
    cells = [_src(c) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "markdown"]
    text = "\n".join(cells)
    m = re.search(r"^## What to remember\s*\n(.*?)(?=^#{1,2} |\Z)", text, flags=re.M | re.S)
    assert m, f"{nb.name} has no '## What to remember' section"
    points = re.findall(r"^(?:[-*]|\d+\.) ", m.group(1), flags=re.M)
    assert 3 <= len(points) <= 6, f"{nb.name}: {len(points)} takeaways, want 3 to 6"


_LITERAL = re.compile(r"```\{literalinclude\}\s+(\S+)\s*\n((?::[a-z-]+:.*\n)*)")


def _defines(path: Path, dotted: str) -> bool:
    body = ast.parse(path.read_text()).body
    for part in dotted.split("."):
        hit = next((n for n in body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == part), None)
        if hit is None:
            return False
        body = hit.body
    return True


@pytest.mark.parametrize("nb", METHOD_CHAPTERS, ids=lambda p: p.name)
def test_the_taught_code_is_included_from_the_package(nb):
    text = "\n".join(_src(c) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "markdown")
    included = []
    for m in _LITERAL.finditer(text):
        opts = dict(re.findall(r":([a-z-]+):\s*(.*)", m.group(2)))
        path = (nb.parent / m.group(1)).resolve()
        assert path.is_file(), f"{nb.name}: literalinclude of a missing file {m.group(1)}"
        assert path.is_relative_to(ROOT / "rtlearn"), f"{nb.name}: {m.group(1)} is not the package's code"
        assert "pyobject" in opts, f"{nb.name}: include {m.group(1)} by :pyobject:, not by lines"
        assert _defines(path, opts["pyobject"].strip()), f"{nb.name}: {opts['pyobject']} not in {m.group(1)}"
        included.append(path)
    assert included, f"{nb.name} does not show the code it teaches (literalinclude :pyobject:)"


def test_include_check_finds_objects():
    assert _defines(ROOT / "rtlearn" / "book.py", "glue")
    assert not _defines(ROOT / "rtlearn" / "book.py", "no_such_function")


# ---- Colab: the chapters need only the runtime dependencies ---------------------------------------------------
@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.name)
def test_chapters_do_not_import_book_tooling(nb):
    """Only the runtime dependencies: myst-nb, jupyter-book and the test tools (pytest, MONAI,
    statsmodels, hypothesis) are not in a reader's kernel (Colab, ``pip install rtlearn``)."""
    tools = re.compile(r"^([ \t]*)(?:from|import)\s+(myst_nb|jupyter_book|sphinx\w*|nbval|pytest|monai|statsmodels"
                       r"|hypothesis)\b", re.M)
    for i, cell in enumerate(json.loads(nb.read_text())["cells"]):
        if cell["cell_type"] == "code":
            src = _src(cell)
            m = tools.search(src)
            # an optional reference, imported under `try: ... except ImportError:`, is allowed
            assert not m or ("except ImportError" in src and m.group(1)), \
                f"{nb.name} cell {i} imports {m.group(2)}, which a Colab kernel lacks"


def test_glue_without_myst_nb(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "myst_nb", None)  # import myst_nb now raises ImportError
    assert book.glue("x", 1.5, display=False) is None
    IPython = pytest.importorskip("IPython")
    assert IPython
    book.glue("y", "shown", display=True)
    assert "shown" in capsys.readouterr().out
    with pytest.raises(ValueError):
        book.glue("", 1.0)


# ---- the two editions ------------------------------------------------------------------------------------------
def _venv() -> Path:
    return Path(sys.prefix)


@pytest.fixture(scope="module")
def editions():
    """Build the full and the student edition with the README's command (``make book``)."""
    venv = _venv()
    if not (venv / ".rtlearn-installed").exists():
        pytest.skip(f"{venv} was not set up by `make venv`, so `make book` would reinstall it")
    out = {}
    for name, extra in (("full", []), ("student", ["STUDENT=1"])):
        env = {**os.environ, "RTLEARN_STUDENT": ""}
        proc = subprocess.run(["make", "-s", "book", f"VENV={venv}", *extra], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, f"make book {' '.join(extra)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
        assert re.search(r"with 0 Sphinx warning\(s\)", proc.stdout), proc.stdout[-2000:]
        html = ROOT / ("_build/student/_build/html" if extra else "_build/html")
        out[name] = {p.name: p.read_text() for p in (html / "book").glob("*.html")}
    return out


def _count(html: str, cls: str) -> int:
    return len(re.findall(rf'<div[^>]+class="{cls}[ "]', html))


def test_both_editions_build_and_differ_only_by_solutions(editions):
    full, student = editions["full"], editions["student"]
    assert set(full) == set(student)
    for nb in CHAPTERS:
        page = nb.with_suffix(".html").name
        n = len(exercises(json.loads(nb.read_text())["cells"]))
        assert _count(full[page], "exercise") == n, page
        assert _count(student[page], "exercise") == n, page
        assert _count(full[page], "solution") == n, page
        assert _count(student[page], "solution") == 0, page
        assert "solution-end" not in student[page] and "solution-start" not in student[page], page
        assert len(student[page]) < len(full[page]), page


# ---- readable pages ----------------------------------------------------------------------------------------------
COLUMN_PX = 700      # the theme's content column is 688 px wide at desktop width
MAX_FIGURE_PX = 1100  # 11 inches at the book's 90 dpi (rtlearn.plotting.set_style), plus a tight bounding box


def png_width(data: str) -> int:
    import base64
    import struct

    raw = base64.b64decode(data)
    if raw[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return struct.unpack(">I", raw[16:20])[0]


def test_png_width_reads_the_header():
    import base64
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(3, 2), dpi=50)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=50)
    plt.close(fig)
    assert png_width(base64.b64encode(buf.getvalue()).decode()) == 150
    with pytest.raises(ValueError):
        png_width(base64.b64encode(b"GIF89a" + bytes(20)).decode())


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.name)
def test_figures_fit_the_page(nb):
    """A figure wider than the column spans the page (cell tag ``full-width``); none is so wide
    that the page must shrink its text below legibility."""
    for i, cell in enumerate(json.loads(nb.read_text())["cells"]):
        if cell["cell_type"] != "code":
            continue
        widths = [png_width("".join(o["data"]["image/png"])) for o in cell.get("outputs", [])
                  if "image/png" in o.get("data", {})]
        if not widths:
            continue
        tags = cell.get("metadata", {}).get("tags", [])
        assert max(widths) <= MAX_FIGURE_PX, f"{nb.name} cell {i}: a figure {max(widths)} px wide"
        assert (max(widths) > COLUMN_PX) == ("full-width" in tags), \
            f"{nb.name} cell {i}: figure {max(widths)} px wide, tags {tags}"
