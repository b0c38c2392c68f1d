"""Fixtures shared by test files: the demo recipes trained briefly, once a session (ONNX and ExecuTorch exports of
them are held to what int8 may cost)."""

import contextlib
import io
from pathlib import Path

import pytest
import torch

from mbtasks.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def train_demo(recipe: str, root: Path, settings: list[str]) -> str:
    """configs/demo/RECIPE trained with `settings` under root, torch on one thread (two threads on a shared 2-core
    machine spin more than they work); its best checkpoint."""
    settings = [
        *settings,
        f"data.synth_dir={root / 'data'}",
        f"train.out_dir={root / 'run'}",
        "train.progress_bar=false",
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            assert (
                main(
                    ["train", "--config", str(CONFIGS / "demo" / recipe)] + [a for s in settings for a in ("--set", s)]
                )
                == 0
            )
    finally:
        torch.set_num_threads(threads)
    return str(root / "run" / "checkpoints" / "best.ckpt")


@pytest.fixture(scope="session")
def demo_segmenter(tmp_path_factory) -> str:
    """The demo segmenter's recipe (configs/demo: LR-ASPP v3-Large on the embedded street scenes) trained for 8
    epochs on 64 scenes at 64x128: a model that segments (class mIoU 0.59), as the demo's does, in a test's time."""
    return train_demo(
        "seg_cityscapes_synth.yaml",
        tmp_path_factory.mktemp("seg_demo"),
        ["data.synth={seed: 0, num_train: 64, num_val: 12, size: [64, 128]}", "data.size=[64, 128]", "train.epochs=8"],
    )


@pytest.fixture(scope="session")
def demo_detector(tmp_path_factory) -> str:
    """The demo detector's recipe (configs/demo: SSDLite320 v3-Small on the embedded shapes) trained for 8 epochs on
    512 images at 128x128, batch 8, no warm-up: a model that detects (mAP 0.45), as the demo's does, in a test's time
    (about a minute)."""
    # From scratch a detector learns in steps, not epochs: the recipe's batches of 32 made 80 steps of 8 epochs on 320
    # images (mAP 0.001); batches of 8 make four times the steps at about the same cost (mAP 0.18). The warm-up
    # would take a whole epoch (min(1000, an epoch's steps)), an eighth of the training: without it, 0.37. The same
    # steps over more images generalise better (at width 0.5, 640 images for 8 epochs: 0.53; 320 for 16: 0.40).
    # Validated once, after the last epoch: best.ckpt is the trained model.
    return train_demo(
        "det_shapes.yaml",
        tmp_path_factory.mktemp("det_demo"),
        [
            "data.synth={seed: 0, num_train: 512, num_val: 100, image_size: 128}",
            "data.size=128",
            "data.batch_size=8",
            "train.warmup_epochs=0",
            "train.epochs=8",
            "train.val_every=8",
        ],
    )
