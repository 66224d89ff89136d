"""Datasets: the OpenKBP benchmark (reader, preparation, torch dataset, compact cache).

Submodules (imported on first use so that ``import rtlearn.data`` stays light):

``openkbp_format``  names, shapes, dtypes and axis order of the OpenKBP data
``openkbp_prepare`` release CSVs -> one compressed ``.npz`` per patient
``openkbp``         find, load and serve the data (torch ``Dataset``)
``cache``           compact cropped/bit-packed training cache
``openkbp_eval``    whole-patient prediction and the challenge scores of a model
``openkbp_baseline`` the plain U-Net baseline (quick 2D / full 3D)
``openkbp_phantom`` a phantom stand-in written in the OpenKBP format
``openkbp_stats``   mask sizes and dose-band statistics
"""
from __future__ import annotations

import importlib

_SUBMODULES = {"openkbp_format", "openkbp_prepare", "openkbp", "cache", "openkbp_eval", "openkbp_baseline",
               "openkbp_phantom", "openkbp_stats"}
__all__ = sorted(_SUBMODULES)


def __getattr__(name: str):
    if name in _SUBMODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'rtlearn.data' has no attribute {name!r}")
