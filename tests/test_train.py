"""rtlearn.train: learning, determinism, checkpoints/resume, conditioning and frozen networks."""
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from rtlearn.train import FitResult, Trainer, fit, on_keys, seeded


class Toy(Dataset):
    """y = 2x + cond (a per-sample scalar broadcast over the image)."""

    def __init__(self, n=16, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 1, 8, 8, generator=g)
        self.c = torch.randn(n, 1, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input": self.x[i], "cond": self.c[i], "target": 2 * self.x[i] + self.c[i].view(1, 1, 1)}


class CondNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.fc = nn.Linear(1, 1)

    def forward(self, x, c):
        return self.conv(x) + self.fc(c).view(-1, 1, 1, 1)


def _loader(seed=0):
    return DataLoader(Toy(seed=seed), batch_size=4, shuffle=True)


def test_learns_with_conditioning_input():
    torch.manual_seed(0)
    res = fit(CondNet(), nn.functional.mse_loss, Toy(), batch_size=4, epochs=40, lr=0.05,
              input_keys=("input", "cond"), val=Toy(seed=1), progress=False, device="cpu")
    hist = res.history
    assert isinstance(res, FitResult) and res.epochs == 40 and res.seconds > 0
    assert hist["train_loss"][-1] < 0.05 * hist["train_loss"][0]
    assert hist["val_loss"][-1] < 1e-2
    assert len(hist) == 40 and hist.best_epoch is not None


def test_deterministic_same_seed():
    def run():
        torch.manual_seed(123)
        net = CondNet()
        h = fit(net, nn.functional.mse_loss, Toy(), batch_size=4, epochs=3, input_keys=("input", "cond"),
                seed=7, progress=False, device="cpu").history
        return h["train_loss"], [p.detach().clone() for p in net.parameters()]

    (l1, p1), (l2, p2) = run(), run()
    assert l1 == l2
    for a, b in zip(p1, p2):
        assert torch.equal(a, b)


def test_checkpoint_resume_equals_uninterrupted(tmp_path):
    loss = on_keys(nn.functional.mse_loss)

    def make(ckpt=None):
        torch.manual_seed(5)
        return Trainer(CondNet(), loss, input_keys=("input", "cond"), checkpoint=ckpt, seed=1,
                       progress=False, device="cpu", restore_best=False)

    full = make()
    full.fit(_loader(), epochs=6)
    part = make(tmp_path / "run.pt")
    part.fit(_loader(), epochs=3)
    assert (tmp_path / "run.pt").exists()
    resumed = make(tmp_path / "run.pt")  # a new process would do exactly this
    hist = resumed.fit(_loader(), epochs=6)
    assert len(hist) == 6
    assert hist["train_loss"] == pytest.approx(full.history["train_loss"], rel=1e-6)
    # no temporary file is left behind
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]


