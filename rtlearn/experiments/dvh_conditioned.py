r"""Experiment driver of the chapter "Dose prediction conditioned on a desired DVH".

The method is that of :cite:p:`ma2021pareto`; the tested pieces live in
:mod:`rtlearn.pareto` (DVH vectors, the Eq. (4) projection, on-the-fly pairs,
the Eq. (6) learning-rate decay) and
:class:`rtlearn.models.conditional_unet.ConditionalUNet`. This module glues
them to the phantom clinic so that the notebook stays short and the quick
(2D, CPU) and full (3D, GPU) profiles run the same code:

* :func:`make_cohort` plans ``n_plans`` Pareto-optimal prostate plans per
  phantom patient (rectum against bladder), normalises them to the PTV mean
  dose and computes their DVH vectors;
* :func:`train_pareto_model` trains the conditional network or its
  anatomy-only baseline on on-the-fly pairs;
* :func:`evaluate_pairs` computes the paper's Table 1 quantities (mean and
  maximum dose, true minus predicted, as % of the prescription) for desired
  DVHs drawn as in the paper; :func:`summary_table` averages them;
* :func:`tradeoff_dvh` blends a patient's Pareto DVH vectors along the front
  (the interactive trade-off control of the chapter).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .._validate import check_int
from ..io import load_npz, save_npz
from ..models.conditional_unet import ConditionalUNet
from ..pareto import (DEFAULT_MAX_RELATIVE_DOSE, PAPER_N_BINS, ParetoPairs, check_dvh_vector, dvh_vector,
                      inverse_time_lr, normalise_to_mean)
from ..phantom import DoseEngine, make_patient, pareto_sweep
from ..tables import markdown_table
from ..train import Trainer

__all__ = ["STRUCTURES", "ParetoCohort", "make_cohort", "train_pareto_model", "predict", "evaluate_pairs",
           "summary_table", "format_table", "tradeoff_dvh"]

#: structures of the anatomy channels and of the DVH vector, in the paper's order (phantom names)
STRUCTURES = ("PTV", "Rectum", "Bladder", "body")


@dataclass
class ParetoCohort:
    """Pareto sets of a group of phantom prostate patients.

    Attributes
    ----------
    anatomy : Tensor ``(M, 4, *spatial)`` float32
        Masks of :data:`STRUCTURES` (the network input).
    doses : Tensor ``(M, N, *spatial)`` float32
        Pareto plans normalised to their PTV mean dose (1 = PTV mean).
    dvhs : Tensor ``(M, N, 4 * n_bins)`` float32
        Their DVH vectors (:func:`rtlearn.pareto.dvh_vector`).
    ptv_mean_gy : ndarray ``(M, N)``
        Each plan's PTV mean dose in Gy before normalisation (to express
        differences in Gy or % of the prescription).
    oar_mean_gy : ndarray ``(M, N, 2)``
        Rectum and bladder mean dose in Gy of each plan (the Pareto front).
    seeds : list of int
        Phantom seeds (``make_patient("prostate", seed)``).
    spacing : tuple, prescription : float (Gy), n_bins, max_dose
    """

    anatomy: torch.Tensor
    doses: torch.Tensor
    dvhs: torch.Tensor
    ptv_mean_gy: np.ndarray
    oar_mean_gy: np.ndarray
    seeds: list
    spacing: tuple
    prescription: float
    n_bins: int = PAPER_N_BINS
    max_dose: float = DEFAULT_MAX_RELATIVE_DOSE
    structures: tuple = field(default=STRUCTURES)

    def __len__(self) -> int:
        return int(self.anatomy.shape[0])

    @property
    def n_plans(self) -> int:
        return int(self.doses.shape[1])

    def masks(self, i: int) -> dict:
        """Boolean masks of patient ``i`` as a dict (NumPy)."""
        return {n: self.anatomy[i, k].numpy() > 0.5 for k, n in enumerate(self.structures)}

    def subset(self, idx) -> "ParetoCohort":
        """The patients ``idx`` (a slice or a list of indices) as a new cohort."""
        idx = list(range(len(self)))[idx] if isinstance(idx, slice) else [int(i) for i in idx]
        return ParetoCohort(self.anatomy[idx], self.doses[idx], self.dvhs[idx], self.ptv_mean_gy[idx],
                            self.oar_mean_gy[idx], [self.seeds[i] for i in idx], self.spacing, self.prescription,
                            self.n_bins, self.max_dose, self.structures)

    def pairs(self, samples_per_epoch: int | None = None, seed: int | None = None, **kw) -> ParetoPairs:
        """On-the-fly pairs (:class:`rtlearn.pareto.ParetoPairs`) over this cohort."""
        return ParetoPairs(self.anatomy, self.doses, self.dvhs, samples_per_epoch, seed=seed,
                           n_bins=self.n_bins, **kw)


def make_cohort(n_patients: int, n_plans: int = 10, *, dims: int = 2, shape=(64, 64), spacing=6.4, seed: int = 0,
                n_bins: int = PAPER_N_BINS, max_dose: float = DEFAULT_MAX_RELATIVE_DOSE, device=None,
                max_iter: int = 150, cache_dir=None, progress: bool = True) -> ParetoCohort:
    r"""Plan ``n_plans`` Pareto-optimal plans for each of ``n_patients`` prostate phantoms.

    Patient seeds start at ``seed``; a seed whose anatomy lacks a PTV, rectum
    or bladder on the grid (possible in 2D) is skipped. Plan :math:`j` of
    :func:`rtlearn.phantom.pareto_sweep` weights the rectum and bladder mean
    doses by :math:`\Lambda x_j` and :math:`\Lambda(1-x_j)`, so the first
    plan spares the bladder most and the last the rectum. Each plan is
    normalised to its PTV mean dose, :math:`\tilde D = D/\bar D_{PTV}`, as in
    :cite:p:`ma2021pareto`, and its DVH vector (4 structures x ``n_bins``)
    is computed on :math:`[0, \text{max\_dose}]`.

    ``device`` runs the dose engine and optimiser there (e.g. ``"cuda"`` for
    the 3D full profile). With ``cache_dir`` (e.g.
    :func:`rtlearn.config.data_root`) the cohort is saved there atomically
    under a name made of all the arguments and loaded on the next call.
    """
    n_patients = check_int(n_patients, "n_patients", 1)
    n_plans = check_int(n_plans, "n_plans", 2)
    seed = check_int(seed, "seed", 0)
    cache = None
    if cache_dir is not None:
        shp = "x".join(str(int(n)) for n in np.atleast_1d(shape)) if shape is not None else "default"
        sp = "x".join(f"{float(v):g}" for v in np.atleast_1d(spacing)) if spacing is not None else "default"
        cache = Path(cache_dir) / "pareto" / (f"prostate_{dims}d_{shp}_{sp}_m{n_patients}_n{n_plans}_s{seed}_"
                                              f"b{n_bins}_d{float(max_dose):g}_it{max_iter}.npz")
        if cache.is_file():
            z = load_npz(cache)
            return ParetoCohort(torch.from_numpy(z["anatomy"]), torch.from_numpy(z["doses"]),
                                torch.from_numpy(z["dvhs"]), z["ptv_mean_gy"], z["oar_mean_gy"],
                                [int(v) for v in z["seeds"]], tuple(float(v) for v in z["spacing"]),
                                float(z["prescription"]), n_bins, float(max_dose))
    anat, doses, dvhs, ptv_gy, oar_gy, seeds = [], [], [], [], [], []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_patients, desc="Pareto sweeps")
    s = seed
    while len(anat) < n_patients:
        if s - seed > 10 * n_patients + 20:
            raise RuntimeError(f"could not find {n_patients} phantoms with PTV, rectum and bladder on this grid")
        p = make_patient("prostate", seed=s, dims=dims, shape=shape, spacing=spacing)
        s += 1
        if not all(n in p.masks for n in STRUCTURES[:3]):
            continue
        masks = {n: (p.body if n == "body" else p.masks[n]) for n in STRUCTURES}
        engine = DoseEngine.for_patient(p, device=device)
        plans = pareto_sweep(p, n_plans=n_plans, engine=engine, max_iter=max_iter)
        d = np.stack([pl.dose for pl in plans]).astype(np.float64)
        ptv = masks["PTV"]
        ptv_gy.append(d[:, ptv].mean(1))
        oar_gy.append(np.stack([d[:, masks["Rectum"]].mean(1), d[:, masks["Bladder"]].mean(1)], 1))
        d = normalise_to_mean(d, ptv)
        anat.append(np.stack([masks[n] for n in STRUCTURES]).astype(np.float32))
        doses.append(d.astype(np.float32))
        dvhs.append(dvh_vector(d, masks, n_bins=n_bins, max_dose=max_dose, structures=STRUCTURES))
        seeds.append(s - 1)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    out = ParetoCohort(torch.from_numpy(np.stack(anat)), torch.from_numpy(np.stack(doses)),
                       torch.from_numpy(np.stack(dvhs)).float(), np.stack(ptv_gy), np.stack(oar_gy), seeds,
                       tuple(p.spacing), float(p.prescriptions["PTV"]), n_bins, float(max_dose))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_npz(cache, anatomy=out.anatomy.numpy(), doses=out.doses.numpy(), dvhs=out.dvhs.numpy(),
                 ptv_mean_gy=out.ptv_mean_gy, oar_mean_gy=out.oar_mean_gy, seeds=np.asarray(out.seeds),
                 spacing=np.asarray(out.spacing), prescription=np.asarray(out.prescription))
    return out


def train_pareto_model(train: ParetoCohort, *, conditional: bool = True, val: ParetoCohort | None = None,
                       epochs: int = 20, width: int = 8, depth: int = 4, max_channels: int = 128,
                       dropout: float = 0.2, batch_size: int = 8, lr: float = 1e-3, decay: float = 0.002,
                       loss: str = "mse", samples_per_epoch: int | None = None, seed: int = 0, device=None,
                       progress: bool = True):
    r"""Train :class:`~rtlearn.models.conditional_unet.ConditionalUNet` on on-the-fly pairs.

    Every epoch draws ``samples_per_epoch`` (default :math:`K = 10 M`) desired
    DVHs by picking a random training patient and plan, projects each onto
    the current patient's Pareto set (Eq. 4) and fits the selected plan's
    dose: Eq. (5) of :cite:p:`ma2021pareto`,
    :math:`\min_w \sum_{i,k} \lVert \phi_w(X_i, \mathcal{D}_i^k) - \mathcal{Y}_i^k\rVert^2`
    (``loss="mse"``; ``"mae"`` uses the absolute error), with Adam and the
    learning rate :math:`\mathrm{lr}_0/(1 + \mathrm{decay}\cdot t)` of Eq. (6)
    and dropout growing with depth, Eq. (7). ``conditional=False`` trains the
    same network without the DVH input on the same pairs: the anatomy-only
    ("population average") baseline.

    Returns
    -------
    (model, history)
        The model (best validation epoch restored when ``val`` is given) and
        the :class:`rtlearn.train.History`.
    """
    if not isinstance(train, ParetoCohort):
        raise TypeError(f"train must be a ParetoCohort (see make_cohort), got {type(train).__name__}")
    if loss not in ("mse", "mae"):
        raise ValueError(f"loss must be 'mse' or 'mae', got {loss!r}")
    epochs = check_int(epochs, "epochs", 1)
    batch_size = check_int(batch_size, "batch_size", 1)
    dims = train.anatomy.dim() - 2
    torch.manual_seed(seed)
    net = ConditionalUNet(len(train.structures), 1, train.dvhs.shape[-1], dims=dims, depth=depth, width=width,
                          max_channels=max_channels, dropout=dropout, conditional=conditional)
    if loss == "mse":
        def loss_fn(pred, batch):
            return torch.mean((pred - batch["target"]) ** 2)
    else:
        def loss_fn(pred, batch):
            return torch.mean(torch.abs(pred - batch["target"]))
    gen = torch.Generator().manual_seed(seed)
    train_loader = torch.utils.data.DataLoader(train.pairs(samples_per_epoch), batch_size=batch_size,
                                               shuffle=True, generator=gen)
    val_loader = None
    if val is not None:
        val_loader = torch.utils.data.DataLoader(val.pairs(seed=seed + 1), batch_size=max(batch_size, 16))
    trainer = Trainer(net, loss_fn, lr=lr, scheduler=inverse_time_lr(decay), scheduler_interval="step",
                      input_keys=("input", "dvh"), device=device, progress=progress, seed=seed)
    history = trainer.fit(train_loader, epochs=epochs, val_loader=val_loader)
    net.eval()
    return net.cpu(), history


@torch.no_grad()
def predict(model, anatomy, dvh, batch_size: int = 16, n_bins: int = PAPER_N_BINS) -> torch.Tensor:
    r"""Predicted normalised doses :math:`\phi_w(X, \mathcal{D})` ``(B, *spatial)`` on the CPU.

    ``anatomy`` is ``(C, *sp)`` (one patient, broadcast over the DVH vectors)
    or ``(B, C, *sp)``; ``dvh`` is ``(L,)`` or ``(B, L)`` and is validated as a
    DVH vector (:func:`rtlearn.pareto.check_dvh_vector`).
    """
    dvh = torch.as_tensor(np.asarray(dvh) if not torch.is_tensor(dvh) else dvh, dtype=torch.float32)
    check_dvh_vector(dvh.numpy(), None, n_bins, name="desired DVH vector")
    anatomy = torch.as_tensor(anatomy, dtype=torch.float32)
    single = dvh.dim() == 1
    dvh = dvh[None] if single else dvh
    if anatomy.dim() == model.dims + 1:
        anatomy = anatomy[None].expand(dvh.shape[0], *anatomy.shape)
    if anatomy.shape[0] != dvh.shape[0]:
        raise ValueError(f"anatomy batch {anatomy.shape[0]} differs from the number of DVH vectors {dvh.shape[0]}")
    model.eval()
    dev = next(model.parameters()).device
    out = [model(anatomy[k:k + batch_size].to(dev), dvh[k:k + batch_size].to(dev))[:, 0].cpu()
           for k in range(0, dvh.shape[0], batch_size)]
    out = torch.cat(out)
    return out[0] if single else out


def _masked_mean_max(dose, masks):
    """Mean and max of ``dose`` (B, V) over boolean ``masks`` (B, S, V): two (B, S) tensors."""
    m = masks.float()
    mean = torch.einsum("bv,bsv->bs", dose, m) / m.sum(-1)
    mx = torch.where(masks, dose[:, None, :], torch.full_like(m, -torch.inf)).amax(-1)
    return mean, mx


@torch.no_grad()
def evaluate_pairs(model, cohort: ParetoCohort, samples_per_patient: int = 10, seed: int = 123,
                   batch_size: int = 16, device=None) -> dict:
    r"""Table 1 quantities of :cite:p:`ma2021pareto` on desired DVHs drawn from ``cohort``.

    As in the paper's test set, :math:`K' = ` ``samples_per_patient`` :math:`\times M`
    desired DVHs are drawn by picking a random patient and plan of the cohort;
    each is projected (Eq. 4) onto the current patient's Pareto set, whose
    selected dose :math:`Y` is the truth. For every structure :math:`s`,

    .. math::

        \Delta^{mean}_s = 100\,\frac{\bar Y_s - \bar{\hat Y}_s}{R_x}, \qquad
        \Delta^{max}_s = 100\,\frac{\max_s Y - \max_s \hat Y}{R_x}

    in % of the prescription :math:`R_x` (true minus predicted, the paper's
    sign), with the normalised doses converted to Gy by the true plan's PTV
    mean dose.

    Returns
    -------
    dict
        ``"mean"``, ``"max"``: arrays ``(K', 4)`` (columns :data:`STRUCTURES`);
        ``"patient"``, ``"plan"``, ``"source_patient"``, ``"source_plan"``:
        ``(K',)`` int arrays; ``"mae"``: mean absolute error over the body per
        sample (% of :math:`R_x`).
    """
    samples_per_patient = check_int(samples_per_patient, "samples_per_patient", 1)
    ds = cohort.pairs(samples_per_patient * len(cohort), seed=seed)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(dev).eval()
    out = {k: [] for k in ("mean", "max", "mae", "patient", "plan", "source_patient", "source_plan")}
    for batch in loader:
        pred = model(batch["input"].to(dev), batch["dvh"].to(dev))[:, 0].float().cpu()
        true = batch["target"][:, 0]
        B = true.shape[0]
        scale = torch.as_tensor(cohort.ptv_mean_gy[batch["patient"].numpy(), batch["plan"].numpy()],
                                dtype=torch.float32) * 100.0 / cohort.prescription
        masks = batch["input"].reshape(B, len(cohort.structures), -1) > 0.5
        tm, tx = _masked_mean_max(true.reshape(B, -1), masks)
        pm, px = _masked_mean_max(pred.reshape(B, -1), masks)
        out["mean"].append((tm - pm) * scale[:, None])
        out["max"].append((tx - px) * scale[:, None])
        body = masks[:, cohort.structures.index("body")].float()
        mae = ((true - pred).abs().reshape(B, -1) * body).sum(-1) / body.sum(-1)
        out["mae"].append(mae * scale)
        for k in ("patient", "plan", "source_patient", "source_plan"):
            out[k].append(batch[k])
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def summary_table(results: dict, structures=STRUCTURES) -> dict:
    """``{structure: (mean_avg, mean_sd, max_avg, max_sd)}`` from :func:`evaluate_pairs` (sample sd, ddof=1)."""
    table = {}
    for k, name in enumerate(structures):
        mean, mx = results["mean"][:, k], results["max"][:, k]
        table[name] = (float(mean.mean()), float(mean.std(ddof=1)), float(mx.mean()), float(mx.std(ddof=1)))
    return table


def format_table(tables: dict, digits: int = 2) -> str:
    """Several :func:`summary_table` results side by side, as a Markdown table (:func:`rtlearn.tables.markdown_table`).

    ``tables`` maps a column label (e.g. ``"conditional"``) to a summary table;
    each gets a "mean diff (%)" and a "max diff (%)" column of ``mean ± sd`` cells.
    """
    labels = list(tables)
    names = list(next(iter(tables.values())))
    header = ["structure"] + [f"{lab}: {kind} diff (%)" for lab in labels for kind in ("mean", "max")]
    rows = [[n] + [pair for lab in labels for pair in (tuple(tables[lab][n][:2]), tuple(tables[lab][n][2:4]))]
            for n in names]
    return markdown_table(header, rows, f"{{:.{digits}f}}", rule=" --- ")


def tradeoff_dvh(pareto_dvhs, x: float):
    r"""A desired DVH vector part-way along a patient's Pareto front.

    With the :math:`N` Pareto DVH vectors ordered along the front and
    :math:`t = x (N - 1)`, :math:`j = \lfloor t \rfloor`,

    .. math:: \mathcal{D}(x) = (1 - (t - j))\, D^{j} + (t - j)\, D^{j+1},

    a convex combination of two cumulative DVHs, hence itself a valid DVH
    vector (values in [0, 1], non-increasing per structure). ``x = 0`` is the
    first plan (for :func:`make_cohort`: most bladder sparing), ``x = 1`` the
    last (most rectum sparing).
    """
    d = torch.as_tensor(pareto_dvhs).double()
    if d.dim() != 2 or d.shape[0] < 1:
        raise ValueError(f"pareto_dvhs must be (N, L) with N >= 1, got shape {tuple(d.shape)}")
    if not isinstance(x, (int, float, np.floating, np.integer)) or isinstance(x, bool) or not 0 <= x <= 1:
        raise ValueError(f"x must be a number in [0, 1], got {x!r}")
    t = float(x) * (d.shape[0] - 1)
    j = min(int(np.floor(t)), d.shape[0] - 1)
    w = t - j
    if j + 1 < d.shape[0]:
        out = (1 - w) * d[j] + w * d[j + 1]
    else:
        out = d[j].clone()
    return out.float()
