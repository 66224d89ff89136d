"""rtlearn: loss functions for deep learning in radiotherapy, with an executable textbook.

The top-level import is kept light (no torch, no matplotlib) so that
``import rtlearn`` is fast; submodules are imported on first access::

    import rtlearn
    rtlearn.dvh.cumulative_dvh(...)       # imports rtlearn.dvh lazily
    from rtlearn.models import UNet        # normal imports work too
"""
from __future__ import annotations

import importlib

_SUBMODULES = {
    "config", "io", "dvh", "metrics", "models", "train", "plotting", "losses",
    "phantom", "data", "book", "toy", "pareto", "experiments", "tables", "rois", "bench", "study",
}

__all__ = sorted(_SUBMODULES) + ["__version__", "profile"]


def profile() -> str:
    """Return the active profile, ``"quick"``, ``"study"`` or ``"full"`` (see :func:`rtlearn.config.profile`)."""
    from .config import profile as _profile

    return _profile()


def _version() -> str:
    """The version written once, in ``pyproject.toml``: read from the installed package's metadata, or
    from ``pyproject.toml`` beside the package when it runs from a source tree that is not installed."""
    from importlib import metadata

    try:
        return metadata.version(__name__)
    except metadata.PackageNotFoundError:
        import re
        from pathlib import Path

        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        found = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.M) if pyproject.is_file() else None
        return found.group(1) if found else "0+unknown"


def __getattr__(name: str):
    if name == "__version__":  # resolved on first access, so that ``import rtlearn`` stays light
        globals()[name] = value = _version()
        return value
    if name in _SUBMODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'rtlearn' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _SUBMODULES | {"__version__"})
