"""Predict whole OpenKBP patients with a trained model and score them as the challenge did.

:func:`predict_patient` assembles a model's output (2D slice by slice, or one
3D volume) into a full (128, 128, 128) dose in OpenKBP's own axis order,
clipped at 0 and multiplied by the possible-dose mask, as the challenge's
baseline did before submission. :func:`evaluate_openkbp` scores a dataset's
patients with :func:`rtlearn.metrics.openkbp.dose_score` and
:func:`~rtlearn.metrics.openkbp.dvh_score`.
"""
from __future__ import annotations

import numpy as np
import torch

from ...metrics.openkbp import dose_error, dvh_errors
from .format import SHAPE


@torch.no_grad()
def predict_patient(model, dataset, patient: str, device=None, batch_size: int = 16,
                    possible_dose_mask=None) -> np.ndarray:
    """Predicted dose (Gy, float64) of one patient on the full grid, OpenKBP ``(Y, X, Z)`` order.

    Parameters
    ----------
    model : torch.nn.Module
        Maps ``item["input"]`` batches to ``B x 1 x ...`` doses in Gy.
    dataset : rtlearn.data.openkbp.OpenKBPDataset
        2D (slices) or 3D; slices not in the dataset (outside the possible-dose
        mask) are predicted as 0.
    patient : str
    device : torch.device, optional
        Default: the device of the model's parameters.
    batch_size : int
        Slices per forward pass (2D).
    possible_dose_mask : array of bool, optional
        The patient's (128, 128, 128) possible-dose mask, when the caller already
        holds it (``dataset.patient_arrays(patient)["possible_dose_mask"]``, which
        is read when omitted); saves expanding the patient's record a second time.
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        indices = dataset.slices_of(patient)
        out = np.zeros(SHAPE, dtype=np.float64)
        for start in range(0, len(indices), batch_size):
            items = [dataset[i] for i in indices[start:start + batch_size]]
            x = torch.stack([it["input"] for it in items]).to(device)
            pred = model(x).float()
            if getattr(dataset, "downsample", 1) > 1:     # back to the full grid
                mode = "bilinear" if dataset.dims == 2 else "trilinear"
                pred = torch.nn.functional.interpolate(pred, scale_factor=dataset.downsample, mode=mode,
                                                       align_corners=False)
            pred = pred.clamp_min(0).cpu().numpy()[:, 0]
            for it, p in zip(items, pred):
                if dataset.dims == 2:
                    out[:, :, it["slice"]] = p                    # (Y, X) slice at z
                else:
                    out[...] = np.transpose(p, (1, 2, 0))          # (Z, Y, X) -> (Y, X, Z)
    finally:
        model.train(was_training)
    if possible_dose_mask is None:
        pdm = dataset.patient_arrays(patient)["possible_dose_mask"]
    else:
        pdm = np.asarray(possible_dose_mask)
        if pdm.shape != SHAPE:
            raise ValueError(f"possible_dose_mask has shape {pdm.shape}, expected {SHAPE}")
    return out * pdm


def evaluate_openkbp(model, dataset, patients=None, device=None, batch_size: int = 16,
                     progress: bool = True) -> dict:
    """OpenKBP dose and DVH scores of ``model`` on ``dataset``'s patients.

    Returns
    -------
    dict
        ``dose_score`` and ``dvh_score`` (Gy, challenge definitions, see
        :mod:`rtlearn.metrics.openkbp`), ``n_patients``, and ``per_patient``:
        ``{patient: {"dose_error": float, "dvh_error": float}}`` (the latter the
        patient's mean |Δ| over its ROI metrics).
    """
    from tqdm.auto import tqdm

    patients = list(dataset.patients if patients is None else patients)
    per_patient, cells = {}, []
    for pid in tqdm(patients, desc=f"score {dataset.split}", disable=not progress):
        pred = predict_patient(model, dataset, pid, device, batch_size)
        ref = dataset.patient_arrays(pid)
        e = dvh_errors(pred, ref["dose"], ref["rois"], ref["voxel_dimensions"], name=f"prediction of {pid}")
        cells.extend(e.values())
        per_patient[pid] = {"dose_error": dose_error(pred, ref["dose"], ref["possible_dose_mask"],
                                                     name=f"prediction of {pid}"),
                            "dvh_error": float(np.mean(list(e.values()))) if e else float("nan")}
    return {"dose_score": float(np.mean([v["dose_error"] for v in per_patient.values()])),
            "dvh_score": float(np.mean(cells)) if cells else float("nan"),
            "n_patients": len(per_patient), "per_patient": per_patient}
