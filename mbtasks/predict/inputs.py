"""The photos `mbtasks predict` reads: files, folders (recursive, by image extension) and globs, each with the name
its outputs take (its path relative to what the inputs share, so no two collide), read one by one in a Dataset so
that a folder of any size never sits in memory."""

import glob
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path, PurePath

from torch.utils.data import Dataset

from ..datasets.imagefolder import apply_transform
from ..errors import MbtasksError
from ..io.images import read_rgb_image

# what a folder is searched for (torchvision's ImageFolder list, and .gif which cv2 and PIL also read)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
# the formats of the pictures predict draws: the input's (JPEG stays JPEG, the rest PNG), or one for all
PICTURE_FORMATS = ("auto", "png", "jpg")


def find_images(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """(image files, their output names: relative paths ending in .png) of files, folders and glob patterns.

    A file is taken whatever its extension (one that is not an image is reported when read); folders, also those a
    pattern matches, are searched recursively for image extensions. A file given twice is read once.
    """
    files, bases = [], []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            files += _images_in(path)
            bases.append(path)
        elif path.is_file():
            files.append(path)
            bases.append(path.parent)
        elif glob.has_magic(text):
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
            if not matches:
                raise MbtasksError("no file or folder matches this pattern", text)
            for match in matches:
                files += _images_in(match) if match.is_dir() else [match]
                bases.append(match if match.is_dir() else match.parent)
        else:
            raise MbtasksError("no such file or folder", text)
    seen, unique = set(), []
    for file in files:
        if (key := os.path.realpath(file)) not in seen:
            seen.add(key)
            unique.append(file)
    if not unique:
        raise MbtasksError(f"no images among the inputs (folders are searched for {', '.join(IMAGE_EXTENSIONS)})")
    base = os.path.commonpath([os.path.abspath(b) for b in bases])
    return unique, output_names([PurePath(os.path.relpath(os.path.abspath(f), base)) for f in unique])


def _images_in(folder: Path) -> list[Path]:
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not found:
        raise MbtasksError(f"holds no images ({', '.join(IMAGE_EXTENSIONS)})", folder)
    return found


def picture_names(files: list[Path], names: list[str], picture_format: str = "auto") -> list[str]:
    """The output `names` (as `output_names` gives them, in .png) with the suffix of the pictures' format: "png",
    "jpg", or "auto", the input's (JPEG in, JPEG out: a drawing of a photo as PNG is ten times its size; others
    PNG)."""
    if picture_format not in PICTURE_FORMATS:
        raise MbtasksError(f"--picture-format must be one of {', '.join(PICTURE_FORMATS)}, got {picture_format!r}")
    return [
        PurePath(name).with_suffix(".jpg").as_posix()
        if picture_format == "jpg" or (picture_format == "auto" and Path(file).suffix.lower() in (".jpg", ".jpeg"))
        else name
        for file, name in zip(files, names, strict=True)
    ]


def output_names(relative: list[PurePath]) -> list[str]:
    """Each relative path with .png for its extension; where two would then be one (a.jpg, a.png), they keep their
    whole name (a.jpg.png, a.png.png)."""
    plain = [path.with_suffix(".png").as_posix() for path in relative]
    taken = Counter(plain)
    return [name if taken[name] == 1 else f"{path.as_posix()}.png" for name, path in zip(plain, relative)]


class PhotoFiles(Dataset):
    """Items {file, name, photo (upright HWC uint8 RGB), input (photo through `transform`)}; a file that is not an
    image gives {file, error} (strict: raises instead)."""

    def __init__(self, files: list[Path], names: list[str], transform: Callable, strict: bool = False):
        self.files, self.names, self.transform, self.strict = files, names, transform, strict

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        file = str(self.files[index])
        try:
            photo = read_rgb_image(file, exif_upright=True)
        except MbtasksError as error:
            if self.strict:
                raise
            return {"file": file, "error": str(error)}
        return {
            "file": file,
            "name": self.names[index],
            "photo": photo,
            "input": apply_transform(self.transform, photo),
        }


def keep_list(batch: list[dict]) -> list[dict]:
    """Batches stay lists of items: photos differ in size, and some items are unreadable files."""
    return batch
