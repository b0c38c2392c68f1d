"""DeepLabv3 heads: ASPP (torchvision's module) with or without its atrous branches, and the FCN auxiliary head."""

from collections.abc import Sequence

from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP
from torchvision.models.segmentation.fcn import FCNHead

__all__ = ["ASPP", "DeepLabV3Head", "FCNHead"]


class DeepLabV3Head(nn.Sequential):
    """ASPP -> optional 3x3 conv-BN-ReLU -> 1x1 class logits, at the resolution of its input.

    `atrous_rates=()` keeps only ASPP's 1x1 and image-pooling branches (the v2 paper's mobile DeepLabv3).
    `refine=True` adds torchvision's 3x3 conv after ASPP (its DeepLabHead, layer for layer); the v2 paper has none.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        atrous_rates: Sequence[int] = (12, 24, 36),
        channels: int = 256,
        refine: bool = True,
    ):
        layers: list[nn.Module] = [ASPP(in_channels, atrous_rates, channels)]
        if refine:
            layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()]
        layers.append(nn.Conv2d(channels, num_classes, 1))
        super().__init__(*layers)
