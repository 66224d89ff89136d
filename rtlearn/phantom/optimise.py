"""Inverse planning on the phantoms: objectives, optimiser, normalisation, Pareto sweeps.

The plan objective is a sum of one-sided quadratic penalties and linear
(mean-dose) terms on the voxel doses :math:`D = A w`, :math:`w \\ge 0`:

.. math::

    L(w) = \\sum_m \\frac{\\lambda_m}{R^2} \\max\\big(0, \\pm(D_{v_m} - b_m)\\big)^2
           + \\sum_v \\frac{c_v}{R} D_v ,

with, for each target (highest prescription first, on its voxels not in a
higher target): an under-dose penalty below :math:`R_k` and an over-dose
penalty above :math:`R_k` (together a least-squares pull to :math:`R_k`); for the normal tissue outside the targets an
over-dose penalty above a limit that falls with the distance :math:`r` from
each target, :math:`\\max_k R_k \\max(f_{\\min}, 1 - r_k / r_0)` (a "ring"
objective that makes the dose fall off steeply); a hot-spot penalty above :math:`1.05 \\max_k R_k`
on every body voxel, weighted per voxel like the target terms; for each organ at risk (OAR,
voxels outside the targets) a mean-dose term of weight :math:`\\lambda_{OAR}`
and, for serial organs, an over-dose penalty above a maximum dose (or above
the ring limit where that is higher, so that an organ touching the target does
not ask for an impossible gradient). Weights of
each term are divided by its voxel count, so a weight is the importance of
the structure, not of its size. Every term is convex, so the problem is convex;
it is solved with L-BFGS-B (bounds :math:`w \\ge 0`) or by projected Adam in
torch (any device).

After optimisation the plan is scaled so that the primary target's
:math:`D_{95} = R`, the usual normalisation (Bai et al. 2021 scaled their
plans to cover 95 % of the PTV).
"""
from __future__ import annotations

import contextlib
import numbers
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from .._validate import check_dose, check_int, check_mask
from ..dvh import dose_at_volume
from .anatomy import Patient, make_patient
from .dose_engine import DoseEngine

#: default OAR mean-dose weights per site
OAR_WEIGHTS = {
    # breast: low weights accept the lung and heart doses of clinical VMAT (Bai et al. 2021, Table 4)
    "breast": {"Heart": 0.3, "Lung_L": 0.2, "Lung_R": 0.1, "SpinalCord": 0.2},
    "prostate": {"Rectum": 1.0, "Bladder": 1.0, "FemoralHead_L": 0.3, "FemoralHead_R": 0.3},
    "head_neck": {"RightParotid": 1.0, "LeftParotid": 1.0, "Larynx": 0.45, "Esophagus": 1.0,
                  "Mandible": 0.3, "SpinalCord": 0.22, "Brainstem": 0.3},
    "brain": {"Brainstem": 1.0, "OpticChiasm": 1.0, "Eye_L": 0.5, "Eye_R": 0.5},
}
#: maximum-dose limits (Gy) of serial organs
OAR_MAX_GY = {
    "breast": {"SpinalCord": 20.0},
    "prostate": {},
    "head_neck": {"SpinalCord": 45.0, "Brainstem": 50.0},
    "brain": {"Brainstem": 54.0, "OpticChiasm": 54.0, "Eye_L": 30.0, "Eye_R": 30.0},
}
#: the two OARs traded off by default in :func:`pareto_sweep`
PARETO_PAIRS = {
    "breast": ("Heart", "Lung_L"),
    "prostate": ("Rectum", "Bladder"),
    "head_neck": ("RightParotid", "LeftParotid"),
    "brain": ("Brainstem", "OpticChiasm"),
}


def _d95(dose, mask):
    return float(dose_at_volume(dose, mask, 95))


@dataclass
class Plan:
    """An optimised plan.

    Attributes
    ----------
    dose : ndarray float32 (Gy), on the patient grid.
    weights : ndarray float64, beamlet weights (after normalisation).
    angles : ndarray, gantry angles (degrees).
    oar_weights : dict, the OAR mean-dose weights used.
    prescriptions : dict, target name to Gy.
    info : dict, optimiser diagnostics (iterations, objective, seconds, scale).
    """

    dose: np.ndarray
    weights: np.ndarray
    angles: np.ndarray
    oar_weights: dict
    prescriptions: dict
    info: dict = field(default_factory=dict)


