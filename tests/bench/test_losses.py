"""Smoke test of the loss benchmark at a tiny size (the full run is ``python -m rtlearn.bench.losses``)."""
import json

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
    assert json.loads(out.read_text())["config"]["size"] == 16
    assert "ratios to masked MAE" in capsys.readouterr().out


def test_phantoms_are_deterministic():
    a = benchmark.dose_inputs(16, 3, seed=1)
    b = benchmark.dose_inputs(16, 3, seed=1)
    assert all((x == y).all() for x, y in zip(a, b))
    p1, g1 = benchmark.segmentation_inputs(16, 4, seed=2)
    p2, g2 = benchmark.segmentation_inputs(16, 4, seed=2)
    assert (p1 == p2).all() and (g1 == g2).all()
