"""SSDLite / SSD detectors: torchvision equivalence, sizes, training step, widths, figures against the papers."""

import pytest
import torch
import torchvision

from mbtasks import MbtasksError, build_model, list_models
from mbtasks.cli import main
from mbtasks.profiling import count_madds, count_parameters, example_input
from mbtasks.reference import DETECTOR_PAPER_FIGURES, DETECTOR_PAPER_OPTIONS, DETECTOR_TORCHVISION_FIGURES

NAME = "ssdlite320_mobilenet_v3_large"
TORCHVISION_PARAMS, TORCHVISION_MADDS = DETECTOR_TORCHVISION_FIGURES[(NAME, 1.0, 320)]


# Small convolutions gain nothing from threads (conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def _randomised_torchvision_ssdlite() -> torch.nn.Module:
    """torchvision's network with every tensor random, scaled so that scores spread out and a mis-mapped one shows."""
    torch.manual_seed(0)
    model = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="linear")
            if module.bias is not None:
                module.bias.data.uniform_(-0.1, 0.1)
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    for block in model.head.classification_head.module_list:
        block[1].weight.data.mul_(20)  # confident class scores: the post-processing then has real work to do
    return model.eval()


def _images() -> list[torch.Tensor]:
    torch.manual_seed(1)
    scene = torch.full((3, 240, 400), 0.2)
    scene[:, 40:180, 60:200] = torch.tensor([0.9, 0.3, 0.1])[:, None, None]
    return [torch.rand(3, 320, 320), scene]


def test_torchvision_ssdlite_imports_and_gives_the_same_detections(tmp_path):
    reference = _randomised_torchvision_ssdlite()
    torch.save(reference.state_dict(), tmp_path / "src.pth")
    assert (
        main(
            [
                "weights",
                "import",
                "--from",
                "torchvision",
                str(tmp_path / "src.pth"),
                "--model",
                NAME,
                "--out",
                str(tmp_path / "mb.pth"),
            ]
        )
        == 0
    )
    model = build_model(NAME, weights=tmp_path / "mb.pth").eval()
    images = _images()
    raw, raw_reference = [], []  # the head outputs of the same forward pass, before any post-processing
    model.head.register_forward_hook(lambda _m, _i, output: raw.append(output))
    reference.head.register_forward_hook(lambda _m, _i, output: raw_reference.append(output))
    with torch.no_grad():
        expected, got = reference(images), model(images)
    raw, raw_reference = raw[0], raw_reference[0]
    for key in ("bbox_regression", "cls_logits"):
        assert (raw[key] - raw_reference[key]).abs().max().item() < 1e-4
    for want, have in zip(expected, got):
        assert len(want["boxes"]) > 0 and want["scores"].max() > 0.5 and want["labels"].unique().numel() > 1
        assert have["boxes"].shape == want["boxes"].shape
        assert (have["boxes"] - want["boxes"]).abs().max().item() < 1e-4
        assert (have["scores"] - want["scores"]).abs().max().item() < 1e-4
        assert torch.equal(have["labels"], want["labels"])


def test_torchvision_parameter_count_is_exact():
    model = build_model(NAME)
    assert count_parameters(model) == TORCHVISION_PARAMS
    assert model.head.classification_head.num_columns == 91
    assert model.anchor_generator.num_anchors_per_location() == [6] * 6


SIZES = [320, 300, 512, (256, 384)]


