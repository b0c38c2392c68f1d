"""The published figures: torchvision's are its weights' metadata, and the module is pure data."""

import ast
from pathlib import Path

import pytest
from torchvision.models import MobileNet_V2_Weights, MobileNet_V3_Large_Weights, MobileNet_V3_Small_Weights
from torchvision.models.detection import SSDLite320_MobileNet_V3_Large_Weights
from torchvision.models.segmentation import DeepLabV3_MobileNet_V3_Large_Weights, LRASPP_MobileNet_V3_Large_Weights

import mbtasks.reference
from mbtasks.reference import DETECTOR_TORCHVISION_FIGURES, SEGMENTER_PAPER_FIGURES, TORCHVISION_FIGURES

# Each torchvision figure and the weights whose metadata it cites (reading it downloads nothing).
CITED = [
    (TORCHVISION_FIGURES[("mobilenet_v2", 1.0, 224)], MobileNet_V2_Weights.IMAGENET1K_V1),
    (TORCHVISION_FIGURES[("mobilenet_v3_large", 1.0, 224)], MobileNet_V3_Large_Weights.IMAGENET1K_V1),
    (TORCHVISION_FIGURES[("mobilenet_v3_small", 1.0, 224)], MobileNet_V3_Small_Weights.IMAGENET1K_V1),
    (
        DETECTOR_TORCHVISION_FIGURES[("ssdlite320_mobilenet_v3_large", 1.0, 320)],
        SSDLite320_MobileNet_V3_Large_Weights.COCO_V1,
    ),
    (
        SEGMENTER_PAPER_FIGURES[("lraspp_mobilenet_v3_large", (), (520, 520))],
        LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1,
    ),
    (
        SEGMENTER_PAPER_FIGURES[("deeplabv3_mobilenet_v3_large", (("aux", True),), (520, 520))],
        DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1,
    ),
]


@pytest.mark.parametrize("figures,weights", CITED, ids=[str(weights) for _, weights in CITED])
def test_torchvision_figures_are_its_weights_metadata(figures, weights):
    params, madds = figures
    assert params == weights.meta["num_params"] and madds == pytest.approx(weights.meta["_ops"] * 1e9)


def test_reference_imports_nothing_of_mbtasks():
    tree = ast.parse(Path(mbtasks.reference.__file__).read_text())
    modules = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    modules += ["." * node.level + (node.module or "") for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert not [m for m in modules if m.startswith(".") or m.split(".")[0] == "mbtasks"]
