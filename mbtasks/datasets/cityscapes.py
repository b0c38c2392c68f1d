"""Cityscapes fine annotations as a map-style dataset (RGB image and train-id mask, 255 ignored, with file paths), and
the Cityscapes format: the official evaluation on label ids, predictions saved as the official script reads them."""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Callable
from pathlib import Path, PurePath
from typing import Any

import cv2
import numpy as np
import torch
from cityscapesscripts.helpers.labels import labels

from mbtasks.datasets.file_checks import check_images_and_masks
from mbtasks.datasets.formats import FORMATS, SegmentationFormat
from mbtasks.datasets.mapped import Mapped
from mbtasks.datasets.segmentation_transforms import segmentation_item
from mbtasks.datasets.synthetic.streets_cityscapes import write_streets_cityscapes
from mbtasks.drawing import write_png
from mbtasks.errors import MbtasksError
from mbtasks.evaluation.segmentation import CityscapesEvaluator, evaluate_cityscapes_folders, format_cityscapes_table
from mbtasks.io.images import read_image_and_label, read_label_png

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

    def check_files(self) -> None:
        """Before the first step: each image and its mask open and have one size (headers only)."""
        check_images_and_masks(self.image_paths, self.label_paths)

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_path, label_path = self.image_paths[index], self.label_paths[index]
        image, label_ids = read_image_and_label(image_path, label_path)
        # label ids 0..33 are all in the table, so the extremes decide
        if label_ids.size and (int(label_ids.min()) < 0 or int(label_ids.max()) > _MAX_LABEL_ID):
            unknown = label_ids[(label_ids < 0) | (label_ids > _MAX_LABEL_ID)]
            raise MbtasksError(f"unknown label id {int(unknown[0])} (not in cityscapesscripts' table)", label_path)
        # cv2.LUT: measured faster than numpy's fancy indexing over a full-size label map (bench/data.py)
        mask = cv2.LUT(label_ids, _LUT_256) if label_ids.dtype == np.uint8 else _LABEL_TO_TRAIN[label_ids]
        return segmentation_item(self.transform, image, mask, image_path, label_path)


def with_official_targets(item: dict) -> dict:
    """A Cityscapes item plus the ground truth the official evaluation reads: label ids and instance ids (HxW)."""
    label_path = item["label_path"]
    item["label_ids"] = read_label_png(label_path)
    item["instance_ids"] = read_label_png(label_path[: -len("labelIds.png")] + "instanceIds.png")
    return item


@FORMATS.register("cityscapes")
class CityscapesFormat(SegmentationFormat):
    """Cityscapes: leftImg8bit/ and gtFine/, the 19 train ids; validation scores label ids with the official
    evaluation (IoU and iIoU, per class and per category), and predictions are saved as labelIds/ PNGs (what the
    official script reads) and color/ PNGs, under <city>/<image name>."""

    layout = "leftImg8bit/ and gtFine/"
    default_crop = (512, 1024)  # mmseg's
    fixed_classes = CLASS_NAMES
    write_synthetic = staticmethod(write_streets_cityscapes)

    @classmethod
    def sniff(cls, root: Path) -> bool:
        return (root / "leftImg8bit").is_dir() or (root / "gtFine").is_dir()  # photos, or the ground truth alone

    def dataset(self, split: str, transform: Callable | None) -> CityscapesSegmentation:
        return CityscapesSegmentation(self.root, split, transform)

    def validation_set(self, split: str, transform: Callable | None) -> Mapped:
        return Mapped(self.dataset(split, transform), with_official_targets)

    def palette(self) -> np.ndarray:
        return TRAIN_ID_COLORS

    def counts(self, class_names: list[str]) -> CityscapesEvaluator:
        return CityscapesEvaluator()

    def image_counts(self, prediction: np.ndarray, item: dict, class_names: list[str]) -> CityscapesEvaluator:
        counts = CityscapesEvaluator()
        counts.update(train_ids_to_label_ids(prediction), item["label_ids"], item["instance_ids"])
        return counts

    def metrics(self, counts: CityscapesEvaluator) -> dict:
        return _without_matrix(counts.result())

    def figures(self, metrics: dict) -> dict[str, float]:
        return {
            "val/mIoU": metrics["mean_class_iou"],
            "val/iIoU": metrics["mean_class_iiou"],
            "val/category_IoU": metrics["mean_category_iou"],
            "val/category_iIoU": metrics["mean_category_iiou"],
        }

    def class_figures(self, metrics: dict) -> dict[str, dict[str, float]]:
        """IoU, iIoU (classes with instances) and accuracy per class."""
        return {
            name: {
                "IoU": iou,
                "iIoU": metrics["class_iiou"].get(name, math.nan),
                "accuracy": metrics["class_accuracy"][name],
            }
            for name, iou in metrics["class_iou"].items()
        }

    def metrics_table(self, metrics: dict) -> str:
        """The official script's class and category tables."""
        return format_cityscapes_table(metrics)

    def saved_name(self, image_path: str) -> PurePath:
        path = Path(image_path)
        return PurePath(path.parent.name, path.name)

    def prediction_files(self, name: PurePath) -> list[PurePath]:
        return [PurePath("labelIds", name), PurePath("color", name)]

    def write_prediction(self, out: Path, name: PurePath, prediction: np.ndarray) -> None:
        for file, image in zip(
            self.prediction_files(name), [train_ids_to_label_ids(prediction), TRAIN_ID_COLORS[prediction]], strict=True
        ):
            write_png(out / file, image)

    def earlier_predictions(self, folder: Path) -> list[Path]:
        return [p for sub in ("labelIds", "color") for p in sorted((folder / sub).rglob("*")) if p.is_file()]

    def saved_what(self, folder: Path) -> str:
        return f"labelId PNGs to {folder / 'labelIds'} and colour PNGs to {folder / 'color'}"

    def score_folders(self, predictions: Path, split: str) -> tuple[dict, str, int]:
        """A folder of labelId PNGs against this root, as the official script scores them."""
        result = evaluate_cityscapes_folders(self.root, predictions, split=split)
        return _without_matrix(result), format_cityscapes_table(result), result["num_images"]


def _without_matrix(result: dict) -> dict:
    """The official figures without the confusion matrix (35 x 35 counts): what is logged, printed and saved."""
    return {k: v for k, v in result.items() if k != "confusion_matrix"}
