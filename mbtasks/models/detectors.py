"""SSDLite (v1, v2, v3-Large, v3-Small) and SSD300 (v1) detectors on torchvision's SSD: anchors, loss, NMS."""

import inspect
from collections.abc import Callable
from functools import partial

import torch
from torch import nn
from torchvision.models.detection.ssd import SSD

from ..backbones import BACKBONES
from ..errors import MbtasksError
from ..heads.ssdlite import SSDFeatures, default_boxes, extra_layers, normal_init, ssd_head
from ..layers.process_sums import share_of_global_mean
from .registry import register_model

# The stride-16 expansion (v1: the stride-16 map itself) and the last map, as the v2 and v3 papers tap them.
TAPS = ("C4_expand", "C5")
# torchvision's SSDLite batch norm; the momentum is its training setting, the backbone keeps its own eps.
BN_EPS, BN_MOMENTUM = 1e-3, 0.03


class SSDOverProcesses(SSD):
    """torchvision's SSD whose MultiBox loss is normalised by the foreground anchors of every process's batch, as
    one process with the whole batch would be (torchvision divides by its own process's count)."""

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs) -> dict[str, torch.Tensor]:
        losses = super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        foreground = max(1, sum(int((matched >= 0).sum()) for matched in matched_idxs))  # torchvision's normaliser
        return {name: share_of_global_mean(loss * foreground, foreground) for name, loss in losses.items()}


def build_ssd(
    version: str,
    lite: bool,
    *,
    num_classes: int = 91,
    width_mult: float = 1.0,
    size: int | tuple[int, int] = 320,
    reduced_tail: bool = False,
    bn_eps: float | None = None,
    head_kernel: int = 3,
    reduce_boxes_in_lowest_layer: bool = False,
    score_thresh: float = 0.001,
    nms_thresh: float = 0.55,
    detections_per_img: int = 300,
    topk_candidates: int = 300,
    iou_thresh: float = 0.5,
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5),
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5),
) -> SSD:
    """SSD(Lite) on a MobileNet backbone; `size` is N or (height, width); inputs [0, 1] are scaled to [-1, 1].

    `head_kernel` (SSD only) and `reduce_boxes_in_lowest_layer` default to the issue's / torchvision's network;
    1 and True give the papers' (TF object detection API's) networks and their parameter and multiply-add counts.
    """
    height, width = (size, size) if isinstance(size, int) else size
    backbone = BACKBONES.get(version)(
        width_mult=width_mult, reduced_tail=reduced_tail, **({} if bn_eps is None else {"bn_eps": bn_eps})
    )
    normal_init(backbone)
    norm = partial(nn.BatchNorm2d, eps=BN_EPS)
    extra = extra_layers(backbone.out_channels[TAPS[-1]], width_mult, depthwise=lite, norm=norm)
    normal_init(extra)
    features = SSDFeatures(backbone, TAPS, extra)
    anchors = default_boxes(len(features.out_channels), reduce_boxes_in_lowest_layer)
    head = ssd_head(features.out_channels, anchors.num_anchors_per_location(), num_classes, lite, norm, head_kernel)
    model = SSDOverProcesses(
        features,
        anchors,
        (width, height),
        num_classes,
        image_mean=list(image_mean),
        image_std=list(image_std),
        head=head,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
        topk_candidates=topk_candidates,
        iou_thresh=iou_thresh,
    )
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = BN_MOMENTUM
    return model


OPTIONS = [name for name, p in inspect.signature(build_ssd).parameters.items() if p.kind is p.KEYWORD_ONLY]


def _detector(name: str, version: str, lite: bool, **defaults) -> Callable[..., SSD]:
    allowed = [o for o in OPTIONS if not (lite and o == "head_kernel")]  # SSDLite's heads are always 3x3 depthwise

    def build(**options) -> SSD:
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise MbtasksError(f"unknown option(s) for {name}: {', '.join(unknown)}")
        return build_ssd(version, lite, **{**defaults, **options})

    build.__name__ = name
    build.__doc__ = f"{'SSDLite' if lite else 'SSD'} on {version}; options: {', '.join(allowed)}; defaults {defaults}."
    return build


# name -> (backbone version, SSDLite or SSD, defaults). The v3 paper's detectors halve the channels after C4
# ("reduced tail"), as torchvision's from-scratch model.
DETECTORS = {
    "ssdlite320_mobilenet_v3_large": ("mobilenet_v3_large", True, {"size": 320, "reduced_tail": True}),
    "ssdlite320_mobilenet_v3_small": ("mobilenet_v3_small", True, {"size": 320, "reduced_tail": True}),
    "ssdlite320_mobilenet_v2": ("mobilenet_v2", True, {"size": 320}),
    "ssdlite320_mobilenet_v1": ("mobilenet_v1", True, {"size": 320}),
    "ssd300_mobilenet_v1": ("mobilenet_v1", False, {"size": 300}),
}
for _name, (_version, _lite, _defaults) in DETECTORS.items():
    register_model(_name, _version)(_detector(_name, _version, _lite, **_defaults))