class PlanObjective:
    """The convex plan objective of this module, on flattened voxel doses (Gy).

    Built by :meth:`for_patient`; ``value(dose)`` is a differentiable torch
    expression, ``value_and_grad(dose)`` the same with a closed-form gradient.
    """

    def __init__(self, idx, bound, weight, sign, lin, scale):
        self.idx, self.bound, self.weight, self.sign, self.lin = idx, bound, weight, sign, lin
        self.scale = float(scale)

    @classmethod
    def for_patient(cls, patient: Patient, oar_weights: dict | None = None, oar_max_gy: dict | None = None,
                    target_weight: float = 1000.0, overdose_weight: float = 1000.0, ring_weight: float = 20.0,
                    hot_factor: float = 1.0, falloff_mm: float = 30.0, floor: float = 0.25, hotspot: float = 1.05,
                    device=None) -> "PlanObjective":
        """The objective of the module docstring for ``patient``.

        Parameters
        ----------
        oar_weights : dict, optional
            Mean-dose weights overriding :data:`OAR_WEIGHTS` (>= 0).
        oar_max_gy : dict, optional
            Maximum-dose limits (Gy) overriding :data:`OAR_MAX_GY`.
        target_weight, overdose_weight : float
            Under-/over-dose weights of the targets (also used for OAR maxima and hot spots).
        ring_weight, falloff_mm, floor : float
            Normal-tissue limit :math:`\\max_k R_k \\max(\\text{floor}, 1 - r_k/\\text{falloff})`.
        hot_factor : float
            Over-dose threshold of a target, as a multiple of its prescription.
        hotspot : float
            Hot-spot threshold in the whole body, as a multiple of the highest prescription.
        """
        site = patient.site
        ow = dict(OAR_WEIGHTS.get(site, {}))
        if oar_weights:
            unknown = set(oar_weights) - set(patient.masks)
            if unknown:
                raise ValueError(f"oar_weights name structures not in this patient: {sorted(unknown)}; "
                                 f"available: {sorted(patient.oars)}")
            ow.update(oar_weights)
        for k, v in ow.items():
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"OAR weight of {k!r} must be >= 0, got {v!r}")
        omax = dict(OAR_MAX_GY.get(site, {}))
        omax.update(oar_max_gy or {})
        rx_max = max(patient.prescriptions.values())
        shape = patient.shape
        flat = lambda m: np.flatnonzero(m.reshape(-1))  # noqa: E731
        idx, bound, weight, sign = [], [], [], []

        def add(vox, b, w, s):
            if vox.size:
                idx.append(vox)
                bound.append(np.broadcast_to(np.asarray(b, float), vox.shape))
                weight.append(np.full(vox.shape, w / vox.size))
                sign.append(np.full(vox.shape, float(s)))

        covered = np.zeros(shape, bool)
        limit = np.zeros(shape)
        for t in patient.targets:
            rx = patient.prescriptions[t]
            m = patient.masks[t]
            own = flat(m & ~covered)
            add(own, rx, target_weight, -1)
            add(own, hot_factor * rx, overdose_weight, +1)
            covered |= m
            r = ndimage.distance_transform_edt(~m, sampling=patient.spacing)
            limit = np.maximum(limit, rx * np.maximum(floor, 1.0 - r / falloff_mm))
        normal = patient.body & ~covered
        nv = flat(normal)
        add(nv, limit.reshape(-1)[nv], ring_weight, +1)
        # hot spots anywhere in the body, weighted per voxel like the target terms
        bv = flat(patient.body)
        n_tgt = max(int(covered.sum()), 1)
        add(bv, hotspot * rx_max, overdose_weight * bv.size / n_tgt, +1)
        lin = np.zeros(int(np.prod(shape)))
        for name, w in ow.items():
            if name in patient.masks and w > 0:
                vox = flat(patient.masks[name] & ~covered)
                if vox.size:
                    lin[vox] += w / vox.size
        for name, gy in omax.items():
            if name in patient.masks:
                # never ask for less than the achievable fall-off next to a target
                vox = flat(patient.masks[name] & ~covered)
                add(vox, np.maximum(gy, limit.reshape(-1)[vox]), overdose_weight, +1)
        dev = torch.device(device) if device is not None else torch.device("cpu")

        def as_t(a, dt=torch.float64):
            return torch.as_tensor(np.concatenate(a) if isinstance(a, list) else a, device=dev, dtype=dt)

        obj = cls(as_t(idx, torch.long), as_t(bound), as_t(weight), as_t(sign), as_t(lin), rx_max)
        obj.oar_weights = ow
        return obj

    def value(self, dose) -> torch.Tensor:
        """Objective value (differentiable torch expression)."""
        d = dose.reshape(-1).to(torch.float64)
        ex = torch.relu(self.sign * (d[self.idx] - self.bound))
        return (self.weight * ex ** 2).sum() / self.scale ** 2 + (self.lin * d).sum() / self.scale

    def value_and_grad(self, dose):
        """``(value, dL/dD)`` with the gradient in closed form (same shape as ``dose``)."""
        d = dose.reshape(-1).to(torch.float64)
        ex = torch.relu(self.sign * (d[self.idx] - self.bound))
        val = (self.weight * ex ** 2).sum() / self.scale ** 2 + (self.lin * d).sum() / self.scale
        g = self.lin / self.scale
        g = g.index_add(0, self.idx, 2.0 * self.weight * self.sign * ex / self.scale ** 2)
        return val, g.reshape(dose.shape)


