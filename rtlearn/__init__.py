"""rtlearn: loss functions for deep learning in radiotherapy, with an executable textbook.

The top-level import is kept light (no torch, no matplotlib) so that
``import rtlearn`` is fast; submodules are imported on first access::

    import rtlearn
    rtlearn.dvh.cumulative_dvh(...)       # imports rtlearn.dvh lazily
    from rtlearn.models import UNet        # normal imports work too
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = {
    "config", "io", "dvh", "metrics", "models", "train", "plotting", "losses",
    "phantom", "data", "book", "toy", "pareto", "experiments", "tables", "rois", "bench", "study",
}

__all__ = sorted(_SUBMODULES) + ["__version__", "profile"]


def profile() -> str:
    """Return the active profile, ``"quick"``, ``"study"`` or ``"full"`` (see :func:`rtlearn.config.profile`)."""
    from .config import profile as _profile

    return _profile()


def __getattr__(name: str):
    if name in _SUBMODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'rtlearn' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _SUBMODULES)
