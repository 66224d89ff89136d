"""Input checks for tensors fed to the losses.

They are written for torch tensors (the NumPy helpers in :mod:`rtlearn._validate`
would copy large volumes to NumPy). Every check works on detached values so that
validation never enters the autograd graph. Errors say what was wrong and what
was expected.

Precision. Every loss accumulates its sums, counts and means in float32, or in
float64 when an input is float64 (:func:`accumulation_dtype`), whatever the
input dtype: float16, bfloat16 and autocast outputs are cast up before any
reduction, so that a sum over more than 65,504 voxels or a voxel count never
overflows or rounds in half precision. Inputs of different floating dtypes are
cast to that common dtype.

Negative doses. A *reference* dose (the planned or true dose a prediction is
compared with) is a physical dose: NaN, infinite or negative values raise
``ValueError`` (:func:`check_reference_dose`), in the torch losses as in the
NumPy metrics (:func:`rtlearn._validate.check_dose`). A *predicted* dose (a
network output) may be negative; it is then an error like any other.
"""
from __future__ import annotations

import numbers

import torch


def check_tensor(x, name: str) -> torch.Tensor:
    """Require a floating-point torch tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    return x


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or infinite values."""
    if not bool(torch.isfinite(x.detach()).all()):
        n = int((~torch.isfinite(x.detach())).sum())
        raise ValueError(f"{name} contains {n} NaN or infinite value(s); expected finite values")


def accumulation_dtype(*tensors) -> torch.dtype:
    """float64 if any of ``tensors`` (None entries ignored) is float64, else float32: the dtype of every reduction."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def check_reference_dose(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` if a reference dose holds NaN, infinite or negative values (one pass over ``x``)."""
    mn, mx = torch.aminmax(x.detach().reshape(-1))
    if not (bool(torch.isfinite(mn)) and bool(torch.isfinite(mx))):
        check_finite(x, name)
    if float(mn) < 0:
        raise ValueError(f"{name} has negative values (min {float(mn):.4g}); a reference dose must be >= 0")


def check_same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    """Raise ``ValueError`` if two tensors differ in shape."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}; they must match"
        )


def as_bool_mask(mask, shape, name: str = "mask") -> torch.Tensor:
    """Return ``mask`` as a bool tensor of exactly ``shape`` (0/1 numbers accepted)."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected {tuple(shape)}")
    if mask.dtype == torch.bool:
        return mask
    m = mask.detach()
    if not bool(((m == 0) | (m == 1)).all()):
        raise ValueError(f"{name} must be boolean (0/1); found other values")
    return m.bool()


def check_nonnegative_number(value, name: str) -> float:
    """Return ``value`` as float, requiring a finite real number >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (value == value) or value < 0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_positive_number(value, name: str) -> float:
    """Return ``value`` as float, requiring a finite real number > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (value == value) or value <= 0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_real_number(value, name: str) -> float:
    """Return ``value`` as float, requiring a finite real number (any sign; not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (value == value) \
            or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_choice(value, name: str, choices) -> str:
    """Require ``value`` to be one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


def zero_loss(like: torch.Tensor) -> torch.Tensor:
    """A scalar 0 that stays connected to the graph of ``like`` (so ``backward`` works)."""
    return like.sum() * 0.0


def voxel_mask(mask, shape, name: str = "mask") -> torch.Tensor:
    """Return a bool mask of ``shape`` for dose tensors.

    Accepts a mask of exactly ``shape``, or, when ``shape`` is ``(B, 1, ...)``, a
    mask of shape ``(B, ...)`` (the channel axis is added).
    """
    shape = tuple(shape)
    if isinstance(mask, torch.Tensor) and len(shape) >= 2 and shape[1] == 1 and tuple(mask.shape) == shape[:1] + shape[2:]:
        mask = mask.unsqueeze(1)
    return as_bool_mask(mask, shape, name)
