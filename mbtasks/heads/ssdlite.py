"""SSD and SSDLite on a backbone: two taps plus extra stride-2 layers (six maps), default boxes and the heads."""

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSDScoringHead
from torchvision.models.detection.ssdlite import SSDLiteHead
from torchvision.ops import Conv2dNormActivation

# Channels of the four extra layers after the last backbone map (v2 paper section 6.2, torchvision, TF's API).
EXTRA_CHANNELS = (512, 256, 256, 128)
MIN_DEPTH = 16


def normal_init(module: nn.Module, std: float = 0.03) -> None:
    """Normal(0, 0.03) conv weights, zero biases: TF's and torchvision's SSDLite init when trained from scratch."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, mean=0.0, std=std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def extra_block(in_channels: int, out_channels: int, depthwise: bool, norm: Callable[..., nn.Module]) -> nn.Sequential:
    """1x1 to out/2, then a stride-2 3x3: depthwise + 1x1 to out (SSDLite, torchvision's layout) or a full conv
    (SSD)."""
    mid = out_channels // 2
    layers = [Conv2dNormActivation(in_channels, mid, 1, norm_layer=norm, activation_layer=nn.ReLU6)]
    if depthwise:
        layers += [
            Conv2dNormActivation(mid, mid, 3, 2, groups=mid, norm_layer=norm, activation_layer=nn.ReLU6),
            Conv2dNormActivation(mid, out_channels, 1, norm_layer=norm, activation_layer=nn.ReLU6),
        ]
    else:
        layers.append(Conv2dNormActivation(mid, out_channels, 3, 2, norm_layer=norm, activation_layer=nn.ReLU6))
    return nn.Sequential(*layers)


def extra_layers(in_channels: int, width_mult: float, depthwise: bool, norm: Callable[..., nn.Module]) -> nn.ModuleList:
    """The four extra layers, widths scaled as torchvision's `max(16, int(d * width_mult))`."""
    depths = [max(MIN_DEPTH, int(d * width_mult)) for d in EXTRA_CHANNELS]
    return nn.ModuleList(
        extra_block(c_in, c_out, depthwise, norm) for c_in, c_out in zip([in_channels] + depths[:-1], depths)
    )


class SSDFeatures(nn.Module):
    """Backbone taps (by name) followed by the extra layers: the maps SSD predicts from, as an ordered dict."""

    def __init__(self, body: nn.Module, taps: Sequence[str], extra: nn.ModuleList):
        super().__init__()
        self.body = body
        self.extra = extra
        self.taps = tuple(taps)
        extra_channels = [block[-1].out_channels for block in extra]
        self.out_channels = [body.out_channels[tap] for tap in self.taps] + extra_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        features = self.body(x)
        maps = [features[tap] for tap in self.taps]
        x = maps[-1]
        for block in self.extra:
            x = block(x)
            maps.append(x)
        return OrderedDict((str(i), m) for i, m in enumerate(maps))


class SSDConvHead(nn.Module):
    """SSD's heads: one plain k x k conv per map for class logits and one for box offsets (torchvision's SSDHead)."""

    def __init__(self, in_channels: list[int], num_anchors: list[int], num_classes: int, kernel_size: int = 3):
        super().__init__()

        def convs(columns: int) -> nn.ModuleList:
            return nn.ModuleList(
                nn.Conv2d(c, columns * a, kernel_size, padding=kernel_size // 2)
                for c, a in zip(in_channels, num_anchors)
            )

        self.classification_head = SSDScoringHead(convs(num_classes), num_classes)
        self.regression_head = SSDScoringHead(convs(4), 4)

    def forward(self, x: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"bbox_regression": self.regression_head(x), "cls_logits": self.classification_head(x)}


def ssd_head(
    in_channels: list[int],
    num_anchors: list[int],
    num_classes: int,
    lite: bool,
    norm: Callable[..., nn.Module],
    kernel_size: int = 3,
) -> nn.Module:
    """SSDLite's 3x3 depthwise + BN + ReLU6 + 1x1 heads (torchvision's SSDLiteHead) or SSD's plain conv heads."""
    if lite:
        head = SSDLiteHead(in_channels, num_anchors, num_classes, norm)
    else:
        head = SSDConvHead(in_channels, num_anchors, num_classes, kernel_size)
    normal_init(head)
    return head


class LowestLayerReducedBoxes(DefaultBoxGenerator):
    """TF object detection API's `reduce_boxes_in_lowest_layer`: 3 boxes on the first map, (0.1, 1), (s, 2), (s, 1/2).

    The papers' detectors were built with it; it is what separates their parameters and multiply-adds from
    torchvision's (6 boxes everywhere): 672 x 285 weights and 76.6M multiply-adds for v3-Large at 320.
    """

    def _generate_wh_pairs(
        self, num_outputs: int, dtype: torch.dtype = torch.float32, device: torch.device = torch.device("cpu")
    ) -> list[torch.Tensor]:
        pairs = super()._generate_wh_pairs(num_outputs, dtype, device)
        s, r = self.scales[0], math.sqrt(2.0)
        pairs[0] = torch.as_tensor([[0.1, 0.1], [s * r, s / r], [s / r, s * r]], dtype=dtype, device=device)
        return pairs

    def num_anchors_per_location(self) -> list[int]:
        return [len(pairs) for pairs in self._wh_pairs]


def default_boxes(num_maps: int, reduce_boxes_in_lowest_layer: bool = False) -> DefaultBoxGenerator:
    """Aspect ratios 1, 2, 1/2, 3, 1/3 plus one in-between scale on every map, scales 0.2..0.95 (torchvision, TF)."""
    generator = LowestLayerReducedBoxes if reduce_boxes_in_lowest_layer else DefaultBoxGenerator
    return generator([[2, 3]] * num_maps, min_ratio=0.2, max_ratio=0.95)
