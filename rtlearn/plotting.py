"""Figures in one consistent style: dose slices with contours, DVHs, training curves.

Every function draws on a Matplotlib ``Axes`` you pass (or creates one) and
returns it, so chapters can compose multi-panel figures. Doses are shown in
Gy, distances in mm.
"""
from __future__ import annotations

import numpy as np

from ._validate import as_numpy, check_dose, check_mask, check_spacing
from .dvh import cumulative_dvh

__all__ = ["set_style", "structure_colors", "image_extent", "draw_contour", "dose_slice", "plot_dvh", "plot_history",
           "DOSE_CMAP"]

DOSE_CMAP = "turbo"

_PALETTE = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
            "#bcbd22", "#7f7f7f", "#1b9e77", "#d95f02"]


def set_style(dpi: int = 90) -> None:
    """The book's Matplotlib style: readable fonts, light grid, compact figures that keep notebooks small."""
    import matplotlib as mpl

    mpl.rcParams.update({
        "figure.dpi": dpi, "savefig.dpi": 150, "figure.figsize": (6.4, 4.2), "font.size": 10,
        "axes.titlesize": 11, "axes.labelsize": 10, "axes.grid": True, "grid.alpha": 0.3,
        "axes.spines.top": False, "axes.spines.right": False, "legend.fontsize": 8, "legend.frameon": False,
        "image.origin": "upper", "figure.constrained_layout.use": True,
    })


def structure_colors(names) -> dict:
    """A stable colour per structure name (same name, same colour, in every figure)."""
    return {n: _PALETTE[i % len(_PALETTE)] for i, n in enumerate(names)}


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots()
    return ax


def _shape2d(shape, name: str = "shape") -> tuple[int, int]:
    try:
        dims = tuple(shape)
    except TypeError:
        raise ValueError(f"{name} must be a 2D shape (H, W), got {shape!r}") from None
    if len(dims) != 2 or not all(isinstance(n, (int, np.integer)) and not isinstance(n, (bool, np.bool_))
                                 and n >= 1 for n in dims):
        raise ValueError(f"{name} must be a 2D shape (H, W) of positive integers, got {shape!r}; "
                         "index a slice first (e.g. mask[z])")
    return int(dims[0]), int(dims[1])


def image_extent(shape, spacing=1.0) -> tuple[float, float, float, float]:
    """The ``imshow`` extent that puts a 2D image in mm, row 0 at the top: ``(0, W*dx, H*dy, 0)``.

    Parameters
    ----------
    shape : tuple of int
        The image's shape ``(H, W)`` (rows, columns).
    spacing : float or (dy, dx), default 1.0
        Pixel size in mm (row spacing ``dy``, column spacing ``dx``); ``1.0``
        gives pixel units. Must be positive and finite.

    Returns
    -------
    tuple of float
        ``(left, right, bottom, top) = (0, W*dx, H*dy, 0)``: pixel ``(i, j)``
        covers ``[j*dx, (j+1)*dx] x [i*dy, (i+1)*dy]`` with y pointing down.
        :func:`draw_contour` draws masks in these same coordinates.

    Raises
    ------
    ValueError
        If ``shape`` is not 2D or ``spacing`` is not positive and finite.

    Examples
    --------
    >>> image_extent((40, 60), (2.5, 1.0))
    (0.0, 60.0, 100.0, 0.0)
    """
    h, w = _shape2d(shape)
    if spacing is not None and np.ndim(spacing) == 0:   # one number (also a 0-d array/tensor): square pixels
        spacing = [spacing, spacing]
    dy, dx = (float(s) for s in check_spacing(spacing, 2))
    return 0.0, w * dx, h * dy, 0.0


