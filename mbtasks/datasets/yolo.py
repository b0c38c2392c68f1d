"""YOLO-style detection labels, the detection format users bring from Ultralytics and most labelling tools:

    images/{train,val}/*.jpg|png    the photos
    labels/{train,val}/<stem>.txt   one `class cx cy w h` line per box, normalised to [0, 1] by the image's upright
                                    (EXIF-rotated) size; no file, or an empty one, for an image without boxes
    classes.yaml (or .json)         `classes: [name, ...]`; or Ultralytics' data.yaml with `names` (a list, or
                                    {class id: name})

The labels are read into the form of a COCO annotation file, in memory: class id i is category i + 1, the detector's
label i + 1 (0 is background), so the detection task and COCOeval take them as they take COCO's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from mbtasks.datasets.classes_file import class_list, read_classes_file
from mbtasks.datasets.coco import CocoDetection
from mbtasks.datasets.formats import FORMATS, DetectionFormat
from mbtasks.datasets.synthetic.shapes_yolo import write_shapes_yolo
from mbtasks.errors import MbtasksError
from mbtasks.evaluation.coco import coco_index
from mbtasks.io.images import image_size

CLASSES_FILES = ("classes.yaml", "classes.yml", "classes.json", "data.yaml", "data.yml")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_TURNED = (5, 6, 7, 8)  # EXIF orientations that turn the image by 90 degrees: width and height swap


def read_yolo_classes(root: Path) -> tuple[str, ...]:
    """The class names of a YOLO root: classes.yaml's `classes` (or `names`), or data.yaml's `names`."""
    path, values = read_classes_file(root, CLASSES_FILES)
    key = "names" if "names" in values else "classes"
    return class_list(values.get(key), key, path)


def upright_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image as it is shown (its EXIF orientation applied), from its header alone; a missing,
    unreadable or over-sized image is one error (image_size's)."""
    width, height = image_size(path)
    try:
        with Image.open(path) as image:
            turned = image.getexif().get(0x0112) in _TURNED
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise MbtasksError(
            f"cannot read image ({' '.join(str(error).split()) or type(error).__name__})", path
        ) from None
    return (height, width) if turned else (width, height)


def read_label_file(path: Path, width: int, height: int, classes: int) -> list[tuple[int, list[float]]]:
    """(class id, [x, y, w, h] in pixels, clipped to the image) of each line of a label file; a bad line is one
    error naming the file and the line."""
    boxes = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) != 5:
                raise ValueError
            class_id, values = int(fields[0]), [float(field) for field in fields[1:]]
        except ValueError:
            raise MbtasksError(
                f"line {number}: expected `class cx cy w h` (a class id and 4 numbers), found {line.strip()!r}", path
            ) from None
        if not 0 <= class_id < classes:
            raise MbtasksError(
                f"line {number}: class {class_id} is not one of the {classes} classes (0..{classes - 1})", path
            )
        if not all(math.isfinite(v) and 0 <= v <= 1 for v in values):
            raise MbtasksError(
                f"line {number}: cx cy w h must be normalised to 0..1, found {' '.join(fields[1:])}", path
            )
        cx, cy, w, h = values
        x0, y0 = max(cx - w / 2, 0.0) * width, max(cy - h / 2, 0.0) * height
        x1, y1 = min(cx + w / 2, 1.0) * width, min(cy + h / 2, 1.0) * height
        boxes.append((class_id, [x0, y0, x1 - x0, y1 - y0]))
    return boxes


def yolo_ground_truth(root: Path, split: str, class_names: Sequence[str]) -> dict:
    """A split's images and boxes as a COCO annotation file holds them: image ids 1.. in file-name order, category id
    = class id + 1, boxes in pixels."""
    image_dir, label_dir = root / "images" / split, root / "labels" / split
    if not image_dir.is_dir():
        raise MbtasksError(
            f"no images/{split}/ folder (the YOLO layout: images/{split}/, labels/{split}/, classes.yaml or data.yaml)",
            root,
        )
    files = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise MbtasksError(f"no images ({', '.join(IMAGE_SUFFIXES)})", image_dir)
    labelled = {p.name for p in label_dir.glob("*.txt")} if label_dir.is_dir() else set()
    images, annotations = [], []
    for image_id, file in enumerate(files, 1):
        width, height = upright_size(file)
        images.append({"id": image_id, "file_name": file.name, "width": width, "height": height})
        if f"{file.stem}.txt" in labelled:
            for class_id, box in read_label_file(label_dir / f"{file.stem}.txt", width, height, len(class_names)):
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": class_id + 1,
                        "bbox": box,
                        "area": box[2] * box[3],
                        "iscrowd": 0,
                    }
                )
    categories = [{"id": index + 1, "name": name} for index, name in enumerate(class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


@FORMATS.register("yolo")
class YoloFormat(DetectionFormat):
    """YOLO txt labels: images/, labels/, classes.yaml or data.yaml; its embedded set is the synthetic shapes in
    this layout."""

    layout = "images/{split}/, labels/{split}/*.txt and classes.yaml or data.yaml"
    write_synthetic = staticmethod(write_shapes_yolo)

    @classmethod
    def sniff(cls, root: Path) -> bool:
        return (root / "images").is_dir() and (root / "labels").is_dir()

    @cached_property
    def class_names(self) -> tuple[str, ...]:
        return read_yolo_classes(self.root)

    def dataset(
        self,
        split: str,
        transforms: Callable | None,
        *,
        train: bool,
        num_classes: int | None = None,
        names_by_id: Sequence[str] = (),
    ) -> CocoDetection:
        coco = coco_index(yolo_ground_truth(self.root, split, self.class_names))
        return CocoDetection(
            self.root / "images" / split,
            self.root / "labels" / split,
            transforms,
            train=train,
            num_classes=num_classes,
            names_by_id=names_by_id,
            coco=coco,
            exif_upright=True,
        )
