"""MobileNet v3 Large and Small (Howard et al. 2019, tables 1-2) as tables of inverted residual blocks."""

from torch import nn

from ..layers.blocks import BlockSpec, check_width, make_divisible
from .base import BACKBONES, Backbone

RE, HS = nn.ReLU, nn.Hardswish
# kernel, expanded, output channels, squeeze-excite, activation, stride (the paper's tables 1 and 2).
LARGE = [
    (3, 16, 16, False, RE, 1),
    (3, 64, 24, False, RE, 2),
    (3, 72, 24, False, RE, 1),
    (5, 72, 40, True, RE, 2),
    (5, 120, 40, True, RE, 1),
    (5, 120, 40, True, RE, 1),
    (3, 240, 80, False, HS, 2),
    (3, 200, 80, False, HS, 1),
    (3, 184, 80, False, HS, 1),
    (3, 184, 80, False, HS, 1),
    (3, 480, 112, True, HS, 1),
    (3, 672, 112, True, HS, 1),
    (5, 672, 160, True, HS, 2),
    (5, 960, 160, True, HS, 1),
    (5, 960, 160, True, HS, 1),
]
SMALL = [
    (3, 16, 16, True, RE, 2),
    (3, 72, 24, False, RE, 2),
    (3, 88, 24, False, RE, 1),
    (5, 96, 40, True, HS, 2),
    (5, 240, 40, True, HS, 1),
    (5, 240, 40, True, HS, 1),
    (5, 120, 48, True, HS, 1),
    (5, 144, 48, True, HS, 1),
    (5, 288, 96, True, HS, 2),
    (5, 576, 96, True, HS, 1),
    (5, 576, 96, True, HS, 1),
]
STEM_CHANNELS = 16
# torchvision trains v3 with these batch-norm settings; its checkpoints need eps 1e-3 to give the same outputs.
BN_EPS = 1e-3


def _mobilenet_v3(table, width_mult: float, output_stride: int, reduced_tail: bool, bn_eps: float) -> Backbone:
    width_mult = check_width(width_mult)
    channels = make_divisible(STEM_CHANNELS * width_mult)
    specs = [BlockSpec("conv", channels, 2, activation=HS)]
    natural, table_in = 2, STEM_CHANNELS
    for kernel, expanded, out, se, act, stride in table:
        # Expansion is a ratio of the rounded input (TF's and timm's rule): it gives the paper's 0.75 models.
        ratio, table_in = expanded / table_in, out
        natural *= stride
        if reduced_tail and natural == 32:
            out //= 2  # the v3 paper halves the channels after C4
        expanded = make_divisible(channels * ratio)
        channels = make_divisible(out * width_mult)
        specs.append(BlockSpec("inverted", channels, stride, kernel, expanded, se, act))
    specs.append(BlockSpec("conv", 6 * channels, 1, 1, activation=HS))
    return Backbone(specs, output_stride, bn_eps)


@BACKBONES.register("mobilenet_v3_large")
def mobilenet_v3_large(
    width_mult: float = 1.0, output_stride: int = 32, reduced_tail: bool = False, bn_eps: float = BN_EPS
) -> Backbone:
    """v3-Large backbone; the last 1x1 conv has 6x the last block's channels (960 at width 1)."""
    return _mobilenet_v3(LARGE, width_mult, output_stride, reduced_tail, bn_eps)


@BACKBONES.register("mobilenet_v3_small")
def mobilenet_v3_small(
    width_mult: float = 1.0, output_stride: int = 32, reduced_tail: bool = False, bn_eps: float = BN_EPS
) -> Backbone:
    """v3-Small backbone; the last 1x1 conv has 576 channels at width 1."""
    return _mobilenet_v3(SMALL, width_mult, output_stride, reduced_tail, bn_eps)