def draw_contour(ax, mask, spacing=1.0, *, color="k", linewidth=1.0, linestyle="-", label=None, halo=False,
                 **kwargs):
    """Draw the outline of a 2D mask in the coordinates of ``imshow(..., extent=image_extent(mask.shape, spacing))``.

    The outline is the 0.5 iso-line of the mask sampled at the pixel centres
    ``x = (j + 0.5) * dx``, ``y = (i + 0.5) * dy``, passed to ``ax.contour``
    as explicit coordinate arrays, so it lies on the mask whatever the
    axes' y direction and the ``image.origin`` setting (no ``extent``/``origin``
    guesswork, which mirrors or shifts outlines).

    Parameters
    ----------
    ax : matplotlib Axes
        Where to draw (normally one showing an image with
        ``extent=image_extent(mask.shape, spacing)``).
    mask : array_like (H, W)
        Boolean mask (NumPy, torch, or 0/1 numbers), at least 2 x 2 pixels.
    spacing : float or (dy, dx), default 1.0
        Pixel size in mm; ``1.0`` gives pixel units (pixel edges at integers).
    color : colour, default "k"
    linewidth : float, default 1.0
    linestyle : str, default "-"
    label : str, optional
        Legend entry: a line of the same colour and style (only if the mask is
        not empty).
    halo : bool or float, default False
        Draw a white stroke under the line so it stays visible over any dose
        colour: ``True`` for a stroke 1.7 pt wider than ``linewidth``, a number
        for that stroke width (pt).
    **kwargs
        Passed to ``ax.contour`` (e.g. ``zorder``, ``alpha``); ``levels``,
        ``extent``, ``origin``, ``colors``, ``linewidths`` and ``linestyles``
        are set here.

    Returns
    -------
    matplotlib.contour.QuadContourSet or None
        The contour set, or ``None`` for an empty mask (nothing is drawn).

    Raises
    ------
    ValueError
        If ``mask`` is not 2D (at least 2 x 2), contains NaN or values other
        than 0/1, or ``spacing`` is not positive and finite.

    Notes
    -----
    The 0.5 level lies midway between the centres of a mask and a non-mask
    pixel, i.e. on the pixel edge: straight sides of the outline follow the
    mask's pixel edges exactly (its bounding box is the mask's, in mm) and
    corners are cut diagonally. Where the mask touches the image border the
    line ends at the border pixels' centres (open there); a mask filling
    the whole image has no outline.
    """
    m = check_mask(mask, allow_empty=True)
    if m.ndim != 2 or min(m.shape) < 2:
        raise ValueError(f"draw_contour needs a 2D mask of at least 2 x 2 pixels, got shape {m.shape}; "
                         "index a slice first (e.g. mask[z])")
    _, w_mm, h_mm, _ = image_extent(m.shape, spacing)
    fixed = {"levels", "extent", "origin", "colors", "linewidths", "linestyles"} & set(kwargs)
    if fixed:
        raise TypeError(f"draw_contour sets {sorted(fixed)} itself; use color/linewidth/linestyle")
    if not m.any():
        return None
    dy, dx = h_mm / m.shape[0], w_mm / m.shape[1]
    yy = (np.arange(m.shape[0]) + 0.5) * dy
    xx = (np.arange(m.shape[1]) + 0.5) * dx
    cs = ax.contour(xx, yy, m.astype(float), levels=[0.5], colors=[color], linewidths=linewidth,
                    linestyles=linestyle, **kwargs)
    if halo is not False and halo is not None:
        from matplotlib import patheffects

        width = linewidth + 1.7 if halo is True else float(halo)
        cs.set(path_effects=[patheffects.Stroke(linewidth=width, foreground="white"), patheffects.Normal()])
    if label is not None:
        ax.plot([], [], color=color, lw=linewidth, ls=linestyle, label=label)
    return cs