# Width 0.25 and 5 classes keep this fast; the code paths are those of every width (the widths test builds 1.0).
@pytest.mark.parametrize("name", list_models("ssd*"))  # SSD(Lite)s; test_faster_rcnn.py has Faster R-CNN
def test_any_size_detects_in_input_pixels_and_trains(name):
    for size in SIZES:
        h, w = (size, size) if isinstance(size, int) else size
        model = build_model(
            name, size=size, width_mult=0.25, num_classes=5, score_thresh=0.0, detections_per_img=50
        ).eval()
        with torch.no_grad():
            features = model.backbone(torch.zeros(1, 3, h, w))
        assert len(features) == 6 and tuple(features["0"].shape[-2:]) == (-(-h // 16), -(-w // 16))
        image = torch.rand(3, 90, 150)  # any input size: boxes come back in its pixels
        with torch.no_grad():
            (detections,) = model([image])
        assert set(detections) == {"boxes", "scores", "labels"} and len(detections["boxes"]) == 50
        boxes = detections["boxes"]
        assert boxes.min() >= 0 and boxes[:, 2].max() <= 150 and boxes[:, 3].max() <= 90
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
        assert boxes[:, 2].max() > 90  # in the image's pixels, not the network's square

    model.train()
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 80.0, 70.0]]), "labels": torch.tensor([3])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    losses = model([torch.rand(3, 90, 150), torch.rand(3, 64, 64)], targets)
    assert set(losses) == {"bbox_regression", "classification"}
    assert all(torch.isfinite(loss) and loss > 0 for loss in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    for part in (model.backbone.body, model.backbone.extra, model.head.classification_head, model.head.regression_head):
        assert sum(p.grad.abs().sum() for p in part.parameters()) > 0


def test_boxes_scale_back_to_the_input_image():
    model = build_model("ssdlite320_mobilenet_v3_small", size=(128, 192), score_thresh=0.0).eval()
    small = torch.rand(3, 128, 192)
    large = torch.nn.functional.interpolate(small[None], size=(256, 576), mode="nearest")[0]
    with torch.no_grad():
        (at_size,) = model([small])
        (scaled,) = model([large])
    # Nearest upsampling then bilinear downsampling back gives nearly the same network input.
    assert torch.allclose(scaled["boxes"][:20], at_size["boxes"][:20] * torch.tensor([3.0, 2.0, 3.0, 2.0]), atol=1.0)


@pytest.mark.parametrize("name", list_models("ssd*"))  # SSD(Lite)s; test_faster_rcnn.py has Faster R-CNN
def test_width_carries_through_extra_layers_and_heads(name):
    full, half = build_model(name), build_model(name, width_mult=0.5)
    assert full.backbone.out_channels[2:] == [512, 256, 256, 128]
    assert half.backbone.out_channels[2:] == [256, 128, 128, 64]
    assert half.backbone.out_channels[:2] == [half.backbone.body.out_channels[t] for t in ("C4_expand", "C5")]
    for model in (full, half):
        for channels, block in zip(model.backbone.out_channels, model.head.regression_head.module_list):
            first = block[0][0] if isinstance(block, torch.nn.Sequential) else block
            assert first.in_channels == channels
    assert build_model(name, width_mult=0.25).backbone.out_channels[-1] == 32  # int(128 x 0.25), torchvision's rule


def test_options_and_mistakes():
    with pytest.raises(MbtasksError, match="unknown option.*head_kernel"):
        build_model(NAME, head_kernel=1)
    with pytest.raises(MbtasksError, match="unknown option.*colour"):
        build_model("ssd300_mobilenet_v1", colour=1)
    assert build_model("ssdlite320_mobilenet_v2", num_classes=21).head.classification_head.num_columns == 21
    model = build_model(NAME, reduce_boxes_in_lowest_layer=True).eval()
    assert model.anchor_generator.num_anchors_per_location() == [3, 6, 6, 6, 6, 6]
    with torch.no_grad():
        anchors = model.anchor_generator(
            model.transform([torch.rand(3, 320, 320)])[0], list(model.backbone(torch.rand(1, 3, 320, 320)).values())
        )
    assert anchors[0].shape == (400 * 3 + (100 + 25 + 9 + 4 + 1) * 6, 4)


# The papers' detectors (mbtasks.reference) are the TF object detection API's: 3 boxes on the lowest map and, for
# SSD300, 1x1 prediction convs (DETECTOR_PAPER_OPTIONS). Built that way, mbtasks' networks land within 5% of
# the papers' parameters and multiply-adds (measured: SSD300 v1 +0.3% / +3.1%, SSDLite v1 +2.9% / +1.7%,
# v2 +4.7% / +0.5%, v3-Large +0.9% / -0.7%, v3-Small +0.9% / +1.4%); the papers print two significant digits
# and their own layer-rounding details, so 5% is the honest bound. The defaults (torchvision's 6 boxes on every
# map, SSD's 3x3 heads) are larger by design; test_torchvision_parameter_count_is_exact holds that network.
SSD_FIGURES = [key for key in DETECTOR_PAPER_FIGURES if key[0] in DETECTOR_PAPER_OPTIONS]  # Faster R-CNN's: their file


@pytest.mark.parametrize("key", SSD_FIGURES, ids=[k[0] for k in SSD_FIGURES])
def test_paper_networks_match_the_papers_figures(key):
    name, width, resolution = key
    params, madds = DETECTOR_PAPER_FIGURES[key]
    # A high score threshold only spares the post-processing of random weights; it counts nothing.
    model = build_model(name, width_mult=width, size=resolution, score_thresh=0.9, **DETECTOR_PAPER_OPTIONS[name])
    assert count_parameters(model) == pytest.approx(params, rel=0.05)
    assert count_madds(model, example_input(resolution)) == pytest.approx(madds, rel=0.05)


def test_multiply_adds_count_the_network_at_its_size_only():
    model = build_model(NAME, score_thresh=0.9)
    madds = count_madds(model, example_input(320))
    assert madds == 583_171_904 and round(madds / 1e6) == TORCHVISION_MADDS / 1e6  # torchvision's 0.583 G
    assert count_madds(model, example_input((200, 300))) == madds  # resized to 320 before the network
