"""PASCAL VOC 2012 segmentation as a map-style dataset (RGB image and class mask, 21 classes, 255 ignored), and the
VOC format: confusion-matrix mIoU, predictions saved as palette PNGs (the devkit's results format)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mbtasks.datasets.file_checks import check_images_and_masks
from mbtasks.datasets.formats import FORMATS, SegmentationFormat
from mbtasks.datasets.segmentation_transforms import segmentation_item
from mbtasks.errors import MbtasksError
from mbtasks.io.images import read_image_and_label

IGNORE_INDEX = 255
CLASS_NAMES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def voc_palette() -> np.ndarray:
    """The 256x3 colour map of VOC's palette PNGs (the devkit's bit-interleaving rule; 255 is (224, 224, 192))."""
    # no installed library exposes it; this is the devkit's labelcolormap.m
    index = np.arange(256)
    palette = np.zeros((256, 3), dtype=np.uint8)
    for bit in range(8):
        for channel in range(3):
            palette[:, channel] |= (((index >> (3 * bit + channel)) & 1) << (7 - bit)).astype(np.uint8)
    return palette


def _voc_root(root: str) -> str | None:
    """The VOC 2012 folder at `root`, in VOC2012/ or VOCdevkit/VOC2012/ (the one holding ImageSets/Segmentation)."""
    for candidate in (root, os.path.join(root, "VOC2012"), os.path.join(root, "VOCdevkit", "VOC2012")):
        if os.path.isdir(os.path.join(candidate, "ImageSets", "Segmentation")):
            return candidate
    return None


def _find_voc_root(root: str) -> str:
    found = _voc_root(root)
    if found is None:
        raise MbtasksError(
            "not a VOC 2012 folder (no ImageSets/Segmentation here, in VOC2012/ or VOCdevkit/VOC2012/)", root
        )
    return found


class VOCSegmentation(torch.utils.data.Dataset):
    """`ImageSets/Segmentation/{split}.txt` images (JPEGImages/*.jpg) with SegmentationClass palette PNGs.

    Items are dicts like CityscapesSegmentation's: image, mask (class indices, 255 = boundary, ignored),
    image_path, label_path; `transform(image=..., mask=...)` as albumentations pipelines are called.
    """

    num_classes = len(CLASS_NAMES)
    class_names = CLASS_NAMES
    ignore_index = IGNORE_INDEX

    def __init__(self, root: str | os.PathLike, split: str = "train", transform: Callable[..., dict] | None = None):
        self.root = _find_voc_root(os.fspath(root))
        self.split = split
        self.transform = transform
        list_file = os.path.join(self.root, "ImageSets", "Segmentation", f"{split}.txt")
        if not os.path.isfile(list_file):
            raise MbtasksError(f"split list not found (splits here: {', '.join(self._splits()) or 'none'})", list_file)
        with open(list_file) as file:
            names = [line.split()[0] for line in file if line.strip()]
        if not names:
            raise MbtasksError("split list is empty", list_file)
        self.image_paths = [os.path.join(self.root, "JPEGImages", f"{name}.jpg") for name in names]
        self.label_paths = [os.path.join(self.root, "SegmentationClass", f"{name}.png") for name in names]
        for paths in (self.image_paths, self.label_paths):
            missing = [path for path in paths if not os.path.isfile(path)]
            if missing:
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                raise MbtasksError(f"file listed in {split}.txt not found{more}", missing[0])

    def _splits(self) -> list[str]:
        folder = os.path.join(self.root, "ImageSets", "Segmentation")
        return sorted(name[:-4] for name in os.listdir(folder) if name.endswith(".txt"))

    def check_files(self) -> None:
        """Before the first step: each image and its mask open and have one size (headers only)."""
        check_images_and_masks(self.image_paths, self.label_paths)

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_path, label_path = self.image_paths[index], self.label_paths[index]
        image, mask = read_image_and_label(image_path, label_path)
        bad = mask[(mask >= len(CLASS_NAMES)) & (mask != IGNORE_INDEX)]
        if bad.size:
            raise MbtasksError(
                f"class index {int(bad[0])} outside 0..{len(CLASS_NAMES) - 1} and not {IGNORE_INDEX}", label_path
            )
        mask = mask.astype(np.uint8)
        return segmentation_item(self.transform, image, mask, image_path, label_path)


@FORMATS.register("voc")
class VOCFormat(SegmentationFormat):
    """PASCAL VOC 2012: ImageSets/Segmentation/<split>.txt, JPEGImages/, SegmentationClass/ palette PNGs (here, in
    VOC2012/ or in VOCdevkit/VOC2012/), the 21 classes; no embedded set."""

    layout = "ImageSets/Segmentation/, JPEGImages/, SegmentationClass/ (here, in VOC2012/ or VOCdevkit/VOC2012/)"
    fixed_classes = CLASS_NAMES

    @classmethod
    def sniff(cls, root: Path) -> bool:
        return _voc_root(os.fspath(root)) is not None

    def dataset(self, split: str, transform: Callable | None) -> VOCSegmentation:
        return VOCSegmentation(self.root, split, transform)

    def palette(self) -> np.ndarray:
        return voc_palette()