def dose_slice(ax=None, dose=None, masks: dict | None = None, spacing=(1.0, 1.0), image=None, vmax=None,
               title=None, colorbar=True, threshold=0.02, unit="Gy", cmap=DOSE_CMAP, alpha=0.75, legend=True,
               image_cmap="gray", image_window=(-400, 400)):
    """Show a 2D dose (Gy) over an optional grey image, with structure contours and a colour bar.

    Parameters
    ----------
    ax : matplotlib Axes, optional
    dose : array_like (H, W)
        Dose in ``unit``; values below ``threshold * vmax`` are transparent so
        the anatomy stays visible.
    masks : dict[str, array_like], optional
        Structure contours to draw (empty ones are ignored).
    spacing : (dy, dx)
        Pixel size in mm; axes are labelled in mm.
    image : array_like (H, W), optional
        Background (e.g. CT in HU, windowed by ``image_window``).
    """
    ax = _axes(ax)
    d = check_dose(dose)
    if d.ndim != 2:
        raise ValueError(f"dose_slice draws a 2D slice, got shape {d.shape}; index a slice first (e.g. dose[z])")
    extent = image_extent(d.shape, spacing)
    if image is not None:
        img = as_numpy(image, "image")
        if img.shape != d.shape:
            raise ValueError(f"image has shape {img.shape}, dose has {d.shape}")
        ax.imshow(img, cmap=image_cmap, vmin=image_window[0], vmax=image_window[1], extent=extent,
                  interpolation="nearest")
    vmax = float(d.max()) if vmax is None else float(vmax)
    shown = np.ma.masked_less(d, threshold * vmax)  # low doses transparent: the anatomy stays visible
    im = ax.imshow(shown, cmap=cmap, vmin=0, vmax=max(vmax, 1e-9), extent=extent,
                   alpha=alpha if image is not None else 1, interpolation="nearest")
    if masks:
        from matplotlib.lines import Line2D

        colors = structure_colors(list(masks))
        handles = []
        for name, m in masks.items():
            m = check_mask(m, d.shape, name=f"mask {name!r}", allow_empty=True)
            if draw_contour(ax, m, spacing, color=colors[name], linewidth=1.3, halo=3.0) is not None:
                handles.append(Line2D([], [], color=colors[name], label=name))
        if legend and handles:
            leg = ax.legend(handles=handles, loc="lower right", fontsize=7, frameon=True, framealpha=0.8,
                            handlelength=1.2, borderpad=0.3)
            leg.get_frame().set_linewidth(0)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, label=f"dose ({unit})", fraction=0.046, pad=0.04)
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("y (mm)")
    ax.set_facecolor("white")
    ax.grid(False)
    if title:
        ax.set_title(title)
    return ax


def plot_dvh(ax=None, dose_true=None, masks: dict | None = None, dose_pred=None, bins=None, unit="Gy",
             title=None, legend=True, labels=("reference", "predicted")):
    """Cumulative DVHs of every structure: reference solid, prediction dashed (same colour per structure).

    ``labels`` names the solid and dashed line styles in the legend (e.g. ``("plan A", "plan B")``).
    """
    ax = _axes(ax)
    d = check_dose(dose_true, "dose_true")
    if not masks:
        raise ValueError("plot_dvh needs a non-empty dict of structure masks")
    top = float(d.max()) if dose_pred is None else float(max(d.max(), check_dose(dose_pred, "dose_pred").max()))
    axis = np.linspace(0, top * 1.02 + 1e-9, 400) if bins is None else bins
    colors = structure_colors(list(masks))
    for name, m in masks.items():
        m = check_mask(m, d.shape, name=f"mask {name!r}", allow_empty=True)
        if not m.any():
            continue
        x, v = cumulative_dvh(d, m, bins=axis)
        ax.plot(x, 100 * v, color=colors[name], lw=1.5, label=name)
        if dose_pred is not None:
            x, v = cumulative_dvh(dose_pred, m, bins=axis)
            ax.plot(x, 100 * v, color=colors[name], lw=1.5, ls="--")
    ax.set_xlabel(f"dose ({unit})")
    ax.set_ylabel("volume (%)")
    ax.set_ylim(0, 102)
    ax.set_xlim(0, axis[-1])
    if legend:
        labels_styles = labels
        handles, labels = ax.get_legend_handles_labels()
        if dose_pred is not None:
            from matplotlib.lines import Line2D

            handles += [Line2D([], [], color="k", lw=1.5), Line2D([], [], color="k", lw=1.5, ls="--")]
            labels += list(labels_styles)
        ax.legend(handles, labels, loc="upper right", fontsize=7)
    if title:
        ax.set_title(title)
    return ax


def plot_history(history, ax=None, keys=("train_loss", "val_loss"), log=True, label_prefix="", title=None):
    """Training curves from a :class:`rtlearn.train.History` (or a list of per-epoch dicts)."""
    ax = _axes(ax)
    records = history.records if hasattr(history, "records") else list(history)
    if not records:
        raise ValueError("history is empty: train for at least one epoch first")
    epochs = [r["epoch"] for r in records]
    for key in keys:
        vals = [r.get(key, np.nan) for r in records]
        if np.all(np.isnan(vals)):
            continue
        ax.plot(epochs, vals, marker="o", ms=3, ls="-" if key.startswith("train") else "--",
                label=f"{label_prefix}{key.replace('_', ' ')}")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    if title:
        ax.set_title(title)
    return ax
