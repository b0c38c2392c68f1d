"""Pictures of answers and samples: a fixed colour per class, boxes with filled captions and lines sized to the
image, a colour map blended over a photo with a legend, text on a photo, grids of pictures, and PNG or JPEG files
written safely. No task lives here: the tasks pass their class names and colours."""

from pathlib import Path

import cv2
import numpy as np
import simplejpeg
from PIL import Image, ImageDraw, ImageFont

from .errors import MbtasksError
from .io.outputs import output_folder, replaced_atomically

# Twenty colours far apart from each other (Kelly's colours of maximum contrast, less white and black): class i has
# colour i % 20 in every picture, so a class looks the same across photos, runs and reports.
PALETTE = np.array(
    [
        (255, 179, 0),
        (128, 62, 117),
        (255, 104, 0),
        (166, 189, 215),
        (193, 0, 32),
        (206, 162, 98),
        (129, 112, 102),
        (0, 125, 52),
        (246, 118, 142),
        (0, 83, 138),
        (255, 122, 92),
        (83, 55, 122),
        (255, 142, 0),
        (179, 40, 81),
        (244, 200, 0),
        (127, 24, 13),
        (147, 170, 0),
        (89, 51, 21),
        (241, 58, 19),
        (35, 44, 22),
    ],
    np.uint8,
)
JPEG_QUALITY = 90
JPEG_SUFFIXES = (".jpg", ".jpeg")


def class_colours(count: int) -> np.ndarray:
    """`count` x 3 uint8 RGB: the fixed palette's colour of each class index (repeating after twenty)."""
    return PALETTE[np.arange(count) % len(PALETTE)]


def line_width(shape: tuple[int, ...]) -> int:
    """Box lines of an image of `shape` (H, W, ...): 2 pixels at 512, thicker on larger photos, 1 on thumbnails."""
    return max(1, round(min(shape[:2]) / 250))


def font_size(shape: tuple[int, ...]) -> int:
    """Captions of an image of `shape`: readable on a 512-pixel photo when it is shown whole (16 pixels there)."""
    return max(9, round(min(shape[:2]) / 32))


def text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light colours, white on dark ones (ITU-R BT.601 luma)."""
    red, green, blue = (int(v) for v in background)
    return (0, 0, 0) if 0.299 * red + 0.587 * green + 0.114 * blue > 150 else (255, 255, 255)


def caption_rectangle(
    box: tuple[float, float, float, float], text_size: tuple[int, int], image_size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Where a caption of `text_size` (w, h, with its margins) goes for `box` (xyxy) on an image of `image_size`
    (w, h): above the box's top left corner, inside the box where there is no room above, and always inside the
    image (moved left at the right edge, cut only where the caption is wider than the image)."""
    width, height = text_size
    image_width, image_height = image_size
    left = int(min(max(box[0], 0), max(image_width - width, 0)))
    top = int(box[1]) - height
    if top < 0:
        top = int(min(max(box[1], 0), max(image_height - height, 0)))
    return left, top, min(left + width, image_width), min(top + height, image_height)


