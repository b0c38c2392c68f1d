"""Published figures mbtasks is measured against: the three MobileNet papers, torchvision's and timm's model statistics.

Multiply-adds count the multiply-accumulates of convolutions and linear layers, as the papers do; torchvision's
weights metadata counts the same in its `_meta["_ops"]` (in billions). Pure data: imports nothing from mbtasks.
"""

# ImageNet classifiers: (model, width, resolution) -> (params, multiply-adds), as the papers print them.
PAPER_FIGURES = {
    # v1 paper, table 6 (width multipliers at 224) and table 7 (resolutions at width 1.0).
    ("mobilenet_v1", 1.0, 224): (4.2e6, 569e6),
    ("mobilenet_v1", 0.75, 224): (2.6e6, 325e6),
    ("mobilenet_v1", 0.5, 224): (1.3e6, 149e6),
    ("mobilenet_v1", 0.25, 224): (0.5e6, 41e6),
    ("mobilenet_v1", 1.0, 192): (4.2e6, 418e6),
    ("mobilenet_v1", 1.0, 160): (4.2e6, 290e6),
    ("mobilenet_v1", 1.0, 128): (4.2e6, 186e6),
    # v2 paper, table 4.
    ("mobilenet_v2", 1.0, 224): (3.4e6, 300e6),
    ("mobilenet_v2", 1.4, 224): (6.9e6, 585e6),
    # v3 paper, table 3.
    ("mobilenet_v3_large", 1.0, 224): (5.4e6, 219e6),
    ("mobilenet_v3_large", 0.75, 224): (4.0e6, 155e6),
    ("mobilenet_v3_small", 1.0, 224): (2.5e6, 56e6),
    ("mobilenet_v3_small", 0.75, 224): (2.0e6, 44e6),
}

# torchvision's ImageNet classifiers, the same networks as mbtasks': (model, width, resolution) -> (params,
# multiply-adds), from the `_meta` "num_params" and "_ops" of the named weights.
TORCHVISION_FIGURES = {
    ("mobilenet_v2", 1.0, 224): (3_504_872, 0.301e9),  # MobileNet_V2_Weights.IMAGENET1K_V1
    ("mobilenet_v3_large", 1.0, 224): (5_483_032, 0.217e9),  # MobileNet_V3_Large_Weights.IMAGENET1K_V1
    ("mobilenet_v3_small", 1.0, 224): (2_542_856, 0.057e9),  # MobileNet_V3_Small_Weights.IMAGENET1K_V1
}
# timm's v2 at width 1.4 (torchvision publishes none), the same network: its model card's "Params (M)" and "GMACs".
TIMM_FIGURES = {("mobilenet_v2", 1.4, 224): (6.1e6, 0.6e9)}  # timm mobilenetv2_140.ra_in1k

# Segmentation figures: (model, options as sorted (name, value) pairs, (height, width)) -> (params, multiply-adds).
# `build_model(model, **dict(options))` rebuilds the network; the rest of its options are the builder's defaults.
_V3_PAPER_SEG = (("num_classes", 19), ("pooling", "paper"), ("reduced_tail", True))  # LR-ASPP 128, OS16 (defaults)
SEGMENTER_PAPER_FIGURES = {
    # v3 paper, table 7 (Cityscapes).
    ("lraspp_mobilenet_v3_large", _V3_PAPER_SEG, (1024, 2048)): (1.51e6, 9.74e9),
    ("lraspp_mobilenet_v3_small", _V3_PAPER_SEG, (1024, 2048)): (0.47e6, 2.90e9),
    # v2 paper, table 7 (VOC, 21 classes, OS16): mobile DeepLabv3 without and with ASPP.
    ("deeplabv3_mobilenet_v2", (("aspp", False),), (513, 513)): (2.11e6, 2.75e9),
    ("deeplabv3_mobilenet_v2", (("aspp", True),), (513, 513)): (4.52e6, 5.8e9),
    # torchvision's weights `_meta` "num_params" and "_ops" (exact integer params; its ops include the aux head,
    # which `model(x)` runs here too), of LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1 and
    # DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1.
    ("lraspp_mobilenet_v3_large", (), (520, 520)): (3_221_538, 2.086e9),
    ("deeplabv3_mobilenet_v3_large", (("aux", True),), (520, 520)): (11_029_328, 10.452e9),
}

