"""Inverted residuals' expansions padded with zero channels to a multiple of 16: the same function, in channel counts
that ONNX Runtime's fast int8 depthwise kernel takes (MobileNetV3's 72, 88, 120, 184 and 200 are not multiples of 16).
Measured on this CPU, one thread: LR-ASPP v3-Large int8 at 1024x2048 0.68x -> 0.60x of fp32; fp32 itself gains
nothing (1.04x), so only int8 candidates use it (int8.py)."""

import copy

import torch
from torch import nn

from ..backbones.base import Backbone
from ..layers.blocks import InvertedResidual

MULTIPLE = 16


def padded_expansions(model: nn.Module, multiple: int = MULTIPLE) -> tuple[nn.Module, int]:
    """A copy of `model` (an inference copy: batch norm folded) whose inverted residuals expand to a multiple of
    `multiple` channels, and how many blocks changed. The added channels have zero weights and biases: an activation
    that keeps 0 at 0 keeps them zero through the expansion, the depthwise conv and squeeze-excitation (its gate
    multiplies zero), and the projection reads them with zero weights. A block whose expansion a head reads (SSDLite's
    C4_expand) keeps its width, as does one that still holds batch norm."""
    model = copy.deepcopy(model)
    tapped = {
        id(backbone.layers[backbone.expansion_tap_layer])
        for backbone in model.modules()
        if isinstance(backbone, Backbone) and backbone.expansion_tap_layer >= 0
    }
    changed = 0
    for block in model.modules():
        if isinstance(block, InvertedResidual) and id(block) not in tapped and _pad(block, multiple):
            changed += 1
    return model, changed


def _pad(block: InvertedResidual, multiple: int) -> bool:
    channels = block.expanded_channels
    padded = -(-channels // multiple) * multiple
    if block.expand is None or padded == channels or not _keeps_zero(block):
        return False
    block.expand[0] = _widened(block.expand[0], out_channels=padded)
    block.depthwise[0] = _widened(block.depthwise[0], out_channels=padded)
    if block.se is not None:
        block.se.fc1 = _widened(block.se.fc1, in_channels=padded)
        block.se.fc2 = _widened(block.se.fc2, out_channels=padded)
    block.project[0] = _widened(block.project[0], in_channels=padded)
    return True


def _keeps_zero(block: InvertedResidual) -> bool:
    """Folded (conv then activation only) with activations that map 0 to 0."""
    layers, convs = [*block.expand, *block.depthwise], (0, len(block.expand))
    if any(
        isinstance(layer, nn.Conv2d) != (index in convs) or isinstance(layer, nn.modules.batchnorm._BatchNorm)
        for index, layer in enumerate(layers)
    ):
        return False
    with torch.no_grad():
        return all(
            float(layer(torch.zeros(1, 1, 1, 1)).abs().max()) == 0
            for layer in layers
            if not isinstance(layer, nn.Conv2d)
        )


def _widened(conv: nn.Conv2d, out_channels: int | None = None, in_channels: int | None = None) -> nn.Conv2d:
    """`conv` with zero filters added up to `out_channels` (a depthwise conv: its groups follow) or zero input weights
    up to `in_channels`; the original weights in the first places, in the same memory layout."""
    depthwise = conv.groups > 1
    if depthwise and conv.groups != conv.in_channels:
        raise ValueError("only depthwise grouped convolutions can be widened")
    out_channels = out_channels or conv.out_channels
    in_channels = out_channels if depthwise else (in_channels or conv.in_channels)
    wide = nn.Conv2d(
        in_channels,
        out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        groups=out_channels if depthwise else 1,
        bias=True,
        padding_mode=conv.padding_mode,
    )
    with torch.no_grad():
        weight, bias = torch.zeros_like(wide.weight), torch.zeros_like(wide.bias)
        weight[: conv.out_channels, : conv.weight.shape[1]] = conv.weight
        if conv.bias is not None:
            bias[: conv.out_channels] = conv.bias
        wide.weight, wide.bias = nn.Parameter(weight), nn.Parameter(bias)
    layout = torch.channels_last if conv.weight.is_contiguous(memory_format=torch.channels_last) else None
    return wide.to(dtype=conv.weight.dtype, memory_format=layout or torch.contiguous_format)
