"""The shared vocabulary of MobileNet layers: conv-BN-activation, depthwise separable, inverted residual."""

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation, SqueezeExcitation

from ..errors import MbtasksError


def check_width(width_mult: float) -> float:
    """A width multiplier must be a positive number."""
    if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or width_mult <= 0:
        raise MbtasksError(f"width_mult must be a positive number, got {width_mult!r}")
    return float(width_mult)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of `divisor`, never dropping below 90% of the value (the papers' rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


@dataclass(frozen=True)
class BlockSpec:
    """One row of a MobileNet table: a plain conv, a v1 depthwise separable block or a v2/v3 inverted residual."""

    kind: str  # "conv" | "separable" | "inverted"
    out_channels: int
    stride: int = 1
    kernel: int = 3
    expanded: int = 0  # inverted residual: channels after the 1x1 expansion
    se: bool = False
    activation: type[nn.Module] = nn.ReLU6


class DepthwiseSeparable(nn.Module):
    """MobileNet v1 block: 3x3 depthwise conv-BN-act, then 1x1 pointwise conv-BN-act."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dilation: int, activation, norm):
        super().__init__()
        self.depthwise = Conv2dNormActivation(
            in_channels,
            in_channels,
            3,
            stride,
            groups=in_channels,
            dilation=dilation,
            norm_layer=norm,
            activation_layer=activation,
            inplace=True,
        )
        self.pointwise = Conv2dNormActivation(
            in_channels, out_channels, 1, norm_layer=norm, activation_layer=activation, inplace=True
        )
        self.expanded_channels = in_channels

    def forward_with_expansion(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """v1 has no expansion: the block's input stands in for it (what SSDLite reads at stride 16)."""
        return self.pointwise(self.depthwise(x)), x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class InvertedResidual(nn.Module):
    """v2/v3 block: optional 1x1 expansion, depthwise, optional squeeze-excite, linear 1x1 projection, residual."""

    def __init__(
        self,
        in_channels: int,
        expanded: int,
        out_channels: int,
        kernel: int,
        stride: int,
        dilation: int,
        se: bool,
        activation,
        norm,
        use_residual: bool,
    ):
        super().__init__()
        self.expand = None
        if expanded != in_channels:
            self.expand = Conv2dNormActivation(
                in_channels, expanded, 1, norm_layer=norm, activation_layer=activation, inplace=True
            )
        self.depthwise = Conv2dNormActivation(
            expanded,
            expanded,
            kernel,
            stride,
            groups=expanded,
            dilation=dilation,
            norm_layer=norm,
            activation_layer=activation,
            inplace=True,
        )
        self.se = None
        if se:
            self.se = SqueezeExcitation(expanded, make_divisible(expanded // 4), scale_activation=nn.Hardsigmoid)
        self.project = Conv2dNormActivation(expanded, out_channels, 1, norm_layer=norm, activation_layer=None)
        self.use_residual = use_residual
        self.expanded_channels = expanded

    def forward_with_expansion(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Output and the 1x1 expansion output (the input itself where the block does not expand)."""
        expanded = self.expand(x) if self.expand is not None else x
        y = self.depthwise(expanded)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        if self.use_residual:
            y += x  # in place, as torchvision: one tensor fewer per block
        return y, expanded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_expansion(x)[0]


def build_block(spec: BlockSpec, in_channels: int, stride: int, dilation: int, bn_eps: float) -> nn.Module:
    """Build one table row; `stride` and `dilation` are decided by the backbone for the output stride."""
    norm = partial(nn.BatchNorm2d, eps=bn_eps)
    if spec.kind == "conv":
        # A 1x1 conv ignores dilation, but a dilation argument sends it to slower kernels.
        return Conv2dNormActivation(
            in_channels,
            spec.out_channels,
            spec.kernel,
            stride,
            dilation=dilation if spec.kernel > 1 else 1,
            norm_layer=norm,
            activation_layer=spec.activation,
            inplace=True,
        )
    if spec.kind == "separable":
        return DepthwiseSeparable(in_channels, spec.out_channels, stride, dilation, spec.activation, norm)
    if spec.kind == "inverted":
        # The residual follows the table's stride, so a block that trades its stride for dilation keeps none.
        use_residual = spec.stride == 1 and in_channels == spec.out_channels
        return InvertedResidual(
            in_channels,
            spec.expanded,
            spec.out_channels,
            spec.kernel,
            stride,
            dilation,
            spec.se,
            spec.activation,
            norm,
            use_residual,
        )
    raise ValueError(f"unknown block kind {spec.kind!r}")
