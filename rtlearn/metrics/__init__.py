"""Evaluation metrics: dose errors, segmentation overlap and surface distances, paired statistics.

Submodules: :mod:`~rtlearn.metrics.dose`, :mod:`~rtlearn.metrics.segmentation`,
:mod:`~rtlearn.metrics.stats` and :mod:`~rtlearn.metrics.openkbp` (the OpenKBP
challenge's dose and DVH scores, imported on first use).
"""
from __future__ import annotations

import importlib

from .dose import DOSE_BANDS_CGY, mad, mad_by_dose_band, mad_per_roi, mean_gradient_by_band
from .segmentation import average_surface_distance, dice, hausdorff, hausdorff95, precision, recall, surface_distances
from .dosimetric import relative_dose_error, rmae
from .stats import (Claim, bootstrap_ci, compare_arms, format_comparison, format_verdicts, holm, judge,
                    paired_comparison, seed_summary, verdict, wilcoxon_summary)

__all__ = [
    "DOSE_BANDS_CGY", "mad", "mad_by_dose_band", "mad_per_roi", "mean_gradient_by_band",
    "dice", "recall", "precision", "hausdorff", "hausdorff95", "average_surface_distance", "surface_distances",
    "wilcoxon_summary", "seed_summary", "bootstrap_ci", "holm", "paired_comparison", "verdict", "compare_arms",
    "format_comparison", "Claim", "judge", "format_verdicts", "rmae", "relative_dose_error", "openkbp",
]


def __getattr__(name):
    if name == "openkbp":
        module = importlib.import_module(".openkbp", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'rtlearn.metrics' has no attribute {name!r}")