def draw_boxes(image: np.ndarray, boxes: np.ndarray, captions: list[str], colours: np.ndarray | list) -> np.ndarray:
    """A copy of an RGB image with boxes (N x 4 xyxy pixels) in their colours (N x 3), each captioned on a filled
    band of its colour; lines and captions sized to the image. The first box is drawn first (put the best last)."""
    picture = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(picture)
    width, size = line_width(image.shape), font_size(image.shape)
    font = ImageFont.load_default(size=size)
    margin = max(1, size // 5)
    for box, caption, colour in zip(np.asarray(boxes, np.float64).reshape(-1, 4), captions, colours):
        colour = tuple(int(v) for v in colour)
        draw.rectangle(tuple(box), outline=colour, width=width)
        if not caption:
            continue
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        rectangle = caption_rectangle(box, (right - left + 2 * margin, bottom - top + 2 * margin), picture.size)
        draw.rectangle(rectangle, fill=colour)
        draw.text(
            (rectangle[0] + margin - left, rectangle[1] + margin - top), caption, fill=text_colour(colour), font=font
        )
    return np.asarray(picture)


def draw_legend(image: np.ndarray, names: list[str], colours: np.ndarray | list) -> np.ndarray:
    """A copy of an RGB image with a legend at its top right: a swatch of each colour and its name on a dark band,
    sized to the image; names that do not fit its height are counted in a last line ("+3 more")."""
    picture = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(picture, "RGBA")
    size = font_size(image.shape)
    font = ImageFont.load_default(size=size)
    margin, row = max(2, size // 4), size + max(2, size // 4)
    fits = max(1, (picture.height - 2 * margin) // row)
    shown = list(zip(names, colours))
    if len(shown) > fits:
        shown, rest = shown[: fits - 1], len(shown) - fits + 1
    else:
        rest = 0
    lines = [name for name, _ in shown] + ([f"+{rest} more"] if rest else [])
    text_width = max((draw.textlength(line, font=font) for line in lines), default=0)
    band_width = int(text_width + size + 3 * margin)
    left = max(0, picture.width - band_width - margin)
    draw.rectangle((left, margin, left + band_width, margin + len(lines) * row + margin), fill=(0, 0, 0, 170))
    for number, line in enumerate(lines):
        top = 2 * margin + number * row
        if number < len(shown):
            swatch = tuple(int(v) for v in shown[number][1])
            draw.rectangle((left + margin, top, left + margin + size, top + size), fill=swatch)
        draw.text((left + size + 2 * margin, top), line, fill=(255, 255, 255), font=font)
    return np.asarray(picture.convert("RGB"))


def write_text(image: np.ndarray, lines: list[str]) -> np.ndarray:
    """A copy of an RGB image with `lines` written at its top left, white on a dark band, sized to the image."""
    picture = Image.fromarray(np.ascontiguousarray(image))
    size = max(10, round(min(picture.size) / 22))
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(picture, "RGBA")
    y = margin = max(2, size // 4)
    for line in lines:
        left, top, right, bottom = draw.textbbox((margin, y), line, font=font)
        draw.rectangle((left - margin, top - margin // 2, right + margin, bottom + margin // 2), fill=(0, 0, 0, 160))
        draw.text((margin, y), line, fill=(255, 255, 255), font=font)
        y = bottom + margin
    return np.asarray(picture.convert("RGB"))


def blend(image: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The photo with a colour map (HxWx3 uint8) laid over it at opacity `alpha`."""
    return cv2.addWeighted(colours, alpha, image, 1 - alpha, 0)


def grid(pictures: list[np.ndarray], columns: int = 4, gap: int = 4, max_side: int | None = None) -> np.ndarray:
    """The pictures (RGB uint8, any sizes) in rows of `columns` on a dark ground, each scaled to fit a cell of the
    largest one's size, its longer side at most `max_side` (aspect kept, never enlarged)."""
    if not pictures:
        raise ValueError("no pictures to put in a grid")
    columns = min(columns, len(pictures))
    rows = -(-len(pictures) // columns)
    cell_height, cell_width = max(p.shape[0] for p in pictures), max(p.shape[1] for p in pictures)
    if max_side is not None and max(cell_height, cell_width) > max_side:
        scale = max_side / max(cell_height, cell_width)
        cell_height, cell_width = max(1, round(cell_height * scale)), max(1, round(cell_width * scale))
    sheet = np.full(
        (rows * cell_height + (rows + 1) * gap, columns * cell_width + (columns + 1) * gap, 3), 32, np.uint8
    )
    for number, picture in enumerate(pictures):
        scale = min(cell_height / picture.shape[0], cell_width / picture.shape[1], 1.0)
        if scale < 1.0:
            size = (max(1, round(picture.shape[1] * scale)), max(1, round(picture.shape[0] * scale)))
            picture = cv2.resize(picture, size, interpolation=cv2.INTER_AREA)
        row, column = divmod(number, columns)
        top, left = gap + row * (cell_height + gap), gap + column * (cell_width + gap)
        sheet[top : top + picture.shape[0], left : left + picture.shape[1]] = picture
    return sheet


def write_picture(path: Path, image: np.ndarray | Image.Image) -> None:
    """A picture as JPEG (quality 90) where `path` ends in .jpg or .jpeg, else as PNG (write_png)."""
    if path.suffix.lower() not in JPEG_SUFFIXES:
        return write_png(path, image)
    array = np.ascontiguousarray(np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image))
    output_folder(path.parent)
    with replaced_atomically(path) as temporary:
        temporary.write_bytes(simplejpeg.encode_jpeg(array, quality=JPEG_QUALITY, colorspace="RGB"))


def write_png(path: Path, image: np.ndarray | Image.Image) -> None:
    """Write via a temporary name and rename: DDP processes may both write an image the sampler repeated, and an
    interrupted run leaves no half-written PNG under the final name."""
    output_folder(path.parent)
    with replaced_atomically(path) as temporary:
        if isinstance(image, Image.Image):
            image.save(temporary, format="PNG")
        else:
            # encoded here and written by Python, not cv2.imwrite: OpenCV crashes on a file name that is not UTF-8
            # (a Linux name of Latin-1 bytes), and answers a full disk with False where Python names the reason
            array = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
            encoded, data = cv2.imencode(".png", array)
            if not encoded:
                raise MbtasksError("cannot encode this image as PNG", path)
            temporary.write_bytes(data.tobytes())
