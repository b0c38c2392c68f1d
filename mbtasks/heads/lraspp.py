"""Lite R-ASPP (v3 paper, fig. 10): a gated 1x1 branch on stride-16 features plus a classifier on stride-8 features."""

import torch
from torch import nn
from torch.nn import functional as F

POOLINGS = ("global", "paper")
# The v3 paper pools 49x49 with stride (16, 20) on the stride-16 features of a 1024x2048 image (64x128).
PAPER_POOL_KERNEL, PAPER_POOL_STRIDE, PAPER_FEATURE_SIZE = (49, 49), (16, 20), (64, 128)


def paper_pool_geometry(height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Kernel and stride of the paper's gate pooling on a `height` x `width` map, scaled from 64x128."""
    kernel, stride = [], []
    for size, k, s, reference in zip((height, width), PAPER_POOL_KERNEL, PAPER_POOL_STRIDE, PAPER_FEATURE_SIZE):
        kernel.append(min(size, max(1, int(k * size / reference + 0.5))))
        stride.append(max(1, int(s * size / reference + 0.5)))
    return (kernel[0], kernel[1]), (stride[0], stride[1])


class PaperPool(nn.Module):
    """Average pooling with the paper's kernel and stride, scaled to the size of the map it pools."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel, stride = paper_pool_geometry(x.shape[-2], x.shape[-1])
        return F.avg_pool2d(x, kernel, stride)


class LRASPPHead(nn.Module):
    """torchvision's LRASPPHead (same layers, same order) with the gate's pooling `global` or the paper's.

    `forward(low, high)`: class logits at the resolution of `low` (stride 8).
    """

    def __init__(
        self,
        low_channels: int,
        high_channels: int,
        num_classes: int,
        inter_channels: int = 128,
        pooling: str = "global",
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        self.cbr = nn.Sequential(
            nn.Conv2d(high_channels, inter_channels, 1, bias=False),
            nn.BatchNorm2d(inter_channels),
            nn.ReLU(inplace=True),
        )
        pool = nn.AdaptiveAvgPool2d(1) if pooling == "global" else PaperPool()
        self.scale = nn.Sequential(pool, nn.Conv2d(high_channels, inter_channels, 1, bias=False), nn.Sigmoid())
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter_channels, num_classes, 1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        gate = self.scale(high)
        if gate.shape[-2:] != (1, 1):
            # The paper's pooling leaves a small map (1x4 at 1024x2048): gate after the 1x1 conv, then resize (cheap).
            gate = F.interpolate(gate, size=high.shape[-2:], mode="bilinear", align_corners=False)
        x = self.cbr(high) * gate
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.low_classifier(low) + self.high_classifier(x)
