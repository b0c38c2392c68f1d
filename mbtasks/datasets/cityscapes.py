"""Cityscapes fine annotations as a map-style dataset: RGB image and train-id mask (255 ignored), with file paths."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import torch
from cityscapesscripts.helpers.labels import labels

from mbtasks.datasets.segmentation_transforms import segmentation_item
from mbtasks.errors import MbtasksError
from mbtasks.io.images import read_image_and_label

IGNORE_INDEX = 255
_EVALUATED = sorted((label for label in labels if 0 <= label.trainId < IGNORE_INDEX), key=lambda label: label.trainId)
CLASS_NAMES: tuple[str, ...] = tuple(label.name for label in _EVALUATED)  # the 19 train ids, in order
TRAIN_ID_COLORS = np.array([label.color for label in _EVALUATED], dtype=np.uint8)  # for drawing predictions

# Lookup tables from cityscapesscripts' label table (license plate, id -1, is never drawn in a PNG)
_LABEL_IDS = sorted(label.id for label in labels if label.id >= 0)
_MAX_LABEL_ID = _LABEL_IDS[-1]
assert _LABEL_IDS == list(range(_MAX_LABEL_ID + 1)), "the known-id check below assumes contiguous label ids"
_LABEL_TO_TRAIN = np.full(_MAX_LABEL_ID + 1, IGNORE_INDEX, dtype=np.uint8)
for _label in labels:
    if _label.id >= 0 and 0 <= _label.trainId < IGNORE_INDEX:
        _LABEL_TO_TRAIN[_label.id] = _label.trainId
_LUT_256 = np.concatenate([_LABEL_TO_TRAIN, np.full(256 - len(_LABEL_TO_TRAIN), IGNORE_INDEX, np.uint8)])
_TRAIN_TO_LABEL = np.array([label.id for label in _EVALUATED], dtype=np.uint8)

_IMAGE_SUFFIX = "_leftImg8bit.png"
_LABEL_SUFFIX = "_gtFine_labelIds.png"


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map Cityscapes label ids (0..33) to train ids 0..18; ignored classes become 255."""
    return _LABEL_TO_TRAIN[label_ids]


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Map train ids 0..18 back to label ids, the encoding the official evaluation reads."""
    if train_ids.size and int(train_ids.max()) >= len(_TRAIN_TO_LABEL):
        raise MbtasksError(f"train id {int(train_ids.max())} outside 0..{len(_TRAIN_TO_LABEL) - 1}")
    return _TRAIN_TO_LABEL[train_ids]


class CityscapesSegmentation(torch.utils.data.Dataset):
    """`leftImg8bit/{split}/{city}/*` images with their `gtFine` labelIds mapped to train ids.

    An item is a dict: image (HWC uint8 RGB, or whatever `transform` makes of it), mask (HxW uint8 train ids,
    or a uint8 tensor after a tensor transform), image_path and label_path. `transform` is called as
    `transform(image=..., mask=...)`, as albumentations pipelines are.
    """

    num_classes = len(CLASS_NAMES)
    class_names = CLASS_NAMES
    ignore_index = IGNORE_INDEX

    def __init__(self, root: str | os.PathLike, split: str = "train", transform: Callable[..., dict] | None = None):
        self.root = os.fspath(root)
        self.split = split
        self.transform = transform
        image_dir = os.path.join(self.root, "leftImg8bit", split)
        self.image_paths = sorted(glob.glob(os.path.join(image_dir, "*", "*" + _IMAGE_SUFFIX)))
        if not self.image_paths:
            raise MbtasksError(f"no images found (expected leftImg8bit/{split}/<city>/*{_IMAGE_SUFFIX})", self.root)
        self.label_paths = [
            os.path.join(
                self.root,
                "gtFine",
                split,
                os.path.basename(os.path.dirname(path)),
                os.path.basename(path)[: -len(_IMAGE_SUFFIX)] + _LABEL_SUFFIX,
            )
            for path in self.image_paths
        ]
        # one listing instead of a stat per file: fast on network file systems with thousands of images
        present = set(glob.glob(os.path.join(self.root, "gtFine", split, "*", "*" + _LABEL_SUFFIX)))
        missing = [path for path in self.label_paths if path not in present]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise MbtasksError(f"ground truth file not found{more}", missing[0])

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_path, label_path = self.image_paths[index], self.label_paths[index]
        image, label_ids = read_image_and_label(image_path, label_path)
        # label ids 0..33 are all in the table, so the extremes decide
        if label_ids.size and (int(label_ids.min()) < 0 or int(label_ids.max()) > _MAX_LABEL_ID):
            unknown = label_ids[(label_ids < 0) | (label_ids > _MAX_LABEL_ID)]
            raise MbtasksError(f"unknown label id {int(unknown[0])} (not in cityscapesscripts' table)", label_path)
        # cv2.LUT: 10-20x faster than numpy's fancy indexing over a 2048x1024 label map
        mask = cv2.LUT(label_ids, _LUT_256) if label_ids.dtype == np.uint8 else _LABEL_TO_TRAIN[label_ids]
        return segmentation_item(self.transform, image, mask, image_path, label_path)
