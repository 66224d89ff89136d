"""Recorded studies in results/ belong to today's code: their stored config must equal today's study config."""
from pathlib import Path

import pytest

from rtlearn import study

RESULTS = Path(__file__).resolve().parents[1] / "results"
RECORDED = sorted((p.parent.name, p.name) for p in RESULTS.glob("*/*") if p.is_dir() and any(p.glob("seed-*.json")))


def test_only_known_chapters_and_profiles_are_recorded():
    for chapter, profile in RECORDED:
        assert chapter in study.CHAPTERS, f"results/{chapter} names no chapter"
        assert profile in ("quick", "study", "full"), f"results/{chapter}/{profile} names no profile"


@pytest.mark.parametrize("chapter, profile", RECORDED or [pytest.param(None, None, marks=pytest.mark.skip(
    reason="no study recorded"))])
def test_recorded_study_matches_todays_config(chapter, profile):
    recorded = study.load_study(chapter, profile, root=RESULTS)
    today = study.chapter_module(chapter).default_config(profile)
    assert recorded.matches(today), (
        f"results/{chapter}/{profile} was recorded with another config than today's default_config({profile!r}); "
        f"re-run: python -m rtlearn.study {chapter} --profile {profile} --seeds {recorded.seeds[0]}-{recorded.seeds[-1]}"
        f"\nrecorded: {recorded.config}\ntoday:    {study.config_to_json(today)}")
    assert len(recorded.seeds) >= 3, "a recorded study has at least 3 seeds"
    on_phantoms = getattr(today, "source", "phantom") == "phantom"
    for entry in recorded.entries:
        prov = entry["provenance"]
        assert prov["commit"] and prov["date"] and prov["wall_seconds"] > 0
        if on_phantoms:
            assert prov.get("phantom_data_version") == study.phantom_data_version(), (
                f"results/{chapter}/{profile} seed {entry['seed']} was made on phantom clinic version "
                f"{prov.get('phantom_data_version')}, today's is {study.phantom_data_version()}: re-run the study")
    mod = study.chapter_module(chapter)
    for claim in getattr(mod, "CLAIMS", ()):
        assert claim.a in recorded.arms and claim.b in recorded.arms and claim.metric in recorded.metric_names


def test_stale_config_is_detected(tmp_path, monkeypatch):
    """The check above can fail: a study recorded with one config does not match another."""
    import dataclasses
    import sys
    import types

    @dataclasses.dataclass(frozen=True)
    class C:
        epochs: int = 3

    mod = types.ModuleType("rtlearn_stale_chapter")
    mod.default_config = lambda profile="quick", **kw: C(**kw)
    mod.load_data = lambda cfg: None
    mod.run = lambda cfg, seed, data=None, progress=True: {
        "cases": ["a", "b"], "metrics": {"x": {"m": [1.0, 2.0]}}, "history": {"x": []}, "seconds": {"x": 0.1}}
    monkeypatch.setitem(sys.modules, "rtlearn_stale_chapter", mod)
    monkeypatch.setitem(study.CHAPTERS, "stale", "rtlearn_stale_chapter")
    study.run_study("stale", "study", "0-2", root=tmp_path, progress=False)
    recorded = study.load_study("stale", root=tmp_path)
    assert recorded.matches(C()) and not recorded.matches(C(epochs=4))
    assert recorded.entries[0]["provenance"]["phantom_data_version"] == study.phantom_data_version()
    # a study made on another version of the phantom clinic is not resumed
    monkeypatch.setattr(study, "phantom_data_version", lambda: -1)
    with pytest.raises(ValueError, match="phantom clinic"):
        study.run_study("stale", "study", "0-3", root=tmp_path, progress=False)


def test_recorded_training_step_benchmark_matches_todays_study_config():
    """The recorded cost of one training step (closing benchmark chapter) was made with today's study model and data."""
    from rtlearn.bench import training
    from rtlearn.experiments import dose_benchmark, dvh_loss

    path = RESULTS / training.RECORDED_STUDY
    if not path.exists():
        pytest.skip("no training-step benchmark recorded")
    rec = training.load_recorded(path)
    cfg = dvh_loss.default_config(rec["config"]["profile"])
    today = {k: v for k, v in vars(cfg).items() if isinstance(v, (int, float, str, tuple, type(None)))}
    assert rec["config"]["dvh_loss_config"] == {k: list(v) if isinstance(v, tuple) else v for k, v in today.items()}, (
        "results/bench/training-dvh_loss-study.json was recorded with another study config; re-run "
        "python -m rtlearn.bench.training --profile study --repeats 30 --out results/bench/training-dvh_loss-study.json")
    assert [r["arm"] for r in rec["rows"]] == list(dose_benchmark.ARMS)
    assert rec["provenance"]["commit"] and not rec["provenance"]["dirty"]
