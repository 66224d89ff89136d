"""rtlearn.train under torchrun: two gloo processes on the CPU train as one process with the same global batch.

The model has no BatchNorm: on the CPU each process would normalise its own half of
the batch (torch's SyncBatchNorm runs on GPUs only), which is not the one-process
computation. The losses average over the samples, so the weighted shares give
the whole batch's gradient.
"""
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

WORKER = textwrap.dedent('''
    import json, os, sys
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Dataset
    from rtlearn.train import fit, seeded
    from rtlearn import compute

    class Toy(Dataset):
        def __init__(self, n, seed):
            g = torch.Generator().manual_seed(seed)
            self.x = torch.randn(n, 2, 8, 8, generator=g)
            self.y = self.x[:, :1] * 1.5 - self.x[:, 1:] ** 2
            self.seen = []
        def __len__(self):
            return len(self.x)
        def __getitem__(self, i):
            self.seen.append(int(i))
            return {"input": self.x[i], "target": self.y[i]}

    def net():
        with seeded(3):
            return nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 1, 3, padding=1))

    def run(epochs, ckpt=None, n=19):
        # 19 samples in batches of 4: the last batch of 3 splits 1 + 2 over two processes. The loader shuffles
        # with torch's global generator, which the trainer reseeds every epoch: a resumed run repeats the order
        train = DataLoader(Toy(n, 0), batch_size=4, shuffle=True)
        return train.dataset, fit(net(), nn.functional.mse_loss, train, val=Toy(6, 1), epochs=epochs, batch_size=4,
                                  seed=5,
                   lr=0.02, checkpoint=ckpt, progress=False, device="cpu", restore_best=False,
                   metrics={"mae": lambda p, b: (p - b["target"]).abs().mean()})

    out = sys.argv[1]
    ckpt = os.path.join(out, "run.pt")
    data, full = run(4)
    _, first = run(2, ckpt)                 # interrupted after 2 epochs ...
    _, resumed = run(4, ckpt)               # ... and resumed in a new trainer
    r = compute.rank()
    torch.save({"full": full.model.state_dict(), "resumed": resumed.model.state_dict(), "seen": data.seen},
               os.path.join(out, f"weights-{r}.pt"))
    if compute.is_main():
        json.dump({"world": compute.world_size(), "distributed": full.trainer.distributed,
                   "history": full.history.records, "resumed_history": resumed.history.records,
                   "files": sorted(os.listdir(out))}, open(os.path.join(out, "rank0.json"), "w"))
''')


STUDY = textwrap.dedent('''
    import os, sys
    from rtlearn import compute, study
    from rtlearn.experiments import region

    cfg = region.default_config("study", **region.TINY)
    paths = study.run_study("region", "study", "0", config=cfg, root=sys.argv[1], progress=False)
    open(os.path.join(sys.argv[2], f"rank-{compute.rank()}-of-{compute.world_size()}"), "w").write(str(paths[0]))
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(tmp_path, nproc, worker=WORKER, *args):
    """Start ``worker`` in ``nproc`` processes (torchrun, gloo) or in this interpreter's way for 1; (process, out)."""
    script = tmp_path / f"worker{nproc}.py"
    script.write_text(worker)
    out = tmp_path / f"out{nproc}"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                          "MASTER_PORT", "RTLEARN_THREADS")}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if nproc == 1:
        cmd = [sys.executable, str(script), *map(str, args), str(out)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
               "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(script), *map(str, args), str(out)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), out


def _wait(proc):
    try:
        text, _ = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        proc.kill()
        text, _ = proc.communicate()
    assert proc.returncode == 0, text[-5000:]


def _launch(tmp_path, nproc, worker=WORKER, *args):
    proc, out = _start(tmp_path, nproc, worker, *args)
    _wait(proc)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    started = {n: _start(tmp, n) for n in (1, 2)}  # side by side
    for proc, _ in started.values():
        _wait(proc)
    return {n: out for n, (_, out) in started.items()}


def test_two_processes_equal_one_process(runs):
    one = torch.load(runs[1] / "weights-0.pt")
    two = [torch.load(runs[2] / f"weights-{r}.pt") for r in (0, 1)]
    info1 = json.loads((runs[1] / "rank0.json").read_text())
    info2 = json.loads((runs[2] / "rank0.json").read_text())
    assert (info1["world"], info1["distributed"]) == (1, False)
    assert (info2["world"], info2["distributed"]) == (2, True)
    for k, v in one["full"].items():
        assert torch.equal(two[0]["full"][k], two[1]["full"][k]), f"ranks disagree on {k}"
        assert torch.allclose(two[0]["full"][k], v, rtol=1e-4, atol=1e-5), f"{k} differs from one process"
    h1, h2 = info1["history"], info2["history"]
    assert len(h1) == len(h2) == 4
    for a, b in zip(h1, h2):
        for key in ("train_loss", "val_loss", "mae", "lr"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    assert h1[-1]["train_loss"] < 0.7 * h1[0]["train_loss"]
    # each process read its own share: together every sample once per epoch (the 3-sample batch split 1 + 2)
    seen = [two[r]["seen"] for r in (0, 1)]
    assert sorted(seen[0] + seen[1]) == sorted(one["seen"]) == sorted(list(range(19)) * 4)
    assert sorted(map(len, seen)) == [4 * 9, 4 * 10]


def test_resume_under_torchrun_equals_uninterrupted(runs):
    for r in (0, 1):
        w = torch.load(runs[2] / f"weights-{r}.pt")
        for k in w["full"]:
            assert torch.equal(w["full"][k], w["resumed"][k]), k
    info = json.loads((runs[2] / "rank0.json").read_text())
    assert [rec["epoch"] for rec in info["resumed_history"]] == [1, 2, 3, 4]
    # rank 0 wrote one checkpoint, atomically (no temporary file left behind)
    assert [f for f in info["files"] if f.startswith("run")] == ["run.pt"]


def test_study_under_torchrun_writes_once(tmp_path, monkeypatch):
    """Both processes run the study; rank 0 alone writes the seed's record (a valid one)."""
    from rtlearn.study import load_study

    monkeypatch.setenv("RTLEARN_DATA", str(tmp_path / "cache"))
    root = tmp_path / "results"
    out = _launch(tmp_path, 2, STUDY, root)
    assert sorted(p.name for p in out.iterdir()) == ["rank-0-of-2", "rank-1-of-2"]
    assert [p.name for p in (root / "region" / "study").iterdir()] == ["seed-0.json"]
    st = load_study("region", "study", root=root)
    assert st.seeds == [0] and len(st.cases) == 3
