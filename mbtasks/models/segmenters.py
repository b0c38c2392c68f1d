"""Segmentation models by name: a MobileNet backbone with a Lite R-ASPP or DeepLabv3 head, and an optional aux head.

Output contract, torchvision's, the same for every name and in training and eval alike: `model(x)`, a normalised NCHW
batch -> {"out": class logits (N, num_classes, H, W), "aux": the aux head's logits}, both at the input resolution;
"aux" only for a model built with `aux=True`. A model imported from torchvision gives the same "out" (and "aux")
tensors. The training task calls `model.loss(model(x), target)`; the inference copy (`layers.fusion.for_inference`)
leaves the aux head out, which only trains, and returns {"out"} alone; the exported graph (`LogitsGraph`) is the
"out" tensor.

Taps (torchvision's): the head reads the last layer (C5) and, for LR-ASPP, the output of the FIRST layer at stride 8
(torchvision's `stage_indices[-4]`); the aux head (torchvision's FCNHead) reads that same stride-8 map. v2 drops its
final 1280-channel 1x1 conv and reads the 320-channel last block, as the v2 paper's mobile DeepLabv3 (TF deeplab's
`layer_18`) does.
"""

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..backbones import BACKBONES, Backbone
from ..errors import MbtasksError
from ..heads.deeplabv3 import DeepLabV3Head, FCNHead
from ..heads.lraspp import POOLINGS, LRASPPHead
from ..layers.process_sums import share_of_global_mean
from .registry import model_builder, register_model

LOW_TAP = "low"  # the first layer at stride 8
# ASPP rates at output stride 16, scaled by 16 / output_stride: torchvision's for v3-Large, the DeepLabv3 and v2
# papers' for v1/v2 (with the papers' head: no 3x3 conv after ASPP, which torchvision adds).
TORCHVISION_RATES, PAPER_RATES = (12, 24, 36), (6, 12, 18)


class Segmenter(nn.Module):
    """A backbone, a head on named taps and an optional aux head; logits upsampled to the input resolution."""

    training_only = ("aux_head",)  # what the inference copy leaves out (layers.fusion.for_inference)

    def __init__(
        self,
        backbone: Backbone,
        head: nn.Module,
        taps: tuple[str, ...],
        aux_head: nn.Module | None = None,
        aux_tap: str = LOW_TAP,
        aux_loss_weight: float = 0.5,
    ):
        super().__init__()
        # Registration order backbone, head, aux head is torchvision's (backbone, classifier, aux_classifier).
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.taps = taps
        self.aux_tap = aux_tap
        self.aux_loss_weight = aux_loss_weight

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"out": class logits, "aux": the aux head's (only with one)}, both at the input resolution, as
        torchvision's segmentation models return them."""
        features = self.backbone(x)
        outputs = {"out": _resize(self.head(*[features[name] for name in self.taps]), x)}
        if self.aux_head is not None:
            outputs["aux"] = _resize(self.aux_head(features[self.aux_tap]), x)
        return outputs

    def loss(self, outputs: dict[str, torch.Tensor], target: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
        """Cross-entropy of "out", plus `aux_loss_weight` times that of "aux" where present (torchvision's recipe),
        averaged over the labelled pixels of every process's batch."""
        loss = F.cross_entropy(outputs["out"], target, ignore_index=ignore_index, reduction="sum")
        if "aux" in outputs:
            loss = loss + self.aux_loss_weight * F.cross_entropy(
                outputs["aux"], target, ignore_index=ignore_index, reduction="sum"
            )
        return share_of_global_mean(loss, (target != ignore_index).sum())


class LogitsGraph(nn.Module):
    """A segmenter as its exported graph: a normalised NCHW batch -> its "out" logits alone, one tensor (ONNX and
    ExecuTorch outputs are tensors, not dicts)."""

    def __init__(self, segmenter: nn.Module):
        super().__init__()
        self.segmenter = segmenter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segmenter(x)["out"]


class GraphAsSegmenter(nn.Module):
    """The other way: an exported graph run by ONNX Runtime or ExecuTorch (a batch -> logits) behind the segmenter
    contract, {"out": logits}."""

    def __init__(self, graph: nn.Module):
        super().__init__()
        self.graph = graph

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.graph(x)}


