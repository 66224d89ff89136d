"""rtlearn.plotting: contours drawn in the same coordinates as the image they outline."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from rtlearn import plotting  # noqa: E402
from rtlearn.plotting import draw_contour, image_extent  # noqa: E402

H, W = 40, 60
DY, DX = 2.5, 1.0          # mm: rows 2.5 mm apart, columns 1 mm (anisotropic, so swapped axes show too)


def _l_mask():
    """An L in the upper-left quadrant: symmetric under neither an up-down nor a left-right flip."""
    m = np.zeros((H, W), bool)
    m[3:17, 5:9] = True        # vertical bar
    m[13:17, 5:25] = True      # foot, to the right
    return m


def _vertices(cs):
    segs = [s for level in cs.allsegs for s in level if len(s)]
    assert segs, "the contour has no vertices"
    return np.concatenate(segs)


def _mask_box_mm(m, dy, dx):
    """The mask's bounding box in image coordinates (mm, y down): (x0, x1, y0, y1), pixel edges."""
    ii, jj = np.nonzero(m)
    return jj.min() * dx, (jj.max() + 1) * dx, ii.min() * dy, (ii.max() + 1) * dy


def _box_matches(v, m, dy, dx):
    """The vertices' bounding box equals the mask's (mm) within a quarter pixel.

    The 0.5 iso-line of the pixel centres runs midway between a mask and a non-mask centre, i.e. on the pixel
    edges, so the boxes agree exactly; a quarter pixel of slack rejects a half-pixel shift (outline at
    ``j*dx`` instead of ``(j+0.5)*dx``), a one-pixel shift, a vertical mirror and pixel units.
    """
    x0, x1, y0, y1 = _mask_box_mm(m, dy, dx)
    got = (v[:, 0].min(), v[:, 0].max(), v[:, 1].min(), v[:, 1].max())
    tol = (0.25 * dx, 0.25 * dx, 0.25 * dy, 0.25 * dy)
    return all(abs(g - e) <= t for g, e, t in zip(got, (x0, x1, y0, y1), tol))


def _on_mask(v, m, dy, dx):
    """Every vertex, mapped back to a pixel (int(y/dy), int(x/dx)), lies within one pixel of a mask pixel."""
    i = np.clip((v[:, 1] / dy).astype(int), 0, m.shape[0] - 1)
    j = np.clip((v[:, 0] / dx).astype(int), 0, m.shape[1] - 1)
    near = np.zeros_like(m)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            near |= np.roll(np.roll(m, di, 0), dj, 1)
    return bool(near[i, j].all())


@pytest.fixture
def ax():
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


def test_image_extent():
    assert image_extent((H, W), (DY, DX)) == (0.0, 60.0, 100.0, 0.0)
    assert image_extent((H, W)) == (0.0, W, H, 0.0)                 # pixels
    assert image_extent((4, 6), 2.0) == (0.0, 12.0, 8.0, 0.0)       # one number: square pixels
    assert image_extent(np.zeros((4, 6)).shape, np.array([1.5, 0.5])) == (0.0, 3.0, 6.0, 0.0)


@pytest.mark.parametrize("shape, spacing", [((4, 5, 6), 1.0), ((4,), 1.0), ((0, 3), 1.0), ((4, 6), -1.0),
                                            ((4, 6), 0.0), ((4, 6), np.nan), ((4, 6), (1.0, np.inf)),
                                            ((4, 6), (1.0, 2.0, 3.0))])
def test_image_extent_rejects_bad_input(shape, spacing):
    with pytest.raises(ValueError):
        image_extent(shape, spacing)


def test_contour_lies_on_the_mask_in_image_coordinates(ax):
    m = _l_mask()
    ax.imshow(np.where(m, 1.0, 0.2), cmap="gray", extent=image_extent(m.shape, (DY, DX)))
    cs = draw_contour(ax, m, (DY, DX), color="r", halo=True)
    v = _vertices(cs)
    assert _box_matches(v, m, DY, DX)
    assert _on_mask(v, m, DY, DX)
    # the axes still show exactly the image, row 0 at the top
    assert ax.get_xlim() == pytest.approx((0, W * DX)) and ax.get_ylim() == pytest.approx((H * DY, 0))
    # in display terms too: the outline's topmost vertex is drawn at the screen height of the mask's top row
    top = v[np.argmin(v[:, 1])]
    top_px = ax.transData.transform(top)[1]
    row_edge_px = ax.transData.transform((0, _mask_box_mm(m, DY, DX)[2]))[1]
    assert top_px == pytest.approx(row_edge_px, abs=1e-6)
    assert top_px > ax.transData.transform((0, H * DY / 2))[1]      # upper half of the screen, like the mask


