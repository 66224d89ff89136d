"""Profiles, devices, seeds and the data directory.

One switch, the environment variable ``RTLEARN_PROFILE``, selects how big every
experiment in the book is:

``quick`` (the default, on every machine, with or without a GPU)
    small phantom data, 2D; each chapter runs in a few minutes on 2 CPU cores.
    A demonstration: this is what CI and nbval run.
``study``
    the largest honest experiment a 2-core CPU can run: several seeds, training
    to convergence (early stopping on validation), recorded in ``results/`` by
    ``python -m rtlearn.study`` and shown in the chapters.
``full``
    the papers' scale (OpenKBP or large phantom sets, 3D) on a GPU.

``study`` and ``full`` are opt-in: a GPU runtime with the variable unset still
gets ``quick``, never hours of training. The same code path runs in every
profile; only sizes change, and each chapter's ``default_config(profile)`` is
the one place where a profile is turned into sizes.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

PROFILES = ("quick", "study", "full")
#: The profile used when ``RTLEARN_PROFILE`` is unset, on every machine.
DEFAULT_PROFILE = "quick"


def profile() -> str:
    """Return the active profile name.

    Reads ``RTLEARN_PROFILE`` (``quick``, ``study`` or ``full``,
    case-insensitive). When it is unset or empty the profile is ``quick``,
    also on a machine with a GPU: the bigger profiles are opt-in.

    Raises
    ------
    ValueError
        If ``RTLEARN_PROFILE`` holds anything else.
    """
    value = os.environ.get("RTLEARN_PROFILE", "").strip().lower()
    if not value:
        return DEFAULT_PROFILE
    return check_profile(value, "RTLEARN_PROFILE")


def check_profile(name, what: str = "profile") -> str:
    """Return ``name`` lower-cased if it is one of :data:`PROFILES`; raise a clear ``ValueError`` otherwise."""
    if not isinstance(name, str) or name.strip().lower() not in PROFILES:
        raise ValueError(f"{what}={name!r} is not a profile; use one of {PROFILES}.")
    return name.strip().lower()


_UNSET = object()


def pick(quick, full, study=_UNSET, *, profile_name: str | None = None):
    """Return the value for ``profile_name`` (default: the active :func:`profile`).

    Meant for a chapter's ``default_config(profile)``, the one place where a
    profile becomes sizes. ``study`` must be given explicitly when the profile
    is ``study``: a study size is never guessed from the other two.

    Examples
    --------
    >>> pick(quick=16, full=100, study=48, profile_name="study")
    48
    """
    name = profile() if profile_name is None else check_profile(profile_name)
    if name == "quick":
        return quick
    if name == "full":
        return full
    if study is _UNSET:
        raise ValueError("this setting has no 'study' value; pass pick(..., study=...) for the study profile")
    return study


def check_overrides(config_cls, overrides, what: str = "Config field(s)") -> None:
    """Raise ``ValueError`` if ``overrides`` names a field that the dataclass ``config_cls`` does not have.

    Every chapter's ``default_config(profile, **overrides)`` calls this before building its config,
    so that a misspelt size is an error instead of being ignored.
    """
    import dataclasses

    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; the fields are {sorted(known)}")


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
