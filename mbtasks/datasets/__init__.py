"""Data readers, one file per data format, each registering its format in FORMATS (formats.py); transforms; the
embedded data sets (synthetic/)."""

# Each registers its format, in this order: the order in which data roots are recognised and formats listed.
from . import cityscapes, voc, folder_segmentation, coco, yolo, celeba, lfw, imagefolder  # noqa: F401, I001
from .formats import FORMATS

__all__ = ["FORMATS"]
