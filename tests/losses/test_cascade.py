"""rtlearn.losses.cascade: the deep-supervision loss of a cascade of dose networks (DOSELO)."""
from __future__ import annotations

import pytest
import torch

from rtlearn.losses.cascade import CascadeLoss, cascade_loss


def test_cascade_loss_by_hand():
    g = torch.Generator().manual_seed(1)
    t = torch.rand(2, 1, 6, 6, generator=g) * 60
    o1, o2 = t + torch.randn(t.shape, generator=g), t + 2 * torch.randn(t.shape, generator=g)
    m = torch.rand(2, 1, 6, 6, generator=g) > 0.4
    mse = lambda o: ((o - t)[m] ** 2).mean()  # voxels of the whole batch pooled
    expected = 0.5 * mse(o1) + mse(o2)
    assert torch.allclose(cascade_loss((o1, o2), t, m), expected)
    assert torch.allclose(CascadeLoss()((o1, o2), t, m[:, 0]), expected)  # mask without channel axis
    assert torch.allclose(cascade_loss((o1, o2), t, weights=(0.0, 1.0)), ((o2 - t) ** 2).mean())
    with pytest.raises(ValueError, match="weight"):
        cascade_loss((o1, o2), t, weights=(1.0,))
    with pytest.raises(ValueError, match=">= 0"):
        cascade_loss((o1, o2), t, weights=(-1.0, 1.0))
    with pytest.raises(TypeError, match="stage outputs"):
        cascade_loss(o2, t)
