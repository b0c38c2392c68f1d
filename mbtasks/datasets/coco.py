"""COCO detection: the annotation file read and checked through pycocotools, one image and its boxes per item; and
the COCO format (`annotations/instances_{split}.json`, `{split}/` images), the detection task's default."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO

from mbtasks.datasets.formats import FORMATS, DetectionFormat
from mbtasks.datasets.synthetic.shapes_coco import write_shapes_coco
from mbtasks.errors import MbtasksError
from mbtasks.evaluation.coco import load_coco_json
from mbtasks.io.images import image_size, read_rgb_image


def coco_labels(
    coco: COCO, num_classes: int | None, names_by_id: Sequence[str], source: Path
) -> tuple[list[int], list[str]]:
    """(label -> category id, label -> class name) for a model of `num_classes` outputs (None: the data's count).

    The data's K categories in id order are labels 1..K (a model of K + 1 outputs). A model of more outputs that label
    by category id (torchvision's COCO detectors: 91 outputs for COCO's ids 1..90, "N/A" at unused ids) keeps its own
    labels through this map: label = id. `names_by_id` (its weights' names by id, if any) must agree with the data's.
    """
    ids = sorted(coco.cats)
    names = {c: coco.cats[c]["name"] for c in ids}
    if num_classes is None or num_classes == len(ids) + 1:
        return [0, *ids], ["__background__", *names.values()]
    by_id = len(names_by_id) == num_classes or num_classes == ids[-1] + 1
    if not by_id or num_classes <= ids[-1] or ids[0] < 1:
        raise MbtasksError(
            f"the model has {num_classes} classes (model.options.num_classes or its weights), which "
            f"fits neither the data set's {len(ids)} categories + background ({len(ids) + 1}) nor "
            f"labels by category id (ids up to {ids[-1]}: {ids[-1] + 1})",
            source,
        )
    for c in ids:
        if names_by_id and names_by_id[c] not in (names[c], "N/A"):
            raise MbtasksError(
                f"category {c} is {names[c]!r} here but {names_by_id[c]!r} in the model's weights, "
                "which label by category id",
                source,
            )
    return list(range(num_classes)), ["__background__", *(names.get(c, "N/A") for c in range(1, num_classes))]


class CocoDetection(torch.utils.data.Dataset):
    """Images of a COCO annotation file with their boxes; labels 1..K follow the sorted category ids (0 = background).

    Without transforms an item is (HWC uint8 RGB numpy image, target); with them, whatever the transforms make
    of the image (a CHW float tensor in [0, 1] for detection_transforms). Target: boxes (float32 xyxy pixels),
    labels (int64), iscrowd (int64), image_id (int), orig_size ((h, w) of the file).

    `coco`: the ground truth already in memory (another format's, read into COCO's form), which `annotation_file`
    then only names in messages (that format's labels). `ground_truth` is what COCOeval scores the images against.
    `exif_upright`: the boxes refer to the images as shown (EXIF orientation applied, as YOLO's do), not as stored.
    """

    def __init__(
        self,
        image_dir: str | Path,
        annotation_file: str | Path,
        transforms: Callable[..., dict[str, Any]] | None = None,
        *,
        train: bool,
        num_classes: int | None = None,
        names_by_id: Sequence[str] = (),
        coco: COCO | None = None,
        exif_upright: bool = False,
    ):
        self.image_dir = Path(image_dir)
        self.annotation_file = Path(annotation_file)
        self.transforms = transforms
        self.train = train
        self.coco = load_coco_json(self.annotation_file) if coco is None else coco
        self.ground_truth: Path | COCO = self.annotation_file if coco is None else coco
        self.exif_upright = exif_upright
        # label -> COCO category id (0 stands for background) and label -> name
        self.category_ids, self.class_names = coco_labels(self.coco, num_classes, names_by_id, self.annotation_file)
        self.image_ids: list[int] = sorted(self.coco.imgs)
        self._targets = self._build_targets(
            {c: label for label, c in enumerate(self.category_ids) if label and c in self.coco.cats}
        )

    def _build_targets(self, label_of: dict[int, int]) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        targets, degenerate = {}, 0
        for image_id in self.image_ids:
            info = self.coco.imgs[image_id]
            width, height = info["width"], info["height"]
            boxes, labels, crowd = [], [], []
            for ann in self.coco.imgToAnns.get(image_id, []):
                iscrowd = int(ann.get("iscrowd", 0))
                if self.train and iscrowd:
                    continue  # crowd regions are ignored by the metric, so they are not taught either
                x, y, w, h = ann["bbox"]
                if w <= 0 or h <= 0:
                    degenerate += 1
                    continue
                x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
                if x1 <= x0 or y1 <= y0:
                    raise MbtasksError(
                        f"annotation {ann['id']} has a box {ann['bbox']} outside its {width}x{height} image",
                        self.annotation_file,
                    )
                boxes.append((x0, y0, x1, y1))
                labels.append(label_of[ann["category_id"]])
                crowd.append(iscrowd)
            targets[image_id] = (
                np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                np.asarray(labels, dtype=np.int64),
                np.asarray(crowd, dtype=np.int64),
            )
        if degenerate:
            warnings.warn(
                f"{self.annotation_file}: skipped {degenerate} boxes with zero or negative width or height",
                stacklevel=3,
            )
        return targets

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, image_id: int) -> Path:
        """The file of an image id."""
        return self.image_dir / self.coco.imgs[image_id]["file_name"]

    def check_files(self) -> None:
        """Before the first step: annotations to learn from (or to score against), and every image there, opening,
        of the size the annotations give (image headers only). The error names the first image that fails."""
        if not self.coco.dataset.get("annotations"):
            raise MbtasksError(
                f"has no annotations: {'nothing to train on' if self.train else 'nothing to score against'}",
                self.annotation_file,
            )
        for image_id in self.image_ids:
            path = self.image_path(image_id)
            if not path.is_file():
                missing = sum(not self.image_path(i).is_file() for i in self.image_ids)
                more = f" ({missing - 1} more missing in {self.image_dir})" if missing > 1 else ""
                raise MbtasksError(f"image file not found (image id {image_id}){more}", path)
            width, height = image_size(path)
            info = self.coco.imgs[image_id]
            if self.exif_upright:  # the size the annotations give was read from this header (YOLO): nothing to match
                continue
            if (width, height) != (info["width"], info["height"]):
                raise MbtasksError(
                    f"image is {width}x{height} but {self.annotation_file.name} says {info['width']}x{info['height']} "
                    f"(image id {image_id})",
                    path,
                )

    def load_image(self, image_id: int) -> np.ndarray:
        """The image as HWC uint8 RGB, checked against the size the annotation file gives."""
        path = self.image_path(image_id)
        # COCO's boxes refer to the stored pixels (EXIF orientation ignored)
        image = read_rgb_image(path, exif_upright=self.exif_upright)
        info = self.coco.imgs[image_id]
        if image.shape[:2] != (info["height"], info["width"]):
            raise MbtasksError(
                f"image is {image.shape[1]}x{image.shape[0]} but {self.annotation_file.name} says "
                f"{info['width']}x{info['height']}",
                path,
            )
        return image

    def boxes_of(self, image_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """An image's ground truth as its items give it untransformed: boxes (xyxy pixels), labels, iscrowd."""
        return self._targets[image_id]

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        image_id = self.image_ids[index]
        image = self.load_image(image_id)
        boxes, labels, iscrowd = self._targets[image_id]
        if self.transforms is not None:
            out = self.transforms(image=image, bboxes=boxes, labels=labels, iscrowd=iscrowd)
            image, boxes, labels, iscrowd = out["image"], out["bboxes"], out["labels"], out["iscrowd"]
        target = {
            "boxes": torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(labels), dtype=torch.int64),
            "iscrowd": torch.as_tensor(np.asarray(iscrowd), dtype=torch.int64),
            "image_id": image_id,
            "orig_size": (self.coco.imgs[image_id]["height"], self.coco.imgs[image_id]["width"]),
        }
        return image, target


@FORMATS.register("coco")
class CocoFormat(DetectionFormat):
    """COCO: `annotations/instances_{split}.json` and the `{split}/` images it lists (splits train2017, val2017);
    its embedded set is the synthetic shapes."""

    layout = "annotations/instances_{split}.json and {split}/ images"
    splits = ("train2017", "val2017")
    write_synthetic = staticmethod(write_shapes_coco)

    @classmethod
    def sniff(cls, root: Path) -> bool:
        return (root / "annotations").is_dir()

    def dataset(
        self,
        split: str,
        transforms: Callable | None,
        *,
        train: bool,
        num_classes: int | None = None,
        names_by_id: Sequence[str] = (),
    ) -> CocoDetection:
        return CocoDetection(
            self.root / split,
            self.root / "annotations" / f"instances_{split}.json",
            transforms,
            train=train,
            num_classes=num_classes,
            names_by_id=names_by_id,
        )
