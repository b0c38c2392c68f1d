"""Backbone figures against the papers, taps, widths and resolutions."""
import math

import pytest
import torch

from mbtasks import MbtasksError, build_backbone, build_model
from mbtasks.backbones import BACKBONES
from mbtasks.profiling import count_madds, count_parameters, example_input

# (model, width, resolution, params or None, multiply-adds): the figures, held within 2%.
PAPER = [
    ("mobilenet_v1", 1.0, 224, 4.2e6, 569e6),
    ("mobilenet_v1", 0.75, 224, 2.6e6, 325e6),
    ("mobilenet_v1", 0.5, 224, 1.3e6, 149e6),
    ("mobilenet_v1", 0.25, 224, None, 41e6),
    ("mobilenet_v1", 1.0, 192, None, 418e6),
    ("mobilenet_v1", 1.0, 160, None, 290e6),
    ("mobilenet_v1", 1.0, 128, None, 186e6),
    ("mobilenet_v2", 1.0, 224, 3_504_872, 300e6),
    ("mobilenet_v3_large", 1.0, 224, 5_483_032, 217e6),
    ("mobilenet_v3_small", 1.0, 224, 2_542_856, 56e6),
]


@pytest.mark.parametrize("name,width,resolution,params,madds", PAPER)
def test_paper_figures(name, width, resolution, params, madds):
    model = build_model(name, width_mult=width)
    if params is not None:
        # The paper prints 1.3M for v1 0.5 (1,331,592 exactly, as timm's): compare at the paper's precision too.
        count = count_parameters(model)
        assert count == pytest.approx(params, rel=0.02) or round(count / 1e6, 1) == params / 1e6
    assert count_madds(model, example_input(resolution)) == pytest.approx(madds, rel=0.02)


def test_torchvision_parameter_counts_are_exact():
    assert count_parameters(build_model("mobilenet_v2")) == 3_504_872
    assert count_parameters(build_model("mobilenet_v3_large")) == 5_483_032
    assert count_parameters(build_model("mobilenet_v3_small")) == 2_542_856


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_taps_have_declared_stride_and_channels(name, output_stride):
    backbone = build_backbone(name, output_stride=output_stride).eval()
    assert list(backbone.strides) == ["C1", "C2", "C3", "C4", "C4_expand", "C5"]
    for h, w in [(224, 224), (321, 513)]:
        with torch.no_grad():
            features = backbone(torch.rand(1, 3, h, w))
        assert list(features) == list(backbone.out_channels)
        for tap, feature in features.items():
            stride = backbone.strides[tap]
            assert stride == min({"C1": 2, "C2": 4, "C3": 8, "C4": 16, "C4_expand": 16, "C5": 32}[tap], output_stride)
            assert feature.shape == (1, backbone.out_channels[tap], math.ceil(h / stride), math.ceil(w / stride)), tap


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_reduced_tail_halves_channels_after_c4(name):
    full, reduced = build_backbone(name), build_backbone(name, reduced_tail=True)
    assert reduced.out_channels["C4"] == full.out_channels["C4"]
    assert reduced.out_channels["C4_expand"] == full.out_channels["C4_expand"]
    assert reduced.out_channels["C5"] == full.out_channels["C5"] // 2


@pytest.mark.parametrize("width", [0.35, 0.6, 1.3])
def test_any_width_rounds_channels_to_multiples_of_8(width):
    for name in BACKBONES:
        backbone = build_backbone(name, width_mult=width)
        assert all(c % 8 == 0 for c in backbone.out_channels.values()), name
        with torch.no_grad():
            assert backbone(torch.rand(1, 3, 97, 131))["C5"].shape[-2:] == (4, 5)


def test_last_layer_rule():
    # v2 keeps 1280 channels below width 1 and scales above; v3 keeps its 1280 hidden layer the same way.
    assert build_backbone("mobilenet_v2", width_mult=0.5).out_channels["C5"] == 1280
    assert build_backbone("mobilenet_v2", width_mult=1.4).out_channels["C5"] == 1792
    assert build_model("mobilenet_v3_large", width_mult=0.75).head.fc.in_features == 1280
    assert build_backbone("mobilenet_v1", width_mult=0.5).out_channels["C5"] == 512


def test_classifier_trains_one_step():
    model = build_model("mobilenet_v3_small", num_classes=5, width_mult=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(model(torch.rand(2, 3, 64, 64)), torch.tensor([1, 3]))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)


def test_bad_options_are_clear_errors():
    with pytest.raises(MbtasksError, match="output_stride"):
        build_backbone("mobilenet_v2", output_stride=4)
    with pytest.raises(MbtasksError, match="unknown option"):
        build_model("mobilenet_v2", widht_mult=0.5)
    with pytest.raises(MbtasksError, match="width_mult must be a positive number"):
        build_backbone("mobilenet_v3_small", width_mult=0)
    with pytest.raises(MbtasksError, match="unknown model"):
        build_model("mobilenet_v4")
