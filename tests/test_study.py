"""rtlearn.study: seeds, the run record schema, atomic resumable recording, loading, provenance, the CLI."""
import dataclasses
import json
import subprocess
import sys
import types

import numpy as np
import pytest

from rtlearn import study


@dataclasses.dataclass(frozen=True)
class FakeConfig:
    n_cases: int = 4
    arms: tuple = ("A", "B")
    scale: float = 1.0


def _fake_module(calls):
    mod = types.ModuleType("rtlearn_fake_chapter")

    def default_config(profile="quick", **overrides):
        return FakeConfig(**overrides)

    def load_data(cfg):
        calls.append("load")
        return np.arange(cfg.n_cases)

    def run(cfg, seed, *, data=None, progress=True):
        calls.append(seed)
        rng = np.random.default_rng(seed)
        return {"cases": [f"case{i}" for i in data],
                "metrics": {arm: {"mae": (rng.random(cfg.n_cases) * cfg.scale + k).tolist(),
                                  "dsc": [float("nan")] * cfg.n_cases}
                            for k, arm in enumerate(cfg.arms)},
                "history": {arm: [{"epoch": 1, "train_loss": 0.5}] for arm in cfg.arms},
                "seconds": {arm: 0.1 for arm in cfg.arms}}

    mod.default_config, mod.load_data, mod.run = default_config, load_data, run
    return mod


@pytest.fixture
def fake(monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "rtlearn_fake_chapter", _fake_module(calls))
    monkeypatch.setitem(study.CHAPTERS, "fake", "rtlearn_fake_chapter")
    return calls


def test_parse_seeds():
    assert study.parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert study.parse_seeds("0,2, 5") == [0, 2, 5]
    assert study.parse_seeds("3") == [3]
    assert study.parse_seeds("1-2,7") == [1, 2, 7]
    assert study.parse_seeds([1, 4]) == [1, 4]
    for bad in ("", "4-1", "a", "1-", "-1", "1,1", [True], [-2], None, "0-2-4"):
        with pytest.raises(ValueError):
            study.parse_seeds(bad)


def test_record_load_resume_and_provenance(fake, tmp_path):
    paths = study.run_study("fake", "study", "0-2", root=tmp_path, progress=False)
    assert [p.name for p in paths] == ["seed-0.json", "seed-1.json", "seed-2.json"]
    assert fake == ["load", 0, 1, 2]
    entry = json.loads(paths[1].read_text())
    assert entry["config"] == {"n_cases": 4, "arms": ["A", "B"], "scale": 1.0}
    prov = entry["provenance"]
    for key in ("commit", "dirty", "date", "torch", "numpy", "rtlearn", "device", "threads", "wall_seconds"):
        assert key in prov
    assert entry["metrics"]["A"]["dsc"] == [None] * 4  # NaN stored as null, read back as NaN
    # resume: recorded seeds are skipped, new ones run; nothing is loaded when nothing is to do
    study.run_study("fake", "study", "0-3", root=tmp_path, progress=False)
    assert fake == ["load", 0, 1, 2, "load", 3]
    study.run_study("fake", "study", "0-3", root=tmp_path, progress=False)
    assert fake == ["load", 0, 1, 2, "load", 3]
    s = study.load_study("fake", root=tmp_path)
    assert s.seeds == [0, 1, 2, 3] and s.arms == ["A", "B"] and s.cases == [f"case{i}" for i in range(4)]
    m = s.metric("mae", "B")
    assert m.shape == (4, 4)
    rng = np.random.default_rng(2)
    rng.random(4)  # arm A's draw
    np.testing.assert_allclose(m[2], rng.random(4) + 1)
    assert np.isnan(s.metric("dsc", "A")).all()
    assert set(s.metrics("mae")) == {"A", "B"}
    assert s.matches(FakeConfig()) and not s.matches(FakeConfig(scale=2.0))
    line = s.provenance_line()
    assert "seeds 0-3" in line and "4 test cases" in line and "min per seed" in line
    assert study.load_study("fake", root=tmp_path, seeds="1,3").seeds == [1, 3]
    with pytest.raises(KeyError, match="arm"):
        s.metric("mae", "C")
    with pytest.raises(KeyError, match="metric"):
        s.metric("hd", "A")


def test_a_recorded_seed_with_another_config_is_an_error(fake, tmp_path):
    study.run_study("fake", "study", "0", root=tmp_path, progress=False)
    with pytest.raises(ValueError, match="another config"):
        study.run_study("fake", "study", "0-1", root=tmp_path, progress=False, config=FakeConfig(scale=2.0))
    # a mixed folder is refused by the loader too
    study.run_study("fake", "study", "1", root=tmp_path, progress=False, config=FakeConfig(scale=2.0))
    with pytest.raises(ValueError, match="different configs"):
        study.load_study("fake", root=tmp_path)


def test_corrupt_or_missing_records_fail_clearly(fake, tmp_path):
    with pytest.raises(FileNotFoundError, match="no recorded study"):
        study.load_study("fake", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="not recorded"):
        study.load_study("fake", root=tmp_path, seeds="5")
    (path,) = study.run_study("fake", "study", "0", root=tmp_path, progress=False)
    path.write_text(path.read_text()[:50])  # a half-written file (never left by the atomic writer)
    with pytest.raises(ValueError, match="not a readable study record"):
        study.load_study("fake", root=tmp_path)


