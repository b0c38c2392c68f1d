"""Every Python example in the README runs: each ```python block, read from README.md at test time (not copied
here), executed as a user would paste it, in an empty folder. What a block takes from the README's text around it is
made here the way that text says: the weights file the shell lines before it write, the pretrained weights placed in
torchvision's and timm's caches (no network), the demo's checkpoint (a tiny untrained one) and a photo."""

import re
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from helpers import place_timm, place_torchvision, randomised, write_checkpoint
from PIL import Image
from skimage import data
from torchvision.models import MobileNet_V3_Large_Weights

from mbtasks.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def python_examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def _label(code: str) -> str:
    """The block's first line that is not an import: the test's id."""
    return next(line for line in code.splitlines() if line and not line.startswith(("import ", "from ")))[:60]


def test_the_readme_has_python_examples():
    assert len(python_examples()) >= 3


@pytest.mark.parametrize("code", python_examples(), ids=_label)
def test_python_example_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    if "v3l.pth" in code:  # the README's shell lines before it: torchvision's state dict imported
        torch.save(torchvision.models.mobilenet_v3_large().state_dict(), "tv_v3l.pth")
        args = ["weights", "import", "--from", "torchvision", "tv_v3l.pth", "--model", "mobilenet_v3_large"]
        assert main([*args, "--out", "v3l.pth"]) == 0
    if "torchvision:MobileNet_V3_Large_Weights.IMAGENET1K_V1" in code:
        state = randomised(torchvision.models.mobilenet_v3_large()).state_dict()
        place_torchvision(tmp_path / "torch/hub/checkpoints", MobileNet_V3_Large_Weights.IMAGENET1K_V1, state)
    if "timm:mobilenetv3_large_100.ra_in1k" in code:
        state = randomised(timm.create_model("mobilenetv3_large_100")).state_dict()
        place_timm(tmp_path / "hf", "timm/mobilenetv3_large_100.ra_in1k", state)
    if "runs/det_shapes/checkpoints/best.ckpt" in code:  # what the README's first command trains, here untrained
        Path("runs/det_shapes/checkpoints").mkdir(parents=True)
        write_checkpoint(Path("runs/det_shapes/checkpoints/best.ckpt"), "det", ["circle", "square", "triangle"])
    if "photo.jpg" in code:
        Image.fromarray(data.astronaut()).save("photo.jpg")
    exec(compile(code, str(README), "exec"), {"__name__": "__main__"})
