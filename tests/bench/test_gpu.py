"""The GPU smoke run (``python -m rtlearn.bench.gpu``) in its CPU dry mode: every chapter's full-profile path runs."""
import json
import math
import subprocess
import sys

import pytest
import torch

from rtlearn.bench import gpu
from rtlearn.study import CHAPTERS


def test_help_works():
    proc = subprocess.run([sys.executable, "-m", "rtlearn.bench.gpu", "--help"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "--dry-run" in proc.stdout and "--out" in proc.stdout and "CUDA" in proc.stdout


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "bench.json"
    lines = []
    info = gpu.run(dry=True, out=out, echo=lines.append)
    return info, json.loads(out.read_text()), "\n".join(lines)


def test_dry_run_covers_every_chapter(dry):
    info, stored, text = dry
    assert stored == json.loads(json.dumps(info))
    rows = info["results"]
    assert {r["chapter"] for r in rows} == set(CHAPTERS) | {"openkbp"}
    assert [r["error"] for r in rows] == [None] * len(rows)
    for r in rows:
        assert r["step_s"] > 0 and r["eval_s"] > 0 and math.isfinite(r["loss"])
        assert r["samples_per_s"] == pytest.approx(r["batch_size"] / r["step_s"])
        assert r["arms"] >= 1 and r["epochs"] >= 1 and r["steps_per_epoch"] >= 1
        # the estimate of a full run is only made from real (CUDA) sizes
        assert r["full_run_h"] is None and r["peak_mem_gib"] is None
        assert r["amp_bf16"] is False and r["channels_last"] is False
    assert info["dry_run"] is True and info["device"] == "cpu"
    if not torch.cuda.is_available():
        assert "CUDA is not available" in text and "skipped" in text.lower()


def test_full_profile_sizes_are_the_chapters():
    """Without building the networks' weights at full size: the batch and shapes come from the full configs."""
    from rtlearn.experiments import dvh_conditioned, sharp

    w = gpu._sharp(dry=False)
    cfg = sharp.default_config("full")
    assert (w.batch_size, w.shape, w.epochs, w.arms) == (cfg.batch_size, (64, 128, 128), cfg.epochs,
                                                         1 + len(cfg.gammas))
    assert w.steps_per_epoch == math.ceil(cfg.n_train / cfg.batch_size)
    w = gpu._dvh_conditioned(dry=False)
    cfg = dvh_conditioned.default_config("full")
    assert w.shape == tuple(cfg.shape) and w.input_keys == ("input", "dvh")
    assert w.steps_per_epoch == math.ceil(10 * cfg.n_train / cfg.batch_size)


def test_full_run_estimate_formula():
    w = gpu.Workload("toy", "conv", torch.nn.Conv2d(1, 1, 1),
                     lambda p, b: torch.nn.functional.mse_loss(p, b["target"]),
                     lambda g: {"input": torch.rand(2, 1, 4, 4, generator=g), "target": torch.rand(2, 1, 4, 4,
                                                                                                  generator=g)},
                     2, (4, 4), arms=3, epochs=5, steps_per_epoch=7, val_batches=2)
    row = gpu.measure(w, torch.device("cpu"), steps=2, warmup=1, val_steps=1)
    assert row["epoch_s"] == pytest.approx(7 * row["step_s"] + 2 * row["eval_s"])
    assert row["full_run_h"] == pytest.approx(3 * 5 * row["epoch_s"] / 3600)


def test_bad_arguments_and_budget(capsys):
    with pytest.raises(ValueError, match="unknown chapter"):
        gpu.workloads(["sharp", "nope"])
    with pytest.raises(ValueError, match="steps"):
        gpu.run(["sharp"], dry=True, steps=0, echo=lambda s: None)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            gpu.run(["sharp"], dry=False, echo=lambda s: None)
    info = gpu.run(["sharp", "region"], dry=True, budget=0.0, echo=lambda s: None)
    assert all(r["error"].startswith("skipped") for r in info["results"])
    assert gpu.main(["--dry-run", "--chapters", "sharp", "--budget", "0"]) == 0
