"""Pictures of predictions: text written on a photo, a colour map blended over it, and PNGs written safely."""

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import MbtasksError
from .io.outputs import replaced_atomically


def write_png(path: Path, image: np.ndarray | Image.Image) -> None:
    """Write via a temporary name and rename: DDP processes may both write an image the sampler repeated, and an
    interrupted run leaves no half-written PNG under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(path) as temporary:
        if isinstance(image, Image.Image):
            image.save(temporary)
        else:
            array = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
            if not cv2.imwrite(str(temporary), array):
                raise MbtasksError("cannot write PNG", path)


def write_text(image: np.ndarray, lines: list[str]) -> np.ndarray:
    """A copy of an RGB image with `lines` written at its top left, white on a dark band, sized to the image."""
    picture = Image.fromarray(image)
    size = max(10, round(min(picture.size) / 22))
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(picture, "RGBA")
    y = margin = max(2, size // 4)
    for line in lines:
        left, top, right, bottom = draw.textbbox((margin, y), line, font=font)
        draw.rectangle((left - margin, top - margin // 2, right + margin, bottom + margin // 2), fill=(0, 0, 0, 160))
        draw.text((margin, y), line, fill=(255, 255, 255), font=font)
        y = bottom + margin
    return np.asarray(picture)


def blend(image: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The photo with a colour map (HxWx3 uint8) laid over it at opacity `alpha`."""
    return cv2.addWeighted(colours, alpha, image, 1 - alpha, 0)
