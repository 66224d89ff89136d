r"""DVH-conditioned dose prediction on a Pareto set of plans.

A patient's anatomy :math:`X` does not fix one dose: every trade-off between
target coverage and organ sparing gives a different Pareto-optimal plan. The
DVH-conditioned model of :cite:p:`ma2021pareto` adds the *desired* DVHs
:math:`\mathcal{D}` as a second input and learns :math:`\phi_w(X, \mathcal{D})`.
This module holds the data side of that method:

* :func:`dvh_vector` turns a dose and its structures into the network's DVH
  input: each structure's cumulative DVH sampled at ``n_bins`` doses,
  concatenated in a fixed structure order (32 bins for PTV, rectum, bladder
  and body give the paper's 128-vector);
* :func:`check_dvh_vector` rejects vectors that cannot be DVHs;
* :func:`project_to_pareto` is the paper's Eq. (4): the patient's Pareto plan
  whose DVH vector is nearest to a desired one in the :math:`\ell_1` norm;
* :class:`ParetoPairs` draws training pairs on the fly as the paper does;
* :func:`inverse_time_lr` is the learning-rate decay of the paper's Eq. (6).

The network itself is :class:`rtlearn.models.conditional_unet.ConditionalUNet`.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from ._validate import as_numpy, check_int, check_positive, is_torch

__all__ = [
    "PAPER_STRUCTURES",
    "PAPER_N_BINS",
    "DEFAULT_MAX_RELATIVE_DOSE",
    "dvh_dose_points",
    "normalise_to_mean",
    "dvh_vector",
    "check_dvh_vector",
    "project_to_pareto",
    "ParetoPairs",
    "inverse_time_lr",
]

#: Structure order of the paper's DVH vector :cite:p:`ma2021pareto`.
PAPER_STRUCTURES = ("PTV", "rectum", "bladder", "body")
#: DVH samples per structure in the paper (4 structures x 32 = 128 inputs).
PAPER_N_BINS = 32
#: Default top of the dose axis for doses normalised to the PTV mean dose
#: (1.0 = PTV mean; IMRT hot spots rarely exceed 120 % of it).
DEFAULT_MAX_RELATIVE_DOSE = 1.2


def dvh_dose_points(n_bins: int = PAPER_N_BINS, max_dose: float = DEFAULT_MAX_RELATIVE_DOSE) -> np.ndarray:
    r"""The doses at which :func:`dvh_vector` samples every DVH.

    .. math:: d_k = \frac{k}{n_{bins} - 1}\, d_{max}, \qquad k = 0, \dots, n_{bins}-1,

    equally spaced from 0 to ``max_dose`` inclusive, the same axis as
    ``rtlearn.dvh.cumulative_dvh(dose, mask, bins=n_bins, max_dose=max_dose)``.
    The first point (:math:`d_0 = 0`) always gives 1; it is kept so that
    every curve starts at full volume, as a plotted DVH does.
    """
    n_bins = check_int(n_bins, "n_bins", 2)
    return np.linspace(0.0, check_positive(max_dose, "max_dose"), n_bins)


def _as_tensor(x, name):
    if is_torch(x):
        return x.detach()
    arr = as_numpy(x, name)
    if not (arr.dtype == bool or np.issubdtype(arr.dtype, np.number)):
        raise TypeError(f"{name} must be a numeric array or tensor, got dtype {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(arr))


def _mask_tensor(masks, structures, dims):
    """Stack masks into a bool tensor (S, *spatial) or (B, S, *spatial); return it with the names."""
    if isinstance(masks, Mapping):
        names = list(masks) if structures is None else list(structures)
        missing = [n for n in names if n not in masks]
        if missing:
            raise ValueError(f"masks has no structure(s) {missing}; it has {list(masks)}")
        if not names:
            raise ValueError("masks is empty; give at least one structure")
        parts = [_as_tensor(masks[n], f"masks[{n!r}]") for n in names]
        shapes = {tuple(p.shape) for p in parts}
        if len(shapes) != 1:
            raise ValueError(f"all masks must have the same shape, got {sorted(shapes)}")
        nd = parts[0].dim()
        if dims is None:
            dims = nd
        if nd == dims:
            stacked = torch.stack(parts, 0)          # (S, *sp)
        elif nd == dims + 1:
            stacked = torch.stack(parts, 1)          # (B, S, *sp)
        else:
            raise ValueError(f"each mask must have {dims} (spatial) or {dims + 1} (batch, spatial) axes, "
                             f"got shape {tuple(parts[0].shape)}")
    else:
        stacked = _as_tensor(masks, "masks")
        if dims is None:
            dims = stacked.dim() - 1
        if stacked.dim() not in (dims + 1, dims + 2):
            raise ValueError(f"masks as an array must be (S, *spatial) or (B, S, *spatial) with {dims} spatial "
                             f"axes, got shape {tuple(stacked.shape)}")
        n = stacked.shape[0] if stacked.dim() == dims + 1 else stacked.shape[1]
        names = list(range(n)) if structures is None else list(structures)
        if len(names) != n:
            raise ValueError(f"structures has {len(names)} names but masks hold {n} structures")
    if stacked.dtype != torch.bool:
        vals = torch.unique(stacked)
        if not bool(torch.all((vals == 0) | (vals == 1))):
            raise ValueError(f"masks must be boolean (0/1); found values {vals[:5].tolist()}")
        stacked = stacked != 0
    return stacked, names, dims


def normalise_to_mean(dose, mask, target: float = 1.0, *, dims: int | None = None):
    r"""Scale each plan so that its mean dose in ``mask`` equals ``target``.

    .. math:: \tilde D = t\, D \Big/ \frac{1}{|S|}\sum_{i\in S} D_i

    The paper normalises every dose distribution to the PTV mean dose
    :cite:p:`ma2021pareto`. ``dose`` is ``(*spatial)`` or ``(B, *spatial)``;
    ``mask`` is ``(*spatial)`` (shared by all plans) or ``(B, *spatial)`` (one
    per plan: then pass ``dims``, the number of spatial axes, which otherwise
    defaults to ``mask.ndim``). Returns the type of ``dose`` (float64 for NumPy).
    The mean is taken in float64 whatever the dose's dtype.

    Raises ``TypeError`` for a boolean dose and ``ValueError`` for a dose that is
    not finite or is negative, or a mask with values other than 0 and 1.
    """
    target = check_positive(target, "target")
    d = _as_tensor(dose, "dose")
    if d.dtype == torch.bool:
        raise TypeError("dose must be a numeric array of doses, got a boolean one")
    d = d.double()
    m = _as_tensor(mask, "mask")
    if m.dtype != torch.bool:
        bad = ~((m == 0) | (m == 1))
        if bool(bad.any()):
            vals = torch.unique(m[bad])[:5].tolist()
            raise ValueError(f"mask must be boolean (0/1); found values {vals}")
    if dims is None:
        dims = m.dim()
    if d.dim() not in (dims, dims + 1) or m.dim() not in (dims, dims + 1):
        raise ValueError(f"dose {tuple(d.shape)} and mask {tuple(m.shape)} must have {dims} spatial axes "
                         "(optionally after a batch axis)")
    if not bool(torch.all(torch.isfinite(d))) or bool(torch.any(d < 0)):
        raise ValueError("dose must be finite and non-negative")
    single = d.dim() == dims
    if single:
        d = d[None]
    if m.dim() == dims:
        m = m[None]
    if tuple(m.shape[1:]) != tuple(d.shape[1:]) or m.shape[0] not in (1, d.shape[0]):
        raise ValueError(f"mask of shape {tuple(m.shape)} does not fit the dose of shape {tuple(d.shape)}")
    m = (m != 0).double().expand_as(d).reshape(d.shape[0], -1)
    flat = d.reshape(d.shape[0], -1)
    count = m.sum(1)
    if bool(torch.any(count == 0)):
        raise ValueError("mask is empty for at least one plan; cannot normalise to its mean dose")
    mean = (flat * m).sum(1) / count
    if bool(torch.any(mean <= 0)):
        raise ValueError("mean dose in the mask is 0 for at least one plan; cannot normalise to it")
    out = (flat * (target / mean)[:, None]).reshape(d.shape)
    out = out[0] if single else out
    return out.to(dose.dtype) if is_torch(dose) and dose.is_floating_point() else (
        out if is_torch(dose) else out.numpy())


def dvh_vector(dose, masks, n_bins: int = PAPER_N_BINS, max_dose: float | None = None, *,
               structures: Sequence | None = None, normalise_to=None, dims: int | None = None):
    r"""DVH vector of one plan or a batch of plans: the network's condition input.

    For structures :math:`s = 1, \dots, S` (in a fixed order) and the dose
    points :math:`d_k` of :func:`dvh_dose_points`,

    .. math::

        v_{(s-1) n_{bins} + k} = \mathrm{DVH}_s(d_k)
            = \frac{1}{|s|}\sum_{i \in s} \mathbb{1}[\tilde D_i \ge d_k],

    the exact cumulative DVH of :func:`rtlearn.dvh.cumulative_dvh` at those
    points, concatenated over structures: a vector of length
    :math:`S\,n_{bins}` with values in [0, 1], non-increasing within each
    structure's block. With ``normalise_to`` the dose is first divided by its
    mean over that structure, :math:`\tilde D = D / \bar D_{PTV}`, as in
    :cite:p:`ma2021pareto` (so ``max_dose`` is relative: 1.2 = 120 % of the
    PTV mean dose); without it :math:`\tilde D = D` and ``max_dose`` is in the
    dose's unit (Gy).

    The computation is vectorised over plans, structures and voxels: each
    voxel's dose is bucketed once against the dose points, one integer
    histogram over (plan, structure, bucket) is counted with ``bincount``
    over the structure voxels only, and summed from the top. Shared masks
    are never copied per plan (memory about ``B x`` the structure voxels).

    Parameters
    ----------
    dose : array_like or Tensor
        ``(*spatial)`` for one plan or ``(B, *spatial)`` for a batch of plans.
    masks : dict of name -> mask, or array_like ``(S, *spatial)`` / ``(B, S, *spatial)``
        Structures. A dict's masks are ``(*spatial)`` (shared by every plan,
        e.g. one patient's Pareto set) or ``(B, *spatial)`` (one per plan);
        an array stacks them on axis 0 (shared) or axis 1 (per plan).
    n_bins : int
        Samples per structure (the paper: 32).
    max_dose : float, optional
        Top of the dose axis. Default :data:`DEFAULT_MAX_RELATIVE_DOSE` (1.2)
        when ``normalise_to`` is given; required otherwise.
    structures : sequence, optional
        Order of the structures (dict keys; default the dict's order). For
        array masks, names for the S entries (only checked for length).
    normalise_to : str or int, optional
        Structure (dict key or index in the order) whose mean dose becomes 1.
    dims : int, optional
        Number of spatial axes. Default: inferred assuming the masks are
        shared (a dict's mask ndim, or the array's ndim - 1); pass it for
        per-plan masks.

    Returns
    -------
    ndarray or Tensor
        ``(S * n_bins,)`` for one plan, ``(B, S * n_bins)`` for a batch;
        float64 for NumPy input, the dose's floating dtype for a tensor.

    Examples
    --------
    >>> dose = np.array([[0., 1.], [2., 3.]])
    >>> dvh_vector(dose, {"a": dose > -1, "b": dose > 1.5}, n_bins=3, max_dose=3.0)
    array([1.  , 0.5 , 0.25, 1.  , 1.  , 0.5 ])
    """
    m, names, dims = _mask_tensor(masks, structures, dims)
    d = _as_tensor(dose, "dose")
    if d.dtype == torch.bool or not (d.is_floating_point() or d.dtype in (torch.int8, torch.int16, torch.int32,
                                                                          torch.int64, torch.uint8)):
        raise TypeError(f"dose must be a numeric array of doses, got dtype {d.dtype}")
    d = d.double()
    if d.dim() not in (dims, dims + 1):
        raise ValueError(f"dose must be (*spatial) or (B, *spatial) with {dims} spatial axes, got {tuple(d.shape)}")
    single = d.dim() == dims
    if single:
        d = d.unsqueeze(0)
    if not bool(torch.all(torch.isfinite(d))):
        raise ValueError("dose contains NaN or infinite values; doses must be finite")
    if bool(torch.any(d < 0)):
        raise ValueError(f"dose has negative values (min {float(d.min()):.4g}); doses must be >= 0")
    spatial = tuple(d.shape[1:])
    B = d.shape[0]
    m = m.to(d.device)
    shared = m.dim() == dims + 1
    if shared:                                       # (S, *sp): one anatomy, B plans
        if tuple(m.shape[1:]) != spatial:
            raise ValueError(f"masks have spatial shape {tuple(m.shape[1:])}, expected {spatial} (the dose grid)")
        S = m.shape[0]
        s_idx, v_idx = m.reshape(S, -1).nonzero(as_tuple=True)
        vol = torch.bincount(s_idx, minlength=S).double().expand(B, S)
    else:                                            # (B, S, *sp): masks per plan
        if tuple(m.shape[2:]) != spatial or (m.shape[0] != B):
            raise ValueError(f"per-plan masks have shape {tuple(m.shape)}, expected ({B}, S, *{spatial})")
        S = m.shape[1]
        b_idx, s_idx, v_idx = m.reshape(B, S, -1).nonzero(as_tuple=True)
        vol = torch.bincount(b_idx * S + s_idx, minlength=B * S).double().reshape(B, S)
    if bool(torch.any(vol == 0)):
        b, s = (vol == 0).nonzero()[0].tolist()
        raise ValueError(f"structure {names[s]!r} is empty in plan {b}; a DVH needs at least one voxel")
    flat = d.reshape(B, -1)
    if normalise_to is not None:
        key = normalise_to
        if key not in names:
            raise ValueError(f"normalise_to={key!r} is not one of the structures {names}")
        k = names.index(key)
        if shared:
            mean = flat[:, v_idx[s_idx == k]].sum(-1) / vol[:, k]
        else:
            sel = s_idx == k
            mean = torch.zeros(B, dtype=flat.dtype, device=flat.device).index_add_(
                0, b_idx[sel], flat[b_idx[sel], v_idx[sel]]) / vol[:, k]
        if bool(torch.any(mean <= 0)):
            raise ValueError(f"mean dose in {key!r} is 0 for some plan; cannot normalise to it")
        flat = flat / mean[:, None]
        if max_dose is None:
            max_dose = DEFAULT_MAX_RELATIVE_DOSE
    elif max_dose is None:
        raise ValueError("max_dose is required for absolute doses (pass e.g. 1.2 * prescription in Gy), "
                         "or pass normalise_to='PTV' to use doses relative to the PTV mean")
    points = torch.from_numpy(dvh_dose_points(n_bins, max_dose)).to(flat.device)
    # bucket j = number of dose points <= D_i (0..n_bins): the voxel reaches the points d_0..d_{j-1}
    bucket = torch.bucketize(flat, points, right=True)
    # one integer histogram over (plan, structure, bucket) for all structure voxels at once
    K1 = n_bins + 1
    if shared:
        idx = (torch.arange(B, device=flat.device)[:, None] * S + s_idx[None]) * K1 + bucket[:, v_idx]
    else:
        idx = (b_idx * S + s_idx) * K1 + bucket[b_idx, v_idx]
    hist = torch.bincount(idx.reshape(-1), minlength=B * S * K1).reshape(B, S, K1).double()
    above = hist.flip(-1).cumsum(-1).flip(-1)[..., 1:]              # voxels with D >= d_k
    vec = (above / vol[..., None]).reshape(B, S * n_bins)
    if single:
        vec = vec[0]
    if is_torch(dose):
        return vec.to(dose.dtype if dose.is_floating_point() else torch.get_default_dtype()).to(dose.device)
    return vec.cpu().numpy()


def check_dvh_vector(vector, n_structures: int | None = None, n_bins: int = PAPER_N_BINS, *,
                     name: str = "DVH vector", atol: float = 1e-6):
    """Validate one DVH vector ``(L,)`` or a batch ``(Q, L)``; return it unchanged.

    A valid vector has length ``n_structures * n_bins`` (any multiple of
    ``n_bins`` when ``n_structures`` is None), finite values in [0, 1], and
    is non-increasing within each structure's block of ``n_bins`` values
    (a cumulative DVH can only fall as the dose rises). Violations raise
    ``ValueError`` naming the first offending entry.
    """
    arr = np.asarray(as_numpy(vector, name), dtype=np.float64)
    if arr.ndim not in (1, 2):
        raise ValueError(f"{name} must be (L,) or (Q, L), got shape {arr.shape}")
    length = arr.shape[-1]
    expected = None if n_structures is None else int(n_structures) * int(n_bins)
    if expected is not None and length != expected:
        raise ValueError(f"{name} has length {length}, expected {expected} = {n_structures} structures x "
                         f"{n_bins} bins")
    if length == 0 or length % n_bins:
        raise ValueError(f"{name} has length {length}, expected a positive multiple of n_bins = {n_bins}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if arr.min() < -atol or arr.max() > 1 + atol:
        raise ValueError(f"{name} has values outside [0, 1] (min {arr.min():.4g}, max {arr.max():.4g}); "
                         "DVH entries are volume fractions")
    blocks = arr.reshape(*arr.shape[:-1], length // n_bins, n_bins)
    rises = np.diff(blocks, axis=-1) > atol
    if rises.any():
        idx = np.argwhere(rises)[0]
        s, k = int(idx[-2]), int(idx[-1])
        raise ValueError(f"{name} is not non-increasing within structure {s}: bin {k + 1} exceeds bin {k} "
                         "(a cumulative DVH cannot rise with dose)")
    return vector


def project_to_pareto(desired, pareto_dvhs, *, n_bins: int | None = None, validate: bool = True):
    r"""Nearest Pareto plan to a desired DVH vector in the :math:`\ell_1` norm (Eq. 4 of :cite:p:`ma2021pareto`).

    With the patient's Pareto DVH vectors as the columns of
    :math:`\mathbf{D}_i = [D_i^1, \dots, D_i^N]` and a one-hot selection
    :math:`S_i`,

    .. math::

        S_i = \arg\min_{S_i} \lVert \mathbf{D}_i S_i - \mathcal{D}_i \rVert_1
        \;\Longleftrightarrow\;
        j^\star = \arg\min_j \lVert D_i^j - \mathcal{D}_i \rVert_1 ,

    and the training target is the plan's dose :math:`Y_i^{j^\star}`. All
    distances are computed at once by broadcasting; ties go to the lowest
    index.

    Parameters
    ----------
    desired : array_like or Tensor, ``(L,)`` or ``(Q, L)``
        Desired DVH vector(s).
    pareto_dvhs : array_like or Tensor, ``(N, L)``
        The patient's N Pareto-optimal DVH vectors.
    n_bins : int, optional
        If given (and ``validate``), both inputs are checked with
        :func:`check_dvh_vector`.
    validate : bool
        Check shapes (always) and DVH validity (with ``n_bins``).

    Returns
    -------
    index : int or integer array/tensor ``(Q,)``
        The selected plan :math:`j^\star` for each desired vector.
    distance : float or array/tensor ``(Q,)``
        :math:`\lVert D_i^{j^\star} - \mathcal{D}_i \rVert_1`.

    Examples
    --------
    >>> project_to_pareto([1., .5, 0.], [[1., 1., 0.], [1., .25, 0.], [0., 0., 0.]])
    (1, 0.25)
    """
    torch_in = is_torch(desired) or is_torch(pareto_dvhs)
    q = _as_tensor(desired, "desired").double()
    p = _as_tensor(pareto_dvhs, "pareto_dvhs").double()
    if p.dim() != 2 or p.shape[0] == 0:
        raise ValueError(f"pareto_dvhs must be (N, L) with N >= 1 plans, got shape {tuple(p.shape)}")
    if q.dim() not in (1, 2):
        raise ValueError(f"desired must be (L,) or (Q, L), got shape {tuple(q.shape)}")
    if q.shape[-1] != p.shape[1]:
        raise ValueError(f"desired has length {q.shape[-1]} but the Pareto DVH vectors have length {p.shape[1]}")
    if validate and n_bins is not None:
        check_dvh_vector(q.cpu().numpy(), None, n_bins, name="desired DVH vector")
        check_dvh_vector(p.cpu().numpy(), None, n_bins, name="Pareto DVH vectors")
    single = q.dim() == 1
    qq = q[None] if single else q
    dist = (qq[:, None, :] - p[None, :, :]).abs().sum(-1)           # (Q, N)
    best, idx = dist.min(dim=1)                                      # first minimum on ties
    if single:
        return int(idx[0]), float(best[0])
    if torch_in:
        dev = desired.device if is_torch(desired) else pareto_dvhs.device
        return idx.to(dev), best.to(dev)
    return idx.cpu().numpy(), best.cpu().numpy()


class ParetoPairs(torch.utils.data.Dataset):
    r"""On-the-fly (anatomy, desired DVH, Pareto dose) training pairs of :cite:p:`ma2021pareto`.

    Item ``t`` belongs to patient :math:`i = t \bmod M` (every patient equally
    often, ``samples_per_epoch`` = K items per epoch, default :math:`10M`).
    A desired DVH :math:`\mathcal{D}_i^k` is drawn by picking a random
    patient :math:`p` and plan :math:`q` (the paper's way of mimicking a
    physician's wish) and taking :math:`D_p^q`; Eq. (4)
    (:func:`project_to_pareto`) selects the nearest plan :math:`j^\star` of
    patient :math:`i`, whose dose :math:`Y_i^{j^\star}` is the target, the
    loss being Eq. (5), :math:`\sum_{i,k}\lVert\phi_w(X_i, \mathcal{D}_i^k) - Y_i^{j^\star}\rVert^2`.

    What the network is fed: the paper trains on
    :math:`\{X_i, \mathcal{D}_i^k, \mathcal{Y}_i^k\}`, i.e. the **desired**
    (generally not Pareto-optimal, often another patient's) DVH vector, not
    the projected one; the default ``feed="desired"`` does the same.
    ``feed="projected"`` gives the selected plan's own DVH vector
    :math:`D_i^{j^\star}` instead (an easier, self-consistent condition).

    Parameters
    ----------
    anatomy : Tensor ``(M, C, *spatial)`` or sequence of ``(C, *spatial)``
        Per-patient network input (structure masks, CT, ...).
    doses : Tensor ``(M, N, *spatial)`` or sequence of ``(N_i, *spatial)``
        Per-patient Pareto doses (already normalised as the DVH vectors are).
    dvhs : Tensor ``(M, N, L)`` or sequence of ``(N_i, L)``
        Their DVH vectors (:func:`dvh_vector`), in the same plan order.
    samples_per_epoch : int, optional
        K items per epoch; default ``10 * M``.
    n_plans : int, optional
        Use the first ``n_plans`` plans of each patient; a patient with fewer
        raises ``ValueError``.
    seed : int, optional
        ``None`` (default): draw from torch's global generator, so the
        :class:`rtlearn.train.Trainer`'s per-epoch reseeding gives new,
        reproducible pairs every epoch. An int: a private generator seeded
        from ``(seed, epoch, t)`` (call :meth:`set_epoch` to move on), for a
        fixed evaluation set.
    feed : {"desired", "projected"}
        Which DVH vector is returned under ``"dvh"`` (see above).
    exclude_self : bool
        Draw the desired DVH only from *other* patients.
    n_bins : int
        Used to validate the DVH vectors.

    Items are dicts: ``input`` ``(C, *sp)``, ``dvh`` ``(L,)`` float32,
    ``target`` ``(1, *sp)``, ``patient``, ``plan`` (:math:`j^\star`), ``source_patient``,
    ``source_plan`` (long scalars) and ``distance`` (the :math:`\ell_1` distance).
    """

    def __init__(self, anatomy, doses, dvhs, samples_per_epoch: int | None = None, *, n_plans: int | None = None,
                 seed: int | None = None, feed: str = "desired", exclude_self: bool = False,
                 n_bins: int = PAPER_N_BINS):
        self.anatomy = [_as_tensor(a, "anatomy").float() for a in anatomy]
        self.doses = [_as_tensor(d, "doses").float() for d in doses]
        self.dvhs = [_as_tensor(v, "dvhs").float() for v in dvhs]
        M = len(self.anatomy)
        if M == 0:
            raise ValueError("need at least one patient")
        if len(self.doses) != M or len(self.dvhs) != M:
            raise ValueError(f"anatomy, doses and dvhs must list the same patients: got {M}, {len(self.doses)} "
                             f"and {len(self.dvhs)}")
        if feed not in ("desired", "projected"):
            raise ValueError(f"feed must be 'desired' or 'projected', got {feed!r}")
        if exclude_self and M < 2:
            raise ValueError("exclude_self=True needs at least two patients")
        lengths = {v.shape[-1] for v in self.dvhs}
        if len(lengths) != 1:
            raise ValueError(f"all DVH vectors must have the same length, got {sorted(lengths)}")
        for i, (a, d, v) in enumerate(zip(self.anatomy, self.doses, self.dvhs)):
            if v.dim() != 2:
                raise ValueError(f"dvhs[{i}] must be (N, L), got shape {tuple(v.shape)}")
            if d.shape[0] != v.shape[0]:
                raise ValueError(f"patient {i} has {d.shape[0]} doses but {v.shape[0]} DVH vectors")
            if tuple(d.shape[1:]) != tuple(a.shape[1:]):
                raise ValueError(f"patient {i}: dose grid {tuple(d.shape[1:])} differs from anatomy grid "
                                 f"{tuple(a.shape[1:])} (anatomy must be (C, *spatial))")
            if n_plans is not None and v.shape[0] < n_plans:
                raise ValueError(f"patient {i} has only {v.shape[0]} Pareto plans, fewer than n_plans={n_plans}")
            if v.shape[0] == 0:
                raise ValueError(f"patient {i} has no Pareto plan")
            check_dvh_vector(v.cpu().numpy(), None, n_bins, name=f"dvhs[{i}]")
        if n_plans is not None:
            if n_plans < 1:
                raise ValueError(f"n_plans must be >= 1, got {n_plans}")
            self.doses = [d[:n_plans] for d in self.doses]
            self.dvhs = [v[:n_plans] for v in self.dvhs]
        self.n_patients = M
        self.samples_per_epoch = 10 * M if samples_per_epoch is None else int(samples_per_epoch)
        if self.samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be >= 1, got {samples_per_epoch}")
        self.seed, self.feed, self.exclude_self = seed, feed, exclude_self
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch for the private generator (only with an int ``seed``)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    @staticmethod
    def _draw(high: int, gen) -> int:
        return int(torch.randint(high, (1,), generator=gen).item())

    def __getitem__(self, t: int) -> dict:
        if not 0 <= t < len(self):
            raise IndexError(f"index {t} out of range for {len(self)} samples")
        gen = None
        if self.seed is not None:
            gen = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.epoch, t])
                                                    .generate_state(1)[0]))
        i = t % self.n_patients
        if self.exclude_self:
            p = self._draw(self.n_patients - 1, gen)
            p = p + (p >= i)
        else:
            p = self._draw(self.n_patients, gen)
        q = self._draw(self.dvhs[p].shape[0], gen)
        desired = self.dvhs[p][q]
        j, dist = project_to_pareto(desired, self.dvhs[i], validate=False)
        cond = desired if self.feed == "desired" else self.dvhs[i][j]
        return {
            "input": self.anatomy[i],
            "dvh": cond.clone(),
            "target": self.doses[i][j].unsqueeze(0),
            "patient": torch.tensor(i),
            "plan": torch.tensor(j),
            "source_patient": torch.tensor(p),
            "source_plan": torch.tensor(q),
            "distance": torch.tensor(dist, dtype=torch.float32),
        }


def inverse_time_lr(decay: float = 0.002):
    r"""Learning-rate decay of Eq. (6) of :cite:p:`ma2021pareto` as a scheduler factory.

    .. math:: \mathrm{lr}(t) = \frac{\mathrm{lr}_0}{1 + \mathrm{decay}\cdot t}

    with :math:`t` the number of weight updates so far (the paper:
    :math:`\mathrm{lr}_0 = 10^{-3}`, decay :math:`= 0.002`). Returns
    ``f(optimizer) -> LambdaLR``, to be stepped after every update:
    ``Trainer(model, loss, lr=1e-3, scheduler=inverse_time_lr(0.002), scheduler_interval="step")``.
    """
    if not isinstance(decay, (int, float)) or isinstance(decay, bool) or not np.isfinite(decay) or decay < 0:
        raise ValueError(f"decay must be a finite number >= 0, got {decay!r}")
    decay = float(decay)

    def factory(optimizer):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1.0 + decay * step))

    return factory
