"""SSDLite (v1, v2, v3-Large, v3-Small) and SSD300 (v1) detectors on torchvision's SSD: anchors, loss, NMS."""

from collections.abc import Callable
from functools import partial

import torch
from torch import nn
from torchvision.models.detection.ssd import SSD

from ..backbones import BACKBONES
from ..heads.ssdlite import SSDFeatures, default_boxes, extra_layers, normal_init, ssd_head
from ..layers.process_sums import share_of_global_mean
from ..sizes import height_width
from .registry import model_builder, register_model

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
    head_kernel: int = 3,
    reduce_boxes_in_lowest_layer: bool = False,
    score_thresh: float = 0.001,
    nms_thresh: float = 0.55,
    detections_per_img: int = 300,
    topk_candidates: int = 300,
    iou_thresh: float = 0.5,
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5),
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5),
    **backbone_options,
) -> SSD:
    """SSD (`lite`: SSDLite) on the MobileNet `version`; the options are ARGS' and the backbone's."""
    height, width = height_width(size)
    backbone = BACKBONES.get(version)(width_mult=width_mult, **backbone_options)
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


ARGS = {
    "num_classes": "classes the network tells apart, background included (COCO's 91 category ids by default).",
    "width_mult": "width multiplier of the backbone, the extra layers and the heads (the papers' alpha), > 0.",
    "size": "the input size, N or (height, width): every image is resized to it, boxes come back in its pixels.",
    "head_kernel": "kernel of the box and class convs: 3 (torchvision's), or 1 as the v1 paper's SSD300.",
    "reduce_boxes_in_lowest_layer": "3 default boxes on the lowest map, as the papers' (TF object detection API's) "
    "networks; False: torchvision's 6 on every map.",
    "score_thresh": "detections scoring below it are dropped before non-maximum suppression.",
    "nms_thresh": "IoU above which non-maximum suppression drops the lower-scoring box.",
    "detections_per_img": "most detections kept per image.",
    "topk_candidates": "best-scoring boxes per class that enter non-maximum suppression.",
    "iou_thresh": "IoU of an anchor with a ground-truth box that makes it a positive in training.",
    "image_mean": "subtracted from the [0, 1] image (0.5: scaled to [-1, 1]).",
    "image_std": "the image is divided by it after the mean.",
}
SSD_PAPER = "SSD (Liu et al. 2016, arXiv:1512.02325)"


def _register(name: str, version: str, lite: bool, size: int, **defaults) -> Callable[..., SSD]:
    """The SSD(Lite) `name` on `version` at its own `size`, registered; SSDLite's heads are always 3x3 depthwise."""
    summary = (
        f"SSDLite{size}: {SSD_PAPER} with the depthwise heads and extra layers of the MobileNetV2 paper "
        f"(arXiv:1801.04381), on {version}."
        if lite
        else f"SSD{size}: {SSD_PAPER} on {version}, as the MobileNet paper's COCO detector (arXiv:1704.04861)."
    )
    builder = model_builder(
        name,
        build_ssd,
        version,
        lite,
        summary=summary,
        args_doc=ARGS,
        drop=("output_stride", *(("head_kernel",) if lite else ())),
        size=size,
        **defaults,
    )
    head = "ssdlite" if lite else "ssd"
    return register_model(name, backbone=version, kind="detector", size=size, head=head)(builder)


# The v3 paper's detectors halve the channels after C4 ("reduced tail"), as torchvision's from-scratch model.
ssdlite320_mobilenet_v3_large = _register(
    "ssdlite320_mobilenet_v3_large", "mobilenet_v3_large", True, 320, reduced_tail=True
)
ssdlite320_mobilenet_v3_small = _register(
    "ssdlite320_mobilenet_v3_small", "mobilenet_v3_small", True, 320, reduced_tail=True
)
ssdlite320_mobilenet_v2 = _register("ssdlite320_mobilenet_v2", "mobilenet_v2", True, 320)
ssdlite320_mobilenet_v1 = _register("ssdlite320_mobilenet_v1", "mobilenet_v1", True, 320)
# SSD300 on every version, for comparing frameworks on one backbone (the v1 paper's is on v1).
ssd300_mobilenet_v3_large = _register("ssd300_mobilenet_v3_large", "mobilenet_v3_large", False, 300)
ssd300_mobilenet_v3_small = _register("ssd300_mobilenet_v3_small", "mobilenet_v3_small", False, 300)
ssd300_mobilenet_v2 = _register("ssd300_mobilenet_v2", "mobilenet_v2", False, 300)
ssd300_mobilenet_v1 = _register("ssd300_mobilenet_v1", "mobilenet_v1", False, 300)
