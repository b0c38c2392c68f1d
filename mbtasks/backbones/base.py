"""A MobileNet backbone built from a table of blocks, returning named feature maps by stride; the BACKBONES registry."""

from collections import OrderedDict

import torch
from torch import nn

from ..errors import MbtasksError
from ..layers.blocks import BlockSpec, build_block
from ..registry import Registry

OUTPUT_STRIDES = (8, 16, 32)
TAP_NAMES = {2: "C1", 4: "C2", 8: "C3", 16: "C4", 32: "C5"}
EXPAND_TAP = "C4_expand"


class Backbone(nn.Module):
    """Layers of a MobileNet table with taps C1..C5 (last layer at each stride) and C4_expand.

    `C4_expand` is the 1x1 expansion output of the first stride-32 block (the map SSDLite reads at stride 16).
    """

    def __init__(self, specs: list[BlockSpec], output_stride: int = 32, bn_eps: float = 1e-5, in_channels: int = 3):
        super().__init__()
        if output_stride not in OUTPUT_STRIDES:
            raise MbtasksError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
        self.layers = nn.ModuleList()
        self.out_channels: dict[str, int] = {}
        self.strides: dict[str, int] = {}
        self._tap_after: dict[int, list[str]] = {}
        self._expand_index = -1
        self._channels: list[int] = []
        natural, effective, dilation, channels = 1, 1, 1, in_channels
        natural_strides = []
        self.layer_strides: list[int] = []  # the table's (undilated) stride after each layer
        for spec in specs:
            stride = spec.stride
            # One place decides strides: past the output stride a block dilates instead (torchvision's rule:
            # the block that gives up its stride already uses the larger dilation).
            if stride > 1 and effective * stride > output_stride:
                dilation, stride = dilation * stride, 1
            effective *= stride
            natural *= spec.stride
            natural_strides.append((natural, effective))
            self.layers.append(build_block(spec, channels, stride, dilation, bn_eps))
            self._channels.append(spec.out_channels)
            channels = spec.out_channels
        for index, (natural, effective) in enumerate(natural_strides):
            is_last_at_stride = index + 1 == len(natural_strides) or natural_strides[index + 1][0] != natural
            if natural in TAP_NAMES and is_last_at_stride:
                name = TAP_NAMES[natural]
                self._tap_after[index] = [name]
                self.out_channels[name] = specs[index].out_channels
                self.strides[name] = effective
            if natural == 32 and self._expand_index < 0:
                self._expand_index = index
                self.out_channels[EXPAND_TAP] = self.layers[index].expanded_channels
                self.strides[EXPAND_TAP] = natural_strides[index - 1][1]
        self.layer_strides = [natural for natural, _ in natural_strides]
        self._effective_strides = [effective for _, effective in natural_strides]
        self.num_features = channels

    @property
    def expansion_tap_layer(self) -> int:
        """Index of the layer whose expansion output is the `C4_expand` tap (-1: none)."""
        return self._expand_index

    def add_tap(self, name: str, layer_index: int) -> None:
        """Also return the output of layer `layer_index` under `name` (for heads that read other layers)."""
        self._tap_after.setdefault(layer_index, []).append(name)
        self.out_channels[name] = self._channels[layer_index]
        self.strides[name] = self._effective_strides[layer_index]

    def first_layer_at_stride(self, stride: int) -> int:
        """Index of the first layer whose output has the table stride `stride` (torchvision's segmentation taps)."""
        return self.layer_strides.index(stride)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """All taps, in order of stride."""
        features = OrderedDict()
        for index, layer in enumerate(self.layers):
            if index == self._expand_index:
                x, features[EXPAND_TAP] = layer.forward_with_expansion(x)
            else:
                x = layer(x)
            for name in self._tap_after.get(index, ()):
                features[name] = x
        return features

    def forward_last(self, x: torch.Tensor) -> torch.Tensor:
        """Only the last feature map (what a classifier reads)."""
        for layer in self.layers:
            x = layer(x)
        return x


BACKBONES: Registry = Registry("backbone")
BACKBONES.__doc__ = """MobileNet versions by name. A registered builder takes keyword options `width_mult` (> 0),
`output_stride` (8, 16 or 32: dilation past it), `reduced_tail` (halve the channels after C4) and `bn_eps`, and
returns a Backbone whose forward gives the named taps C1..C5 and C4_expand."""
