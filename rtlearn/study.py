r"""Recorded multi-seed studies: run a chapter's experiment for several seeds and keep the results.

A chapter module of :mod:`rtlearn.experiments` that can be studied has one shape:

``default_config(profile="quick", **overrides) -> Config``
    a frozen dataclass holding every size; the only place a profile is read.
``load_data(cfg)``
    the chapter's data for ``cfg`` (phantoms, OpenKBP ...).
``run(cfg, seed, *, data=None, progress=True) -> dict``
    trains every arm for one seed and evaluates it on the test cases. The
    returned *run record* holds

    ``cases``   list of test-case ids (str or int), the same for every seed;
    ``metrics`` ``{arm: {metric: [one float per case]}}`` (NaN where undefined);
    ``history`` ``{arm: [per-epoch records]}``;
    ``seconds`` ``{arm: wall time of training and evaluation}``;
    ``extras``  optional, small JSON (a few down-sampled example cases for a figure).
``CLAIMS``
    the paper's claims as :class:`rtlearn.metrics.stats.Claim`\ s, stated in the
    module before any number is seen; the chapter's verdicts come from them.
``TINY``
    overrides that shrink the study config to seconds (the runner's own test).

:func:`run_study` writes one JSON file per seed,
``results/<chapter>/<profile>/seed-<k>.json``, atomically, with the resolved
config and its provenance (commit, dirty flag, date, versions, device,
threads, wall time). A seed already recorded is skipped, so an interrupted
study resumes where it stopped; a recorded seed whose config differs from the
one asked for is an error (a recorded study belongs to the code that made it).
:func:`load_study` reads the files back as a :class:`Study`.

From a shell (one process per core runs two seeds at once)::

    python -m rtlearn.study region --profile study --seeds 0-4
    python -m rtlearn.study region --seeds 0,2,4 --threads 1 &
    python -m rtlearn.study region --seeds 1,3 --threads 1

On several GPUs, one seed at a time with DistributedDataParallel (every process
trains, rank 0 alone writes the results)::

    torchrun --nproc_per_node=2 -m rtlearn.study sharp --profile full --seeds 0
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import importlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from . import __version__
from .config import check_profile
from .io import atomic_path

__all__ = ["CHAPTERS", "SCHEMA", "chapter_module", "parse_seeds", "results_root", "config_to_json",
           "validate_record", "provenance", "run_study", "from_runs", "load_study", "Study", "main"]

#: Chapters that can be studied: short name -> module.
CHAPTERS = {
    "sharp": "rtlearn.experiments.sharp",
    "sharp_openkbp": "rtlearn.experiments.sharp_openkbp",
    "dvh_loss": "rtlearn.experiments.dvh_loss",
    "dvh_conditioned": "rtlearn.experiments.dvh_conditioned",
    "region": "rtlearn.experiments.region",
    "region_openkbp": "rtlearn.experiments.region_openkbp",
    "doselo": "rtlearn.experiments.doselo",
}
#: Version of the JSON layout of a recorded seed.
SCHEMA = 1
_REPO = Path(__file__).resolve().parents[1]


# ---- names, seeds, places --------------------------------------------------------------------------------------
def chapter_module(chapter: str):
    """Import the chapter module named ``chapter`` (a key of :data:`CHAPTERS`) and check its shape."""
    if chapter not in CHAPTERS:
        raise ValueError(f"unknown chapter {chapter!r}; choose one of {sorted(CHAPTERS)}")
    module = importlib.import_module(CHAPTERS[chapter])
    missing = [name for name in ("default_config", "load_data", "run") if not hasattr(module, name)]
    if missing:
        raise TypeError(f"{module.__name__} cannot be studied: it has no {', '.join(missing)}")
    return module


def parse_seeds(text) -> list:
    """``"0-4"`` -> ``[0, 1, 2, 3, 4]``; ``"0,2,5"``, ``"3"`` and lists of ints also work.

    Raises
    ------
    ValueError
        For an empty, negative, reversed or malformed range, or repeated seeds.
    """
    if isinstance(text, (list, tuple, range)):
        seeds = list(text)
    elif isinstance(text, str) and text.strip():
        seeds = []
        for part in text.replace(" ", "").split(","):
            lo, sep, hi = part.partition("-")
            try:
                a, b = int(lo), int(hi) if sep else int(lo)
            except ValueError:
                raise ValueError(f"bad seed range {text!r}: use e.g. '0-4', '0,2,5' or '3'") from None
            if b < a:
                raise ValueError(f"bad seed range {part!r} in {text!r}: the end is below the start")
            seeds.extend(range(a, b + 1))
    else:
        raise ValueError(f"bad seed range {text!r}: use e.g. '0-4', '0,2,5' or '3'")
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be non-negative ints, got {text!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds repeat in {text!r}")
    return seeds


def results_root(root=None) -> Path:
    """Directory of recorded studies: ``root``, else ``$RTLEARN_RESULTS``, else the repository's ``results/``."""
    if root is None:
        root = os.environ.get("RTLEARN_RESULTS") or _REPO / "results"
    return Path(root).expanduser()


