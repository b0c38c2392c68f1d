"""The house plan holds: import layers (import-linter), and every registered network builds, trains and reloads."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.ssd import SSD

from mbtasks import build_model, list_models
from mbtasks.io.records import Record, save_weights
from mbtasks.models import MODELS
from mbtasks.models.segmenters import Segmenter

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept():
    """Layers cli -> (ablation, export, predict) -> tasks -> models -> (heads, backbones) -> layers; evaluation
    without tasks, models or Lightning; datasets without model code; no circles (contracts in pyproject.toml)."""
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "Contracts: 4 kept, 0 broken." in result.stdout


# Small convolutions gain nothing from threads (conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


# Options that keep a network small enough for a fast test, its kind unchanged: each network takes those it has.
SMALL = {"num_classes": 4, "num_attributes": 5, "embedding_dim": 16, "size": 96, "width_mult": 0.5}
# A Faster R-CNN's box head runs on each proposal: a few of them.
SMALL.update(rpn_post_nms_top_n_train=16, rpn_post_nms_top_n_test=16, box_batch_size_per_image=16)


def _small(name: str) -> dict:
    return {k: v for k, v in SMALL.items() if k in MODELS.get(name).defaults}


DETECTORS = (SSD, GeneralizedRCNN)  # torchvision's detection contract: lists of images, targets in training


def _training_loss(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    if isinstance(model, DETECTORS):
        targets = [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "labels": torch.tensor([1])}] * len(images)
        return sum(model.train()(list(images), targets).values())
    output = model.train()(images)
    return (output["out"] if isinstance(model, Segmenter) else output).float().pow(2).mean()


@torch.no_grad()
def _eval_output(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    if isinstance(model, DETECTORS):
        return model.eval()(list(images))[0]["scores"]
    output = model.eval()(images)
    return output["out"] if isinstance(model, Segmenter) else output


@pytest.mark.parametrize("name", list_models())
def test_every_registered_network_trains_and_round_trips_its_weights(name, tmp_path):
    assert name in MODELS
    torch.manual_seed(0)
    options = _small(name)
    model = build_model(name, **options)
    images = torch.rand(2, 3, 96, 96)
    loss = _training_loss(model, images)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert torch.isfinite(loss) and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    output = _eval_output(model, images)
    if isinstance(model, Segmenter):
        assert output.shape == (2, options["num_classes"], 96, 96)
    elif not isinstance(model, DETECTORS):
        expected = options.get("num_classes") or options.get("num_attributes") or options.get("embedding_dim")
        assert output.shape == (2, expected)

    path = tmp_path / "weights.pt"
    save_weights(path, Record(name, MODELS.get(name).backbone, options, state_dict=model.state_dict()))
    rebuilt = build_model(name, weights=path)
    saved, loaded = model.state_dict(), rebuilt.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert torch.equal(_eval_output(rebuilt, images), output)
