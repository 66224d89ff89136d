"""Smoke test of the loss benchmark at a tiny size (the full run is ``python -m rtlearn.bench.losses``)."""
import json
import math

import pytest
import torch

from rtlearn.bench import losses as benchmark


def test_benchmark_runs_small_and_reports_ratios(tmp_path, capsys):
    out = tmp_path / "bench.json"
    res = benchmark.main(["--size", "16", "--grid", "4", "--classes", "3", "--structures", "2", "--bins", "8",
                          "--repeats", "1", "--json", str(out), "--no-pin-malloc"])
    names = [r["loss"] for r in res["segmentation"]]
    assert "dice (Eq. 2)" in names and any(n.startswith("region-specific DC=4") for n in names)
    ref = next(r for r in res["segmentation"] if r["loss"] == "dice (Eq. 2)")
    assert ref["time_ratio"] == 1.0
    assert all(r["time_s"] > 0 for r in res["segmentation"] + res["dose"])
    assert res["dose_info"]["structure_voxels"] > 0
    dose_names = [r["loss"] for r in res["dose"]]
    assert "DVH loss (8 bins)" in dose_names and "DVH loss (8 bins, dense form)" in dose_names
    assert res["dose_info"]["dvh_method"] in ("table", "dense")
    stored = json.loads(out.read_text())
    assert stored["config"]["size"] == 16
    prov = stored["provenance"]
    assert prov["argv"][:2] == ["--size", "16"] and prov["threads"] == 1 and prov["torch"] == torch.__version__
    assert {"commit", "date", "rtlearn", "cpu_model", "load_average_start", "load_average_end"} <= set(prov)
    assert "ratios to masked MAE" in capsys.readouterr().out
    rec = benchmark.load_recorded(out)                       # the reader gives back what was written
    dvh_row = next(r for r in res["dose"] if r["loss"] == "DVH loss (8 bins)")
    assert rec.ratio("DVH loss (8 bins)") == dvh_row["time_ratio"]
    assert rec.table("segmentation").count("\n") == len(res["segmentation"]) + 1


def test_phantoms_are_deterministic():
    a = benchmark.dose_inputs(16, 3, seed=1)
    b = benchmark.dose_inputs(16, 3, seed=1)
    assert all((x == y).all() for x, y in zip(a, b))
    p1, g1 = benchmark.segmentation_inputs(16, 4, seed=2)
    p2, g2 = benchmark.segmentation_inputs(16, 4, seed=2)
    assert (p1 == p2).all() and (g1 == g2).all()


# --------------------------------------------------------------------------- the chapter's recorded 128^3 run
def test_recorded_128_run_is_the_chapters_configuration_and_meets_the_targets():
    """results/bench/losses-128.json, shown in the DVH-loss chapter: its configuration and the ratios it stores."""
    rec = benchmark.load_recorded()
    cfg = rec.config
    assert (cfg["size"], cfg["structures"], cfg["bins"], cfg["part"]) == (128, 10, 64, "dose")
    assert rec.provenance["threads"] == 1 and rec.provenance["command"].endswith("--out results/bench/losses-128.json")
    assert rec.dose_info["dvh_method"] == "table"
    mae, dvh = rec.row("masked MAE"), rec.row(rec.dvh_name)
    # the stored ratios agree with the stored raw measurements
    assert math.isclose(rec.ratio(rec.dvh_name), dvh["time_s"] / mae["time_s"], rel_tol=1e-12)
    assert math.isclose(rec.ratio(rec.dvh_name, "memory"), dvh["peak_mb"] / mae["peak_mb"], rel_tol=1e-12)
    # the targets of the tabulated DVH loss: at most 3x the masked MAE's time and 2x its memory
    assert rec.ratio(rec.dvh_name) <= 3.0
    assert rec.ratio(rec.dvh_name, "memory") <= 2.0
    # the dense form was measured in the same run, for comparison
    assert rec.row(f"DVH loss ({cfg['bins']} bins, dense form)")["time_s"] > 0
    assert "| masked MAE |" in rec.table() and "load average" in rec.provenance_line()


def test_load_recorded_rejects_other_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"config": {"size": 8}}))
    with pytest.raises(ValueError, match="not a benchmark recorded"):
        benchmark.load_recorded(bad)
    with pytest.raises(FileNotFoundError):
        benchmark.load_recorded(tmp_path / "absent.json")
    good = {"config": {"size": 8, "bins": 4}, "provenance": {}, "dose": [
        {"loss": "masked MAE", "time_s": 1.0, "time_ratio": 1.0, "peak_mb": None, "mem_ratio": None},
        {"loss": "DVH loss (4 bins)", "time_s": 4.0, "time_ratio": 4.0, "peak_mb": None, "mem_ratio": None}]}
    bad.write_text(json.dumps(good))
    rec = benchmark.load_recorded(bad)
    assert rec.ratio(rec.dvh_name) == 4.0                    # a run over the target is read as such
    with pytest.raises(ValueError, match="not measured"):
        rec.ratio(rec.dvh_name, "memory")
    with pytest.raises(KeyError, match="masked MAE"):
        rec.row("dice")
    assert "| n/a |" in rec.table()
