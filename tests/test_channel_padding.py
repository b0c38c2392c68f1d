"""Expansions padded with zero channels for int8 (export/channel_padding.py): the same function in channel counts that
are multiples of 16, and nothing padded that a head reads or that is not folded."""

import pytest
import torch
from helpers import randomised

from mbtasks import build_model
from mbtasks.backbones.base import Backbone
from mbtasks.export.channel_padding import padded_expansions
from mbtasks.layers.blocks import BlockSpec, InvertedResidual
from mbtasks.layers.fusion import for_inference
from mbtasks.models.detection_graph import DetectionGraph


def _depthwise_widths(model: torch.nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]


def _head_outputs(graph: DetectionGraph, x: torch.Tensor) -> list[torch.Tensor]:
    """The SSD head's box regression and class logits of the normalised image `x`."""
    outputs = graph.head(list(graph.backbone((x - graph.mean) / graph.std).values()))
    return [outputs["bbox_regression"], outputs["cls_logits"]]


@pytest.mark.parametrize(
    "name, size",
    [
        ("ssdlite320_mobilenet_v3_large", 320),
        ("ssdlite320_mobilenet_v3_small", 320),
        ("lraspp_mobilenet_v3_large", 128),
    ],
)
def test_padded_network_computes_the_same_function_with_depthwise_widths_of_16(name, size):
    model = for_inference(randomised(build_model(name)))
    padded, changed = padded_expansions(model)
    before, after = _depthwise_widths(model), _depthwise_widths(padded)
    assert changed > 0 and any(width % 16 for width in before)  # MobileNetV3 has widths to pad (72, 120, ...)
    assert all(width % 16 == 0 for width in after)
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if name.startswith("ssdlite"):
            # the head's outputs: the detections after NMS of random weights have near-ties, whose order the
            # rounding of another channel count may swap
            for want, got in zip(_head_outputs(DetectionGraph(model), x), _head_outputs(DetectionGraph(padded), x)):
                assert want.shape == got.shape and torch.allclose(want, got, atol=1e-5)
        else:
            assert torch.allclose(model(x)["out"], padded(x)["out"], atol=1e-5)


def test_a_tapped_expansion_and_an_unfolded_block_keep_their_width():
    """A head reads the C4_expand tap (SSDLite) at its width; a block that still holds batch norm cannot be padded
    with zeros (its shift would make them non-zero)."""
    specs = [
        BlockSpec("conv", 16, stride=2, activation=torch.nn.Hardswish),
        *(BlockSpec("inverted", 24, stride=2, expanded=40, se=True, activation=torch.nn.Hardswish),) * 4,
    ]
    backbone = for_inference(randomised(Backbone(specs)))
    padded, changed = padded_expansions(backbone)
    assert backbone.expansion_tap_layer == 4 and changed == 3
    assert [layer.depthwise[0].out_channels for layer in padded.layers[1:]] == [48, 48, 48, 40]
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = backbone(x), padded(x)
    assert list(want) == list(got) and "C4_expand" in got
    assert all(torch.allclose(want[name], got[name], atol=1e-6) for name in want)
    unfolded = InvertedResidual(
        8,
        36,
        8,
        kernel=3,
        stride=1,
        dilation=1,
        se=True,
        activation=torch.nn.Hardswish,
        norm=torch.nn.BatchNorm2d,
        use_residual=True,
    ).eval()
    assert padded_expansions(unfolded)[1] == 0
    folded, changed = padded_expansions(for_inference(randomised(unfolded)))
    x = torch.rand(2, 8, 12, 12)
    assert changed == 1 and folded.depthwise[0].out_channels == 48 and folded.se.fc2.out_channels == 48
    with torch.no_grad():
        assert torch.allclose(for_inference(unfolded)(x), folded(x), atol=1e-6)
