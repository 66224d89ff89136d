"""Network architectures shared by the chapters."""
from .unet import UNet, count_parameters

__all__ = ["UNet", "count_parameters"]
