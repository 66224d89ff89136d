"""Input checks for tensors fed to the losses.

They are written for torch tensors (the NumPy helpers in :mod:`rtlearn._validate`
would copy large volumes to NumPy). Every check works on detached values so that
validation never enters the autograd graph. Errors say what was wrong and what
was expected.
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
