"""OpenKBP's regions of interest: names of the organs at risk and targets (a leaf module, no imports).

Shared by the OpenKBP data reader (:mod:`rtlearn.data.openkbp.format`) and the
challenge's scores (:mod:`rtlearn.metrics.openkbp`), so that neither imports the other.
"""
from __future__ import annotations

__all__ = ["OARS", "TARGETS", "ROI_NAMES", "TARGET_DOSE_GY"]

OARS = ("Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx", "Mandible")
"""OpenKBP's seven organs at risk, in the challenge's order."""

TARGETS = ("PTV56", "PTV63", "PTV70")
"""OpenKBP's three planning target volumes."""

ROI_NAMES = OARS + TARGETS
"""All ten OpenKBP ROIs in the challenge's own order (organs at risk, then targets)."""

TARGET_DOSE_GY = {"PTV56": 56.0, "PTV63": 63.0, "PTV70": 70.0}
"""Prescription dose (Gy) of each target."""