def _seed_path(root: Path, chapter: str, profile: str, seed: int) -> Path:
    return root / chapter / profile / f"seed-{seed}.json"


# ---- records --------------------------------------------------------------------------------------------------
def _jsonable(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, type) or callable(value) and hasattr(value, "__qualname__"):
        return f"{value.__module__}.{value.__qualname__}"  # a loss class or factory, by name (never an address)
    text = str(value)  # paths, devices, dtypes
    if " at 0x" in text:
        raise TypeError(f"config value {value!r} has no stable text form; store a name or a number instead")
    return text


def config_to_json(cfg) -> dict:
    """The config as plain JSON values (tuples -> lists, paths and devices -> str), for storing and comparing."""
    if not (dataclasses.is_dataclass(cfg) and not isinstance(cfg, type)):
        raise TypeError(f"a chapter config must be a dataclass instance, got {type(cfg).__name__}")
    return json.loads(json.dumps(_jsonable(cfg)))


def validate_record(record: dict) -> dict:
    """Check a run record (what a chapter's ``run`` returns); return it, or raise a ``ValueError`` naming the fault."""
    if not isinstance(record, dict):
        raise ValueError(f"a run record must be a dict, got {type(record).__name__}")
    for key in ("cases", "metrics", "history", "seconds"):
        if key not in record:
            raise ValueError(f"the run record has no {key!r} (it has {sorted(record)})")
    cases = record["cases"]
    if not isinstance(cases, (list, tuple)) or not cases:
        raise ValueError("'cases' must be a non-empty list of test-case ids")
    metrics = record["metrics"]
    if not isinstance(metrics, dict) or not metrics:
        raise ValueError("'metrics' must map each arm to {metric: per-case values}")
    names = None
    for arm, per_metric in metrics.items():
        if not isinstance(per_metric, dict) or not per_metric:
            raise ValueError(f"metrics of arm {arm!r} must be a non-empty dict of per-case lists")
        if names is None:
            names = set(per_metric)
        elif set(per_metric) != names:
            raise ValueError(f"arm {arm!r} has metrics {sorted(per_metric)}, another arm {sorted(names)}")
        for name, values in per_metric.items():
            if len(values) != len(cases):
                raise ValueError(f"metric {name!r} of arm {arm!r} has {len(values)} values for {len(cases)} cases")
    for key in ("history", "seconds"):
        if set(record[key]) != set(metrics):
            raise ValueError(f"{key!r} covers arms {sorted(record[key])}, metrics cover {sorted(metrics)}")
    return record


def _git(*args) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(_REPO), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def phantom_data_version() -> int:
    """:data:`rtlearn.phantom.datasets.DATA_VERSION`: which version of the phantom clinic made the data."""
    from .phantom.datasets import DATA_VERSION

    return DATA_VERSION


