"""Backbone figures against the papers, taps, widths and resolutions."""

import math

import pytest
import torch

from mbtasks import MbtasksError, build_backbone, build_model
from mbtasks.backbones import BACKBONES
from mbtasks.profiling import count_madds, count_parameters, example_input
from mbtasks.reference import PAPER_FIGURES, TORCHVISION_FIGURES

# (model, width, resolution, params, multiply-adds): the v1 paper's figures, and torchvision's for the networks it
# publishes weights of (exact parameters), held within 2%.
FIGURES = [(*key, *figures) for key, figures in PAPER_FIGURES.items() if key[0] == "mobilenet_v1"]
FIGURES += [(*key, *figures) for key, figures in TORCHVISION_FIGURES.items()]


@pytest.mark.parametrize("name,width,resolution,params,madds", FIGURES)
def test_published_figures(name, width, resolution, params, madds):
    model = build_model(name, width_mult=width)
    # The paper prints 1.3M for v1 0.5 (1,331,592 exactly, as timm's) and 0.5M for v1 0.25 (470,072): compare at the
    # paper's precision too.
    count = count_parameters(model)
    assert count == pytest.approx(params, rel=0.02) or round(count / 1e6, 1) == params / 1e6
    assert count_madds(model, example_input(resolution)) == pytest.approx(madds, rel=0.02)


@pytest.mark.parametrize("key", list(TORCHVISION_FIGURES), ids=[key[0] for key in TORCHVISION_FIGURES])
def test_torchvision_parameter_counts_are_exact(key):
    name, width, _ = key
    assert count_parameters(build_model(name, width_mult=width)) == TORCHVISION_FIGURES[key][0]


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
