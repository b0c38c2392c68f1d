"""A plain folder of images and masks, the segmentation format for one's own data:

    images/{train,val}/*.jpg|png   the photos
    masks/{train,val}/*.png        the same stems: one class index per pixel (greyscale or palette PNG)
    classes.yaml (or .json)        classes: [name, ...]; optional ignore_index: 255 (no class given) and
                                   palette: [[r, g, b], ...] (one colour per class, for pictures and saved masks)

Scored with the confusion-matrix mIoU; predictions are saved as palette PNGs of class indices, as the masks are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mbtasks.datasets.classes_file import class_list, read_classes_file
from mbtasks.datasets.file_checks import check_images_and_masks
from mbtasks.datasets.formats import FORMATS, SegmentationFormat
from mbtasks.datasets.segmentation_transforms import segmentation_item
from mbtasks.datasets.synthetic.streets_folder import write_streets_folder
from mbtasks.datasets.voc import voc_palette
from mbtasks.errors import MbtasksError
from mbtasks.io.images import read_image_and_label

CLASSES_FILES = ("classes.yaml", "classes.yml", "classes.json")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
IGNORE_INDEX = 255  # what items' masks hold where no class is given, whatever the files hold there


@dataclass(frozen=True)
class FolderClasses:
    """What classes.yaml says: the class names (index order), the masks' ignore index, and the colours if given."""

    names: tuple[str, ...]
    ignore_index: int
    palette: np.ndarray | None
    path: Path


def read_folder_classes(root: Path) -> FolderClasses:
    """classes.yaml (or .yml, .json) of a folder root, checked."""
    path, values = read_classes_file(root, CLASSES_FILES)
    unknown = sorted(set(values) - {"classes", "ignore_index", "palette"})
    if unknown:
        raise MbtasksError(f"unknown key {unknown[0]!r} (known: classes, ignore_index, palette)", path)
    names = class_list(values.get("classes"), "classes", path)
    ignore = values.get("ignore_index", IGNORE_INDEX)
    if not isinstance(ignore, int) or isinstance(ignore, bool) or not len(names) <= ignore <= 255:
        raise MbtasksError(
            f"ignore_index must be a whole number from {len(names)} (after the class indices) to 255, got {ignore!r}",
            path,
        )
    palette = values.get("palette")
    if palette is not None:
        colours = np.asarray(palette, dtype=object)
        if colours.shape != (len(names), 3) or not all(isinstance(v, int) and 0 <= v <= 255 for v in colours.flat):
            raise MbtasksError(f"palette must be {len(names)} colours [r, g, b] of 0..255, one per class", path)
        palette = colours.astype(np.uint8)
    return FolderClasses(names, ignore, palette, path)


class FolderSegmentation(torch.utils.data.Dataset):
    """`images/{split}/*` with their `masks/{split}/<stem>.png`; items as CityscapesSegmentation's (image, mask of
    class indices with 255 where no class is given, image_path, label_path). A missing mask, a mask of another size
    and a class index beyond the classes are one-line errors naming the file."""

    ignore_index = IGNORE_INDEX

    def __init__(self, root: str | Path, split: str, transform: Callable[..., dict] | None, classes: FolderClasses):
        self.root, self.split, self.transform, self.classes = Path(root), split, transform, classes
        image_dir, mask_dir = self.root / "images" / split, self.root / "masks" / split
        if not image_dir.is_dir():
            raise MbtasksError(
                f"no images/{split}/ folder (the folder format: images/{split}/, masks/{split}/, classes.yaml)",
                self.root,
            )
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise MbtasksError(f"no images ({', '.join(IMAGE_SUFFIXES)})", image_dir)
        stems: dict[str, Path] = {}
        for image in images:
            if image.stem in stems:
                raise MbtasksError(
                    f"two images of one name, {stems[image.stem].name} and {image.name}: their masks "
                    "would be the same file",
                    image_dir,
                )
            stems[image.stem] = image
        # one listing instead of a stat per file: fast on network file systems with thousands of images
        present = {p.name for p in mask_dir.glob("*.png")} if mask_dir.is_dir() else set()
        missing = [image for image in images if f"{image.stem}.png" not in present]
        if missing:
            more = f" (and {len(missing) - 1} more images)" if len(missing) > 1 else ""
            raise MbtasksError(
                f"no mask for this image: expected {mask_dir / (missing[0].stem + '.png')}{more}", missing[0]
            )
        self.image_paths = [str(image) for image in images]
        self.label_paths = [str(mask_dir / f"{image.stem}.png") for image in images]

    def check_files(self) -> None:
        """Before the first step: each image and its mask open and have one size (headers only)."""
        check_images_and_masks(self.image_paths, self.label_paths)

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_path, label_path = self.image_paths[index], self.label_paths[index]
        image, mask = read_image_and_label(image_path, label_path)
        count, ignore = len(self.classes.names), self.classes.ignore_index
        bad = mask[(mask >= count) & (mask != ignore)]
        if bad.size:
            raise MbtasksError(
                f"class index {int(bad[0])} beyond the {count} classes of {self.classes.path.name} "
                f"(0..{count - 1}, and {ignore} where no class is given)",
                label_path,
            )
        mask = mask.astype(np.uint8)
        if ignore != IGNORE_INDEX:
            mask[mask == ignore] = IGNORE_INDEX
        return segmentation_item(self.transform, image, mask, image_path, label_path)


@FORMATS.register("folder")
class FolderFormat(SegmentationFormat):
    """The plain folder format: images/, masks/ of class indices, classes.yaml; its embedded set is the street
    scenes in this layout."""

    layout = "images/{split}/, masks/{split}/ and classes.yaml"
    write_synthetic = staticmethod(write_streets_folder)

    @classmethod
    def sniff(cls, root: Path) -> bool:
        return (root / "images").is_dir() and (root / "masks").is_dir()

    @cached_property
    def classes(self) -> FolderClasses:
        return read_folder_classes(self.root)

    @property
    def class_names(self) -> list[str]:
        return list(self.classes.names)

    def dataset(self, split: str, transform: Callable | None) -> FolderSegmentation:
        return FolderSegmentation(self.root, split, transform, self.classes)

    def palette(self) -> np.ndarray:
        """classes.yaml's colours where the data is at hand and gives them, else VOC's colour map."""
        has_classes = self.root is not None and any((self.root / name).is_file() for name in CLASSES_FILES)
        given = self.classes.palette if has_classes else None
        return voc_palette() if given is None else given
