"""One training loop for every chapter.

:class:`Trainer` handles what every experiment of the book needs and nothing
more: the device (cuda > mps > cpu), bf16 autocast and ``channels_last`` on
CUDA, seeding, a ``tqdm.auto`` progress bar, a per-epoch history, atomic
checkpoints with resume, ``ReduceLROnPlateau`` (or any scheduler), early
stopping, extra conditioning inputs and frozen auxiliary networks, the
number of CPU threads (:mod:`rtlearn.compute`) and several processes under
``torchrun``.

Batches are dicts of tensors (what the rtlearn datasets return). By default
the model is called as ``model(batch["input"])``; pass ``input_keys`` for
conditioning inputs (``("input", "dvh")`` calls ``model(batch["input"],
batch["dvh"])``) or a ``forward(model, batch)`` callable for anything else.
The loss is called as ``loss_fn(pred, batch)`` so that it can use targets,
masks and any other entry; :func:`on_keys` adapts an ordinary
``loss(pred, target)``.

Frozen auxiliary networks (e.g. DOSELO's dose predictor) are passed as
``frozen=[net]``: they are moved to the device, put in eval mode and their
parameters get ``requires_grad=False``, so gradients flow *through* them to
the trained model but never update them.

CPU threads: when training on the CPU starts, :func:`rtlearn.compute.apply_threads`
sets torch's intra-op thread count to the cores that other programs leave
free (one thread when one of two cores is busy), unless the count was fixed:
the ``threads`` argument, ``RTLEARN_THREADS``, ``OMP_NUM_THREADS`` or a
``torch.set_num_threads`` call (precedence in :mod:`rtlearn.compute`).

Several GPUs (or CPU processes): started by ``torchrun --nproc_per_node=N``,
every process runs the same script; the trainer joins the process group (NCCL
on GPUs, gloo on the CPU) and wraps the model in
:class:`~torch.nn.parallel.DistributedDataParallel`. ``batch_size`` stays the
*global* batch: every process draws the same shuffled batches and trains on
its ``1/N`` share of each, the share's loss weighted by its size, so the
gradients are those of one process with the whole batch (exactly for losses
that average over the samples of a batch; a last batch with fewer samples than
processes is skipped). BatchNorm layers become
:class:`~torch.nn.SyncBatchNorm` on GPUs (statistics over the whole batch); on
the CPU, where torch has no SyncBatchNorm, each process normalises its share
and the buffers of rank 0 are used for validation. Validation runs whole on
every process, so the schedule and early stopping agree; only rank 0 shows
progress and writes the checkpoint, and every process resumes from it.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from . import compute
from .config import get_device, seed_everything
from .io import torch_save

__all__ = ["Trainer", "History", "FitResult", "fit", "seeded", "on_keys", "to_device"]


def to_device(batch, device, channels_last: bool = False):
    """Move every tensor of a (nested) batch to ``device``; 4D/5D float tensors optionally channels_last."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.is_floating_point() and batch.dim() in (4, 5):
            fmt = torch.channels_last if batch.dim() == 4 else torch.channels_last_3d
            batch = batch.contiguous(memory_format=fmt)
        return batch
    if isinstance(batch, dict):
        return {k: to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, channels_last) for v in batch)
    return batch


def on_keys(fn: Callable, target: str = "target", mask: str | None = None) -> Callable:
    """Adapt ``fn(pred, target[, mask=...])`` to the trainer's ``loss_fn(pred, batch)`` form.

    Examples
    --------
    >>> loss_fn = on_keys(torch.nn.functional.mse_loss)           # doctest: +SKIP
    >>> loss_fn = on_keys(masked_mae, target="target", mask="mask")  # doctest: +SKIP
    """
    def loss(pred, batch):
        if mask is None:
            return fn(pred, batch[target])
        return fn(pred, batch[target], mask=batch[mask])

    loss.__name__ = getattr(fn, "__name__", "loss")
    return loss