def provenance() -> dict:
    """Where a result comes from: commit, dirty flag (changes outside ``results/``), date, versions, device,
    and the version of the phantom clinic (:func:`phantom_data_version`)."""
    import torch

    from .config import get_device

    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
    device = get_device()
    return {
        "commit": _git("rev-parse", "HEAD"),
        "dirty": None if status is None else bool(status),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "rtlearn": __version__, "torch": torch.__version__, "numpy": np.__version__,
        "python": platform.python_version(), "platform": platform.platform(terse=True),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or
        platform.machine(),
        "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
        "phantom_data_version": phantom_data_version(),
    }


# ---- running ---------------------------------------------------------------------------------------------------
def run_study(chapter: str, profile: str = "study", seeds="0-2", *, config=None, root=None, progress: bool = True,
              threads: int | None = None) -> list:
    """Run ``chapter`` for every seed not yet recorded; return the paths of all the seeds' files.

    Parameters
    ----------
    chapter : str
        A key of :data:`CHAPTERS`.
    profile : str
        ``quick``, ``study`` or ``full``; names the folder and, unless ``config``
        is given, the config (``default_config(profile)``).
    seeds : str or list of int
        ``"0-4"``, ``"0,2"``, ``[0, 1]`` (:func:`parse_seeds`).
    config : dataclass, optional
        A config to use instead of ``default_config(profile)`` (tests use a tiny one).
    root : path, optional
        Results directory (:func:`results_root`).
    threads : int, optional
        CPU threads for this process (one per process when two run side by side), kept by the trainer
        (:func:`rtlearn.compute.pin_threads`); by default the trainer sizes them by the free cores.

    Under ``torchrun`` every process runs the study (the trainer splits each
    batch over the processes), rank 0 prepares the data first and alone writes
    the seeds' files.
    """
    from tqdm.auto import tqdm

    from . import compute

    if chapter not in CHAPTERS:
        raise ValueError(f"unknown chapter {chapter!r}; choose one of {sorted(CHAPTERS)}")
    profile = check_profile(profile)
    seeds = parse_seeds(seeds)
    module = chapter_module(chapter)
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive int, got {threads!r}")
        compute.pin_threads(threads)
    cfg = module.default_config(profile) if config is None else config
    cfg_json = config_to_json(cfg)
    root = results_root(root)
    paths = [_seed_path(root, chapter, profile, s) for s in seeds]
    todo = []
    for seed, path in zip(seeds, paths):
        if path.exists():
            stored = _read(path)
            if stored["config"] != cfg_json:
                raise ValueError(f"{path} was recorded with another config; delete it (or the study folder) to "
                                 "re-run the study with today's config")
            if stored["provenance"].get("phantom_data_version") != phantom_data_version():
                raise ValueError(f"{path} was recorded on another version of the phantom clinic "
                                 f"({stored['provenance'].get('phantom_data_version')}, today "
                                 f"{phantom_data_version()}); delete it (or the study folder) to re-run the study")
        else:
            todo.append((seed, path))
    compute.init_distributed()
    if todo and not compute.is_main():
        compute.barrier()  # rank 0 makes (and caches) the data first
    data = module.load_data(cfg) if todo else None
    if todo and compute.is_main():
        compute.barrier()
    for seed, path in tqdm(todo, desc=f"{chapter} ({profile}) seeds",
                           disable=not progress or not todo or not compute.is_main()):
        t0 = time.perf_counter()
        record = validate_record(module.run(cfg, seed, data=data, progress=False))
        entry = {"schema": SCHEMA, "chapter": chapter, "profile": profile, "seed": seed, "config": cfg_json,
                 **{k: record[k] for k in ("cases", "metrics", "history", "seconds")},
                 "extras": record.get("extras", {}),
                 "provenance": {**provenance(), "wall_seconds": time.perf_counter() - t0}}
        if compute.is_main():
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                Path(tmp).write_text(json.dumps(_jsonable(entry), indent=1) + "\n")
        compute.barrier()
    return paths