class _Operator:
    """``A w`` and ``A^T g`` through a dense matrix when small, else the factorised engine."""

    def __init__(self, engine: DoseEngine, dense_limit: int = 8_000_000):
        self.engine = engine
        self.n_vox = int(np.prod(engine.grid_shape))
        self.A = None
        if self.n_vox * engine.n_beamlets <= dense_limit:
            A = engine.matrix()
            # only voxels inside the body receive dose: keep those rows (a third to a half of the grid)
            self.rows = torch.nonzero((A != 0).any(dim=1)).reshape(-1)
            self.A = A[self.rows].contiguous()

    def forward(self, w):
        if self.A is not None:
            d = torch.zeros(self.n_vox, device=self.A.device, dtype=self.A.dtype)
            return d.index_copy_(0, self.rows, self.A @ w.to(self.A.dtype))
        return self.engine.dose(w.to(self.engine.dtype)).reshape(-1)

    def adjoint(self, g):
        if self.A is not None:
            return self.A.T @ g.to(self.A.dtype)[self.rows]
        return self.engine.adjoint(g.to(self.engine.dtype))


def normalise_plan(dose, target, prescription):
    """Scale factor that makes the target's :math:`D_{95}` equal the prescription."""
    d95 = _d95(np.asarray(dose), target)
    if d95 <= 0:
        raise ValueError("the target's D95 is 0: the plan gives the target no dose")
    return prescription / d95


@contextlib.contextmanager
def _cpu_threads(device, n=1):
    """Run the small CPU work of a plan on ``n`` threads (restored afterwards).

    The plan's matrix products are small; with several threads on a busy
    machine torch and OpenBLAS spend their time waiting for cores (we measured
    up to 30x slower with 2 threads than with 1 on a loaded 2-core machine).
    OpenBLAS (used by scipy's L-BFGS-B) is limited too when the optional
    ``threadpoolctl`` package is installed; otherwise set
    ``OPENBLAS_NUM_THREADS=1`` before starting Python.
    """
    if device is not None and torch.device(device).type != "cpu":
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            yield
        else:
            with threadpool_limits(limits=n, user_api="blas"):
                yield
    finally:
        torch.set_num_threads(old)


def optimise_plan(patient: Patient, engine: DoseEngine | None = None, oar_weights: dict | None = None,
                  method: str = "lbfgs", max_iter: int = 150, device=None, normalise: bool = True,
                  objective_kw: dict | None = None) -> Plan:
    """Optimise a non-negative beamlet fluence for ``patient``.

    Parameters
    ----------
    patient : Patient
    engine : DoseEngine, optional
        Default :meth:`DoseEngine.for_patient` (site-default beams).
    oar_weights : dict, optional
        Override of :data:`OAR_WEIGHTS` (mean-dose importance per OAR).
    method : {"lbfgs", "pgd"}
        L-BFGS-B with bounds (scipy; dose and gradient computed by torch on the
        engine's device) or projected Adam (pure torch).
    max_iter : int
        Iterations.
    normalise : bool
        Scale so that the primary target's D95 equals its prescription.
    objective_kw : dict, optional
        Extra arguments of :meth:`PlanObjective.for_patient`.

    Returns
    -------
    Plan
    """
    if not isinstance(patient, Patient):
        raise TypeError(f"patient must be a rtlearn.phantom.Patient, got {type(patient).__name__}")
    if method not in ("lbfgs", "pgd"):
        raise ValueError(f"method must be 'lbfgs' or 'pgd', got {method!r}")
    if not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
    for t, rx in patient.prescriptions.items():
        if not np.isfinite(rx) or rx <= 0:
            raise ValueError(f"prescription for {t!r} must be a positive dose in Gy, got {rx!r}")
    with _cpu_threads(engine.device if engine is not None else device):
        return _optimise(patient, engine, oar_weights, method, max_iter, device, normalise, objective_kw)


