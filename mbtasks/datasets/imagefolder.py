"""ImageFolder: `<folder>/<class>/*.jpg|png`, class ids from the sorted class names (torchvision's layout); the
classification task's format."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from mbtasks.datasets.file_checks import check_images
from mbtasks.datasets.formats import FORMATS, DataFormat
from mbtasks.datasets.synthetic.faces import write_shape_imagefolder
from mbtasks.errors import MbtasksError
from mbtasks.io.images import read_rgb_image


def apply_transform(transform: Callable | None, image: np.ndarray) -> np.ndarray | torch.Tensor:
    """Run an albumentations pipeline on one image; None keeps the HWC uint8 array."""
    return image if transform is None else transform(image=image)["image"]


class ImageFolder(torch.utils.data.Dataset):
    """Images under one folder of class folders; yields (image, class id).

    `classes` fixes the class list (pass the training set's to a validation set); its folders must all
    exist and no other folder may. Empty class folders are errors; a corrupt image fails when read.
    """

    def __init__(
        self,
        folder: str | Path,
        transform: Callable | None = None,
        classes: Sequence[str] | None = None,
    ):
        self.folder = Path(folder)
        self.transform = transform
        if not self.folder.is_dir():
            raise MbtasksError("image folder not found", self.folder)
        found = sorted(entry.name for entry in self.folder.iterdir() if entry.is_dir())
        if classes is None:
            if not found:
                raise MbtasksError("no class folders", self.folder)
            classes = found
        else:
            unexpected = sorted(set(found) - set(classes))
            if unexpected:
                raise MbtasksError(f"class folder '{unexpected[0]}' is not one of the known classes", self.folder)
            absent = [name for name in classes if name not in found]
            if absent:
                raise MbtasksError(f"no folder for class '{absent[0]}'", self.folder)
        self.classes: list[str] = list(classes)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        # torchvision walks the folders; its own empty-class error is not ours, so count here instead.
        self.samples: list[tuple[str, int]] = make_dataset(
            str(self.folder), self.class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True
        )
        counts = Counter(label for _, label in self.samples)
        for name, label in self.class_to_idx.items():
            if counts[label] == 0:
                raise MbtasksError("class folder has no images", self.folder / name)
        self.targets = [label for _, label in self.samples]

    def check_files(self) -> None:
        """Before the first step: each image opens (headers only)."""
        check_images(path for path, _ in self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray | torch.Tensor, int]:
        path, label = self.samples[index]
        return apply_transform(self.transform, read_rgb_image(path)), label


@FORMATS.register("imagefolder")
class ImageFolderFormat(DataFormat):
    """An ImageFolder per split (`train/<class>/`, `val/<class>/`), the classification task's format; the classes are
    the training folder's class folders (the validation folder's where there is none); its embedded set is the
    synthetic shapes."""

    kind = "classification"
    layout = "train/<class>/ and val/<class>/ images"
    write_synthetic = staticmethod(write_shape_imagefolder)

    @classmethod
    def sniff(cls, root: Path) -> bool:
        return any((root / split).is_dir() for split in cls.splits)

    def dataset(self, split: str, transform: Callable | None, classes: Sequence[str] | None = None) -> ImageFolder:
        return ImageFolder(self.root / split, transform, classes=classes)

    def classes_of(self, split: str) -> list[str] | None:
        """The class folders of `split` (None where it has none, or is not there)."""
        folder = self.root / split
        if not folder.is_dir():
            return None
        return sorted(entry.name for entry in folder.iterdir() if entry.is_dir()) or None