def _read(path: Path) -> dict:
    try:
        entry = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a readable study record ({exc}); delete it to re-run that seed") from exc
    if not isinstance(entry, dict) or entry.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not a schema-{SCHEMA} study record; re-run that seed")
    for key in ("config", "provenance", "seed"):
        if key not in entry:
            raise ValueError(f"{path} has no {key!r}; re-run that seed")
    validate_record(entry)
    return entry


# ---- loading ---------------------------------------------------------------------------------------------------
class Study:
    """The recorded seeds of one chapter and profile (see :func:`load_study`)."""

    def __init__(self, chapter: str, profile: str, entries: list):
        if not entries:
            raise ValueError(f"no recorded seeds for {chapter!r} ({profile})")
        self.chapter, self.profile = chapter, profile
        self.entries = sorted(entries, key=lambda e: e["seed"])
        first = self.entries[0]
        for e in self.entries[1:]:
            if e["config"] != first["config"]:
                raise ValueError(f"seeds {first['seed']} and {e['seed']} of {chapter!r} were run with different "
                                 "configs")
            if [str(c) for c in e["cases"]] != [str(c) for c in first["cases"]]:
                raise ValueError(f"seeds {first['seed']} and {e['seed']} of {chapter!r} have different test cases")

    @property
    def seeds(self) -> list:
        return [e["seed"] for e in self.entries]

    @property
    def config(self) -> dict:
        return self.entries[0]["config"]

    @property
    def cases(self) -> list:
        return list(self.entries[0]["cases"])

    @property
    def arms(self) -> list:
        return list(self.entries[0]["metrics"])

    @property
    def metric_names(self) -> list:
        return list(next(iter(self.entries[0]["metrics"].values())))

    def metric(self, name: str, arm: str) -> np.ndarray:
        """Per-case values of ``name`` for ``arm``, shape ``(n_seeds, n_cases)`` (NaN where undefined)."""
        if arm not in self.arms:
            raise KeyError(f"no arm {arm!r}; the study has {self.arms}")
        if name not in self.metric_names:
            raise KeyError(f"no metric {name!r}; the study has {self.metric_names}")
        return np.array([[np.nan if v is None else v for v in e["metrics"][arm][name]] for e in self.entries],
                        dtype=float)

    def metrics(self, name: str, arms=None) -> dict:
        """``{arm: metric(name, arm)}`` for ``arms`` (default all): the input of :func:`rtlearn.metrics.stats.compare_arms`."""
        return {arm: self.metric(name, arm) for arm in (arms or self.arms)}

    def select(self, arms) -> "Study":
        """The same study restricted to ``arms`` (in that order): metrics, histories and times of those arms only.

        A chapter that reads some arms of a study recorded for several chapters uses this view.
        """
        arms = list(arms)
        missing = [a for a in arms if a not in self.arms]
        if not arms or missing or len(set(arms)) != len(arms):
            raise ValueError(f"arms must be distinct arms of the study {self.arms}, got {arms}")
        entries = []
        for e in self.entries:
            e = dict(e)
            for key in ("metrics", "history", "seconds"):
                if key in e:
                    e[key] = {a: e[key][a] for a in arms if a in e[key]}
            entries.append(e)
        return Study(self.chapter, self.profile, entries)

    def histories(self, arm: str) -> list:
        """Per-epoch records of ``arm``, one list per seed."""
        return [e["history"][arm] for e in self.entries]

    def seconds(self, arm: str) -> np.ndarray:
        return np.array([e["seconds"][arm] for e in self.entries], dtype=float)

    def extras(self, seed: int | None = None) -> dict:
        return next(e for e in self.entries if seed is None or e["seed"] == seed).get("extras", {})

    def matches(self, cfg) -> bool:
        """Whether the study was recorded with ``cfg`` (a config dataclass)."""
        return self.config == config_to_json(cfg)

    def provenance_line(self) -> str:
        """One line for the chapter: commit, date, device, threads, seeds and total wall time."""
        provs = [e["provenance"] for e in self.entries]
        commits = sorted({(p.get("commit") or "unknown")[:10] + (" +local changes" if p.get("dirty") else "")
                          for p in provs})
        dates = sorted(p["date"][:10] for p in provs)
        wall = sum(p.get("wall_seconds", 0.0) for p in provs)
        device = sorted({f"{p['device']} ({p.get('device_name') or '?'}, {p.get('threads')} thread(s))"
                         for p in provs})
        span = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
        return (f"Recorded study '{self.chapter}' ({self.profile} profile): seeds {_seed_text(self.seeds)}, "
                f"{len(self.cases)} test cases, commit {', '.join(commits)}, {span}, {'; '.join(device)}, "
                f"torch {provs[0]['torch']}, wall time {wall / 60:.1f} min in all "
                f"({wall / 60 / len(provs):.1f} min per seed).")


