"""Network architectures shared by the chapters.

``UNet`` (the configurable 2D/3D U-Net), ``DeepDoseNet`` (ResNet + dilated
DenseNet, Soomro et al.), ``ConditionalUNet`` (anatomy + DVH vector, Ma et al.
2021) and ``CascadeUNet`` (the two-stage dose predictor used by DOSELO).
"""
from .cascade import CascadeLoss, CascadeUNet, cascade_loss
from .conditional_unet import ConditionalUNet, depth_dropout
from .deepdosenet import DeepDoseNet
from .unet import UNet, count_parameters

__all__ = ["UNet", "count_parameters", "CascadeUNet", "CascadeLoss", "cascade_loss", "ConditionalUNet",
           "depth_dropout", "DeepDoseNet"]
