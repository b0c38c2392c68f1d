"""The check of a data set's files made before the first training or evaluation step, at the cost of reading image
headers, not pixels: every image listed exists, opens, is within the pixel limit, and has the size its annotations
(or its mask) give. A data set takes part by defining `check_files()`; `check_files(dataset)` runs it through the
wrappers (Indexed, Mapped, ...) that hold the data set as `.dataset`."""

from __future__ import annotations

import os
from collections.abc import Iterable

from torch.utils.data import Dataset

from mbtasks.errors import MbtasksError
from mbtasks.io.images import image_size


def check_files(dataset: Dataset | None) -> None:
    """Run the data set's own `check_files()`, looking through the wrappers around it; a data set without one is
    checked as it is read."""
    while dataset is not None:
        own = getattr(type(dataset), "check_files", None)
        if own is not None:
            dataset.check_files()
            return
        dataset = getattr(dataset, "dataset", None)


def check_images(paths: Iterable[str | os.PathLike]) -> None:
    """Each image exists, opens and is within the pixel limit (headers only); the first that fails is the error."""
    for path in paths:
        image_size(path)


def check_images_and_masks(image_paths: Iterable[str | os.PathLike], mask_paths: Iterable[str | os.PathLike]) -> None:
    """Each image and its mask open, and have one size (headers only); the error names the first that fails."""
    for image_path, mask_path in zip(image_paths, mask_paths, strict=True):
        image, mask = image_size(image_path), image_size(mask_path)
        if image != mask:
            raise MbtasksError(
                f"mask is {mask[0]}x{mask[1]} but its image {os.path.basename(image_path)} is {image[0]}x{image[1]}",
                mask_path,
            )
