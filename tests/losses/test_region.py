"""rtlearn.losses.region_sum: the public block sums of the region losses."""
import itertools

import pytest
import torch

from rtlearn.losses import region as R
from rtlearn.losses import region_specific_loss, region_sum


def _loop_sum(x, ks):
    """Reference: one block at a time, block of index i along an axis of length n = floor(i k / n)."""
    spatial = x.shape[2:]
    out = torch.zeros(x.shape[:2] + tuple(ks), dtype=x.dtype)
    for idx in itertools.product(*(range(n) for n in spatial)):
        block = tuple(i * k // n for i, k, n in zip(idx, ks, spatial))
        out[(slice(None), slice(None)) + block] += x[(slice(None), slice(None)) + idx]
    return out


@pytest.mark.parametrize("spatial, grid", [((8, 8), 4), ((10, 7), (3, 2)), ((6, 5, 4), 2), ((9,), 4),
                                           ((6, 6), 1), ((5, 5), 5)])
def test_region_sum_equals_loop_over_voxels(spatial, grid):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((2, 3) + spatial, generator=gen, dtype=torch.float64)
    ks = (grid,) * len(spatial) if isinstance(grid, int) else grid
    got = region_sum(x, grid)
    assert got.shape == (2, 3) + tuple(ks)
    assert torch.allclose(got, _loop_sum(x, ks), rtol=1e-12, atol=1e-12)
    assert torch.allclose(got.sum(tuple(range(2, got.dim()))), x.sum(tuple(range(2, x.dim()))))


def test_region_sum_is_the_denominator_of_the_region_loss_and_differentiable():
    gen = torch.Generator().manual_seed(1)
    p = torch.randn(1, 2, 12, 12, generator=gen, dtype=torch.float64).softmax(1).requires_grad_(True)
    y = torch.randint(0, 2, (1, 12, 12), generator=gen)
    g = torch.nn.functional.one_hot(y, 2).movedim(-1, 1).double()
    eps = 1e-7
    per_block = 1 - (2 * region_sum(p * g, 3) + eps) / (region_sum(p * p, 3) + region_sum(g * g, 3) + eps)
    present = region_sum(g, 3) > 0                     # classes absent from a block are skipped
    ours = (per_block * present).sum((2, 3)) / present.sum((2, 3))
    lib = region_specific_loss(p, y, 3, region_reduction="mean", reduction="none")
    assert torch.allclose(ours, lib, rtol=1e-10, atol=1e-12)
    gx, = torch.autograd.grad(region_sum(p, 3).sum(), p)
    assert torch.equal(gx, torch.ones_like(p))


def test_region_sum_rejects_bad_input():
    with pytest.raises(ValueError, match="larger than the volume"):
        region_sum(torch.ones(1, 1, 4, 4), 8)
    with pytest.raises(ValueError, match="spatial"):
        region_sum(torch.ones(2, 3), 1)
    with pytest.raises(TypeError, match="floating"):
        region_sum(torch.ones(1, 1, 4, 4, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="entries"):
        region_sum(torch.ones(1, 1, 4, 4), (2, 2, 2))
    assert "region_sum" in R.__all__
