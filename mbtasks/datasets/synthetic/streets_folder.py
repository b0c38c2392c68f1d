"""The synthetic street scenes (streets_cityscapes.py's) written in the plain folder format: JPEG photos, masks of
class indices over the seven classes the scenes show, and classes.yaml with their Cityscapes colours."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from cityscapesscripts.helpers.labels import name2label
from PIL import Image

from mbtasks.datasets.synthetic.streets_cityscapes import PRESENT_CLASSES, street_scenes

IGNORE_INDEX = 255


def write_streets_folder(
    out_dir: str | os.PathLike,
    seed: int = 0,
    num_train: int = 300,
    num_val: int = 60,
    size: tuple[int, int] = (128, 256),
    max_cars: int = 4,
    max_persons: int = 3,
) -> dict[str, Any]:
    """Write street scenes as `images/{train,val}/*.jpg`, `masks/{train,val}/*.png` and `classes.yaml` (the options
    are write_streets_cityscapes's).

    Returns a summary: root, size, num_images per split, the classes, seed."""
    root = Path(out_dir)
    counts = {"train": num_train, "val": num_val}
    # Cityscapes label id -> class index; what the scenes show besides the seven (the ego vehicle, bins) is ignored
    class_of = np.full(256, IGNORE_INDEX, np.uint8)
    for index, name in enumerate(PRESENT_CLASSES):
        class_of[name2label[name].id] = index
    for scene in street_scenes(seed, counts, size, max_cars, max_persons):
        for folder in ("images", "masks"):
            (root / folder / scene.split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(scene.photo).save(root / "images" / scene.split / f"{scene.stem}.jpg", quality=95)
        Image.fromarray(class_of[scene.label_ids]).save(
            root / "masks" / scene.split / f"{scene.stem}.png", compress_level=1
        )
    classes = {
        "classes": list(PRESENT_CLASSES),
        "ignore_index": IGNORE_INDEX,
        "palette": [list(name2label[name].color) for name in PRESENT_CLASSES],
    }
    (root / "classes.yaml").write_text(yaml.safe_dump(classes, sort_keys=False, default_flow_style=None))
    return {
        "root": str(root),
        "size": tuple(size),
        "num_images": counts,
        "classes": list(PRESENT_CLASSES),
        "seed": seed,
    }