def _start_weights(op, engine, target, rx) -> np.ndarray:
    """Uniform beamlet weights that give the target a mean dose of ``rx``: the optimisers' starting point."""
    t = torch.as_tensor(target.reshape(-1), device=engine.device)
    d1 = op.forward(torch.ones(engine.n_beamlets, device=engine.device, dtype=engine.dtype))
    return np.full(engine.n_beamlets, rx / max(float(d1[t].mean()), 1e-12))


def _lbfgs(obj, op, engine, w0, max_iter):
    """Minimise ``obj`` (``value_and_grad`` on voxel doses) over weights >= 0 with L-BFGS-B from ``w0``.

    Returns ``(weights, iterations, evaluations, final objective)``.
    """
    from scipy.optimize import minimize

    n_eval = 0

    def fg(w):
        nonlocal n_eval
        n_eval += 1
        wt = torch.as_tensor(w, device=engine.device, dtype=engine.dtype)
        val, g = obj.value_and_grad(op.forward(wt))
        return float(val), op.adjoint(g).double().cpu().numpy()

    res = minimize(fg, w0, jac=True, method="L-BFGS-B", bounds=[(0, None)] * engine.n_beamlets,
                   options={"maxiter": int(max_iter), "maxfun": int(2 * max_iter), "ftol": 1e-12, "gtol": 1e-10})
    return res.x, int(res.nit), n_eval, float(res.fun)