@dataclass
class History:
    """Per-epoch records: ``epoch``, ``train_loss``, ``val_loss`` (if any), ``lr``, ``seconds`` and metrics."""

    records: list = field(default_factory=list)

    def append(self, record: dict) -> None:
        self.records.append(dict(record))

    def __getitem__(self, key: str) -> list:
        return [r.get(key, math.nan) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def best_epoch(self):
        """Epoch with the lowest validation loss (training loss if there was no validation)."""
        key = "val_loss" if any("val_loss" in r for r in self.records) else "train_loss"
        if not self.records:
            return None
        return min(self.records, key=lambda r: r.get(key, math.inf))["epoch"]

    def to_dict(self) -> dict:
        return {"records": self.records}


class Trainer:
    """Train a model on batches of dicts.

    Parameters
    ----------
    model : nn.Module
        The network to train.
    loss_fn : callable
        ``loss_fn(pred, batch) -> scalar tensor`` (see :func:`on_keys`).
    optimizer : torch.optim.Optimizer, optional
        Defaults to Adam with ``lr``, ``weight_decay`` and ``betas`` (
        Adam's beta1, beta2; default torch's (0.9, 0.999)).
    scheduler : "plateau", None or callable
        ``"plateau"``: :class:`~torch.optim.lr_scheduler.ReduceLROnPlateau`
        on the validation (else training) loss with ``plateau_factor`` and
        ``plateau_patience`` (Bai et al. 2021: x0.1 after 5 epochs without
        improvement), never below ``plateau_min_lr`` (Bai et al.: 1e-7). A
        callable ``f(optimizer)`` returns any scheduler;
        ``scheduler_interval`` says whether it steps every ``"epoch"`` or every
        optimisation ``"step"``.
    early_stopping : int, optional
        Stop after this many epochs without improvement of the monitored loss.
    checkpoint : path, optional
        Saved atomically after every epoch (model, optimizer, scheduler,
        history, RNG states). If it exists when :meth:`fit` starts and
        ``resume`` is true, training continues from it.
    frozen : sequence of nn.Module
        Auxiliary networks used by the loss or forward; frozen as described
        in the module docstring.
    metrics : dict[str, callable], optional
        ``name -> f(pred, batch) -> float``, averaged over validation batches.
    amp : bool, optional
        bf16 autocast; default: on for CUDA, off elsewhere.
    seed : int
        Seeds Python, NumPy and torch; every epoch ``e`` starts from seed
        ``seed + e``, so shuffling and dropout are reproducible and a resumed
        run continues exactly as an uninterrupted one (for data loaders that
        draw from torch's global generator, the default).
    threads : int or "auto", optional
        Intra-op CPU threads while training on the CPU: a count, or ``"auto"``
        for :func:`rtlearn.compute.choose_threads`. ``None`` (default):
        ``RTLEARN_THREADS``, else a count the user fixed, else ``"auto"``
        (:func:`rtlearn.compute.apply_threads`).
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, *, optimizer=None, lr: float = 1e-3,
                 weight_decay: float = 0.0, betas: tuple = (0.9, 0.999), scheduler="plateau",
                 plateau_factor: float = 0.1,
                 plateau_patience: int = 5, plateau_min_lr: float = 0.0, scheduler_interval: str = "epoch",
                 early_stopping: int | None = None,
                 checkpoint=None, resume: bool = True, frozen: Sequence[nn.Module] = (), metrics=None,
                 input_keys: Sequence[str] = ("input",), forward: Callable | None = None, device=None,
                 amp: bool | None = None, channels_last: bool | None = None, grad_clip: float | None = None,
                 seed: int = 0, progress: bool = True, restore_best: bool = True, threads=None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        if isinstance(plateau_min_lr, bool) or not isinstance(plateau_min_lr, (int, float)) or \
                not (math.isfinite(plateau_min_lr) and plateau_min_lr >= 0):
            raise ValueError(f"plateau_min_lr must be a finite learning rate >= 0, got {plateau_min_lr!r}")
        if early_stopping is not None and early_stopping < 1:
            raise ValueError("early_stopping must be a positive number of epochs or None")
        if threads is not None:
            compute._parse_threads(threads, "threads")
        self.threads = threads
        self.distributed = compute.init_distributed()
        self.rank, self.world_size = compute.rank(), compute.world_size()
        self.device = torch.device(device) if device is not None else get_device()
        cuda = self.device.type == "cuda"
        if self.distributed and cuda and self.device.index is None:
            self.device = torch.device("cuda", compute.local_rank())
        if self.device.type == "cpu":
            # tiny (denormal) activations can slow CPU convolutions by 100x; flushing them to zero changes
            # nothing measurable in the results
            torch.set_flush_denormal(True)
        self.amp = cuda if amp is None else bool(amp)
        self.channels_last = cuda if channels_last is None else bool(channels_last)
        self.seed = seed
        seed_everything(seed)
        if self.distributed and cuda:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._net = self.model  # what the training forward calls: the model, or its DDP wrapper
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self._net = DistributedDataParallel(self.model, device_ids=[self.device.index] if cuda else None)
        self.frozen = list(frozen)
        for net in self.frozen:
            net.to(self.device).eval()
            net.requires_grad_(False)
            for p in net.parameters():
                p.grad = None
        self.loss_fn = loss_fn
        self.metrics = dict(metrics or {})
        self.input_keys = tuple(input_keys)
        self._forward = forward
        self.optimizer = optimizer or torch.optim.Adam(
            [p for p in self.model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay,
            betas=_check_betas(betas))
        self.scheduler_interval = scheduler_interval
        if scheduler == "plateau":
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, mode="min", factor=plateau_factor, patience=plateau_patience, min_lr=plateau_min_lr)
        elif scheduler is None:
            self.scheduler = None
        elif callable(scheduler):
            self.scheduler = scheduler(self.optimizer)
        else:
            raise ValueError("scheduler must be 'plateau', None or a callable f(optimizer)")
        self.early_stopping = early_stopping
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.resume = resume
        self.grad_clip = grad_clip
        self.progress = progress and self.rank == 0
        self.restore_best = restore_best
        self.history = History()
        self.start_epoch = 0
        self._best = (math.inf, None)  # (loss, state_dict)

    # -- the model call --------------------------------------------------------------------------------------
    def _autocast(self):
        if self.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def forward(self, batch):
        """Run the model on a batch already on the device (autocast applied; output cast to float32)."""
        net = self._net if self.model.training else self.model  # DDP synchronises training passes only
        with self._autocast():
            if self._forward is not None:
                out = self._forward(net, batch)
            else:
                missing = [k for k in self.input_keys if k not in batch]
                if missing:
                    raise KeyError(f"batch has no key(s) {missing}; it has {sorted(batch)}")
                out = net(*[batch[k] for k in self.input_keys])
        return out.float() if isinstance(out, torch.Tensor) else out

    def _loss(self, pred, batch):
        with self._autocast():
            loss = self.loss_fn(pred, batch)
        loss = loss.float()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()}; lower the learning rate or check the inputs")
        return loss

    # -- epochs ----------------------------------------------------------------------------------------------
    def _shard(self, loader, epoch: int):
        """This process's share of every batch of ``loader`` and the weight of each share (several processes).

        Every process draws the same global batches (the same seeds), keeps
        samples ``[r B / N, (r + 1) B / N)`` of each batch of ``B`` and weights its
        share's loss by ``N n_r / B``, so that DDP's average of the processes'
        gradients is the gradient of the whole batch's mean loss.
        """
        from torch.utils.data import DataLoader

        if not isinstance(loader, DataLoader) or loader.batch_sampler is None:
            raise TypeError("under torchrun the training data must be a map-style Dataset or a DataLoader with a "
                            f"batch size, got {type(loader).__name__}")
        # draw what iterating the loader itself would draw first (its workers' base seed), then the order
        base_seed = int(torch.empty((), dtype=torch.int64).random_(generator=loader.generator).item())
        shards, weights = [], []
        for batch in loader.batch_sampler:  # the same shuffled order on every process
            b = list(batch)
            if len(b) < self.world_size:
                continue
            lo, hi = self.rank * len(b) // self.world_size, (self.rank + 1) * len(b) // self.world_size
            shards.append(b[lo:hi])
            weights.append((self.world_size * (hi - lo) / len(b), (hi - lo) / len(b)))
        if self.rank > 0:  # rank 0 keeps the random stream of one process; the others draw their own dropout
            torch.manual_seed((self.seed + epoch) * 1_000_003 + self.rank)
        return DataLoader(loader.dataset, batch_sampler=shards, num_workers=loader.num_workers,
                          collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                          worker_init_fn=loader.worker_init_fn,
                          generator=torch.Generator().manual_seed(base_seed)), weights

    def train_epoch(self, loader, epoch: int = 0) -> float:
        """One pass over ``loader``; the mean of the batches' losses (over all processes under torchrun)."""
        self.model.train()
        weights = None
        if self.distributed:
            loader, weights = self._shard(loader, epoch)
        total, n = 0.0, 0
        for i, batch in enumerate(loader):
            batch = to_device(batch, self.device, self.channels_last)
            self.optimizer.zero_grad(set_to_none=True)
            loss = self._loss(self.forward(batch), batch)
            (loss if weights is None else loss * weights[i][0]).backward()
            if self.grad_clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
            if self.scheduler is not None and self.scheduler_interval == "step":
                self.scheduler.step()
            total += loss.item() * (1.0 if weights is None else weights[i][1])
            n += 1
        if self.distributed:
            import torch.distributed as dist

            t = torch.tensor([total], dtype=torch.float64, device=self.device)
            dist.all_reduce(t)
            total = float(t.item())
        if n == 0:
            raise ValueError("the training loader yielded no batch")
        return total / n

    def _sync_from_rank0(self, values: dict | None = None):
        """Copy rank 0's buffers (BatchNorm statistics) and ``values`` to every process."""
        import torch.distributed as dist

        for buf in self.model.buffers():
            dist.broadcast(buf.data, 0)
        if values is None:
            return None
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        dist.broadcast(t, 0)
        return dict(zip(keys, t.tolist()))

    @torch.no_grad()
    def evaluate(self, loader) -> dict:
        """Mean loss (and metrics) over a loader, in eval mode."""
        self.model.eval()
        sums, n = {"loss": 0.0, **{k: 0.0 for k in self.metrics}}, 0
        for batch in loader:
            batch = to_device(batch, self.device, self.channels_last)
            pred = self.forward(batch)
            sums["loss"] += self._loss(pred, batch).item()
            for k, f in self.metrics.items():
                sums[k] += float(f(pred, batch))
            n += 1
        if n == 0:
            raise ValueError("the validation loader yielded no batch")
        return {k: v / n for k, v in sums.items()}

    @torch.no_grad()
    def predict(self, batch):
        """Model output for one batch (dict), on the CPU, in eval mode."""
        self.model.eval()
        return self.forward(to_device(batch, self.device, self.channels_last)).cpu()

    # -- checkpoints -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "history": self.history.to_dict(),
            "epoch": len(self.history),
            "best_loss": self._best[0],
            "best_state": self._best[1],
            "torch_rng": torch.get_rng_state(),
        }

    def save(self, path=None) -> Path:
        """Write a checkpoint atomically (an interrupted save never corrupts the previous one).

        Under torchrun only rank 0 writes; every process waits until it is written.
        """
        path = Path(path or self.checkpoint)
        if self.rank == 0:
            torch_save(self.state_dict(), path)
        compute.barrier()
        return path

    def load(self, path=None) -> None:
        """Restore model, optimizer, scheduler, history and RNG state from a checkpoint."""
        path = Path(path or self.checkpoint)
        try:
            state = torch.load(path, map_location=self.device, weights_only=False)
        except Exception as exc:
            raise ValueError(f"checkpoint {path} could not be read ({exc}); delete it to start afresh") from exc
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.history = History(list(state["history"]["records"]))
        self.start_epoch = int(state["epoch"])
        self._best = (state.get("best_loss", math.inf), state.get("best_state"))
        torch.set_rng_state(state["torch_rng"])

    # -- the loop --------------------------------------------------------------------------------------------
    def fit(self, train_loader: Iterable, epochs: int, val_loader: Iterable | None = None) -> History:
        """Train for ``epochs`` epochs (counting those restored from a checkpoint); return the history."""
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if self.device.type == "cpu":
            compute.apply_threads(self.threads)
        if self.checkpoint is not None and self.resume and self.checkpoint.exists():
            self.load()
        else:
            seed_everything(self.seed)
        from tqdm.auto import tqdm

        bar = tqdm(range(self.start_epoch, epochs), desc="epochs", initial=self.start_epoch, total=epochs,
                   disable=not self.progress, leave=True)
        stale = 0
        for epoch in bar:
            # reseed at every epoch: shuffling and dropout depend only on (seed, epoch), so a resumed run
            # repeats exactly what an uninterrupted one would have done (for loaders using torch's global RNG)
            seed_everything(self.seed + epoch, deterministic=False)
            t0 = time.perf_counter()
            record = {"epoch": epoch + 1, "train_loss": self.train_epoch(train_loader, epoch)}
            if self.distributed:
                self._sync_from_rank0()
            if val_loader is not None:
                ev = self.evaluate(val_loader)
                if self.distributed:
                    ev = self._sync_from_rank0(ev)
                record["val_loss"] = ev.pop("loss")
                record.update(ev)
            monitored = record.get("val_loss", record["train_loss"])
            if self.scheduler is not None and self.scheduler_interval == "epoch":
                if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    self.scheduler.step(monitored)
                else:
                    self.scheduler.step()
            record["lr"] = self.optimizer.param_groups[0]["lr"]
            record["seconds"] = time.perf_counter() - t0
            self.history.append(record)
            if monitored < self._best[0]:
                self._best = (monitored, {k: v.detach().clone() for k, v in self.model.state_dict().items()})
                stale = 0
            else:
                stale += 1
            bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k.endswith("loss")})
            if self.checkpoint is not None:
                self.save()
            if self.early_stopping is not None and stale >= self.early_stopping:
                break
        self.start_epoch = len(self.history)
        self.optimizer.zero_grad(set_to_none=True)  # leave no stale gradients on the model
        if self.restore_best and self._best[1] is not None:
            self.model.load_state_dict(self._best[1])
        return self.history


