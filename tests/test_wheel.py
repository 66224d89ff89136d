"""The package as a wheel: build the sdist and the wheel, check their metadata and files, then install the
wheel into a fresh virtualenv (as a Colab reader would) and run chapter 1 there.

The fresh-venv test installs ``$TORCH_SPEC`` (default ``torch==2.13.0``, the CPU build on CI) and then the wheel,
so it takes about a minute with a warm pip cache; ``RTLEARN_SKIP_WHEEL_VENV=1`` skips it (reported as a skip).
"""
from __future__ import annotations

import email
import json
import os
import re
import subprocess
import sys
import tarfile
import time
import venv
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import rtlearn

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CHAPTER = ROOT / "book" / "01_dose_structures_dvh.ipynb"
# Tooling that must never be a runtime dependency, whatever requirements.txt says today.
BOOK_AND_TEST_TOOLS = {"jupyter-book", "jupyterlab", "jupyter", "notebook", "ipykernel", "sphinx",
                       "sphinxcontrib-bibtex", "pybtex", "pytest", "nbval", "monai", "statsmodels", "nbconvert"}
# What the sdist may hold at its top level: the package and the files that describe it.
SDIST_TOP = {"PKG-INFO", "pyproject.toml", "setup.cfg", "README.md", "LICENSE", "MANIFEST.in",
             "rtlearn", "rtlearn.egg-info"}


def _run(cmd, *, timeout, merge=True, **kw):
    """Run ``cmd`` and return its stdout (with stderr unless ``merge=False``); on failure raise with both."""
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merge else subprocess.PIPE,
                          text=True, timeout=timeout, **kw)
    if proc.returncode:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n"
                             f"{proc.stdout[-6000:]}\n{(proc.stderr or '')[-6000:]}")
    return proc.stdout


def _key(req: Requirement):
    return canonicalize_name(req.name), str(req.specifier), str(req.marker or "")


# ---------------------------------------------------------------------------------------------------------------
# (a) build and inspect
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """Build the sdist from the work tree, then the wheel from the unpacked sdist (as ``python -m build`` does).

    Both use the environment's setuptools (no build isolation, no network). Building from the sdist keeps
    ``build/`` out of the work tree and proves that the sdist alone is enough to build the wheel.
    """
    out = tmp_path_factory.mktemp("dist")
    t0 = time.perf_counter()
    log = _run([sys.executable, "-c",
                "import sys; from setuptools import build_meta as b; print('SDIST=' + b.build_sdist(sys.argv[1]))",
                str(out)], cwd=ROOT, timeout=300)
    sdist = out / re.search(r"^SDIST=(.+)$", log, re.M).group(1)
    with tarfile.open(sdist) as tar:
        tar.extractall(out / "src", filter="data")
    (src,) = (out / "src").iterdir()
    log += _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir",
                 "--disable-pip-version-check", "-w", str(out), str(src)], cwd=out, timeout=300)
    (wheel,) = out.glob("rtlearn-*.whl")
    print(f"\nbuilt {sdist.name} and {wheel.name} in {time.perf_counter() - t0:.1f} s")
    return {"sdist": sdist, "wheel": wheel, "log": log}


def _wheel_metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(zf.read(name))


