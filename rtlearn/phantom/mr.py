"""MR-like channels (T1, T1c, T2, FLAIR) for the brain phantom.

Each tissue class of :data:`BRAIN_TISSUES` (the label map of the brain phantom of
:mod:`rtlearn.phantom.anatomy`) gets a
typical relative signal per sequence (tumour dark on T1, enhancing rim bright
on T1c, oedema bright on T2 and FLAIR, CSF dark on FLAIR; a "mimic" -- an enhancing
spot that is not tumour, such as a vessel, a small meningioma or choroid plexus --
bright on T1c like the tumour rim, slightly dark on T1 and slightly bright on T2 and
FLAIR (between grey matter and the tumour), with no oedema around it). The ideal image is
blurred slightly (partial volume), multiplied by a smooth random bias field
:math:`b(\\mathbf{x}) = \\exp(\\sum_k c_k\\, p_k(\\mathbf{x}))` with low-order
polynomials :math:`p_k`, and corrupted by Rician noise
:math:`\\sqrt{(s + n_1)^2 + n_2^2}`, :math:`n_{1,2} \\sim \\mathcal{N}(0, \\sigma^2)`.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

#: tissue labels of the brain phantom (:mod:`rtlearn.phantom.anatomy` paints them; the MR signals follow them)
BRAIN_TISSUES = ("air", "scalp", "skull", "csf", "gm", "wm", "edema", "enhancing", "necrosis", "eye", "mimic")
#: tissues whose contrast jitter comes from the main stream (those after it draw from their own)
_N_CORE = 10

SEQUENCES = ("T1", "T1c", "T2", "FLAIR")

#: relative signal per tissue (rows follow BRAIN_TISSUES)
#:            air   scalp skull csf   gm    wm    edema enh   necr  eye   mimic
_SIGNAL = {
    "T1":    [0.0, 0.90, 0.06, 0.15, 0.50, 0.66, 0.45, 0.40, 0.22, 0.15, 0.45],
    "T1c":   [0.0, 0.92, 0.06, 0.15, 0.52, 0.66, 0.45, 0.98, 0.22, 0.16, 0.95],
    "T2":    [0.0, 0.60, 0.05, 1.00, 0.62, 0.45, 0.85, 0.75, 0.92, 0.95, 0.70],
    "FLAIR": [0.0, 0.70, 0.05, 0.10, 0.58, 0.45, 0.92, 0.80, 0.35, 0.12, 0.68],
}


def bias_field(shape, rng, strength: float = 0.25) -> np.ndarray:
    """Smooth multiplicative bias field: exp of a random polynomial of degree <= 2."""
    axes = [np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1) for n in shape]
    grids = np.meshgrid(*axes, indexing="ij")
    log_b = np.zeros(shape)
    for i, gi in enumerate(grids):
        log_b += rng.normal(0, strength) * gi
        for gj in grids[i:]:
            log_b += rng.normal(0, strength / 2) * gi * gj
    return np.exp(log_b)


def mr_channels(labels, spacing, seed: int, noise: float = 0.03) -> dict:
    """MR-like images from a tissue label map.

    Parameters
    ----------
    labels : int ndarray
        Tissue labels (indices into ``BRAIN_TISSUES``), 2D or 3D.
    spacing : tuple of float
        Voxel size (mm); the partial-volume blur is 0.8 mm.
    seed : int
        Seed of the contrast jitter, bias field and noise.
    noise : float
        Standard deviation of the Rician noise (signal units, white matter ~0.66).

    Returns
    -------
    dict of str to float32 ndarray
        ``{"T1", "T1c", "T2", "FLAIR"}``, each shaped like ``labels``.
    """
    labels = np.asarray(labels)
    if labels.min() < 0 or labels.max() >= len(BRAIN_TISSUES):
        raise ValueError(f"labels must be in 0..{len(BRAIN_TISSUES) - 1}")
    rng = np.random.default_rng([int(seed), 11])
    extra_rng = np.random.default_rng([int(seed), 11, 17])   # tissues added later: older channels unchanged
    sigma = [0.8 / s for s in spacing]
    out = {}
    for name in SEQUENCES:
        jitter = np.concatenate([rng.uniform(0.92, 1.08, _N_CORE),
                                 extra_rng.uniform(0.92, 1.08, len(BRAIN_TISSUES) - _N_CORE)])
        table = np.asarray(_SIGNAL[name]) * jitter
        table[0] = 0.0
        img = ndimage.gaussian_filter(table[labels], sigma)
        img = img * bias_field(labels.shape, rng)
        n1, n2 = rng.normal(0.0, noise, (2,) + labels.shape)
        out[name] = np.sqrt((img + n1) ** 2 + n2 ** 2).astype(np.float32)
    return out
