"""The synthetic shapes (shapes_coco.py's) written in the YOLO layout: `images/{train,val}/*.jpg`, one
`labels/{train,val}/*.txt` per image (`class cx cy w h` per box, normalised), and `data.yaml` as Ultralytics writes
it (`names` by class id). YOLO has no crowd regions, so none are drawn."""

from __future__ import annotations

from pathlib import Path

import yaml
from PIL import Image

from mbtasks.datasets.synthetic.shapes_coco import CATEGORIES, JPEG_OPTIONS, shape_images


def write_shapes_yolo(
    out_dir: str | Path, seed: int = 0, num_train: int = 1000, num_val: int = 150, image_size: int = 192
) -> dict[str, Path]:
    """Write the shapes in the YOLO layout under out_dir; the same arguments give the same bytes. Class ids follow
    CATEGORIES' order (circle 0, square 1, triangle 2, star 3). Returns the root and the data.yaml path."""
    root = Path(out_dir)
    class_of = {category["id"]: index for index, category in enumerate(CATEGORIES)}
    for split, count in (("train", num_train), ("val", num_val)):
        image_dir, label_dir = root / "images" / split, root / "labels" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        for index, pixels, objects in shape_images(seed, split, count, image_size, crowds=False):
            height, width = pixels.shape[:2]
            Image.fromarray(pixels).save(image_dir / f"{index:06d}.jpg", **JPEG_OPTIONS)
            lines = []
            for obj in objects:
                x, y, w, h = obj["bbox"]
                lines.append(
                    f"{class_of[obj['category_id']]} {(x + w / 2) / width:.6f} {(y + h / 2) / height:.6f} "
                    f"{w / width:.6f} {h / height:.6f}"
                )
            (label_dir / f"{index:06d}.txt").write_text("".join(line + "\n" for line in lines))
    data = {
        "path": ".",
        "train": "images/train",
        "val": "images/val",
        "names": {index: category["name"] for index, category in enumerate(CATEGORIES)},
    }
    (root / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return {"root": root, "data": root / "data.yaml"}
