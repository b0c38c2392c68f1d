"""Folding batch norm into convolutions keeps the outputs and removes the BN layers."""

import pytest
import torch
from helpers import randomised

from mbtasks import build_model
from mbtasks.layers.fusion import fold_batchnorm, for_inference


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small"])
def test_folded_classifier_gives_the_same_logits(name):
    model = randomised(build_model(name, width_mult=0.5))
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    x = torch.rand(2, 3, 96, 80)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5)


def test_folded_segmenter_gives_the_same_logits():
    model = randomised(build_model("lraspp_mobilenet_v3_small", num_classes=4))
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.allclose(fold_batchnorm(model)(x)["out"], model(x)["out"], atol=1e-4)


@pytest.mark.parametrize(
    "name, options",
    [
        ("mobilenet_v3_large", {}),
        ("lraspp_mobilenet_v3_large", {"num_classes": 5}),
        ("deeplabv3_mobilenet_v2", {"num_classes": 5, "aux": True}),
    ],
)
def test_inference_copy_is_channels_last_and_gives_the_same_outputs(name, options):
    model = randomised(build_model(name, **options))
    x = torch.rand(1, 3, 64, 96)
    fast = for_inference(model)
    conv = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want, got = model(x), fast(x)
    if isinstance(want, dict):  # a segmenter: the aux head, which only trains, is left out of the inference copy
        assert got.keys() == {"out"} and want.keys() == ({"out", "aux"} if options.get("aux") else {"out"})
        assert fast.aux_head is None and (model.aux_head is not None) == bool(options.get("aux"))
        want, got = want["out"], got["out"]
    assert torch.allclose(got, want, atol=1e-4)


def test_inference_copy_of_a_detector_gives_the_same_detections():
    model = randomised(build_model("ssdlite320_mobilenet_v3_small", num_classes=3, size=[128, 128]))
    images = [torch.rand(3, 120, 160)]
    with torch.no_grad():
        expected, got = model(images)[0], for_inference(model)(images)[0]
    assert torch.allclose(got["scores"][:20], expected["scores"][:20], atol=1e-4)
    assert torch.allclose(got["boxes"][:20], expected["boxes"][:20], atol=1e-3)
