"""Figures in one consistent style: dose slices with contours, DVHs, training curves.

Every function draws on a Matplotlib ``Axes`` you pass (or creates one) and
returns it, so chapters can compose multi-panel figures. Doses are shown in
Gy, distances in mm.
"""
from __future__ import annotations

import numpy as np

from ._validate import as_numpy, check_dose, check_mask
from .dvh import cumulative_dvh

__all__ = ["set_style", "structure_colors", "dose_slice", "plot_dvh", "plot_history", "DOSE_CMAP"]

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
    dy, dx = (float(s) for s in np.broadcast_to(np.asarray(spacing, float), (2,)))
    extent = (0, d.shape[1] * dx, d.shape[0] * dy, 0)
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
        from matplotlib import patheffects
        from matplotlib.lines import Line2D

        colors = structure_colors(list(masks))
        yy = (np.arange(d.shape[0]) + 0.5) * dy
        xx = (np.arange(d.shape[1]) + 0.5) * dx
        handles = []
        for name, m in masks.items():
            m = check_mask(m, d.shape, name=f"mask {name!r}", allow_empty=True)
            if not m.any():
                continue
            cs = ax.contour(xx, yy, m.astype(float), levels=[0.5], colors=[colors[name]], linewidths=1.3)
            cs.set(path_effects=[patheffects.Stroke(linewidth=3.0, foreground="white"), patheffects.Normal()])
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