def test_contour_does_not_depend_on_image_origin_or_axis_direction(ax):
    m = _l_mask()
    with matplotlib.rc_context({"image.origin": "lower"}):
        v = _vertices(draw_contour(ax, m, (DY, DX)))
    assert _box_matches(v, m, DY, DX)
    ax.invert_yaxis()
    assert _box_matches(_vertices(draw_contour(ax, m, (DY, DX))), m, DY, DX)


def test_the_box_check_rejects_mirrored_shifted_and_pixel_unit_contours(ax):
    """The checks above can fail: the buggy calls this helper replaced produce vertices they reject."""
    m = _l_mask()
    ax.imshow(m, extent=image_extent(m.shape, (DY, DX)))
    mirrored = _vertices(ax.contour(m.astype(float), levels=[0.5], extent=(0, W * DX, 0, H * DY), origin="upper"))
    assert not _box_matches(mirrored, m, DY, DX)
    assert not _on_mask(mirrored, m, DY, DX)
    pixels = _vertices(ax.contour(m.astype(float), levels=[0.5]))               # pixel units over an image in mm
    assert not _box_matches(pixels, m, DY, DX)
    half = _vertices(ax.contour(np.arange(W) * DX, np.arange(H) * DY, m.astype(float), levels=[0.5]))
    assert not _box_matches(half, m, DY, DX)                                    # half a pixel up and left
    good = _vertices(draw_contour(ax, m, (DY, DX)))
    for shift in ((DX, 0), (0, DY), (-DX, -DY)):                                # one pixel off
        assert not _box_matches(good + np.array(shift), m, DY, DX)
    swapped = _vertices(draw_contour(ax, m, (DX, DY)))                          # (dx, dy) for (dy, dx)
    assert not _box_matches(swapped, m, DY, DX)
    assert _box_matches(good, m, DY, DX)


def test_draw_contour_inputs(ax):
    import torch

    m = _l_mask()
    ref = _vertices(draw_contour(ax, m, (DY, DX)))
    for same in (torch.from_numpy(m), m.astype(np.uint8), m.astype(float)):
        np.testing.assert_allclose(_vertices(draw_contour(ax, same, (DY, DX))), ref)
    assert draw_contour(ax, np.zeros((H, W), bool), (DY, DX)) is None          # empty: draws nothing
    n = len(ax.collections)
    assert draw_contour(ax, np.zeros((5, 5)), label="empty") is None and len(ax.collections) == n
    assert not [ln for ln in ax.lines if ln.get_label() == "empty"]
    cs = draw_contour(ax, m, (DY, DX), color="b", linewidth=2.0, linestyle="--", label="L", zorder=5)
    assert cs.get_zorder() == 5
    assert [h.get_label() for h in ax.get_legend_handles_labels()[0]] == ["L"]


@pytest.mark.parametrize("bad", [np.zeros((2, 4, 4), bool), np.zeros(5, bool), np.full((4, 4), np.nan),
                                 np.eye(4) * 2, np.ones((1, 4), bool)])
def test_draw_contour_rejects_bad_masks(ax, bad):
    with pytest.raises(ValueError):
        draw_contour(ax, bad)


@pytest.mark.parametrize("spacing", [-1.0, 0.0, (1.0, -2.5), np.nan])
def test_draw_contour_rejects_bad_spacing(ax, spacing):
    with pytest.raises(ValueError, match="spacing"):
        draw_contour(ax, _l_mask(), spacing)


def test_draw_contour_refuses_coordinate_overrides(ax):
    with pytest.raises(TypeError, match="origin"):
        draw_contour(ax, _l_mask(), origin="upper")


def test_dose_slice_contours_lie_on_their_masks(ax):
    m = _l_mask()
    dose = np.where(m, 60.0, 5.0)
    plotting.dose_slice(ax, dose, {"L": m, "none": np.zeros_like(m)}, spacing=(DY, DX), colorbar=False)
    assert len(ax.collections) == 1                                              # the empty mask draws nothing
    cs = ax.collections[0]
    v = _vertices(cs)
    assert _box_matches(v, m, DY, DX) and _on_mask(v, m, DY, DX)
    assert cs.get_path_effects()                                                 # the white halo
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["L"]
