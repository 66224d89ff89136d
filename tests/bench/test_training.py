import json

import pytest

from rtlearn.bench import training


def test_step_costs_on_phantom_slices_and_recorded_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RTLEARN_DATA", str(tmp_path / "data"))
    out = tmp_path / "t.json"
    result = training.main(["--profile", "quick", "--repeats", "2", "--arms", "MSE,MAE+DVH", "--out", str(out)])
    rows = result["rows"]
    assert [r["arm"] for r in rows] == ["MSE", "MAE+DVH"]
    assert rows[0]["time_ratio"] == 1.0 and all(r["time_s"] > 0 for r in rows)
    assert rows[1]["time_ratio"] == pytest.approx(rows[1]["time_s"] / rows[0]["time_s"])
    rec = training.load_recorded(out)
    assert rec["rows"] == json.loads(out.read_text())["rows"] and rec["facts"]["batch_shape"][0] == 4
    assert rec["provenance"]["command"].startswith("python -m rtlearn.bench.training")
    assert "one training step" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="not a training-step benchmark"):
        training.load_recorded(bad)
    with pytest.raises(ValueError, match="arms"):
        training.step_costs(training_cfg(), arms=("Dice",))
    with pytest.raises(ValueError, match="repeats"):
        training.step_costs(training_cfg(), repeats=0)


def training_cfg():
    from rtlearn.experiments import dvh_loss

    return dvh_loss.default_config("quick")