def _optimise(patient, engine, oar_weights, method, max_iter, device, normalise, objective_kw):
    t0 = time.perf_counter()
    engine = engine or DoseEngine.for_patient(patient, device=device)
    obj = PlanObjective.for_patient(patient, oar_weights, device=engine.device, **(objective_kw or {}))
    op = _Operator(engine)
    dev = engine.device
    prim = patient.masks[patient.primary_target]
    rx = patient.prescriptions[patient.primary_target]
    w0 = _start_weights(op, engine, prim, rx)
    n_eval = 0
    if method == "lbfgs":
        w, n_iter, n_eval, final = _lbfgs(obj, op, engine, w0, max_iter)
    else:
        wt = torch.tensor(w0, device=dev, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([wt], lr=0.05 * float(w0[0]))
        for _ in range(int(max_iter)):
            opt.zero_grad()
            loss = obj.value(op.forward(wt).to(torch.float64) if op.A is None
                             else torch.zeros(op.n_vox, dtype=torch.float64, device=wt.device).index_copy(
                                 0, op.rows, op.A.double() @ wt))
            loss.backward()
            opt.step()
            with torch.no_grad():
                wt.clamp_(min=0.0)
            n_eval += 1
        w = wt.detach().cpu().numpy()
        n_iter = int(max_iter)
        final = float(loss.detach())
    dose = op.forward(torch.as_tensor(w, device=dev, dtype=engine.dtype)).double().cpu().numpy().reshape(patient.shape)
    dose = np.clip(dose, 0.0, None)
    scale = normalise_plan(dose, prim, rx) if normalise else 1.0
    info = {"method": method, "iterations": n_iter, "evaluations": n_eval, "objective": final,
            "scale": float(scale), "seconds": time.perf_counter() - t0}
    return Plan((dose * scale).astype(np.float32), w * scale, engine.angles.copy(), dict(obj.oar_weights),
                dict(patient.prescriptions), info)


def _mimic_structures(patient: Patient) -> dict:
    """The structures of :func:`mimic_plan`, name to mask: targets, OARs outside the targets, rest of the body."""
    covered = np.zeros(patient.shape, bool)
    out = {}
    for t in patient.targets:
        out[t] = np.asarray(patient.masks[t], bool)
        covered |= out[t]
    other = covered.copy()
    for o in patient.oars:
        out[o] = np.asarray(patient.masks[o], bool) & ~covered
        other |= patient.masks[o]
    out["body"] = np.asarray(patient.body, bool) & ~other
    return out


class _MimicObjective:
    """Weighted least squares to a desired dose, on flattened voxel doses (Gy).

    :math:`L(D) = \\sum_v c_v (D_v - P_v)^2` with
    :math:`c_v = \\sum_{s \\ni v} \\lambda_s / (|s| R^2)`, the objective of
    :func:`mimic_plan`; ``value_and_grad`` gives :math:`dL/dD_v = 2 c_v (D_v - P_v)`.
    """

    def __init__(self, patient: Patient, desired: np.ndarray, structure_weights: dict | None = None, device=None):
        structs = _mimic_structures(patient)
        sw = {} if structure_weights is None else structure_weights
        if not isinstance(sw, dict):
            raise TypeError(f"structure_weights must be a dict of structure name to weight, got {type(sw).__name__}")
        unknown = set(sw) - set(structs)
        if unknown:
            raise ValueError(f"structure_weights name unknown structures {sorted(map(str, unknown))}; "
                             f"valid names: {list(structs)}")
        for k, v in sw.items():
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) or not np.isfinite(v) or v < 0:
                raise ValueError(f"structure weight of {k!r} must be a finite number >= 0, got {v!r}")
        rx = float(patient.prescriptions[patient.primary_target])
        c = np.zeros(int(np.prod(patient.shape)))
        self.weights = {}
        for name, m in structs.items():
            n = int(m.sum())
            if n == 0:
                continue
            lam = float(sw.get(name, 1.0))
            self.weights[name] = lam
            c[m.reshape(-1)] += lam / (n * rx ** 2)
        if not c.any():
            raise ValueError("every non-empty structure has weight 0: nothing to mimic; give one a weight > 0")
        dev = torch.device(device) if device is not None else torch.device("cpu")
        self.c = torch.as_tensor(c, device=dev, dtype=torch.float64)
        self.target = torch.as_tensor(np.asarray(desired, np.float64).reshape(-1), device=dev)

    def value(self, dose) -> torch.Tensor:
        """Objective value (differentiable torch expression)."""
        r = dose.reshape(-1).to(torch.float64) - self.target
        return (self.c * r ** 2).sum()

    def value_and_grad(self, dose):
        """``(value, dL/dD)`` with the gradient in closed form (same shape as ``dose``)."""
        r = dose.reshape(-1).to(torch.float64) - self.target
        return (self.c * r ** 2).sum(), (2.0 * self.c * r).reshape(dose.shape)


