"""The one reader of images: colour photos as RGB uint8, label PNGs as ids; each error names the file. Images already
in memory (PIL, arrays, tensors) become the same RGB uint8 arrays (`rgb_array`). Every read checks the image's pixel
count, from its header, against a limit (`set_max_pixels`) before decoding: a small file can hold a huge image."""

from __future__ import annotations

import io
import os
import warnings
from typing import Any

import cv2
import numpy as np
import pyspng
import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError

from mbtasks.errors import MbtasksError

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# IHDR colour types that carry colours, not ids
_COLOUR_TYPES = {2: "RGB", 4: "grey+alpha", 6: "RGBA"}
_JPEG_START, _JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
# JPEG start-of-frame markers (they carry the size): C0..CF but DHT (C4), JPG (C8) and DAC (CC)
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}

_HEADER_BYTES = 1 << 16  # where a JPEG's size is found (after its EXIF, which may fill 64 KiB, PIL is asked)
DEFAULT_MAX_PIXELS = 100_000_000  # 100 megapixels: 10000x10000, far above any photo data set's images
_max_pixels = DEFAULT_MAX_PIXELS


def set_max_pixels(limit: int) -> None:
    """The most pixels (width x height) an image read in this process may have (data.max_pixels, predict's
    --max-pixels). Loader workers forked after it inherit it."""
    global _max_pixels
    _max_pixels = int(limit)


def max_pixels() -> int:
    """The pixel limit of every image read (set_max_pixels)."""
    return _max_pixels


def _over_the_limit(width: int, height: int, path: str | os.PathLike) -> None:
    if width * height > _max_pixels:
        raise MbtasksError(
            f"image of {width}x{height} pixels ({width * height / 1e6:.0f} megapixels) is over the limit of "
            f"{_max_pixels} pixels: shrink it, or raise the limit (data.max_pixels, predict --max-pixels)",
            path,
        )


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR or a JPEG's start-of-frame, without decoding; None for other formats."""
    if _png_kind(data) is not None:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if not data.startswith(_JPEG_START):
        return None
    at = 2
    while at + 9 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            at += 2
        elif marker in _JPEG_FRAMES:
            return int.from_bytes(data[at + 7 : at + 9], "big"), int.from_bytes(data[at + 5 : at + 7], "big")
        else:
            at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return None


def _file_bytes(path: str | os.PathLike, size: int = -1) -> bytes:
    """The file's first `size` bytes (all by default); a missing or unreadable file is one error naming it."""
    try:
        with open(path, "rb") as file:
            return file.read(size)
    except FileNotFoundError:
        raise MbtasksError("file not found", path) from None
    except OSError as error:
        raise MbtasksError(f"cannot read file: {error.strerror}", path) from None


