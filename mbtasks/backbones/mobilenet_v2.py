"""MobileNet v2 (Sandler et al. 2018, table 2) as a table of inverted residual blocks."""

from torch import nn

from ..layers.blocks import BlockSpec, check_width, make_divisible
from .base import BACKBONES, Backbone

# expansion t, output channels c, repeats n, first stride s (the paper's table 2).
INVERTED_RESIDUAL_SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
STEM_CHANNELS, LAST_CHANNELS = 32, 1280


@BACKBONES.register("mobilenet_v2")
def mobilenet_v2(
    width_mult: float = 1.0, output_stride: int = 32, reduced_tail: bool = False, bn_eps: float = 1e-5
) -> Backbone:
    """v2 backbone; the last 1x1 layer keeps 1280 channels for width < 1 and scales above (the paper's rule)."""
    width_mult = check_width(width_mult)
    channels = make_divisible(STEM_CHANNELS * width_mult)
    specs = [BlockSpec("conv", channels, 2, activation=nn.ReLU6)]
    natural = 2
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
        natural *= s
        tail = 2 if reduced_tail and natural == 32 else 1
        out = make_divisible(c // tail * width_mult)
        for i in range(n):
            specs.append(
                BlockSpec("inverted", out, s if i == 0 else 1, 3, int(round(channels * t)), activation=nn.ReLU6)
            )
            channels = out
    tail = 2 if reduced_tail else 1
    specs.append(
        BlockSpec("conv", make_divisible(LAST_CHANNELS // tail * max(1.0, width_mult)), 1, 1, activation=nn.ReLU6)
    )
    return Backbone(specs, output_stride, bn_eps)
