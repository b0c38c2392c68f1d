"""Real photos (scikit-image's) in the COCO, Cityscapes, folder and YOLO layouts, for the pipeline and format tests
and bench/data.py.

COCO: JPEGs at COCO's 640x480 with boxes drawn by hand around what the photos show, under COCO's own category
ids; one iscrowd region in RLE, as COCO stores crowds. Cityscapes: 2048x1024 PNGs tiled from the photos, each
with a labelIds PNG whose ids follow the photo's content (bands of its blurred grey levels). Folder: the photos at
half size with masks drawn by hand (rectangles and ellipses of classes, bands of the ignore index). YOLO: the COCO
boxes as normalised label lines, with Ultralytics' data.yaml.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask
from skimage import data

COCO_SIZE = (480, 640)  # (height, width)
# COCO's category ids and names (instances_*.json) of the objects in these photos
CATEGORIES = {
    1: "person",
    2: "bicycle",
    4: "motorcycle",
    5: "airplane",
    17: "cat",
    44: "bottle",
    47: "cup",
    50: "spoon",
    62: "chair",
    67: "dining table",
}
# Per photo, boxes as COCO stores them (x, y, width, height in the 640x480 pixels) with their category ids,
# drawn by hand; crowds (iscrowd 1) are rectangles stored as RLE.
BOXES = {
    "astronaut": [((25, 15, 440, 465), 1), ((440, 0, 150, 265), 5)],
    "coffee": [((185, 20, 250, 350), 47), ((345, 80, 110, 310), 50), ((0, 0, 640, 480), 67)],
    "chelsea": [((0, 0, 565, 480), 17)],
    "motorcycle": [((80, 75, 510, 360), 4), ((35, 100, 210, 195), 62), ((0, 130, 42, 90), 2), ((345, 55, 20, 35), 44)],
    "camera": [((0, 60, 420, 420), 1)],
}
CROWDS = {"motorcycle": [((300, 40, 150, 50), 44)]}  # the bottles on the top shelf


def photo(name: str) -> np.ndarray:
    """A scikit-image photo as HxWx3 uint8 RGB."""
    image = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]


def write_coco_photos(root: Path, splits: tuple[str, ...] = ("train2017",), copies: int = 1) -> Path:
    """For each split, `root/{split}/*.jpg` (the photos at 640x480, JPEG quality 90, each `copies` times under
    other names) and `root/annotations/instances_{split}.json`; returns root."""
    for split in splits:
        _write_coco_split(root, split, copies)
    return root


def _write_coco_split(root: Path, split: str, copies: int) -> None:
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    images, annotations = [], []
    height, width = COCO_SIZE
    for name in [name for _ in range(copies) for name in BOXES]:
        image_id = len(images) + 1
        file_name = f"{image_id:012d}.jpg"
        pixels = cv2.resize(photo(name), (width, height), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(root / split / file_name), pixels[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for (x, y, w, h), category in BOXES[name]:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                    "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                }
            )
        for (x, y, w, h), category in CROWDS.get(name, []):
            region = np.zeros((height, width), dtype=np.uint8, order="F")
            region[y : y + h, x : x + w] = 1
            rle = coco_mask.encode(region)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 1,
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                }
            )
    categories = [{"id": i, "name": n, "supercategory": n} for i, n in CATEGORIES.items()]
    (root / "annotations" / f"instances_{split}.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )


CITYSCAPES_SIZE = (1024, 2048)
TILE = 512
TILE_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "motorcycle",
    "camera",
    "immunohistochemistry",
    "hubble_deep_field",
)
# Grey-level band (8 of them) -> Cityscapes label id: road, sidewalk, building, vegetation, sky, person, car, and
# 0 (unlabeled, ignored in training) in the brightest band
BAND_LABEL_IDS = np.array([7, 8, 11, 21, 23, 24, 26, 0], dtype=np.uint8)


def write_cityscapes_photos(
    root: Path, images: int = 2, splits: tuple[str, ...] = ("train",), city: str = "aachen"
) -> Path:
    """For each split, `images` scenes of 2x4 photo tiles in `root/leftImg8bit/{split}/{city}/` and their
    `root/gtFine/{split}/{city}/*_gtFine_labelIds.png`; returns root."""
    tiles = [cv2.resize(photo(name), (TILE, TILE), interpolation=cv2.INTER_AREA) for name in TILE_PHOTOS]
    for split in splits:
        _write_cityscapes_split(root, split, city, tiles, images)
    return root


def _write_cityscapes_split(root: Path, split: str, city: str, tiles: list[np.ndarray], images: int) -> None:
    image_dir, label_dir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    for index in range(images):
        order = np.roll(np.arange(len(tiles)), index)
        scene = np.concatenate([np.concatenate([tiles[i] for i in row], axis=1) for row in order.reshape(2, 4)])
        # blurred first: regions with smooth edges, as annotators draw them (its PNG a third the size of raw bands')
        label_ids = BAND_LABEL_IDS[cv2.GaussianBlur(cv2.cvtColor(scene, cv2.COLOR_RGB2GRAY), (0, 0), 8) // 32]
        name = f"{city}_{index:06d}_000019"
        # PIL's defaults (zlib level 6, adaptive filters), as cityscapesscripts writes its label PNGs: 3.2 MB photos
        # (Cityscapes' own: about 2 MB, of less busy scenes)
        Image.fromarray(scene).save(image_dir / f"{name}_leftImg8bit.png")
        Image.fromarray(label_ids).save(label_dir / f"{name}_gtFine_labelIds.png")


# ---- the folder segmentation format ----

FOLDER_CLASSES = ["background", "person", "cat", "cup"]
FOLDER_IGNORE = 200  # not 255: the reader maps the file's own ignore index to 255
FOLDER_PALETTE = [[0, 0, 0], [220, 20, 60], [255, 160, 0], [70, 130, 180]]
# split -> (photo, file suffix, mask as a palette PNG?)
FOLDER_SPLITS = {
    "train": [("astronaut", ".png", False), ("chelsea", ".jpg", False), ("camera", ".jpg", True)],
    "val": [("coffee", ".jpg", True), ("chelsea", ".jpg", False)],
}


def folder_photo(name: str) -> np.ndarray:
    """A photo at half its size, as the folder set stores it."""
    image = photo(name)
    return cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)


def folder_mask(name: str) -> np.ndarray:
    """The mask drawn by hand for a photo at half size: class indices, FOLDER_IGNORE where no class is given."""
    height, width = folder_photo(name).shape[:2]
    rows, cols = np.mgrid[0:height, 0:width]
    mask = np.zeros((height, width), np.uint8)
    if name == "astronaut":
        mask[15:, 10:225] = 1  # the astronaut
        mask[:5] = FOLDER_IGNORE  # the top rows, left unlabelled
    elif name == "camera":
        mask[30:230, 50:170] = 1  # the cameraman
    elif name == "chelsea":
        mask[((rows - 80) / 70) ** 2 + ((cols - 112) / 100) ** 2 <= 1] = 2  # the cat
    elif name == "coffee":
        distance = np.hypot(rows - 95, cols - 140)
        mask[distance <= 75] = 3  # the cup
        mask[(distance > 75) & (distance <= 78)] = FOLDER_IGNORE  # its outline, as VOC's boundaries
    return mask


def write_folder_photos(root: Path) -> Path:
    """`root/images/{train,val}/`, `root/masks/{train,val}/` (grey or palette PNGs) and `root/classes.json`."""
    for split, photos in FOLDER_SPLITS.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for name, suffix, palette in photos:
            Image.fromarray(folder_photo(name)).save(root / "images" / split / f"{name}{suffix}", quality=90)
            mask = Image.fromarray(folder_mask(name))
            if palette:  # all 256 entries: PIL writes a palette of 4 as 2-bit pixels, which cannot hold the 200
                mask.putpalette([v for colour in FOLDER_PALETTE for v in colour] + [255] * 3 * 252)
            mask.save(root / "masks" / split / f"{name}.png")
    (root / "classes.json").write_text(
        json.dumps({"classes": FOLDER_CLASSES, "ignore_index": FOLDER_IGNORE, "palette": FOLDER_PALETTE})
    )
    return root


# ---- the YOLO detection format ----

YOLO_CLASSES = list(CATEGORIES.values())  # class id = position: COCO's category ids in order
# split -> photos; rocket has no label file (an image without boxes)
YOLO_SPLITS = {"train": ["astronaut", "coffee", "chelsea"], "val": ["motorcycle", "camera", "rocket"]}


def yolo_boxes(name: str) -> list[tuple[int, tuple[int, int, int, int]]]:
    """(class id, (x0, y0, x1, y1) in the 640x480 photo's pixels) of BOXES' boxes of a photo."""
    class_of = {category: index for index, category in enumerate(CATEGORIES)}
    return [(class_of[category], (x, y, x + w, y + h)) for (x, y, w, h), category in BOXES.get(name, [])]


def write_yolo_photos(root: Path) -> Path:
    """`root/images/{train,val}/` (640x480 JPEGs, chelsea a PNG), `root/labels/{train,val}/*.txt` (BOXES, normalised)
    and Ultralytics' `root/data.yaml` (names by class id)."""
    height, width = COCO_SIZE
    for split, names in YOLO_SPLITS.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for name in names:
            pixels = cv2.resize(photo(name), (width, height), interpolation=cv2.INTER_AREA)
            Image.fromarray(pixels).save(
                root / "images" / split / f"{name}{'.png' if name == 'chelsea' else '.jpg'}", quality=90
            )
            if name in BOXES:
                lines = [
                    f"{c} {(x0 + x1) / 2 / width:.6f} {(y0 + y1) / 2 / height:.6f} {(x1 - x0) / width:.6f} "
                    f"{(y1 - y0) / height:.6f}"
                    for c, (x0, y0, x1, y1) in yolo_boxes(name)
                ]
                (root / "labels" / split / f"{name}.txt").write_text("\n".join(lines) + "\n")
    names = "\n".join(f"  {index}: {name}" for index, name in enumerate(YOLO_CLASSES))
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return root