def check_pixels(data: bytes, path: str | os.PathLike) -> None:
    """Refuse encoded image bytes whose header gives more pixels than the limit, before anything decodes them."""
    size = _header_size(data)
    if size is None:  # another format: PIL reads its header (and refuses what it takes for a bomb itself)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as image:
                    size = image.size
        except Image.DecompressionBombError as error:
            raise MbtasksError(f"image is over PIL's pixel limit ({error})", path) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
            return  # not an image PIL knows: the decoders below say why not
    _over_the_limit(*size, path)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file as stored (no EXIF turn), from its header alone: the check made on every
    listed image before training or evaluation starts. A missing file, one that is not an image, and one over the
    pixel limit are one-line errors naming it."""
    head = _file_bytes(path, _HEADER_BYTES)
    size = _header_size(head)  # PNGs and most JPEGs: without PIL's parsing
    if not head:
        raise MbtasksError("cannot decode image (empty file)", path)
    if size is not None:
        _over_the_limit(*size, path)
        return size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
    except FileNotFoundError:
        raise MbtasksError("file not found", path) from None
    except Image.DecompressionBombError as error:
        raise MbtasksError(f"image is over PIL's pixel limit ({error})", path) from None
    except UnidentifiedImageError:
        raise MbtasksError("cannot decode image (not an image, or a format PIL does not read)", path) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        reason = getattr(error, "strerror", None) or " ".join(str(error).split()) or type(error).__name__
        raise MbtasksError(f"cannot read image ({reason})", path) from None
    _over_the_limit(width, height, path)
    return width, height


def read_rgb_image(path: str | os.PathLike, exif_upright: bool = False) -> np.ndarray:
    """Decode a colour image to HxWx3 uint8 RGB: the stored pixels, or turned upright by EXIF with exif_upright."""
    data = _file_bytes(path)
    if not data:
        raise MbtasksError("cannot decode image (empty file)", path)
    check_pixels(data, path)
    if not exif_upright and _png_kind(data) == (8, 2):
        # 8-bit RGB PNGs (Cityscapes' photos): libspng decodes them faster than cv2's libpng (bench/data.py), the
        # same pixels (tests/test_pipelines.py); on any failure cv2 and PIL below decode the file or say why not
        try:
            return pyspng.load(data)
        except Exception:  # noqa: BLE001  (pyspng raises bare Exceptions)
            pass
    jpeg_without_end = data.startswith(_JPEG_START) and not data.endswith(_JPEG_END)
    if not exif_upright and data.startswith(_JPEG_START) and not jpeg_without_end:
        # JPEGs (COCO's photos): simplejpeg's libjpeg-turbo decodes them faster than cv2 (bench/data.py), the same
        # pixels (tests/test_pipelines.py), and the training pipeline is mostly the decoding; what it refuses goes on
        # to cv2 and PIL below
        try:
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        except ValueError:
            pass
    # cv2 rather than PIL: faster for JPEGs and PNGs alike (bench/data.py), under the same rules (grey, palette, LA,
    # RGBA without alpha, CMYK, 16 bits as v >> 8, EXIF only on request). But cv2.imread returns a truncated JPEG
    # with its missing rows grey and no error (imdecode's handling varies by version), so a JPEG lacking its end
    # marker (truncated, or with bytes after the end) goes to PIL, which raises or decodes it; PIL also gives the
    # reason when cv2 refuses a file.
    if not jpeg_without_end:
        flags = cv2.IMREAD_COLOR_RGB if exif_upright else cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
        array = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
        if array is not None:
            return array
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.array((ImageOps.exif_transpose(image) if exif_upright else image).convert("RGB"))
    except UnidentifiedImageError:
        raise MbtasksError("cannot decode image (not an image, or a format neither cv2 nor PIL reads)", path) from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise MbtasksError(f"cannot decode image ({reason})", path) from None


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """Decode a greyscale (8/16-bit) or palette PNG to a 2-D array of ids (palette indices, not colours)."""
    data = _file_bytes(path)
    kind = _png_kind(data)
    if kind is None:
        raise MbtasksError("not a PNG file (corrupt, or another format)", path)
    check_pixels(data, path)
    bit_depth, colour_type = kind
    if colour_type in _COLOUR_TYPES:
        raise MbtasksError(
            f"{_COLOUR_TYPES[colour_type]} PNG where a label PNG belongs "
            "(expected one id per pixel: greyscale or palette)",
            path,
        )
    if colour_type == 0 and bit_depth in (8, 16):
        # 8-bit: libspng decodes them faster than cv2, and cv2 (16-bit) faster than PIL (bench/data.py); both
        # release the GIL
        array = _spng_grey(data) if bit_depth == 8 else None
        if array is None:
            array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if array is not None and array.ndim == 2:
            return array
    # PIL for palettes (cv2 would expand them to colours), bit depths below 8, and the reason a file is corrupt
    try:
        with Image.open(io.BytesIO(data)) as image:
            array = np.asarray(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise MbtasksError(f"corrupt PNG: {error}", path) from None
    if array.ndim != 2:
        raise MbtasksError(f"PNG with {array.shape[2]} channels where a label PNG belongs", path)
    return array.astype(np.uint8) if array.dtype == bool else array


def _png_kind(data: bytes) -> tuple[int, int] | None:
    """(bit depth, IHDR colour type) of PNG bytes; None for other formats."""
    if len(data) < 26 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    return data[24], data[25]


def _spng_grey(data: bytes) -> np.ndarray | None:
    """An 8-bit grey PNG through libspng; None where it fails (cv2 and PIL then decode it or say why not)."""
    try:
        array = pyspng.load(data)
    except Exception:  # noqa: BLE001  (pyspng raises bare Exceptions)
        return None
    return array if array.ndim == 2 else None


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


def rgb_array(image: Any) -> np.ndarray:
    """An image in memory as the HxWx3 uint8 RGB array `read_rgb_image` gives: a PIL image (turned upright by its EXIF
    orientation, as `mbtasks predict` reads a file), an HxW(xC) array or a CxHxW tensor (torchvision's layout), uint8,
    or floats in [0, 1] (torchvision's to_tensor: v / 255, rounded back to the 8-bit levels). Grey repeats to RGB,
    an alpha channel is dropped."""
    if isinstance(image, Image.Image):
        return np.array(ImageOps.exif_transpose(image).convert("RGB"))
    if type(image).__module__.split(".")[0] == "torch":  # a tensor (torch is not imported for this check)
        if image.ndim != 3:
            raise MbtasksError(f"a tensor image is CxHxW (one image), got shape {tuple(image.shape)}")
        image = image.detach().cpu().permute(1, 2, 0).numpy()
    elif not isinstance(image, np.ndarray):
        raise MbtasksError(f"an image is a PIL image, a numpy array or a tensor, got {type(image).__name__}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise MbtasksError(f"an image array is HxW or HxWx1/3/4 (a tensor CxHxW), got shape {image.shape}")
    if image.dtype != np.uint8:
        if not np.issubdtype(image.dtype, np.floating):
            raise MbtasksError(f"image values are uint8, or floats in [0, 1]; got {image.dtype}")
        image = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    image = image[..., :3]
    return np.ascontiguousarray(np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image)
