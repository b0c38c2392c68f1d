"""Folding batch norm into convolutions keeps the outputs and removes the BN layers."""
import pytest
import torch

from mbtasks import build_model
from mbtasks.fusion import fold_batchnorm

from helpers import randomised


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
        assert torch.allclose(fold_batchnorm(model)(x), model(x), atol=1e-4)
