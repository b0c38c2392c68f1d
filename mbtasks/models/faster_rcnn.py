"""Faster R-CNN on any MobileNet, built from torchvision's FasterRCNN (its RegionProposalNetwork, RoIHeads,
GeneralizedRCNNTransform) and FeaturePyramidNetwork: two variants.

- FPN (`fasterrcnn_mobilenet_<version>_fpn`, `..._320_fpn`): torchvision's fasterrcnn_mobilenet_v3_large_fpn and
  _320_fpn on every version. Taps as torchvision's `_mobilenet_extractor`: the first layer at stride 32 and the last
  layer, into a 256-channel FPN with a max-pooled extra level; anchors of 32 to 512 pixels, 3 aspect ratios, on each
  of the 3 levels; RoIAlign 7x7 on the FPN maps and torchvision's two-layer MLP box head. min_size 800 (max 1333),
  or 320 (max 640, 150 proposals, as torchvision's _320_fpn).
- Single feature map (`fasterrcnn_mobilenet_<version>`): the MobileNet v1 paper's Faster R-CNN (table 13, 300 and
  600 pixels), as the TF object detection API built it (faster_rcnn_mobilenet_v1_feature_extractor.py): the RPN on
  the stride-16 map (C4, v1's Conv2d_11_pointwise) with a 3x3 conv of C4's channels, 300 proposals per image, each
  cropped 14x14 by RoIAlign and passed through the backbone's stride-32 layers (v1's Conv2d_12 and 13) as the box
  head, which the stride takes to 7x7, then averaged. The TF API max-pools its 14x14 crops to 7x7 first; without
  that pool the box head counts the paper's 25.2B multiply-adds at 300 (with it, a third of them), so it is left out.
"""

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNPredictor, TwoMLPHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..backbones import BACKBONES, Backbone
from ..sizes import height_width
from .registry import model_builder, register_model

FPN_CHANNELS = 256  # torchvision's
FIRST_AT_32 = "C5_first"  # the first layer at stride 32, torchvision's `stage_indices[-2]`
# torchvision's anchors for the MobileNet FPN models: 5 sizes x 3 aspect ratios at every location of every level.
ANCHOR_SIZES, ASPECT_RATIOS = (32, 64, 128, 256, 512), (0.5, 1.0, 2.0)
# The longest side torchvision allows at min_size 800 (1333), as a share of the shortest: max_size when none is given.
MAX_SIDE_RATIO = 1333 / 800
CROP = 14  # the single-feature variant's RoIAlign crop (the TF API's initial_crop_size)