@contextlib.contextmanager
def seeded(seed: int):
    """Run the block with torch's global generator seeded with ``seed``, then restore it.

    Used to build a model: the same seed gives the same initial weights for
    every loss of a comparison, and the caller's random stream is untouched.

    Examples
    --------
    >>> with seeded(0):                       # doctest: +SKIP
    ...     model = UNet(1, 1, dims=2)
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@dataclass
class FitResult:
    """What :func:`fit` returns: the trained model, its history, the wall time and the trainer."""

    model: nn.Module
    history: History
    seconds: float
    trainer: "Trainer"

    @property
    def epochs(self) -> int:
        """Number of epochs run (fewer than asked when early stopping ended the run)."""
        return len(self.history)

    @property
    def best_epoch(self):
        """The epoch whose weights the model holds when the best weights were restored."""
        return self.history.best_epoch


def _batch_loss(loss: Callable, targets) -> Callable:
    """``loss(pred, *[batch[k] for k in targets])`` as the trainer's ``loss_fn(pred, batch)``."""
    if targets is None:
        return loss
    keys = (targets,) if isinstance(targets, str) else tuple(targets)
    if not keys or not all(isinstance(k, str) for k in keys):
        raise ValueError(f"targets must be a batch key, a tuple of batch keys or None, got {targets!r}")

    def loss_fn(pred, batch):
        missing = [k for k in keys if k not in batch]
        if missing:
            raise KeyError(f"the loss needs batch key(s) {missing}; the batch has {sorted(batch)}")
        return loss(pred, *[batch[k] for k in keys])

    loss_fn.__name__ = getattr(loss, "__name__", type(loss).__name__)
    return loss_fn