# The detection papers' COCO figures: (model, width, resolution) -> (params, multiply-adds).
DETECTOR_PAPER_FIGURES = {
    ("ssd300_mobilenet_v1", 1.0, 300): (6.8e6, 1.2e9),  # v1 paper, table 13
    # v1 paper, table 13: Faster R-CNN at 300 and 600 pixels, 300 RPN proposals per image.
    ("fasterrcnn_mobilenet_v1", 1.0, 300): (6.1e6, 25.2e9),
    ("fasterrcnn_mobilenet_v1", 1.0, 600): (6.1e6, 54.4e9),
    ("ssdlite320_mobilenet_v1", 1.0, 320): (5.1e6, 1.3e9),  # v2 paper, table 6
    ("ssdlite320_mobilenet_v2", 1.0, 320): (4.3e6, 0.8e9),  # v2 paper, table 6
    ("ssdlite320_mobilenet_v3_large", 1.0, 320): (3.22e6, 0.51e9),  # v3 paper, table 6 (reduced tail)
    ("ssdlite320_mobilenet_v3_small", 1.0, 320): (1.77e6, 0.16e9),  # v3 paper, table 6 (reduced tail)
}
# The papers built their detectors with TF's object detection API: 3 default boxes on the lowest map, and SSD300's
# predictors are 1x1 convs. These options give those networks; the defaults are torchvision's (6 boxes on every
# map) and the 3x3 SSD heads, larger by the lowest map's share of the heads.
DETECTOR_PAPER_OPTIONS = {
    "ssd300_mobilenet_v1": {"reduce_boxes_in_lowest_layer": True, "head_kernel": 1},
    "ssdlite320_mobilenet_v1": {"reduce_boxes_in_lowest_layer": True},
    "ssdlite320_mobilenet_v2": {"reduce_boxes_in_lowest_layer": True},
    "ssdlite320_mobilenet_v3_large": {"reduce_boxes_in_lowest_layer": True},
    "ssdlite320_mobilenet_v3_small": {"reduce_boxes_in_lowest_layer": True},
}
# What a paper counted differently, where its figure and the network it describes part: printed beside the figure.
DETECTOR_PAPER_NOTES = {
    ("fasterrcnn_mobilenet_v1", 1.0, 600): "the v1 paper's 54.4B at 600 is not what its network counts: from 300 "
    "to 600 pixels only the backbone and RPN grow (4x, ~1.9B -> ~7.6B), the box head runs on the same 300 proposals "
    "(~23.3B), so 600 counts ~30.5B; the paper's 29.2B growth is that of a 4x larger image or twice the proposals",
}
# torchvision's ssdlite320_mobilenet_v3_large, the same network as mbtasks' default: the `_meta` "num_params" and
# "_ops" of SSDLite320_MobileNet_V3_Large_Weights.COCO_V1.
DETECTOR_TORCHVISION_FIGURES = {("ssdlite320_mobilenet_v3_large", 1.0, 320): (3_440_060, 0.583e9)}


def reference_rows() -> list[tuple[str, dict, int | tuple[int, int], float, float]]:
    """(model, options, resolution, paper params, paper multiply-adds) for every paper figure above, in table order."""
    rows = [(name, {"width_mult": width}, res, *paper) for (name, width, res), paper in PAPER_FIGURES.items()]
    rows += [
        (name, {"width_mult": width, "size": res, **DETECTOR_PAPER_OPTIONS.get(name, {})}, res, *paper)
        for (name, width, res), paper in DETECTOR_PAPER_FIGURES.items()
    ]
    rows += [
        (name, dict(options), res, *paper)
        for (name, options, res), paper in SEGMENTER_PAPER_FIGURES.items()
        if isinstance(paper[0], float)
    ]  # the papers' rows; torchvision's exact integer counts are not papers
    return rows
