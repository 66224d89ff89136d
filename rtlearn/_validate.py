"""Input checks shared by the whole package.

Every public function validates its inputs with these helpers so that bad input
gives a ``ValueError``/``TypeError`` saying what was wrong and what was
expected, never a silent wrong number.

Negative doses: a reference dose (planned or true) must be finite and
non-negative, a predicted dose only finite (:func:`check_dose` with
``allow_negative=True``); the torch losses apply the same rule
(:func:`rtlearn.losses._checks.check_reference_dose`). A bool is never accepted
as a number (``rx=True`` is an error, not 1 Gy).
"""
from __future__ import annotations

import numbers

import numpy as np


def is_torch(x) -> bool:
    """True if ``x`` is a torch tensor (without importing torch when it is not loaded)."""
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def as_numpy(x, name: str = "array") -> np.ndarray:
    """Convert a NumPy array, torch tensor or sequence to a NumPy array."""
    if is_torch(x):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # NumPy has no bfloat16: widen (exactly) to float32
            x = x.float()
        return x.numpy()
    if isinstance(x, np.ndarray):
        return x
    try:
        return np.asarray(x)
    except Exception as exc:  # pragma: no cover - defensive
        raise TypeError(f"{name} must be array-like, got {type(x).__name__}") from exc


def check_dose(dose, name: str = "dose", allow_negative: bool = False) -> np.ndarray:
    """Return ``dose`` as a float array; reject NaN/inf and (by default) negative values."""
    arr = as_numpy(dose, name)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"{name} must be a numeric array of doses, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(arr)):
        n = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name} contains {n} NaN or infinite value(s); doses must be finite")
    if not allow_negative and arr.min() < 0:
        raise ValueError(f"{name} has negative values (min {arr.min():.4g}); doses must be >= 0")
    return arr


def check_mask(mask, shape=None, name: str = "mask", allow_empty: bool = False) -> np.ndarray:
    """Return ``mask`` as a boolean array of ``shape``; reject empty masks unless allowed."""
    arr = as_numpy(mask, name)
    if arr.dtype != bool:
        if not np.issubdtype(arr.dtype, np.number):
            raise TypeError(f"{name} must be a boolean mask, got dtype {arr.dtype}")
        uniq = np.unique(arr)
        if not np.all(np.isin(uniq, (0, 1))):
            raise ValueError(f"{name} must be boolean (0/1); found values {uniq[:5]}")
        arr = arr.astype(bool)
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(arr.shape)}, expected {tuple(shape)} (the dose grid)")
    if not allow_empty and not arr.any():
        raise ValueError(f"{name} is empty (no voxel set); a structure must contain at least one voxel")
    return arr


def check_same_shape(a, b, name_a: str = "prediction", name_b: str = "reference") -> None:
    """Raise if two arrays/tensors differ in shape."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}; they must match")


def check_spacing(spacing, ndim: int, name: str = "spacing") -> np.ndarray:
    """Return voxel spacing (mm) as a float array of length ``ndim``; all entries > 0."""
    if spacing is None:
        raise ValueError(f"{name} (voxel size in mm, one value per axis) is required")
    if isinstance(spacing, (bool, np.bool_)):
        raise ValueError(f"{name} must be positive and finite (mm), got {spacing!r}")
    if isinstance(spacing, numbers.Real):
        spacing = [float(spacing)] * ndim
    raw = as_numpy(spacing, name)
    if raw.dtype == bool or not np.issubdtype(raw.dtype, np.number):
        raise ValueError(f"{name} must be positive and finite numbers (mm), got {spacing!r}")
    arr = np.asarray(raw, dtype=np.float64).ravel()
    if arr.size != ndim:
        raise ValueError(f"{name} must have {ndim} values (one per axis), got {arr.size}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be positive and finite (mm), got {arr.tolist()}")
    return arr


def check_positive(value, name: str) -> float:
    """Return ``value`` as a float, requiring a finite real number > 0 (not a bool)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not np.isfinite(value) \
            or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def check_real(value, name: str, low: float = -np.inf, high: float = np.inf) -> float:
    """Return ``value`` as a float, requiring a finite real number (not a bool) in ``[low, high]``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not np.isfinite(value) \
            or not low <= value <= high:
        rng = "" if (low, high) == (-np.inf, np.inf) else f" in [{low:g}, {high:g}]"
        raise ValueError(f"{name} must be a finite number{rng}, got {value!r}")
    return float(value)


def check_int(value, name: str, low: int = 1) -> int:
    """Return ``value`` as an ``int``, requiring an integer (not a bool) ``>= low``.

    Raises ``ValueError("<name> must be an integer >= <low>, got <value>")`` otherwise.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)
