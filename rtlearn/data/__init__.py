"""Datasets: the OpenKBP benchmark (:mod:`rtlearn.data.openkbp`: reader, preparation, torch dataset,
compact cache, whole-patient evaluation, a phantom stand-in, statistics).

Imported on first use so that ``import rtlearn.data`` stays light. ``data``
depends only on the package's lower layers (I/O, validation, ROI names, metrics,
the phantom clinic), never on losses, models, training or experiments.
"""
from __future__ import annotations

import importlib

_SUBMODULES = {"openkbp"}
__all__ = sorted(_SUBMODULES)


def __getattr__(name: str):
    if name in _SUBMODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'rtlearn.data' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _SUBMODULES)