def _resize(logits: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(logits, size=like.shape[-2:], mode="bilinear", align_corners=False)


def _backbone(version: str, output_stride: int, reduced_tail: bool, options: dict) -> Backbone:
    backbone = BACKBONES.get(version)(output_stride=output_stride, reduced_tail=reduced_tail, **options)
    if version == "mobilenet_v2":
        _drop_last_conv(backbone)
    backbone.add_tap(LOW_TAP, backbone.first_layer_at_stride(8))
    return backbone


def _drop_last_conv(backbone: Backbone) -> None:
    """v2 for segmentation ends at its last inverted residual (320 channels), as the v2 paper and mmseg read it."""
    del backbone.layers[-1]
    backbone.add_tap("C5", len(backbone.layers) - 1)
    backbone.num_features = backbone.out_channels["C5"]


def _aux_head(backbone: Backbone, aux: bool, num_classes: int) -> nn.Module | None:
    return FCNHead(backbone.out_channels[LOW_TAP], num_classes) if aux else None


def build_lraspp(
    version: str,
    *,
    num_classes: int = 21,
    output_stride: int = 16,
    reduced_tail: bool = False,
    pooling: str = "global",
    channels: int = 128,
    aux: bool = False,
    aux_loss_weight: float = 0.5,
    **backbone_options,
) -> Segmenter:
    """Lite R-ASPP on the MobileNet `version`; the options are ARGS' and the backbone's."""
    if pooling not in POOLINGS:
        raise MbtasksError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    backbone = _backbone(version, output_stride, reduced_tail, backbone_options)
    head = LRASPPHead(backbone.out_channels[LOW_TAP], backbone.out_channels["C5"], num_classes, channels, pooling)
    return Segmenter(
        backbone, head, (LOW_TAP, "C5"), _aux_head(backbone, aux, num_classes), aux_loss_weight=aux_loss_weight
    )


def build_deeplabv3(
    version: str,
    *,
    num_classes: int = 21,
    output_stride: int = 16,
    reduced_tail: bool = False,
    aspp: bool = True,
    aux: bool = False,
    aux_loss_weight: float = 0.5,
    **backbone_options,
) -> Segmenter:
    """DeepLabv3 on the MobileNet `version` (torchvision's head on v3-Large, the v2 paper's on v1 and v2); the
    options are ARGS' and the backbone's."""
    torchvision_head = version == "mobilenet_v3_large"
    backbone = _backbone(version, output_stride, reduced_tail, backbone_options)
    rates = TORCHVISION_RATES if torchvision_head else PAPER_RATES
    rates = tuple(rate * 16 // output_stride for rate in rates) if aspp else ()
    head = DeepLabV3Head(backbone.out_channels["C5"], num_classes, rates, refine=torchvision_head)
    return Segmenter(backbone, head, ("C5",), _aux_head(backbone, aux, num_classes), aux_loss_weight=aux_loss_weight)


ARGS = {
    "num_classes": "classes labelled per pixel (VOC's 21 by default).",
    "output_stride": "8, 16 or 32: the backbone's layers past it are dilated instead of strided (16, as the papers).",
    "pooling": "'global' (torchvision's), or 'paper': the v3 paper's 49x49 average pooling, stride (16, 20) at "
    "1024x2048, scaled with the input.",
    "channels": "channels of the Lite R-ASPP branches (128, as the v3 paper).",
    "aspp": "the atrous branches; False keeps only the 1x1 and image-pooling branches (the v2 paper's smaller head).",
    "aux": "an auxiliary FCN head on the stride-8 map, for the training loss (torchvision's).",
    "aux_loss_weight": "weight of the auxiliary head's loss.",
}
# head family -> (family builder, what the docstring says of it)
FAMILIES = {
    "lraspp": (build_lraspp, "Lite R-ASPP, the segmentation head of Searching for MobileNetV3 (arXiv:1905.02244)"),
    "deeplabv3": (
        build_deeplabv3,
        "DeepLabv3 (Chen et al. 2017, arXiv:1706.05587), mobile as in the MobileNetV2 paper (arXiv:1801.04381)",
    ),
}
SIZE = 520  # the default input size: the one torchvision's segmentation weights count their operations at


def _register(head: str, version: str) -> Callable[..., Segmenter]:
    """`{head}_{version}`, registered."""
    build, summary = FAMILIES[head]
    name = f"{head}_{version}"
    builder = model_builder(name, build, version, summary=f"{summary}, on {version}.", args_doc=ARGS)
    return register_model(name, backbone=version, kind="segmenter", size=SIZE, head=head)(builder)


lraspp_mobilenet_v3_large = _register("lraspp", "mobilenet_v3_large")
lraspp_mobilenet_v3_small = _register("lraspp", "mobilenet_v3_small")
lraspp_mobilenet_v2 = _register("lraspp", "mobilenet_v2")
deeplabv3_mobilenet_v3_large = _register("deeplabv3", "mobilenet_v3_large")
deeplabv3_mobilenet_v2 = _register("deeplabv3", "mobilenet_v2")
deeplabv3_mobilenet_v1 = _register("deeplabv3", "mobilenet_v1")