def test_corrupt_checkpoint_is_reported(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    tr = Trainer(CondNet(), on_keys(nn.functional.mse_loss), input_keys=("input", "cond"), checkpoint=bad,
                 progress=False, device="cpu")
    with pytest.raises(ValueError, match="could not be read"):
        tr.fit(_loader(), epochs=1)


def test_frozen_network_gets_no_update_but_passes_gradient():
    frozen = nn.Conv2d(1, 1, 3, padding=1)
    before = [p.detach().clone() for p in frozen.parameters()]
    student = nn.Conv2d(1, 1, 1)

    def loss(pred, batch):  # compare through the frozen network (as DOSELO does)
        return nn.functional.mse_loss(frozen(pred), frozen(batch["target"]))

    tr = Trainer(student, loss, frozen=[frozen], progress=False, device="cpu", scheduler=None)
    w0 = student.weight.detach().clone()
    tr.fit(_loader(), epochs=2)
    assert not torch.equal(student.weight, w0)  # the gradient reached the trained model
    for a, b in zip(before, frozen.parameters()):
        assert torch.equal(a, b) and not b.requires_grad
    assert not frozen.training


def test_plateau_scheduler_and_early_stopping():
    class Const(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return x * 0 + self.w * 0  # the loss never improves

    tr = Trainer(Const(), on_keys(nn.functional.mse_loss), lr=1e-3, plateau_patience=1, early_stopping=3,
                 progress=False, device="cpu")
    hist = tr.fit(_loader(), epochs=20)
    assert len(hist) == 4  # best at epoch 1, then 3 stale epochs
    assert hist["lr"][-1] < 1e-3


def test_step_scheduler_lambda():
    sched = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1 / (1 + 0.5 * it))  # noqa: E731
    tr = Trainer(CondNet(), on_keys(nn.functional.mse_loss), input_keys=("input", "cond"), lr=1.0,
                 scheduler=sched, scheduler_interval="step", progress=False, device="cpu")
    tr.fit(_loader(), epochs=1)  # 4 steps
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(1 / 3)


def test_bad_inputs():
    with pytest.raises(TypeError):
        Trainer(lambda x: x, on_keys(nn.functional.mse_loss))
    with pytest.raises(ValueError, match="scheduler"):
        Trainer(CondNet(), on_keys(nn.functional.mse_loss), scheduler="cosine")
    tr = Trainer(CondNet(), on_keys(nn.functional.mse_loss), progress=False, device="cpu")
    with pytest.raises(TypeError):  # CondNet needs the conditioning input
        tr.fit(_loader(), epochs=1)
    tr = Trainer(nn.Conv2d(1, 1, 1), lambda p, b: (p * math.nan).mean(), progress=False, device="cpu")
    with pytest.raises(FloatingPointError):
        tr.fit(_loader(), epochs=1)
    with pytest.raises(KeyError, match="no key"):
        Trainer(nn.Conv2d(1, 1, 1), on_keys(nn.functional.mse_loss), input_keys=("image",),
                progress=False, device="cpu").fit(_loader(), epochs=1)


def test_fit_passes_the_named_batch_keys_to_the_loss_object():
    seen = []

    def masked(pred, target, mask):
        seen.append(mask.shape)
        return ((pred - target) ** 2 * mask).mean()

    class Masked(Toy):
        def __getitem__(self, i):
            return {**super().__getitem__(i), "mask": torch.ones(1, 8, 8)}

    fit(CondNet(), masked, Masked(), epochs=1, batch_size=4, input_keys=("input", "cond"),
        targets=("target", "mask"), progress=False, device="cpu")
    assert seen and seen[0] == (4, 1, 8, 8)
    with pytest.raises(KeyError, match="mask"):
        fit(CondNet(), masked, Toy(), epochs=1, batch_size=4, input_keys=("input", "cond"),
            targets=("target", "mask"), progress=False, device="cpu")
    # targets=None hands the loss the whole batch
    res = fit(CondNet(), lambda p, b: ((p - b["target"]) ** 2).mean(), Toy(), epochs=1, batch_size=4,
              input_keys=("input", "cond"), targets=None, progress=False, device="cpu")
    assert math.isfinite(res.history["train_loss"][0])


def test_fit_order_depends_on_the_seed_only_and_seeded_restores_the_rng():
    def run(seed):
        with seeded(3):
            net = CondNet()
        return fit(net, nn.functional.mse_loss, Toy(), epochs=2, batch_size=4, seed=seed,
                   input_keys=("input", "cond"), progress=False, device="cpu").history["train_loss"]

    assert run(5) == run(5) and run(5) != run(6)
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    with seeded(99):
        torch.rand(10)
    assert torch.equal(torch.rand(1), before)
    with seeded(1):
        a = CondNet().conv.weight.clone()
    with seeded(1):
        b = CondNet().conv.weight.clone()
    assert torch.equal(a, b)


@pytest.mark.parametrize("kw, err", [({"epochs": 0}, ValueError), ({"epochs": True}, ValueError),
                                     ({"batch_size": 0}, ValueError), ({"epochs": 1, "loss": "mse"}, TypeError),
                                     ({"targets": ()}, ValueError), ({"train": [1, 2]}, TypeError)])
def test_fit_bad_arguments(kw, err):
    args = {"loss": nn.functional.mse_loss, "train": Toy(), "epochs": 1, **kw}
    with pytest.raises(err):
        fit(CondNet(), args.pop("loss"), args.pop("train"), input_keys=("input", "cond"), progress=False,
            device="cpu", **args)
    with pytest.raises(ValueError, match="seed"):
        with seeded(-1):
            pass


def test_adam_betas_reach_the_optimizer_and_bad_betas_fail():
    model = torch.nn.Linear(2, 1)
    t = Trainer(model, lambda pred, batch: pred.sum(), betas=(0.9, 0.99), progress=False)
    assert t.optimizer.param_groups[0]["betas"] == (0.9, 0.99)
    assert Trainer(torch.nn.Linear(2, 1), lambda p, b: p.sum(), progress=False).optimizer.param_groups[0]["betas"] \
        == (0.9, 0.999)
    for bad in ((0.9,), (0.9, 1.0), (-0.1, 0.9), "ab", (0.9, float("nan")), (True, 0.9)):
        with pytest.raises(ValueError, match="betas"):
            Trainer(torch.nn.Linear(2, 1), lambda p, b: p.sum(), betas=bad, progress=False)
