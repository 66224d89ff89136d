"""Profiles, devices, seeds and the data directory.

One switch, the environment variable ``RTLEARN_PROFILE``, selects how big every
experiment in the book is:

``quick``
    small phantom data, 2D, CPU; each chapter runs in a few minutes on 2 cores.
    This is what CI and nbval run, and the default wherever there is no CUDA device.
``full``
    the real experiment (OpenKBP or large phantom sets, 3D) on a GPU.
    The default when a CUDA device is present.

The same code path runs in both profiles; only sizes change.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

PROFILES = ("quick", "full")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return False
    return torch.cuda.is_available()


def profile() -> str:
    """Return the active profile name.

    Reads ``RTLEARN_PROFILE`` (``quick`` or ``full``, case-insensitive). When it
    is unset, the profile is ``full`` if a CUDA device is available and ``quick``
    otherwise.

    Raises
    ------
    ValueError
        If ``RTLEARN_PROFILE`` holds anything else.
    """
    value = os.environ.get("RTLEARN_PROFILE", "").strip().lower()
    if not value:
        return "full" if _cuda_available() else "quick"
    if value not in PROFILES:
        raise ValueError(
            f"RTLEARN_PROFILE={value!r} is not a profile; use one of {PROFILES}."
        )
    return value


def pick(quick, full):
    """Return ``quick`` or ``full`` according to the active :func:`profile`.

    Examples
    --------
    >>> n_train = pick(quick=16, full=100)  # doctest: +SKIP
    """
    return quick if profile() == "quick" else full


def get_device(prefer: str | None = None):
    """Choose a torch device: ``cuda`` > ``mps`` > ``cpu``.

    Parameters
    ----------
    prefer : str, optional
        Force a device (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``). The
        environment variable ``RTLEARN_DEVICE`` does the same.
    """
    import torch

    prefer = prefer or os.environ.get("RTLEARN_DEVICE") or None
    if prefer:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) for reproducible runs.

    With ``deterministic=True`` cuDNN is put in deterministic mode as well, so
    the same seed gives the same numbers on the same machine.
    """
    import numpy as np
    import torch

    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def data_root(path: str | os.PathLike | None = None) -> Path:
    """Directory where rtlearn caches generated and downloaded data.

    Order: the ``path`` argument, then ``$RTLEARN_DATA``, then
    ``$XDG_CACHE_HOME/rtlearn`` (``~/.cache/rtlearn``). The directory is created.
    """
    if path is None:
        path = os.environ.get("RTLEARN_DATA")
    if path is None:
        cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        path = Path(cache) / "rtlearn"
    root = Path(path).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root
