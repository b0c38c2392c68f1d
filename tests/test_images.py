"""The one image reader on real photos (scikit-image's) saved in every form it must turn into RGB uint8."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data

from mbtasks.errors import MbtasksError
from mbtasks.io.images import read_rgb_image

ASTRONAUT, COFFEE, CHELSEA = data.astronaut(), data.coffee(), data.chelsea()
GREY = np.asarray(Image.fromarray(ASTRONAUT).convert("L"))
# low bytes that differ from the high ones, so v >> 8 and round(v / 257) give different 8-bit values
NOISE = np.random.default_rng(0).integers(0, 256, ASTRONAUT.shape, dtype=np.uint16)
GREY16 = GREY.astype(np.uint16) << 8 | NOISE[..., 0]
RGB48 = ASTRONAUT.astype(np.uint16) << 8 | NOISE
PALETTE = Image.fromarray(COFFEE).quantize(64)
ALPHA = np.tile(np.linspace(0, 255, CHELSEA.shape[1]).astype(np.uint8), (CHELSEA.shape[0], 1))


def grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


def save_jpeg(image: Image.Image, path: Path, **options) -> None:
    image.save(path, quality=95, subsampling=0, **options)  # 4:4:4, so the tolerance below can be tight


def jpeg_with_orientation(path: Path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation  # the Orientation tag
    save_jpeg(Image.fromarray(COFFEE), path, exif=exif)


# name -> (write the file, the RGB the reader must return, lossy)
FORMS = {
    "rgb.jpg": (lambda p: save_jpeg(Image.fromarray(ASTRONAUT), p), ASTRONAUT, True),
    "grey.png": (lambda p: Image.fromarray(GREY).save(p), grey_to_rgb(GREY), False),
    "palette.png": (lambda p: PALETTE.save(p), np.asarray(PALETTE.convert("RGB")), False),
    "palette_transparent.png": (lambda p: PALETTE.save(p, transparency=5), np.asarray(PALETTE.convert("RGB")), False),
    "grey_alpha.png": (lambda p: Image.fromarray(np.dstack([GREY, GREY.T]), "LA").save(p), grey_to_rgb(GREY), False),
    "rgba.png": (lambda p: Image.fromarray(np.dstack([CHELSEA, ALPHA])).save(p), CHELSEA, False),
    "cmyk.jpg": (lambda p: save_jpeg(Image.fromarray(ASTRONAUT).convert("CMYK"), p), ASTRONAUT, True),
    "grey16.png": (lambda p: Image.fromarray(GREY16).save(p), grey_to_rgb(GREY16 >> 8).astype(np.uint8), False),
    # PIL writes no 48-bit PNG; cv2 takes BGR
    "rgb48.png": (lambda p: cv2.imwrite(str(p), RGB48[..., ::-1]), (RGB48 >> 8).astype(np.uint8), False),
    "exif_rotate90.jpg": (lambda p: jpeg_with_orientation(p, 6), COFFEE, True),
}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for name, (write, _, _) in FORMS.items():
        write(folder / name)
    return folder


@pytest.mark.parametrize("name", FORMS)
def test_every_form_becomes_the_photo_in_rgb_uint8(photos, name):
    _, expected, lossy = FORMS[name]
    image = read_rgb_image(photos / name)
    assert image.dtype == np.uint8 and image.shape == expected.shape and image.shape[2] == 3
    assert image.flags.writeable  # albumentations and torch.from_numpy take it as it is
    if lossy:
        error = np.abs(image.astype(int) - expected)
        assert error.mean() < 2.5 and np.percentile(error, 99) < 16, (error.mean(), np.percentile(error, 99))
    else:
        assert np.array_equal(image, expected)


def test_exif_orientation_applies_only_on_request(photos):
    stored = read_rgb_image(photos / "exif_rotate90.jpg")
    assert stored.shape == COFFEE.shape  # annotations refer to the stored pixels
    upright = read_rgb_image(photos / "exif_rotate90.jpg", exif_upright=True)
    assert np.array_equal(upright, np.rot90(stored, k=-1))  # orientation 6: turn 90 degrees clockwise to view
    plain = read_rgb_image(photos / "rgb.jpg")
    assert np.array_equal(read_rgb_image(photos / "rgb.jpg", exif_upright=True), plain)


def test_jpeg_with_bytes_after_its_end_decodes_as_without(photos, tmp_path):
    # phones and editors append data after the end marker; such a file must not pass for a truncated one
    trailer = tmp_path / "trailer.jpg"
    trailer.write_bytes((photos / "rgb.jpg").read_bytes() + b"\0" * 64)
    difference = read_rgb_image(trailer).astype(int) - read_rgb_image(photos / "rgb.jpg")
    assert np.abs(difference).max() <= 1  # the same libjpeg-turbo decoding, in PIL rather than cv2


def _one_line_error(path: Path, problem: str) -> None:
    with pytest.raises(MbtasksError) as error:
        read_rgb_image(path)
    message = str(error.value)
    assert message.startswith(f"{path}: {problem}") and "\n" not in message, message
    assert error.value.path == path


def test_truncated_jpeg_is_an_error_naming_the_file(photos, tmp_path):
    whole = (photos / "rgb.jpg").read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(whole[: len(whole) // 2])
    _one_line_error(truncated, "cannot decode image (")


def test_text_named_jpg_and_missing_file_are_errors_naming_the_file(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo\nsecond line\n")
    _one_line_error(text, "cannot decode image (")
    _one_line_error(tmp_path / "absent.jpg", "file not found")
