"""MobileNet v1 (Howard et al. 2017, table 1) as a table of depthwise separable blocks."""

from torch import nn

from ..layers.blocks import BlockSpec, check_width, make_divisible
from .base import BACKBONES, Backbone

# (output channels, stride) of the 13 depthwise separable blocks after the stride-2 3x3 stem of 32 channels.
SEPARABLE_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
STEM_CHANNELS = 32


@BACKBONES.register("mobilenet_v1")
def mobilenet_v1(
    width_mult: float = 1.0, output_stride: int = 32, reduced_tail: bool = False, bn_eps: float = 1e-5
) -> Backbone:
    """v1 backbone; ReLU6 as timm's mobilenetv1_100, so its checkpoints load unchanged."""
    width_mult = check_width(width_mult)
    specs = [BlockSpec("conv", make_divisible(STEM_CHANNELS * width_mult), 2, activation=nn.ReLU6)]
    natural = 2
    for channels, stride in SEPARABLE_BLOCKS:
        natural *= stride
        if reduced_tail and natural == 32:
            channels //= 2
        specs.append(BlockSpec("separable", make_divisible(channels * width_mult), stride, activation=nn.ReLU6))
    return Backbone(specs, output_stride, bn_eps)
