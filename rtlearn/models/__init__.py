"""Network architectures shared by the chapters.

``UNet`` (the configurable 2D/3D U-Net), ``DeepDoseNet`` (ResNet + dilated
DenseNet, Soomro et al.), ``ConditionalUNet`` (anatomy + DVH vector, Ma et al.
2021), ``CascadeUNet`` (the two-stage dose predictor used by DOSELO; its
deep-supervision loss is :mod:`rtlearn.losses.cascade`) and ``ScaledDose``
(a network's output times a fixed dose in Gy).
"""
from .cascade import CascadeUNet, final_output
from .conditional_unet import ConditionalUNet, depth_dropout
from .deepdosenet import DeepDoseNet
from .scaled import ScaledDose
from .unet import UNet, count_parameters

__all__ = ["UNet", "count_parameters", "CascadeUNet", "final_output", "ConditionalUNet", "depth_dropout",
           "DeepDoseNet", "ScaledDose"]