class FPNFeatures(nn.Module):
    """torchvision's BackboneWithFPN on an mbtasks Backbone: the named taps into a FeaturePyramidNetwork with a
    max-pooled extra level. (BackboneWithFPN takes its maps with IntermediateLayerGetter, which copies the layers out
    of the Backbone; this keeps it whole, so backbone weights and `find_backbone` reach it.) Registration order
    body, fpn: torchvision's."""

    def __init__(self, body: Backbone, taps: tuple[str, ...], out_channels: int = FPN_CHANNELS):
        super().__init__()
        self.body = body
        self.taps = taps
        self.fpn = FeaturePyramidNetwork(
            [body.out_channels[tap] for tap in taps], out_channels, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        features = self.body(x)
        return self.fpn(OrderedDict((str(i), features[tap]) for i, tap in enumerate(self.taps)))


class StrideSixteenFeatures(nn.Module):
    """The backbone up to C4 (its stride-32 layers moved to the box head): one map, named "0"."""

    def __init__(self, body: Backbone):
        super().__init__()
        self.body = body
        self.out_channels = body.out_channels["C4"]

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return OrderedDict([("0", self.body(x)["C4"])])


class BackboneTailHead(nn.Module):
    """The box head of the single-feature variant: the backbone's stride-32 layers on each 14x14 crop, averaged."""

    def __init__(self, layers: nn.ModuleList):
        super().__init__()
        self.layers = layers

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            crops = layer(crops)
        return crops.mean((2, 3))


def build_faster_rcnn(
    version: str,
    fpn: bool,
    *,
    num_classes: int = 91,
    width_mult: float = 1.0,
    size: int | tuple[int, int] = 800,
    max_size: int | None = None,
    rpn_pre_nms_top_n_train: int = 2000,
    rpn_post_nms_top_n_train: int = 2000,
    rpn_pre_nms_top_n_test: int = 1000,
    rpn_post_nms_top_n_test: int = 1000,
    rpn_score_thresh: float = 0.05,
    box_score_thresh: float = 0.05,
    box_nms_thresh: float = 0.5,
    box_detections_per_img: int = 100,
    box_batch_size_per_image: int = 512,
    fpn_channels: int = FPN_CHANNELS,
    representation_size: int = 1024,
    image_mean: tuple[float, ...] = (0.485, 0.456, 0.406),
    image_std: tuple[float, ...] = (0.229, 0.224, 0.225),
    bn_eps: float = 1e-5,
    **backbone_options,
) -> FasterRCNN:
    """Faster R-CNN (`fpn`: with torchvision's FPN) on the MobileNet `version`; the options are ARGS' and the
    backbone's."""
    min_size = min(height_width(size))
    body = BACKBONES.get(version)(width_mult=width_mult, bn_eps=bn_eps, **backbone_options)
    if fpn:
        body.add_tap(FIRST_AT_32, body.first_layer_at_stride(32))
        features = FPNFeatures(body, (FIRST_AT_32, "C5"), fpn_channels)
        levels, roi_pool = 3, MultiScaleRoIAlign(["0", "1"], output_size=7, sampling_ratio=2)  # torchvision's
        box_head = TwoMLPHead(fpn_channels * 7 * 7, representation_size)
        box_predictor = FastRCNNPredictor(representation_size, num_classes)
    else:
        first_at_32, tail_channels = body.first_layer_at_stride(32), body.num_features
        tail = nn.ModuleList(body.layers[first_at_32:])
        del body.layers[first_at_32:]
        body.num_features = body.out_channels["C4"]
        features = StrideSixteenFeatures(body)
        levels = 1
        roi_pool = MultiScaleRoIAlign(["0"], output_size=CROP, sampling_ratio=2)
        box_head = BackboneTailHead(tail)
        box_predictor = FastRCNNPredictor(tail_channels, num_classes)
    anchors = AnchorGenerator((ANCHOR_SIZES,) * levels, (ASPECT_RATIOS,) * levels)
    return FasterRCNN(
        features,
        num_classes=None,  # the box predictor is given: FasterRCNN takes the count from it
        min_size=min_size,
        max_size=max_size or round(min_size * MAX_SIDE_RATIO),
        image_mean=list(image_mean),
        image_std=list(image_std),
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        rpn_score_thresh=rpn_score_thresh,
        box_roi_pool=roi_pool,
        box_head=box_head,
        box_predictor=box_predictor,
        box_score_thresh=box_score_thresh,
        box_nms_thresh=box_nms_thresh,
        box_detections_per_img=box_detections_per_img,
        box_batch_size_per_image=box_batch_size_per_image,
    )


ARGS = {
    "num_classes": "classes the network tells apart, background included (COCO's 91 category ids by default).",
    "width_mult": "width multiplier of the backbone (the papers' alpha), > 0.",
    "size": "the shorter side images are resized to (torchvision's min_size; of (height, width), the shorter); "
    "boxes come back in the pixels of the input image.",
    "max_size": "the longest side after resizing (torchvision's max_size); None: 5/3 of `size`, as 1333 for 800.",
    "rpn_pre_nms_top_n_train": "best-scoring anchors per level that enter the RPN's NMS in training.",
    "rpn_post_nms_top_n_train": "proposals per image in training.",
    "rpn_pre_nms_top_n_test": "best-scoring anchors per level that enter the RPN's NMS at inference.",
    "rpn_post_nms_top_n_test": "proposals per image at inference (the v1 paper's Faster R-CNN: 300).",
    "rpn_score_thresh": "proposals scoring below it are dropped (torchvision's MobileNet models: 0.05).",
    "box_score_thresh": "detections scoring below it are dropped.",
    "box_nms_thresh": "IoU above which non-maximum suppression drops the lower-scoring box.",
    "box_detections_per_img": "most detections kept per image.",
    "box_batch_size_per_image": "proposals per image sampled for the box head's loss in training.",
    "fpn_channels": "channels of the FPN's maps and the RPN's conv (torchvision's 256); FPN variants only.",
    "representation_size": "width of the FPN variants' two-layer MLP box head (torchvision's 1024).",
    "image_mean": "subtracted from the [0, 1] image (ImageNet's, as torchvision's).",
    "image_std": "the image is divided by it after the mean.",
    "bn_eps": "the backbone's batch-norm epsilon (torchvision's Faster R-CNN backbones: 1e-5).",
}
PAPER = "Faster R-CNN (Ren et al. 2015, arXiv:1506.01497)"


def _register(name: str, version: str, fpn: bool, size: int, **defaults) -> Callable[..., FasterRCNN]:
    summary = (
        f"{PAPER} with torchvision's FPN on {version}, at {size} pixels (torchvision's "
        f"fasterrcnn_mobilenet_v3_large{'_320' if size == 320 else ''}_fpn on v3-Large)."
        if fpn
        else f"{PAPER} on {version}'s stride-16 map, its stride-32 layers as the box head: the MobileNet paper's "
        "(arXiv:1704.04861, table 13, 300 and 600 pixels)."
    )
    builder = model_builder(
        name, build_faster_rcnn, version, fpn, summary=summary, args_doc=ARGS, size=size, **defaults
    )
    return register_model(name, backbone=version, kind="detector", size=size, head="fasterrcnn")(builder)


# torchvision's _320_fpn: a smaller image, fewer proposals.
LOW_RES = {"max_size": 640, "rpn_pre_nms_top_n_test": 150, "rpn_post_nms_top_n_test": 150}
# "The Faster-RCNN model evaluates 300 RPN proposal boxes per image" (the v1 paper); 6000 before NMS, as the Faster
# R-CNN paper's own test setting (py-faster-rcnn: RPN_PRE_NMS_TOP_N 6000, RPN_POST_NMS_TOP_N 300).
PAPER_PROPOSALS = {"rpn_pre_nms_top_n_test": 6000, "rpn_post_nms_top_n_test": 300}

fasterrcnn_mobilenet_v3_large_fpn = _register("fasterrcnn_mobilenet_v3_large_fpn", "mobilenet_v3_large", True, 800)
fasterrcnn_mobilenet_v3_large_320_fpn = _register(
    "fasterrcnn_mobilenet_v3_large_320_fpn", "mobilenet_v3_large", True, 320, **LOW_RES
)
fasterrcnn_mobilenet_v3_large = _register(
    "fasterrcnn_mobilenet_v3_large", "mobilenet_v3_large", False, 600, **PAPER_PROPOSALS
)
fasterrcnn_mobilenet_v3_small_fpn = _register("fasterrcnn_mobilenet_v3_small_fpn", "mobilenet_v3_small", True, 800)
fasterrcnn_mobilenet_v3_small_320_fpn = _register(
    "fasterrcnn_mobilenet_v3_small_320_fpn", "mobilenet_v3_small", True, 320, **LOW_RES
)
fasterrcnn_mobilenet_v3_small = _register(
    "fasterrcnn_mobilenet_v3_small", "mobilenet_v3_small", False, 600, **PAPER_PROPOSALS
)
fasterrcnn_mobilenet_v2_fpn = _register("fasterrcnn_mobilenet_v2_fpn", "mobilenet_v2", True, 800)
fasterrcnn_mobilenet_v2_320_fpn = _register("fasterrcnn_mobilenet_v2_320_fpn", "mobilenet_v2", True, 320, **LOW_RES)
fasterrcnn_mobilenet_v2 = _register("fasterrcnn_mobilenet_v2", "mobilenet_v2", False, 600, **PAPER_PROPOSALS)
fasterrcnn_mobilenet_v1_fpn = _register("fasterrcnn_mobilenet_v1_fpn", "mobilenet_v1", True, 800)
fasterrcnn_mobilenet_v1_320_fpn = _register("fasterrcnn_mobilenet_v1_320_fpn", "mobilenet_v1", True, 320, **LOW_RES)
fasterrcnn_mobilenet_v1 = _register("fasterrcnn_mobilenet_v1", "mobilenet_v1", False, 600, **PAPER_PROPOSALS)
