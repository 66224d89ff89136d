"""Loss functions for dose prediction and segmentation in radiotherapy.

* :mod:`~rtlearn.losses.sharp` -- sharp loss (Bai et al. 2021).
* :mod:`~rtlearn.losses.dose` -- masked MSE / MAE (Soomro et al., DeepDoseNet).
* :mod:`~rtlearn.losses.dvh` -- differentiable DVH (Nguyen et al. 2020) and the DVH loss (DeepDoseNet).
* :mod:`~rtlearn.losses.overlap` -- Dice, CE, Dice+CE, Tversky, focal Tversky, generalised Dice,
  sensitivity-specificity (Chen et al. 2023 and the losses it compares).
* :mod:`~rtlearn.losses.region` -- region-specific and adaptive region-specific losses (Chen et al. 2023).
* :mod:`~rtlearn.losses.dose_guided` -- DOSELO's dose-guided segmentation loss (Rüfenacht et al. 2023),
  its straight-through variant and the beam-surrogate loss.
* :mod:`~rtlearn.losses.cascade` -- deep-supervision loss of a cascade of dose networks (DOSELO's predictor).

Their time and memory at full 3D scale: ``python -m rtlearn.bench.losses``.
"""
from .cascade import DEEP_SUPERVISION_WEIGHTS, CascadeLoss, cascade_loss
from .overlap import (
    CrossEntropyLoss,
    DiceCELoss,
    DiceLoss,
    FocalTverskyLoss,
    GeneralizedDiceLoss,
    SensitivitySpecificityLoss,
    TverskyLoss,
    cross_entropy_loss,
    dice_ce_loss,
    dice_loss,
    focal_tversky_loss,
    generalized_dice_loss,
    sensitivity_specificity_loss,
    tversky_loss,
)
from .dose_guided import (
    BCELoss,
    BCESoftDiceLoss,
    DoseGuidedLoss,
    StraightThroughDoseGuidedLoss,
    SurrogateGuidedLoss,
    assemble_dose_input,
    bce_soft_dice_loss,
    binary_cross_entropy,
    dose_guided_loss,
    dose_segmentation_loss,
    freeze,
    soft_dice_loss,
    straight_through,
    surrogate_guided_loss,
    true_target_dose,
)
from .dose import MaskedMAELoss, MaskedMSELoss, masked_mae, masked_mse
from .dvh import DVHLoss, MAEPlusDVHLoss, dvh_loss, dvh_thresholds, mae_plus_dvh_loss, soft_dvh
from .region import (
    AdaptiveRegionSpecificLoss,
    RegionSpecificLoss,
    SumOfLosses,
    adaptive_region_specific_loss,
    adaptive_tversky_weights,
    region_specific_loss,
    region_sum,
    sum_of_losses,
)
from .sharp import SharpLoss, demarcation_dose, sharp_loss, sharp_loss_grad, sharp_weight

__all__ = [
    # sharp loss
    "sharp_loss", "sharp_loss_grad", "sharp_weight", "demarcation_dose", "SharpLoss",
    # dose
    "masked_mse", "masked_mae", "MaskedMSELoss", "MaskedMAELoss",
    "dvh_thresholds", "soft_dvh", "dvh_loss", "DVHLoss", "MAEPlusDVHLoss",
    # segmentation
    "dice_loss", "cross_entropy_loss", "dice_ce_loss", "tversky_loss", "focal_tversky_loss",
    "generalized_dice_loss", "sensitivity_specificity_loss",
    "DiceLoss", "CrossEntropyLoss", "DiceCELoss", "TverskyLoss", "FocalTverskyLoss",
    "GeneralizedDiceLoss", "SensitivitySpecificityLoss",
    "region_sum", "region_specific_loss", "adaptive_tversky_weights", "adaptive_region_specific_loss",
    "RegionSpecificLoss", "AdaptiveRegionSpecificLoss",
    # dose-guided segmentation (DOSELO)
    "dose_guided_loss", "dose_segmentation_loss", "DoseGuidedLoss", "true_target_dose", "assemble_dose_input",
    "freeze", "binary_cross_entropy", "soft_dice_loss", "bce_soft_dice_loss", "BCESoftDiceLoss",
    "straight_through", "StraightThroughDoseGuidedLoss", "surrogate_guided_loss", "SurrogateGuidedLoss", "BCELoss",
    "mae_plus_dvh_loss", "SumOfLosses", "sum_of_losses",
    # deep supervision of a cascade
    "cascade_loss", "CascadeLoss", "DEEP_SUPERVISION_WEIGHTS",
]