def _sdist_metadata(sdist: Path):
    with tarfile.open(sdist) as tar:
        (member,) = [m for m in tar.getmembers() if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO")]
        return email.message_from_bytes(tar.extractfile(member).read())


def test_build_is_clean(dists):
    """No deprecation from setuptools (e.g. the old ``license = {text = ...}`` table): the build must keep working."""
    assert not re.search(r"Deprecat", dists["log"]), dists["log"][-4000:]


@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_metadata(dists, kind):
    meta = (_wheel_metadata if kind == "wheel" else _sdist_metadata)(dists[kind])
    assert meta["Name"] == "rtlearn"
    assert meta["Version"] == rtlearn.__version__ == PYPROJECT["version"]
    assert dists[kind].name.startswith(f"rtlearn-{rtlearn.__version__}")
    assert (meta["License-Expression"] or meta["License"]) == "MIT"
    assert meta["Requires-Python"] == ">=3.10"

    requires = [Requirement(r) for r in meta.get_all("Requires-Dist") or []]
    runtime = [r for r in requires if "extra" not in str(r.marker or "")]
    optional = [r for r in requires if "extra" in str(r.marker or "")]
    # The requirements that hold without an extra are exactly [project].dependencies ...
    assert sorted(map(_key, runtime)) == sorted(_key(Requirement(d)) for d in PYPROJECT["dependencies"])
    # ... and anything else hangs on an extra of pyproject's (pip install rtlearn[test]), never on a plain install.
    extras = {name: {canonicalize_name(Requirement(d).name) for d in deps}
              for name, deps in PYPROJECT.get("optional-dependencies", {}).items()}
    for r in optional:
        extra = re.search(r'extra == "([\w.-]+)"', str(r.marker))
        assert extra and canonicalize_name(r.name) in extras.get(extra.group(1), ()), r

    # Nothing from the book or test tooling (requirements.txt beyond the runtime list) is a runtime dependency.
    runtime_names = {canonicalize_name(r.name) for r in runtime}
    tooling = {canonicalize_name(t) for t in BOOK_AND_TEST_TOOLS}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name = canonicalize_name(Requirement(line).name)
            if name not in {canonicalize_name(Requirement(d).name) for d in PYPROJECT["dependencies"]}:
                tooling.add(name)
    assert not runtime_names & tooling, f"book/test tooling among the runtime dependencies: {runtime_names & tooling}"


def _package_dirs():
    """Every folder under rtlearn/ that holds Python code, as a wheel path (``rtlearn/data/openkbp``)."""
    dirs = set()
    for py in (ROOT / "rtlearn").rglob("*.py"):
        if "__pycache__" not in py.parts:
            dirs.add(py.parent.relative_to(ROOT).as_posix())
    return dirs


def test_every_code_folder_is_a_package():
    """A folder of modules without __init__.py would be silently left out of the wheel (find, not find_namespace)."""
    missing = [d for d in sorted(_package_dirs()) if not (ROOT / d / "__init__.py").is_file()]
    assert not missing, f"add an __init__.py to {missing}"


def test_wheel_files(dists):
    with zipfile.ZipFile(dists["wheel"]) as zf:
        names = zf.namelist()
    version = rtlearn.__version__
    outside = [n for n in names if not (n.startswith("rtlearn/") or n.startswith(f"rtlearn-{version}.dist-info/"))]
    assert not outside, f"the wheel holds files outside rtlearn/: {outside}"
    for d in sorted(_package_dirs()):
        assert f"{d}/__init__.py" in names, f"{d} is missing from the wheel"
    for sub in ("rtlearn/data/openkbp", "rtlearn/phantom", "rtlearn/bench", "rtlearn/losses", "rtlearn/models",
                "rtlearn/metrics", "rtlearn/experiments"):
        assert f"{sub}/__init__.py" in names, sub
    sources = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "rtlearn").rglob("*.py")
                     if "__pycache__" not in p.parts)
    assert sorted(n for n in names if n.endswith(".py")) == sources
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".ipynb"))]
    assert f"rtlearn-{version}.dist-info/licenses/LICENSE" in names
    assert dists["wheel"].name.endswith("-py3-none-any.whl")


def test_sdist_files(dists):
    with tarfile.open(dists["sdist"]) as tar:
        names = tar.getnames()
    prefix = f"rtlearn-{rtlearn.__version__}"
    top = {n.split("/")[1] for n in names if n.count("/") >= 1 and n.split("/")[1]}
    assert top <= SDIST_TOP, f"unexpected in the sdist: {sorted(top - SDIST_TOP)} (tests, book, results stay out)"
    for d in sorted(_package_dirs()):
        assert f"{prefix}/{d}/__init__.py" in names, f"{d} is missing from the sdist"
    assert f"{prefix}/LICENSE" in names and f"{prefix}/README.md" in names


# ---------------------------------------------------------------------------------------------------------------
# (b) a Colab reader's install: a fresh venv, torch, the wheel, chapter 1
# ---------------------------------------------------------------------------------------------------------------

_MAGIC = re.compile(r"^\s*[%!]")
_PIP_INSTALL = re.compile(r"\bpip\W+install\b")
_MARK = "#### rtlearn-test-cell {}"


def chapter_script(nb_path: Path) -> tuple[str, dict[int, str], list[int]]:
    """The code cells of a notebook as one script, less the install cell and IPython magics.

    Returns the script, ``{cell index: stored stdout}`` for the cells nbval checks (``# NBVAL_CHECK_OUTPUT``),
    and the indices of the cells left out.
    """
    nb = json.loads(nb_path.read_text())
    parts = ["import matplotlib", "matplotlib.use('Agg')", "import matplotlib.pyplot as plt"]
    expected, skipped = {}, []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        if _PIP_INSTALL.search(src) or src.lstrip().startswith("%%") or "NBVAL_SKIP" in src:
            skipped.append(i)
            continue
        lines = [ln for ln in src.splitlines() if not _MAGIC.match(ln)]
        parts += [f"print({_MARK.format(i)!r}, flush=True)", *lines, "plt.close('all')"]
        if "NBVAL_CHECK_OUTPUT" in src:
            expected[i] = "".join("".join(o.get("text", "")) for o in cell.get("outputs", [])
                                  if o.get("output_type") == "stream" and o.get("name") == "stdout")
    return "\n".join(parts) + "\n", expected, skipped


