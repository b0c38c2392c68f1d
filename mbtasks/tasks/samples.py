"""`mbtasks data show`: a recipe's training samples as the training loop sees them (the first of epoch 0, in its
order, augmented as that epoch augments them) and its validation samples as evaluation sees them, each drawn with
its boxes, mask or labels: the first thing to look at when a label map or an augmentation is wrong."""

import math
from itertools import islice
from pathlib import Path

import numpy as np

from ..config import Config
from ..drawing import grid, write_png
from .base import BaseDataModule, BaseTask
from .build import build_task_and_data

# A validation image larger than this (Cityscapes' 1024x2048) is shrunk in the grid, so that 16 of them make a
# picture a browser shows whole.
MAX_CELL_SIDE = 640
SHEETS = ("train.png", "val.png")
# Samples smaller than this (a 64x80 face) are enlarged, pixels as squares, before their labels are drawn.
MIN_SIDE = 256


def sample_pictures(task: BaseTask, data: BaseDataModule, count: int) -> dict[str, list[np.ndarray]]:
    """Up to `count` drawn samples of each split: "train" the first of epoch 0 augmented, "val" the first in order."""
    train = data.augmented_train_set()
    items = {
        "train": [train[key] for key in islice(data.training_order(epoch=0), count)],
        "val": [data.val_set[index] for index in range(min(count, len(data.val_set)))],
    }
    return {split: [drawn(task, data, item) for item in chosen] for split, chosen in items.items()}


def drawn(task: BaseTask, data: BaseDataModule, item) -> np.ndarray:
    """One sample drawn by its task, enlarged first where its shorter side is under MIN_SIDE (so its text reads)."""
    height, width = data.sample_for_drawing(item)[0].shape[:2]
    return task.draw_sample(*data.sample_for_drawing(item, zoom=max(1, math.ceil(MIN_SIDE / min(height, width)))))


def show_samples(config: Config, count: int, out: Path) -> list[str]:
    """train.png and val.png under `out`: grids of `count` samples of each split; returns the lines to print."""
    task, data = build_task_and_data(config, "fit")
    lines = []
    for (split, pictures), sheet in zip(sample_pictures(task, data, count).items(), SHEETS, strict=True):
        if not pictures:
            continue
        columns = math.ceil(math.sqrt(len(pictures)))
        write_png(out / sheet, grid(pictures, columns=columns, max_side=MAX_CELL_SIDE))
        how = "augmented as epoch 0 of training" if split == "train" else "as evaluation reads them"
        lines.append(f"wrote {out / sheet}: {len(pictures)} {split} samples, {how}")
    return lines