def _seed_text(seeds) -> str:
    return f"{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2 else \
        ", ".join(map(str, seeds))


def from_runs(chapter: str, profile: str, cfg, records: dict) -> Study:
    """A :class:`Study` from run records held in memory, ``{seed: record}`` (a live quick run, before recording).

    Lets a chapter's ``tables`` and ``figures`` take the same object whether the
    results were just computed or loaded from ``results/``.
    """
    if not isinstance(records, dict) or not records:
        raise ValueError("records must be a non-empty {seed: run record} dict")
    cfg_json = config_to_json(cfg)
    entries = []
    for seed, record in records.items():
        validate_record(record)
        entry = {"seed": int(seed), "config": cfg_json, "extras": record.get("extras", {}),
                 "provenance": {**provenance(), "wall_seconds": float(sum(record["seconds"].values()))}}
        entry.update({k: record[k] for k in ("cases", "metrics", "history", "seconds")})
        entries.append(json.loads(json.dumps(_jsonable(entry))))
    return Study(chapter, check_profile(profile), entries)


def load_study(chapter: str, profile: str = "study", *, root=None, seeds=None) -> Study:
    """Load the recorded seeds of ``chapter`` (all of them, or ``seeds``) as a :class:`Study`.

    Raises
    ------
    FileNotFoundError
        When nothing is recorded for the chapter and profile.
    """
    if chapter not in CHAPTERS:
        raise ValueError(f"unknown chapter {chapter!r}; choose one of {sorted(CHAPTERS)}")
    profile = check_profile(profile)
    folder = results_root(root) / chapter / profile
    if seeds is None:
        files = sorted(folder.glob("seed-*.json"))
    else:
        files = [_seed_path(results_root(root), chapter, profile, s) for s in parse_seeds(seeds)]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise FileNotFoundError(f"seeds not recorded: {missing}")
    if not files:
        raise FileNotFoundError(f"no recorded study in {folder}; run `python -m rtlearn.study {chapter} "
                                f"--profile {profile} --seeds 0-4`")
    return Study(chapter, profile, [_read(f) for f in files])


# ---- command line ----------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rtlearn.study",
        description="Run a chapter's experiment for several seeds and record the results "
                    "(results/<chapter>/<profile>/seed-<k>.json). Recorded seeds are skipped, so a study resumes.")
    parser.add_argument("chapter", nargs="?", help=f"one of: {', '.join(CHAPTERS)}")
    parser.add_argument("--profile", default="study", help="quick, study (default) or full")
    parser.add_argument("--seeds", default="0-2", help="e.g. 0-4, 0,2,4 or 3 (default 0-2)")
    parser.add_argument("--root", default=None, help="results directory (default: the repository's results/)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads for this process")
    parser.add_argument("--list", action="store_true", help="list the chapters and what is recorded, then exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.list:
        root = results_root(args.root)
        for name in CHAPTERS:
            recorded = {p.name: len(list(p.glob("seed-*.json"))) for p in sorted((root / name).glob("*"))}
            print(f"{name:16s} {CHAPTERS[name]:36s} recorded: {recorded or 'nothing'}")
        return 0
    if not args.chapter:
        parser.error("name a chapter (or use --list)")
    try:
        paths = run_study(args.chapter, args.profile, args.seeds, root=args.root, threads=args.threads,
                          progress=not args.no_progress)
    except ValueError as exc:
        parser.error(str(exc))
    print("\n".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