def mimic_plan(patient: Patient, dose, engine: DoseEngine | None = None, structure_weights: dict | None = None,
               max_iter: int = 200, device=None, normalise: bool = True) -> Plan:
    """The deliverable plan whose dose is closest to a desired dose ("dose mimicking").

    Dose mimicking is the usual way a clinic turns a predicted dose (e.g. a
    network's output, which no machine can deliver as such) into a deliverable
    plan: find non-negative beamlet weights :math:`w` whose dose :math:`D = A w`
    is as close as possible to the desired dose :math:`P`,

    .. math::

        L(w) = \\sum_s \\frac{\\lambda_s}{|s|} \\sum_{v \\in s}
               \\frac{\\big((A w)_v - P_v\\big)^2}{R^2}, \\qquad w \\ge 0,

    over the structures :math:`s`: each target, each organ at risk restricted
    to its voxels outside the targets, and the rest of the body (``"body"``:
    body voxels in no target or OAR); :math:`|s|` is the structure's voxel
    count (empty structures are skipped), :math:`R` the primary target's
    prescription and :math:`\\lambda_s` its weight (default 1). The gradient is
    :math:`\\partial L / \\partial D_v = 2 \\lambda_s (D_v - P_v) / (|s| R^2)`
    (summed over the structures holding :math:`v`), followed by :math:`A^\\top`.
    The problem is convex and is solved with L-BFGS-B (bounds :math:`w \\ge 0`)
    from the starting point of :func:`optimise_plan`.

    The distance between the prediction and the mimicked plan (``info["rms_gy"]``)
    measures how much of the prediction is achievable: 0 for a dose that the
    beams can deliver, large for an unphysical one (e.g. a dose that drops to 0
    just outside the target).

    With equal weights the targets and the rest of the body count the same; for
    an unphysical prediction the fit then trades target homogeneity for a lower
    dose outside. Weights of 10-100 on the targets keep them homogeneous, as in a
    clinical mimicking objective.

    Parameters
    ----------
    patient : Patient
    dose : ndarray or tensor, shape ``patient.shape``
        Desired dose in Gy (finite, >= 0); any float dtype (converted to float64).
    engine : DoseEngine, optional
        Default :meth:`DoseEngine.for_patient` (site-default beams).
    structure_weights : dict, optional
        :math:`\\lambda_s` per structure name (targets, OARs, ``"body"``; finite, >= 0; default 1).
    max_iter : int
        L-BFGS-B iterations.
    device : optional
        Device of the default engine.
    normalise : bool
        Scale so that the primary target's D95 equals its prescription (:func:`normalise_plan`).

    Returns
    -------
    Plan
        ``oar_weights`` is empty; ``info`` holds ``method="mimic"``, ``iterations``,
        ``evaluations``, ``objective``, ``scale``, ``seconds``, ``structure_weights``
        and ``rms_gy``, the RMS difference (Gy) over the body between the
        achieved dose before normalisation and the desired dose.
    """
    if not isinstance(patient, Patient):
        raise TypeError(f"patient must be a rtlearn.phantom.Patient, got {type(patient).__name__}")
    desired = check_dose(dose, name="dose")
    if tuple(desired.shape) != tuple(patient.shape):
        raise ValueError(f"dose has shape {tuple(desired.shape)}, expected {tuple(patient.shape)} (the patient grid)")
    max_iter = check_int(max_iter, "max_iter", 1)
    for t, rx in patient.prescriptions.items():
        if not np.isfinite(rx) or rx <= 0:
            raise ValueError(f"prescription for {t!r} must be a positive dose in Gy, got {rx!r}")
    if engine is not None:
        if not isinstance(engine, DoseEngine):
            raise TypeError(f"engine must be a rtlearn.phantom.DoseEngine, got {type(engine).__name__}")
        if tuple(engine.shape) != tuple(patient.shape):
            raise ValueError(f"engine grid {tuple(engine.shape)} differs from the patient grid {tuple(patient.shape)}")
    with _cpu_threads(engine.device if engine is not None else device):
        return _mimic(patient, desired, engine, structure_weights, max_iter, device, normalise)


def _mimic(patient, desired, engine, structure_weights, max_iter, device, normalise):
    t0 = time.perf_counter()
    engine = engine or DoseEngine.for_patient(patient, device=device)
    dev = engine.device
    obj = _MimicObjective(patient, desired, structure_weights, device=dev)
    op = _Operator(engine)
    prim = patient.masks[patient.primary_target]
    rx = patient.prescriptions[patient.primary_target]
    w, n_iter, n_eval, final = _lbfgs(obj, op, engine, _start_weights(op, engine, prim, rx), max_iter)
    dose = op.forward(torch.as_tensor(w, device=dev, dtype=engine.dtype)).double().cpu().numpy().reshape(patient.shape)
    dose = np.clip(dose, 0.0, None)
    body = np.asarray(patient.body, bool)
    rms = float(np.sqrt(np.mean((dose[body] - desired[body]) ** 2))) if body.any() else 0.0
    scale = normalise_plan(dose, prim, rx) if normalise else 1.0
    info = {"method": "mimic", "iterations": n_iter, "evaluations": n_eval, "objective": final,
            "scale": float(scale), "seconds": time.perf_counter() - t0, "rms_gy": rms,
            "structure_weights": dict(obj.weights)}
    return Plan((dose * scale).astype(np.float32), w * scale, engine.angles.copy(), {}, dict(patient.prescriptions),
                info)


