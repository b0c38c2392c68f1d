"""Settings for the whole test run, and fixtures shared by test files.

pytest-xdist runs the test files in one worker per core (pyproject's addopts): each worker, and every process it
starts, computes on one thread, so that the workers fill the cores without spinning against each other. The demo
recipes trained briefly (ONNX and ExecuTorch exports of them are held to what int8 may cost) are trained once a run,
whichever worker asks first, and shared through a folder all workers see."""

import contextlib
import io
import os
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from mbtasks.cli import main

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

CONFIGS = Path(__file__).resolve().parents[1] / "mbtasks" / "recipes"


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a test file (`pytestmark = pytest.mark.usefixtures("one_thread")`): small convolutions
    gain nothing from threads, and on a shared machine OpenMP's spinning costs 5-10x (a Faster R-CNN's step measured
    3 s on one thread, 20 s on two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_demo(tmp_path_factory, name: str, recipe: str, settings: list[str]) -> str:
    """The packaged demo RECIPE trained with `settings` once a test run, torch on one thread; its best checkpoint."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's folder, above each worker's own
    root = shared / name
    best = root / "run" / "checkpoints" / "best.ckpt"
    with FileLock(str(root) + ".lock"):
        if best.is_file():
            return str(best)
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
                command = ["train", "--config", str(CONFIGS / "demo" / recipe)]
                assert main(command + [a for s in settings for a in ("--set", s)]) == 0
        finally:
            torch.set_num_threads(threads)
    return str(best)


@pytest.fixture(scope="session")
def demo_segmenter(tmp_path_factory) -> str:
    """The demo segmenter's recipe (LR-ASPP v3-Large on the embedded street scenes) trained for 8
    epochs on 64 scenes at 64x128: a model that segments (class mIoU 0.59), as the demo's does, in a test's time."""
    return train_demo(
        tmp_path_factory,
        "seg_demo",
        "seg_cityscapes_synth.yaml",
        ["data.synth={seed: 0, num_train: 64, num_val: 12, size: [64, 128]}", "data.size=[64, 128]", "train.epochs=8"],
    )


@pytest.fixture(scope="session")
def demo_detector(tmp_path_factory) -> str:
    """The demo detector's recipe (SSDLite320 v3-Small on the embedded shapes) trained for 8 epochs on
    512 images at 128x128, batch 8, no warm-up: a model that detects (mAP 0.45), as the demo's does, in a test's time
    (about a minute)."""
    # From scratch a detector learns in steps, not epochs: the recipe's batches of 32 made 80 steps of 8 epochs on 320
    # images (mAP 0.001); batches of 8 make four times the steps at about the same cost (mAP 0.18). The warm-up
    # would take a whole epoch (min(1000, an epoch's steps)), an eighth of the training: without it, 0.37. The same
    # steps over more images generalise better (at width 0.5, 640 images for 8 epochs: 0.53; 320 for 16: 0.40).
    # Validated once, after the last epoch: best.ckpt is the trained model.
    return train_demo(
        tmp_path_factory,
        "det_demo",
        "det_shapes.yaml",
        [
            "data.synth={seed: 0, num_train: 512, num_val: 100, image_size: 128}",
            "data.size=128",
            "data.batch_size=8",
            "train.warmup_epochs=0",
            "train.epochs=8",
            "train.val_every=8",
        ],
    )


# The Faster R-CNN demo's recipe, briefly: 256 of its images for 4 epochs, validated once at the end (mAP 0.044).
FASTER_RCNN_DEMO = [
    "data.synth={seed: 0, num_train: 256, num_val: 50, image_size: 128}",
    "train.epochs=4",
    "train.val_every=4",
]


@pytest.fixture(scope="session")
def demo_faster_rcnn(tmp_path_factory) -> str:
    """The Faster R-CNN demo recipe (v3-Small 320 FPN on the embedded shapes) trained briefly: a model that detects,
    in a test's time."""
    return train_demo(tmp_path_factory, "det_frcnn_demo", "det_shapes_fasterrcnn.yaml", FASTER_RCNN_DEMO)
