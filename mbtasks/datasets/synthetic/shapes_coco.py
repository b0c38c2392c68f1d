"""A COCO-format detection data set of coloured shapes on textured backgrounds, written from a seed."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

# Non-contiguous ids on purpose: they exercise the category id <-> contiguous label mapping.
CATEGORIES: list[dict] = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 3, "name": "square", "supercategory": "shape"},
    {"id": 5, "name": "triangle", "supercategory": "shape"},
    {"id": 7, "name": "star", "supercategory": "shape"},
]
# Saturated base colours; backgrounds are muted, so colour and outline both tell the classes apart.
_BASE_COLOURS = {1: (215, 40, 40), 3: (40, 175, 60), 5: (45, 80, 225), 7: (240, 205, 25)}
_SPLITS = {"train": 0, "val": 1}
# Image ids of the two splits never collide, as in COCO.
_FIRST_IMAGE_ID = {"train": 1, "val": 1_000_001}
# Fixed schedules rather than coin flips, so that even a handful of images has an empty one and a crowd.
_EMPTY_EVERY, _EMPTY_AT = 20, 3  # 5% of images have no annotations
_CROWD_EVERY = {"train": 30, "val": 12}  # a crowd region in 3% / 8% of images
_CROWD_AT = 5
JPEG_OPTIONS = {"quality": 95, "subsampling": 0, "optimize": False}


def write_shapes_coco(
    out_dir: str | Path, seed: int = 0, num_train: int = 1000, num_val: int = 150, image_size: int = 192
) -> dict[str, Path]:
    """Write `{train,val}2017/*.jpg` and `annotations/instances_{train,val}2017.json` under out_dir.

    The same arguments give the same bytes; returns the paths of the image folders and json files.
    """
    out_dir = Path(out_dir)
    paths: dict[str, Path] = {"root": out_dir}
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    next_ann_id = 1
    for split, count in (("train", num_train), ("val", num_val)):
        image_dir = out_dir / f"{split}2017"
        image_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index, pixels, objects in shape_images(seed, split, count, image_size):
            image_id = _FIRST_IMAGE_ID[split] + index
            file_name = f"{image_id:012d}.jpg"
            Image.fromarray(pixels).save(image_dir / file_name, **JPEG_OPTIONS)
            height, width = pixels.shape[:2]
            images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
            for obj in objects:
                annotations.append({"id": next_ann_id, "image_id": image_id, **obj})
                next_ann_id += 1
        dataset = {
            "info": {"description": f"mbtasks synthetic shapes ({split}, seed {seed})", "version": "1.0"},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": CATEGORIES,
        }
        ann_file = out_dir / "annotations" / f"instances_{split}2017.json"
        ann_file.write_text(json.dumps(dataset, separators=(",", ":")))
        paths[f"{split}_images"] = image_dir
        paths[f"{split}_annotations"] = ann_file
    return paths


def shape_images(
    seed: int, split: str, count: int, image_size: int, crowds: bool = True
) -> Iterator[tuple[int, np.ndarray, list[dict]]]:
    """(index, HWC uint8 pixels, COCO annotations without ids) of each image of a split. Each image has a generator
    of its own: a split's images do not depend on the other split's size. `crowds`: a crowd region (RLE) in some."""
    for index in range(count):
        rng = np.random.default_rng([seed, _SPLITS[split], index])
        empty = index % _EMPTY_EVERY == _EMPTY_AT
        crowd = crowds and index % _CROWD_EVERY[split] == _CROWD_AT
        yield (index, *_draw_image(rng, image_size, empty, crowd))


def _draw_image(rng: np.random.Generator, image_size: int, empty: bool, crowd: bool) -> tuple[np.ndarray, list[dict]]:
    long_side, short_side = image_size, int(round(image_size * rng.uniform(0.75, 1.0)))
    width, height = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
    canvas = Image.fromarray(_background(rng, height, width))
    objects: list[dict] = []
    if empty:
        return np.asarray(canvas), objects
    taken: list[tuple[int, int, int, int]] = []
    if crowd:
        objects.append(_draw_crowd(rng, canvas, taken))
    for _ in range(int(rng.choice([1, 2, 3, 4], p=[0.3, 0.3, 0.25, 0.15]))):
        shape = _draw_shape(rng, canvas, taken)
        if shape is not None:
            objects.append(shape)
    return np.asarray(canvas), objects


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(50, 200) + rng.uniform(-20, 20, size=3)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    kind = rng.integers(3)
    if kind == 0:  # low-frequency noise: a coarse random grid upsampled
        coarse = rng.uniform(50, 200, size=(int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3))
        smooth = Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.BILINEAR)
        base = np.asarray(smooth, dtype=np.float32)
        base = base.mean(axis=2, keepdims=True) * 0.6 + base * 0.4  # keep it muted
    else:
        angle = rng.uniform(0, math.pi)
        along = x * math.cos(angle) + y * math.sin(angle)
        if kind == 1:  # linear gradient
            t = (along - along.min()) / max(float(np.ptp(along)), 1.0)
        else:  # stripes
            t = 0.5 + 0.5 * np.sin(2 * math.pi * along / rng.uniform(6, 30))
        a, b = _muted_colour(rng), _muted_colour(rng)
        base = a + t[..., None] * (b - a)
    base = base + rng.normal(0, 6, size=(height, width, 3))
    return np.clip(base, 0, 255).astype(np.uint8)


def _overlaps(box: tuple[int, int, int, int], taken: list[tuple[int, int, int, int]], margin: int = 2) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] + margin and b[0] < x1 + margin and y0 < b[3] + margin and b[1] < y1 + margin for b in taken)


def _polygon(rng: np.random.Generator, category_id: int, cx: float, cy: float, radius: float) -> np.ndarray:
    if category_id == 1:
        angles = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        radii = np.full(48, radius)
    elif category_id == 3:
        angles = np.linspace(0, 2 * math.pi, 4, endpoint=False) + math.pi / 4
        radii = np.full(4, radius)
    elif category_id == 5:
        angles = np.linspace(0, 2 * math.pi, 3, endpoint=False) - math.pi / 2
        radii = np.full(3, radius)
    else:
        angles = np.linspace(0, 2 * math.pi, 10, endpoint=False) - math.pi / 2
        radii = np.where(np.arange(10) % 2 == 0, radius, radius * 0.45)
    rotation = rng.uniform(-math.pi, math.pi) if category_id != 1 else 0.0
    # A mild stretch varies the aspect ratios the detector sees.
    sx, sy = rng.uniform(0.8, 1.2, size=2)
    px, py = radii * np.cos(angles) * sx, radii * np.sin(angles) * sy
    cos, sin = math.cos(rotation), math.sin(rotation)
    return np.stack([cx + px * cos - py * sin, cy + px * sin + py * cos], axis=1)


def _tight_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _draw_shape(rng: np.random.Generator, canvas: Image.Image, taken: list) -> dict | None:
    width, height = canvas.size
    category_id = int(rng.choice([c["id"] for c in CATEGORIES]))
    colour = tuple(int(v) for v in np.clip(np.array(_BASE_COLOURS[category_id]) + rng.integers(-25, 26, 3), 0, 255))
    for _ in range(30):
        radius = rng.uniform(0.2, 0.6) * min(width, height) / 2
        cx = rng.uniform(radius * 1.25, width - radius * 1.25)
        cy = rng.uniform(radius * 1.25, height - radius * 1.25)
        vertices = _polygon(rng, category_id, cx, cy, radius)
        mask_image = Image.new("L", canvas.size, 0)
        ImageDraw.Draw(mask_image).polygon([tuple(v) for v in vertices.tolist()], fill=255)
        box = _tight_box(np.asarray(mask_image) > 0)
        if box is None or box[0] <= 0 or box[1] <= 0 or box[2] >= width or box[3] >= height:
            continue
        if _overlaps(box, taken):
            continue
        taken.append(box)
        canvas.paste(colour, mask=mask_image)
        # PIL puts pixel i's centre at i; COCO puts it at i + 0.5, hence the shift of the polygon.
        polygon = (vertices + 0.5).round(2)
        return {
            "category_id": category_id,
            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
            "area": round(_shoelace(polygon), 2),
            "segmentation": [polygon.reshape(-1).tolist()],
            "iscrowd": 0,
        }
    return None


def _draw_crowd(rng: np.random.Generator, canvas: Image.Image, taken: list) -> dict:
    """A group of small shapes of one class, annotated as one crowd region (RLE), as COCO does."""
    width, height = canvas.size
    category_id = int(rng.choice([c["id"] for c in CATEGORIES]))
    region = rng.uniform(0.3, 0.45) * min(width, height)
    x0, y0 = rng.uniform(2, width - region - 2), rng.uniform(2, height - region - 2)
    mask_image = Image.new("L", canvas.size, 0)
    draw = ImageDraw.Draw(mask_image)
    for _ in range(int(rng.integers(6, 11))):
        radius = rng.uniform(0.04, 0.07) * min(width, height)
        cx, cy = rng.uniform(x0 + radius, x0 + region - radius), rng.uniform(y0 + radius, y0 + region - radius)
        draw.polygon([tuple(v) for v in _polygon(rng, category_id, cx, cy, radius).tolist()], fill=255)
    mask = np.asarray(mask_image) > 0
    box = _tight_box(mask)
    assert box is not None  # radii of 3+ pixels always leave some
    taken.append(box)
    colour = tuple(int(v) for v in np.clip(np.array(_BASE_COLOURS[category_id]) + rng.integers(-25, 26, 3), 0, 255))
    canvas.paste(colour, mask=mask_image)
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "category_id": category_id,
        "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
        "area": int(mask_utils.area(rle)),
        "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
        "iscrowd": 1,
    }


def _shoelace(polygon: np.ndarray) -> float:
    x, y = polygon[:, 0], polygon[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)