@pytest.mark.parametrize("mutate, match", [
    (lambda r: r.pop("cases"), "no 'cases'"),
    (lambda r: r["metrics"]["A"]["mae"].pop(), "has 3 values for 4 cases"),
    (lambda r: r["metrics"]["B"].pop("dsc"), "has metrics"),
    (lambda r: r["seconds"].pop("B"), "covers arms"),
    (lambda r: r.update(cases=[]), "non-empty"),
])
def test_validate_record(fake, mutate, match):
    rec = sys.modules["rtlearn_fake_chapter"].run(FakeConfig(), 0, data=np.arange(4))
    study.validate_record(rec)
    mutate(rec)
    with pytest.raises(ValueError, match=match):
        study.validate_record(rec)


def test_bad_names(fake, tmp_path):
    with pytest.raises(ValueError, match="unknown chapter"):
        study.run_study("nope", root=tmp_path)
    with pytest.raises(ValueError, match="not a profile"):
        study.run_study("fake", "huge", root=tmp_path)
    with pytest.raises(ValueError, match="threads"):
        study.run_study("fake", seeds="0", threads=0, root=tmp_path)
    with pytest.raises(TypeError, match="dataclass"):
        study.config_to_json({"a": 1})


def test_cli_help_and_errors():
    out = subprocess.run([sys.executable, "-m", "rtlearn.study", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--seeds" in out.stdout and "sharp" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "rtlearn.study", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown chapter" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "rtlearn.study", "region", "--seeds", "3-1"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "below the start" in bad.stderr


def test_from_runs_gives_the_same_study_as_the_recorded_one(fake, tmp_path):
    mod = sys.modules["rtlearn_fake_chapter"]
    cfg = FakeConfig()
    live = study.from_runs("fake", "quick", cfg, {s: mod.run(cfg, s, data=np.arange(4)) for s in (0, 1)})
    study.run_study("fake", "quick", "0-1", root=tmp_path, progress=False)
    recorded = study.load_study("fake", "quick", root=tmp_path)
    assert live.seeds == recorded.seeds and live.config == recorded.config
    np.testing.assert_array_equal(live.metric("mae", "A"), recorded.metric("mae", "A"))
    with pytest.raises(ValueError):
        study.from_runs("fake", "quick", cfg, {})


@pytest.mark.parametrize("chapter", sorted(study.CHAPTERS))
def test_every_chapter_records_one_tiny_seed_that_loads_back(chapter, tmp_path):
    """Runner, JSON schema and loader agree for every chapter, on its study config shrunk by its TINY overrides."""
    mod = study.chapter_module(chapter)
    assert isinstance(getattr(mod, "TINY", None), dict), f"{mod.__name__} has no TINY overrides"
    cfg = mod.default_config("study", **mod.TINY)
    if getattr(cfg, "source", None) == "openkbp":
        from rtlearn.data.openkbp import available

        if not available():
            pytest.skip("the OpenKBP data are not here (RTLEARN_SHARED_DATA or ../shared/data)")
    (path,) = study.run_study(chapter, "study", "0", config=cfg, root=tmp_path, progress=False)
    assert path.stat().st_size < 200_000, "a recorded seed is kilobytes, not arrays of doses"
    s = study.load_study(chapter, root=tmp_path)
    assert s.seeds == [0] and s.matches(cfg)
    for claim in mod.CLAIMS:
        values = s.metric(claim.metric, claim.b)
        assert values.shape == (1, len(s.cases))
        assert claim.a in s.arms


def test_config_values_are_stored_by_stable_names():
    import functools

    import torch

    @dataclasses.dataclass(frozen=True)
    class WithLoss:
        loss: type = torch.nn.L1Loss
        fn: object = np.mean
        path: object = None

    assert study.config_to_json(WithLoss()) == {"loss": "torch.nn.modules.loss.L1Loss", "fn": "numpy.mean",
                                                "path": None}
    with pytest.raises(TypeError, match="stable"):
        study.config_to_json(WithLoss(path=functools.partial(np.mean)))


def test_select_keeps_only_the_named_arms_in_their_order(fake, tmp_path):
    mod = sys.modules["rtlearn_fake_chapter"]
    cfg = FakeConfig()
    live = study.from_runs("fake", "quick", cfg, {s: mod.run(cfg, s, data=np.arange(4)) for s in (0, 1)})
    arms = live.arms
    sub = live.select(arms[::-1][:1])
    assert sub.arms == arms[::-1][:1] and sub.seeds == live.seeds and sub.cases == live.cases
    np.testing.assert_array_equal(sub.metric("mae", arms[-1]), live.metric("mae", arms[-1]))
    assert list(sub.entries[0]["history"]) == sub.arms and live.arms == arms      # the original is untouched
    for bad in ([], ["nope"], [arms[0], arms[0]]):
        with pytest.raises(ValueError, match="distinct arms"):
            live.select(bad)
