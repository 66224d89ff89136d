"""The package's layers: internal imports form no cycle and point down.

Every module of ``rtlearn`` is parsed with :mod:`ast` (nothing is imported);
every ``import`` / ``from ... import`` statement that names an ``rtlearn``
module counts, wherever it stands (module top, function body, ``try`` block).
A module's *layer* is the first name under ``rtlearn`` (``rtlearn.data.openkbp.cache``
is in ``data``; ``rtlearn.train`` is ``train``). The rules below say which
layers may not import which; everything else is allowed.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "rtlearn"

#: layer -> layers it must not import
FORBIDDEN = {
    "data": {"train", "losses", "models", "experiments"},
    "models": {"losses", "train", "experiments"},
    "metrics": {"data", "train", "experiments", "models", "losses"},
    "losses": {"train", "experiments", "data"},
    "phantom": {"train", "experiments"},
}
#: the only layers that may import the experiments (chapter drivers)
MAY_IMPORT_EXPERIMENTS = {"experiments", "bench", "study", "book"}


# --------------------------------------------------------------------------- the import graph
def module_files(package: Path = PACKAGE) -> dict:
    """``{dotted module name: path}`` of every module of the package (``__init__`` = the package itself)."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = (package.name,) + path.relative_to(package).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules) -> str | None:
    """The longest prefix of the dotted ``name`` that is a module of the package (``None`` if none)."""
    parts = name.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in modules:
            return cand
        parts.pop()
    return None


def imports_of(module: str, path: Path, modules) -> set:
    """Internal modules imported anywhere in ``module`` (its source at ``path``)."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # ``from pkg import sub`` imports the submodule when there is one, else a name of ``pkg``
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for t in targets:
            if t == PACKAGE.name or t.startswith(PACKAGE.name + "."):
                r = _resolve(t, modules)
                if r is not None and r != module:
                    found.add(r)
    return found


def import_graph(package: Path = PACKAGE) -> dict:
    """``{module: set of internal modules it imports}`` for the whole package."""
    modules = module_files(package)
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def layer(module: str) -> str:
    """``rtlearn.data.openkbp.cache`` -> ``data``; ``rtlearn`` (the package itself) -> ``rtlearn``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


# --------------------------------------------------------------------------- the checks (pure functions of a graph)
def cycles(graph: dict) -> list:
    """Strongly connected components of more than one module (Tarjan), each sorted; sorted list."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def forbidden_edges(graph: dict) -> list:
    """``[(importer, imported), ...]`` that break a layering rule, sorted."""
    bad = []
    for src, targets in graph.items():
        a = layer(src)
        for dst in targets:
            b = layer(dst)
            if a == b:
                continue
            if b in FORBIDDEN.get(a, ()) or (b == "experiments" and a not in MAY_IMPORT_EXPERIMENTS):
                bad.append((src, dst))
    return sorted(bad)


# --------------------------------------------------------------------------- the package
@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_graph_sees_the_package(graph):
    # a sanity check of the walker: top-level, function-level and relative imports are all found
    assert {"rtlearn.data.openkbp.dataset", "rtlearn.experiments.doselo", "rtlearn.losses.overlap"} <= set(graph)
    assert "rtlearn.losses.overlap" in graph["rtlearn.losses.region"]          # from .overlap import _Base
    assert "rtlearn.data.openkbp.format" in graph["rtlearn.data.openkbp.dataset"]
    assert "rtlearn.io" in graph["rtlearn.data.openkbp.prepare"]               # from ...io import ...
    assert "rtlearn.dvh" in graph["rtlearn.experiments.dvh_loss"]               # from .. import dvh as exact_dvh


def test_no_import_cycle(graph):
    assert cycles(graph) == []


def test_dependencies_point_down(graph):
    assert forbidden_edges(graph) == []


# --------------------------------------------------------------------------- the checks catch what they should
def test_checks_catch_a_bad_edge_and_a_cycle():
    good = {"rtlearn.data.openkbp.dataset": {"rtlearn.io", "rtlearn.metrics.openkbp"},
            "rtlearn.metrics.openkbp": {"rtlearn.rois"}, "rtlearn.experiments.region": {"rtlearn.data.openkbp"},
            "rtlearn.bench.losses": {"rtlearn.experiments.sharp"}, "rtlearn.io": set(), "rtlearn.rois": set()}
    assert forbidden_edges(good) == [] and cycles(good) == []
    for src, dst in [("rtlearn.data.openkbp.dataset", "rtlearn.train"),      # data -> train
                     ("rtlearn.data.openkbp.eval", "rtlearn.losses.dose"),   # data -> losses
                     ("rtlearn.models.cascade", "rtlearn.losses.dose"),      # models -> losses
                     ("rtlearn.metrics.openkbp", "rtlearn.data.openkbp"),    # metrics -> data
                     ("rtlearn.losses.dose_guided", "rtlearn.experiments.doselo"),
                     ("rtlearn.phantom.optimise", "rtlearn.train"),
                     ("rtlearn.plotting", "rtlearn.experiments.sharp")]:     # only experiments/bench/study/book
        bad = {**good, src: {dst}}
        assert forbidden_edges(bad) == [(src, dst)]
    cyclic = {**good, "rtlearn.phantom.anatomy": {"rtlearn.phantom.mr"},
              "rtlearn.phantom.mr": {"rtlearn.phantom.anatomy"}}
    assert cycles(cyclic) == [["rtlearn.phantom.anatomy", "rtlearn.phantom.mr"]]


def test_walker_resolves_relative_and_function_level_imports(tmp_path):
    pkg = tmp_path / "rtlearn"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "train.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "reader.py").write_text("def f():\n    from ..train import Trainer\n    return Trainer\n")
    g = import_graph(pkg)
    assert g["rtlearn.data.reader"] == {"rtlearn.train"}
    assert forbidden_edges(g) == [("rtlearn.data.reader", "rtlearn.train")]