def pareto_sweep(patient: Patient, n_plans: int = 10, pair: tuple | None = None, total_weight: float = 2.0,
                 extreme: float = 0.02, engine: DoseEngine | None = None, progress: bool = False, **kw) -> list:
    """Plans that trade two OARs against each other.

    Plan :math:`i` of :math:`N` gives the pair the mean-dose weights
    :math:`\\lambda_A = \\Lambda x_i`, :math:`\\lambda_B = \\Lambda (1 - x_i)` with
    :math:`x_i` equispaced in :math:`[\\epsilon, 1 - \\epsilon]` (``extreme``)
    and :math:`\\Lambda` = ``total_weight``; the other OARs keep their default
    weights. Keeping the sum fixed keeps the target homogeneous along the front.
    These are the "many Pareto-optimal plans per patient" of the DVH-conditioned
    Pareto dose-prediction paper.

    Parameters
    ----------
    pair : (str, str), optional
        OAR names; default :data:`PARETO_PAIRS` of the site.

    Returns
    -------
    list of Plan, from sparing ``B`` most (first) to sparing ``A`` most (last).
    """
    if not isinstance(n_plans, (int, np.integer)) or n_plans < 1:
        raise ValueError(f"n_plans must be a positive int, got {n_plans!r}")
    if not 0 <= extreme < 0.5:
        raise ValueError(f"extreme must be in [0, 0.5), got {extreme!r}")
    pair = tuple(pair or PARETO_PAIRS[patient.site])
    missing = [p for p in pair if p not in patient.masks]
    if len(pair) != 2 or missing:
        raise ValueError(f"pair must name two OARs of this patient; missing {missing}; available {patient.oars}")
    engine = engine or DoseEngine.for_patient(patient, device=kw.get("device"))
    xs = np.linspace(extreme, 1.0 - extreme, n_plans) if n_plans > 1 else np.full(1, 0.5)
    it = xs
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(xs, desc=f"Pareto sweep ({patient.site})")
    plans = []
    for x in it:
        ow = {pair[0]: float(total_weight * x), pair[1]: float(total_weight * (1.0 - x))}
        plans.append(optimise_plan(patient, engine, oar_weights=ow, **kw))
    return plans


def plan_for_target(patient: Patient, target, prescription: float | None = None, margin_mm: float = 0.0,
                    **kw) -> Plan:
    """Plan the same anatomy on an arbitrary target (e.g. a predicted segmentation).

    This gives the *true* dose that a segmentation would lead to (DOSELO,
    Rüfenacht et al. 2023): the target (optionally grown by ``margin_mm``, e.g.
    GTV to PTV) replaces the patient's targets and a plan is optimised for it
    with the same beams and OAR objectives.
    """
    tgt = check_mask(target, patient.shape, name="target", allow_empty=True)
    if margin_mm < 0 or not np.isfinite(margin_mm):
        raise ValueError(f"margin_mm must be >= 0, got {margin_mm!r}")
    if margin_mm > 0 and tgt.any():
        tgt = ndimage.distance_transform_edt(~tgt, sampling=patient.spacing) <= margin_mm
    p2 = patient.with_target(tgt, prescription=prescription)
    return optimise_plan(p2, **kw)


def falloff_profile(dose, target, spacing, edges_mm=(0, 5, 10, 15, 20, 30, 40), body=None):
    """Mean dose in shells at distance ``r`` outside the target: ``(centres_mm, mean_dose)``."""
    dose = np.asarray(dose)
    r = ndimage.distance_transform_edt(~np.asarray(target, bool), sampling=spacing)
    inside = np.ones(dose.shape, bool) if body is None else np.asarray(body, bool)
    edges = np.asarray(edges_mm, float)
    sel = inside & (r > 0)
    b = np.digitize(r[sel], edges) - 1
    ok = (b >= 0) & (b < len(edges) - 1)
    sums = np.bincount(b[ok], dose[sel][ok], minlength=len(edges) - 1)
    cnt = np.bincount(b[ok], minlength=len(edges) - 1)
    return (edges[:-1] + edges[1:]) / 2, np.where(cnt > 0, sums / np.maximum(cnt, 1), np.nan)


def plan_summary(patient: Patient, plan: Plan) -> dict:
    """Key numbers of a plan: primary target D95/D2/Dmax (% of Rx), OAR mean doses (Gy)."""
    t = patient.primary_target
    rx = patient.prescriptions[t]
    d = plan.dose
    out = {"D95_%": 100 * _d95(d, patient.masks[t]) / rx,
           "D2_%": 100 * float(np.percentile(d[patient.masks[t]], 98)) / rx,
           "Dmax_%": 100 * float(d[patient.masks[t] | patient.body].max()) / rx}
    for o in patient.oars:
        out[f"{o}_mean_Gy"] = float(d[patient.masks[o]].mean())
    return out


def make_plan(site: str, seed: int = 0, dims: int = 2, **kw):
    """``(patient, plan)`` for a site and seed with the default beams and objectives."""
    pkw = {k: kw.pop(k) for k in ("shape", "spacing") if k in kw}
    patient = make_patient(site, seed, dims=dims, **pkw)
    return patient, optimise_plan(patient, **kw)
