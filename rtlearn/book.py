"""Helpers that tie the notebooks to the book's configuration.

The repository URL lives in one place, ``_config.yml`` (``repository.url``);
the Colab launch URL of every chapter and the install cell at the top of every
notebook are derived from it here, and the tests check that every committed
notebook agrees.
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "_config.yml"
COLAB = "https://colab.research.google.com"


def _config_text(config: str | Path = CONFIG) -> str:
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run this from a clone of the rtlearn repository")
    return path.read_text(encoding="utf-8")


def repository(config: str | Path = CONFIG) -> dict:
    """Return ``{"url", "branch", "path_to_book", "org", "name"}`` from ``_config.yml``."""
    import yaml

    cfg = yaml.safe_load(_config_text(config))
    repo = cfg.get("repository") or {}
    url = str(repo.get("url", "")).rstrip("/")
    m = re.fullmatch(r"https://github\.com/([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)", url)
    if not m:
        raise ValueError(f"repository.url in {config} must be https://github.com/ORG/REPO, got {url!r}")
    return {
        "url": url,
        "branch": str(repo.get("branch") or "main"),
        "path_to_book": str(repo.get("path_to_book") or "").strip("/"),
        "org": m.group(1),
        "name": m.group(2),
    }


def colab_url(notebook: str, config: str | Path = CONFIG) -> str:
    """The Colab launch URL of a notebook given by its path relative to the repository root.

    Same pattern as Jupyter Book's launch button:
    ``{colab}/github/{org}/{repo}/blob/{branch}/{path}``.
    """
    repo = repository(config)
    path = str(notebook).lstrip("/")
    if not path.endswith(".ipynb"):
        raise ValueError(f"Colab opens only .ipynb notebooks, got {notebook!r}")
    if repo["path_to_book"]:
        path = f"{repo['path_to_book']}/{path}"
    return f"{COLAB}/github/{repo['org']}/{repo['name']}/blob/{repo['branch']}/{path}"


def install_cell_source(config: str | Path = CONFIG) -> str:
    """Source of the first code cell of every chapter notebook.

    It installs the ``rtlearn`` package and its runtime dependencies (not the
    book tooling) from the repository, but only when ``rtlearn`` cannot be
    imported, so it does nothing in a local checkout or a second run.
    """
    repo = repository(config)
    spec = f"rtlearn @ git+{repo['url']}@{repo['branch']}"
    return (
        "# Colab or a fresh kernel: install rtlearn (runtime dependencies only) if it is missing.\n"
        "import importlib.util, subprocess, sys\n"
        "if importlib.util.find_spec(\"rtlearn\") is None:\n"
        f"    subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"-q\", \"{spec}\"], check=True)"
    )


def new_notebook(cells, title: str | None = None, gpu: bool = False):
    """Build an ``nbformat`` notebook from ``[("md"|"code", source), ...]``.

    The install cell (tagged ``hide-cell``: collapsed in the HTML book) is inserted as the first code
    cell, and the kernel metadata is set; ``gpu=True`` asks Colab for a GPU.
    Used by the scripts that author chapter notebooks.
    """
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook as _nb

    nb = _nb()
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    if gpu:
        nb.metadata["accelerator"] = "GPU"
        nb.metadata["colab"] = {"provenance": [], "gpuType": "T4"}
    out, installed = [], False
    for kind, src in cells:
        src = src.strip("\n")
        if kind == "md":
            out.append(new_markdown_cell(src))
        elif kind == "code":
            if not installed:
                out.append(new_code_cell(install_cell_source(), metadata={"tags": ["hide-cell"]}))
                installed = True
            out.append(new_code_cell(src))
        else:
            raise ValueError(f"cell kind must be 'md' or 'code', got {kind!r}")
    nb.cells = out
    nbformat.validate(nb)
    return nb


def glue(name: str, value, display: bool = True):
    """Store ``value`` under ``name`` for the book's prose (myst-nb's ``glue``), if myst-nb is there.

    The chapters cite computed numbers with ``{glue:text}`name``` in their markdown. The book
    build has myst-nb; a reader's kernel (Colab, a bare ``pip install rtlearn``) need not, and
    there the value is only shown (``display=True``) or nothing happens, so every chapter runs
    with the runtime dependencies alone.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"glue needs a non-empty name, got {name!r}")
    try:
        from myst_nb import glue as _glue
    except ImportError:
        if display:
            from IPython.display import display as _show

            _show(value)
        return None
    return _glue(name, value, display=display)