def _loader(data, batch_size: int, shuffle: bool, seed: int, drop_last: bool, num_workers: int):
    from torch.utils.data import DataLoader, Dataset

    if isinstance(data, DataLoader):
        return data
    if not isinstance(data, Dataset):
        raise TypeError(f"expected a torch Dataset or DataLoader, got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError("the dataset is empty")
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=gen, drop_last=drop_last,
                      num_workers=num_workers, persistent_workers=num_workers > 0)


def _check_betas(betas) -> tuple:
    ok = isinstance(betas, (tuple, list)) and len(betas) == 2 and all(
        isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) and 0 <= b < 1 for b in betas)
    if not ok:
        raise ValueError(f"betas must be two numbers in [0, 1) (Adam's beta1, beta2), got {betas!r}")
    return (float(betas[0]), float(betas[1]))


def fit(model: nn.Module, loss: Callable, train, *, epochs: int, val=None, batch_size: int = 8,
        val_batch_size: int | None = None, seed: int = 0, targets=("target",), drop_last: bool = False,
        num_workers: int = 0, **trainer_kwargs) -> FitResult:
    """Train ``model`` with ``loss`` on ``train``: the one training entry point of every chapter.

    The composition a chapter shows is ``model`` + a loss object + ``fit``::

        with seeded(seed):
            model = UNet(1, 1, dims=2)
        result = fit(model, SharpLoss(gamma=100), train_set, val=val_set, epochs=30, seed=seed,
                     targets=("target", "mask"))

    Parameters
    ----------
    model : nn.Module
        The network, already initialised (build it inside :func:`seeded` so every
        loss of a comparison starts from the same weights).
    loss : callable
        A loss object such as :class:`rtlearn.losses.SharpLoss`. It is called as
        ``loss(pred, *[batch[k] for k in targets])``; with ``targets=None`` as
        ``loss(pred, batch)`` (losses that read several entries of the batch).
    train, val : Dataset or DataLoader
        Datasets of dict items. A dataset is wrapped in a loader that shuffles
        with a generator seeded by ``seed`` (so the batch order depends on the
        seed alone); a loader is used as it is.
    epochs : int
        The most epochs to train (``early_stopping`` may end sooner).
    batch_size, val_batch_size, drop_last, num_workers
        Loader settings (``val_batch_size`` defaults to ``batch_size``).
    seed : int
        Seeds the shuffling and the trainer (dropout, per-epoch reseeding).
    **trainer_kwargs
        Everything else goes to :class:`Trainer` (``lr``, ``scheduler``,
        ``early_stopping``, ``metrics``, ``frozen``, ``input_keys``, ``device`` ...).

    Returns
    -------
    FitResult
        ``model`` (on the training device; the best validation weights when a
        validation set is given and ``restore_best`` is on), ``history``,
        ``seconds`` (wall time of the training) and ``trainer``.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    for name, value in (("batch_size", batch_size), ("num_workers", num_workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (name == "batch_size"):
            raise ValueError(f"{name} must be a {'positive' if name == 'batch_size' else 'non-negative'} int, "
                             f"got {value!r}")
    if not callable(loss):
        raise TypeError(f"loss must be callable (a loss object), got {type(loss).__name__}")
    train_loader = _loader(train, batch_size, True, seed, drop_last, num_workers)
    val_loader = None if val is None else _loader(val, val_batch_size or batch_size, False, seed, False,
                                                  num_workers)
    trainer = Trainer(model, _batch_loss(loss, targets), seed=seed, **trainer_kwargs)
    t0 = time.perf_counter()
    history = trainer.fit(train_loader, epochs, val_loader)
    return FitResult(trainer.model, history, time.perf_counter() - t0, trainer)
