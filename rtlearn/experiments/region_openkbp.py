"""The region-losses experiment on OpenKBP's head-and-neck CT: :mod:`rtlearn.experiments.region` on real data.

A study is recorded per chapter name and profile, so the OpenKBP segmentation
study of the region-losses chapter has a name of its own:
``python -m rtlearn.study region_openkbp --profile study --seeds 0-2``. The data
are 2D axial CT slices with five organs at risk (:func:`rtlearn.experiments.region.openkbp_slices`);
everything else (arms, model, run, tables, figures) is the region module's.
"""
from __future__ import annotations

from ..config import check_overrides, check_profile, profile as active_profile
from . import region
from .region import Config, load_data, run, tables  # noqa: F401  (the chapter-module shape)

__all__ = ["default_config", "load_data", "run", "tables", "CLAIMS", "DC_CLAIMS", "Config", "TINY", "STUDY_ARMS"]

#: The claims tested on OpenKBP: the paper's (:data:`rtlearn.experiments.region.CLAIMS`).
CLAIMS = region.CLAIMS
#: The paper's Fig. 7 as a claim, stated before the study: B + RS at DC = 16 beats DC = 1 (one block, a second
#: global Dice term); judged as a family of its own.
DC_CLAIMS = (
    region.Claim("dsc", "Baseline+RS (DC 1)", "Baseline+RS", "higher",
                 "Smaller sub-regions help: B + RS at DC = 16 beats B + RS at DC = 1"),
)
#: The paper's three arms and the division-coefficient ablation of B + RS (DC = 1, 2, 4, 8; 16 is B + RS).
STUDY_ARMS = ("Baseline", "Baseline+RS", "Baseline+ARS", *region.DC_ARMS)
#: Overrides that make ``default_config("study", **TINY)`` run one seed in seconds (tests; needs the data).
TINY = dict(n_train=2, n_val=1, n_test=2, epochs=1, early_epoch=1, width=4, depth=2, batch_size=4, grid=4,
            crop=32, slice_step=8, arms=("Baseline", "Baseline+RS", "Baseline+ARS"))

_DATA = dict(source="openkbp", dims=2, shape=None, spacing=None, noise_hu=0.0, organs=region.ORGANS_OPENKBP_2D,
             window=(-200.0, 400.0), crop=64, z_margin=2, batch_dice=True)


def default_config(profile: str | None = None, **overrides) -> Config:
    """The OpenKBP segmentation experiment's sizes for ``profile``, with ``overrides``.

    Every profile segments OpenKBP's brainstem, spinal cord, parotids and mandible on
    2D axial CT slices cropped to 64 x 64 voxels at the native in-plane voxel size
    (:func:`rtlearn.experiments.region.openkbp_slices`), training and validation
    patients being those with all five organs contoured, every test patient with a
    CT scored on its volume. Most slices hold only some of the organs, so the
    baseline's Dice is taken over each batch of slices as one volume
    (``batch_dice``). With the Dice per slice, the terms of the organs absent from a
    slice reward a network that predicts nothing there; one such run (seed 1) fell
    from a validation DSC of 0.72 after 4 epochs to 0.10 after 19, while its
    validation loss kept falling (0.66 to 0.31).

    * ``quick`` (a demonstration of the data path, about a minute): 12 / 4 / 6
      patients, every 8th slice for training, 4 epochs, the three main arms.
    * ``study`` (recorded by ``python -m rtlearn.study region_openkbp --profile
      study --seeds 0-2``): every usable patient (99 / 16 / 83 in the prepared
      copy), every 4th slice for training and validation, batch 8, the
      learning rate divided by 10 after 2 epochs without improvement of the
      validation loss, at most 14 epochs with early stopping after 4 (the best
      weights restored), learning speed over the first
      3 epochs (about 900 optimisation steps); arms :data:`STUDY_ARMS`.
    * ``full`` (GPU): every slice, a 4-level U-Net of width 16, 60 epochs.

    Raises
    ------
    ValueError
        For an unknown override name, a bad value, or ``source`` other than ``"openkbp"``.
    """
    if overrides.get("source", "openkbp") != "openkbp":
        raise ValueError(f"region_openkbp is the OpenKBP experiment; got source={overrides['source']!r}")
    name = active_profile() if profile is None else check_profile(profile)
    check_overrides(Config, overrides)
    if name == "quick":
        base = dict(n_train=12, n_val=4, n_test=6, slice_step=8, epochs=4, early_epoch=2, batch_size=8,
                    arms=("Baseline", "Baseline+RS", "Baseline+ARS"))
    elif name == "study":
        base = dict(n_train=None, n_val=None, n_test=None, slice_step=4, epochs=14, early_stopping=4,
                    plateau_patience=2, early_epoch=3, batch_size=8, arms=STUDY_ARMS)
    else:
        base = dict(n_train=None, n_val=None, n_test=None, slice_step=1, epochs=60, early_stopping=10,
                    early_epoch=3, batch_size=16, width=16, depth=4, lr=1e-3, arms=STUDY_ARMS)
    return Config(**{**_DATA, **base, **overrides})
