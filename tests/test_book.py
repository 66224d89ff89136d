"""The book's wiring: TOC pages exist, Colab links and install cells follow _config.yml, light import."""
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from rtlearn import book, config

ROOT = Path(__file__).resolve().parent.parent
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())


def _toc_files():
    files = [TOC["root"]]
    for part in TOC.get("parts", []):
        files += [c["file"] for c in part["chapters"]]
    return files


def _notebooks():
    return [ROOT / f"{f}.ipynb" for f in _toc_files() if (ROOT / f"{f}.ipynb").exists()]


def test_every_toc_entry_exists_and_every_chapter_is_listed():
    for f in _toc_files():
        assert (ROOT / f"{f}.ipynb").exists() or (ROOT / f"{f}.md").exists(), f"{f} is in _toc.yml but missing"
    listed = {ROOT / f"{f}.ipynb" for f in _toc_files()}
    for nb in (ROOT / "book").glob("*.ipynb"):
        assert nb in listed, f"{nb.name} is not in _toc.yml"
    assert _notebooks(), "the book has no notebook chapter"


def test_colab_urls_are_well_formed():
    repo = book.repository()
    for nb in _notebooks():
        rel = nb.relative_to(ROOT).as_posix()
        url = book.colab_url(rel)
        parsed = urlparse(url)
        assert parsed.scheme == "https" and parsed.netloc == "colab.research.google.com"
        assert parsed.path == f"/github/{repo['org']}/{repo['name']}/blob/{repo['branch']}/{rel}"
    with pytest.raises(ValueError, match="ipynb"):
        book.colab_url("book/intro.md")


def test_repository_config_is_sane(tmp_path):
    repo = book.repository()
    assert repo["branch"] == "main" and repo["url"].startswith("https://github.com/")
    bad = tmp_path / "_config.yml"
    bad.write_text("repository:\n  url: not-a-url\n")
    with pytest.raises(ValueError, match="repository.url"):
        book.repository(bad)


@pytest.mark.parametrize("nb", _notebooks(), ids=lambda p: p.name)
def test_notebook_install_cell_and_outputs(nb):
    data = json.loads(nb.read_text())
    code = [c for c in data["cells"] if c["cell_type"] == "code"]
    assert "".join(code[0]["source"]) == book.install_cell_source(), \
        f"{nb.name}: the first code cell must be rtlearn.book.install_cell_source() (regenerate it)"
    assert "hide-cell" in code[0]["metadata"].get("tags", [])
    # committed with outputs, and without errors
    assert all(c.get("execution_count") for c in code), f"{nb.name} has unexecuted cells: commit it executed"
    assert not any(o.get("output_type") == "error" for c in code for o in c.get("outputs", []))
    assert any("NBVAL_CHECK_OUTPUT" in "".join(c["source"]) for c in code), f"{nb.name} checks no output"
    assert nb.stat().st_size < 4 * 2**20, f"{nb.name} is larger than 4 MiB: shrink its figures"


def test_new_notebook_inserts_install_cell():
    nb = book.new_notebook([("md", "# T"), ("code", "x = 1"), ("code", "x")], gpu=True)
    assert [c.cell_type for c in nb.cells] == ["markdown", "code", "code", "code"]
    assert nb.cells[1].source == book.install_cell_source()
    assert nb.metadata["accelerator"] == "GPU"
    with pytest.raises(ValueError):
        book.new_notebook([("raw", "x")])


def test_import_is_fast_and_light():
    code = ("import time, sys; t = time.perf_counter(); import rtlearn; "
            "print(time.perf_counter() - t, 'torch' in sys.modules, 'matplotlib' in sys.modules)")
    best = min(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                    check=True).stdout.split()[0]) for _ in range(3))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert best < 1.0
    assert out[1:] == ["False", "False"], "import rtlearn must not import torch or matplotlib"


def test_data_root_order(tmp_path, monkeypatch):
    monkeypatch.setenv("RTLEARN_DATA", str(tmp_path / "env"))
    assert config.data_root() == tmp_path / "env"
    assert config.data_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("RTLEARN_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert config.data_root() == tmp_path / "xdg" / "rtlearn"
    with pytest.raises(ValueError):
        config.seed_everything(-1)


def test_atomic_writes_leave_nothing_on_failure(tmp_path):
    from rtlearn import io

    target = tmp_path / "a.npz"
    io.save_npz(target, x=[1, 2, 3])
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert list(io.load_npz(target)["x"]) == [1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz"]
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        io.load_npz(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError):
        io.load_npz(tmp_path / "none.npz")


# ---- reader-facing text speaks of radiotherapy and learning, not of how the book is made ----------------------
_PROCESS_WORDS = re.compile(r"\b(issues?|the lead's|the lead|closing notes?)\b", re.IGNORECASE)


def _prose(markdown: str) -> str:
    """Markdown without fenced code blocks and inline code (where such words may be identifiers)."""
    return re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```|~~~.*?~~~", "", markdown, flags=re.S))


def process_words(markdown: str) -> list:
    return [m.group(0) for m in _PROCESS_WORDS.finditer(_prose(markdown))]


def test_process_word_check_finds_and_skips():
    assert process_words("As the issue says, see the closing note.") == ["issue", "closing note"]
    assert process_words("The lead's notes; Issues remain.") == ["The lead's", "Issues"]
    assert process_words("Healthy tissue, `issue_id`, a leading term.\n```\nissue = 1\n```") == []


def test_reader_facing_text_has_no_process_words():
    pages = [ROOT / f"{f}.md" for f in _toc_files() if (ROOT / f"{f}.md").exists()] + [ROOT / "README.md"]
    found = {}
    for path in pages:
        words = process_words(path.read_text())
        if words:
            found[path.name] = words
    for nb in _notebooks():
        for i, cell in enumerate(json.loads(nb.read_text())["cells"]):
            if cell["cell_type"] == "markdown":
                words = process_words("".join(cell["source"]))
                if words:
                    found[f"{nb.name} cell {i}"] = words
    assert not found, f"words of the book's making process in reader-facing text: {found}"
