"""The OpenKBP benchmark (Babier et al. 2021): format, preparation, torch dataset, cache, scores of a model.

Submodules (imported on first use, so that ``import rtlearn.data.openkbp.format``
stays light: NumPy only, no torch):

``format``   names, shapes, dtypes and axis order of the OpenKBP data
``prepare``  release CSVs -> one compressed ``.npz`` per patient
``dataset``  find, load and serve the data (torch ``Dataset``)
``cache``    compact cropped/bit-packed training cache
``eval``     whole-patient prediction and the challenge scores of a model
``phantom``  a phantom stand-in written in the OpenKBP format
``stats``    mask sizes and dose-band statistics

The names of :mod:`~rtlearn.data.openkbp.dataset` are available here too
(``from rtlearn.data.openkbp import OpenKBPDataset, find_openkbp, load_patient``).
The plain U-Net baseline of the chapter is an experiment:
:mod:`rtlearn.experiments.openkbp`.
"""
from __future__ import annotations

import importlib

_SUBMODULES = {"format", "prepare", "dataset", "cache", "eval", "phantom", "stats"}
#: names of :mod:`.dataset` served from the package
_DATASET_NAMES = {"find_openkbp", "available", "candidate_roots", "list_patients", "load_patient", "load_records",
                  "build_cache", "cache_path", "OpenKBPDataset", "to_zyx", "DOWNLOAD_HINT", "INPUTS"}
__all__ = sorted(_SUBMODULES | _DATASET_NAMES)


def __getattr__(name: str):
    if name in _SUBMODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    if name in _DATASET_NAMES:
        value = getattr(importlib.import_module(".dataset", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rtlearn.data.openkbp' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _SUBMODULES | _DATASET_NAMES)
