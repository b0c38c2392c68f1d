"""Reading label PNGs (one integer id per pixel) and colour images, with checks that name the file."""

from __future__ import annotations

import os

import cv2
import numpy as np
from PIL import Image

from mbtasks.errors import MbtasksError

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# IHDR colour types that carry colours, not ids
_COLOUR_TYPES = {2: "RGB", 4: "grey+alpha", 6: "RGBA"}


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """Decode a greyscale (8/16-bit) or palette PNG to a 2-D array of ids (palette indices, not colours)."""
    try:
        with open(path, "rb") as file:
            head = file.read(26)
    except FileNotFoundError:
        raise MbtasksError("file not found", path) from None
    except OSError as error:
        raise MbtasksError(f"cannot read file: {error.strerror}", path) from None
    if len(head) < 26 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise MbtasksError("not a PNG file (corrupt, or another format)", path)
    bit_depth, colour_type = head[24], head[25]
    if colour_type in _COLOUR_TYPES:
        raise MbtasksError(
            f"{_COLOUR_TYPES[colour_type]} PNG where a label PNG belongs "
            "(expected one id per pixel: greyscale or palette)",
            path,
        )
    if colour_type == 0 and bit_depth in (8, 16):
        # cv2 decodes grey PNGs 1.2-1.5x faster than PIL (measured at 1024x2048) and releases the GIL
        array = cv2.imread(os.fspath(path), cv2.IMREAD_UNCHANGED)
        if array is not None and array.ndim == 2:
            return array
    # PIL for palettes (cv2 would expand them to colours), bit depths below 8, and the reason a file is corrupt
    try:
        with Image.open(path) as image:
            array = np.asarray(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise MbtasksError(f"corrupt PNG: {error}", path) from None
    if array.ndim != 2:
        raise MbtasksError(f"PNG with {array.shape[2]} channels where a label PNG belongs", path)
    return array.astype(np.uint8) if array.dtype == bool else array


def read_rgb_image(path: str | os.PathLike) -> np.ndarray:
    """Decode a colour image (PNG, JPEG) to an HxWx3 uint8 RGB array."""
    if not os.path.isfile(path):
        raise MbtasksError("file not found", path)
    # EXIF rotation is ignored: label PNGs are aligned with the stored pixels, not the displayed ones
    array = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if array is None:
        raise MbtasksError("cannot decode image (corrupt, or not an image)", path)
    return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)


def read_image_and_label(image_path: str | os.PathLike, label_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image and its label PNG, checked to have the same size (the error names the label file)."""
    image = read_rgb_image(image_path)
    label = read_label_png(label_path)
    if label.shape != image.shape[:2]:
        raise MbtasksError(
            f"label is {label.shape[0]}x{label.shape[1]} but its image is {image.shape[0]}x{image.shape[1]}",
            label_path,
        )
    return image, label