def _split_by_cell(stdout: str) -> dict[int, str]:
    chunks = re.split(r"^#### rtlearn-test-cell (\d+)\n", stdout, flags=re.M)
    return {int(i): text for i, text in zip(chunks[1::2], chunks[2::2])}


def _norm(text: str) -> list[str]:
    return [ln.rstrip() for ln in text.strip().splitlines()]


@pytest.mark.skipif(os.environ.get("RTLEARN_SKIP_WHEEL_VENV") == "1",
                    reason="RTLEARN_SKIP_WHEEL_VENV=1: the fresh-venv install of the wheel was not tested")
def test_wheel_in_fresh_venv_runs_chapter_1(dists, tmp_path):
    timings = {}
    t0 = time.perf_counter()
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False, clear=True).create(env_dir)
    py = env_dir / "bin" / "python"
    timings["venv"] = time.perf_counter() - t0

    # The venv sees nothing of the work tree or of the outer environment.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "VIRTUAL_ENV", "RTLEARN_", "MPL", "JPY_", "JUPYTER"))}
    env.update(PATH=f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(env_dir),
               PIP_DISABLE_PIP_VERSION_CHECK="1", RTLEARN_PROFILE="quick", MPLBACKEND="Agg",
               MPLCONFIGDIR=str(tmp_path / "mpl"), RTLEARN_DATA=str(tmp_path / "data"))
    pip = [str(py), "-m", "pip", "install", "-q"]

    t = time.perf_counter()
    torch_spec = os.environ.get("TORCH_SPEC") or "torch==2.13.0"
    _run([*pip, torch_spec], env=env, cwd=tmp_path, timeout=900)
    timings["torch"] = time.perf_counter() - t

    t = time.perf_counter()
    _run([*pip, str(dists["wheel"])], env=env, cwd=tmp_path, timeout=900)
    timings["wheel + deps"] = time.perf_counter() - t
    _run([str(py), "-m", "pip", "check"], env=env, cwd=tmp_path, timeout=120)
    installed = _run([str(py), "-m", "pip", "list", "--format=freeze"], env=env, cwd=tmp_path, timeout=120)
    names = {canonicalize_name(ln.split("==")[0]) for ln in installed.splitlines() if "==" in ln}
    assert not names & {canonicalize_name(t) for t in BOOK_AND_TEST_TOOLS}, names

    # The installed package (not the work tree) imports whole: every module, and the version from its metadata.
    probe = ("import importlib, pkgutil, rtlearn, sys\n"
             "from importlib.metadata import version\n"
             "assert '/site-packages/' in rtlearn.__file__, rtlearn.__file__\n"
             "assert rtlearn.__version__ == version('rtlearn'), rtlearn.__version__\n"
             "mods = [m.name for m in pkgutil.walk_packages(rtlearn.__path__, 'rtlearn.')]\n"
             "for m in mods: importlib.import_module(m)\n"
             "print(rtlearn.__version__, len(mods))\n")
    out = _run([str(py), "-c", probe], env=env, cwd=tmp_path, timeout=300)
    assert out.split()[0] == rtlearn.__version__

    # Chapter 1, cell by cell in one script, in the quick profile.
    script, expected, skipped = chapter_script(CHAPTER)
    assert skipped and expected, "chapter 1 lost its Colab install cell or its checked outputs?"
    (tmp_path / "chapter.py").write_text(script)
    t = time.perf_counter()
    out = _run([str(py), str(tmp_path / "chapter.py")], env=env, cwd=tmp_path, timeout=600, merge=False)
    timings["chapter 1"] = time.perf_counter() - t
    got = _split_by_cell(out)
    for i, text in expected.items():
        assert _norm(got.get(i, "")) == _norm(text), f"cell {i} of {CHAPTER.name} prints otherwise:\n{got.get(i)}"

    timings["total"] = time.perf_counter() - t0
    print("\nfresh venv:", ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()),
          f"({len(expected)} checked outputs, cells {skipped} skipped)")
