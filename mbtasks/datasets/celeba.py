"""CelebA attributes: `img_align_celeba/*.jpg`, `list_attr_celeba.txt`, `list_eval_partition.txt`.

The attribute file is a count line, a line of attribute names (any number), then `file v1 .. vN` with
values 1 / -1; the partition file is `file 0|1|2` (train / val / test). Targets come out as 0 / 1.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mbtasks.datasets.file_checks import check_images
from mbtasks.datasets.formats import FORMATS, DataFormat
from mbtasks.datasets.imagefolder import apply_transform
from mbtasks.datasets.synthetic.faces import write_celeba_faces
from mbtasks.errors import MbtasksError
from mbtasks.io.images import read_rgb_image

ATTRIBUTE_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IMAGE_FOLDER = "img_align_celeba"
SPLITS = {"train": 0, "val": 1, "test": 2}


def read_attribute_file(path: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """(attribute names, image files, values (images, attributes) as int8 0/1) from list_attr_celeba.txt."""
    lines = _read_lines(path)
    if len(lines) < 2:
        raise MbtasksError("expected a count line and a line of attribute names", path)
    (count_number, count_line), (_, names_line) = lines[0], lines[1]  # names_line is never blank
    try:
        count = int(count_line)
    except ValueError:
        raise MbtasksError(f"line {count_number}: expected the image count, found '{count_line}'", path) from None
    names = names_line.split()
    files, rows, first_seen = [], [], {}
    for number, line in lines[2:]:
        fields = line.split()
        if len(fields) != len(names) + 1:
            raise MbtasksError(f"line {number}: expected {len(names) + 1} columns, found {len(fields)}", path)
        name, values = fields[0], fields[1:]
        if name in first_seen:
            raise MbtasksError(f"line {number}: image '{name}' already listed on line {first_seen[name]}", path)
        first_seen[name] = number
        # One set test per line keeps the common case fast; the slow path only names the culprit.
        if not set(values) <= {"1", "-1"}:
            column = next(i for i, value in enumerate(values) if value not in ("1", "-1"))
            raise MbtasksError(f"line {number}: value '{values[column]}' for {names[column]} is not 1 or -1", path)
        files.append(name)
        rows.append([value == "1" for value in values])
    if count != len(files):
        raise MbtasksError(f"line {count_number}: count says {count} images, the file lists {len(files)}", path)
    return names, files, np.array(rows, dtype=np.int8).reshape(len(files), len(names))


def read_partition_file(path: str | Path) -> list[tuple[int, str, int]]:
    """(line number, image file, split 0|1|2) for every line of list_eval_partition.txt."""
    entries = []
    for number, line in _read_lines(path):
        fields = line.split()
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise MbtasksError(f"line {number}: expected 'file 0|1|2', found '{line}'", path)
        entries.append((number, fields[0], int(fields[1])))
    return entries


class CelebA(torch.utils.data.Dataset):
    """One CelebA split ("train", "val", "test" or "all"); yields (image, float32 targets in {0, 1})."""

    def __init__(self, root: str | Path, split: str = "train", transform: Callable | None = None):
        if split not in (*SPLITS, "all"):
            raise MbtasksError(f"unknown CelebA split '{split}' (train, val, test, all)")
        self.root = Path(root)
        self.transform = transform
        image_dir = self.root / IMAGE_FOLDER
        if not image_dir.is_dir():
            raise MbtasksError("image folder not found", image_dir)
        names, files, values = read_attribute_file(self.root / ATTRIBUTE_FILE)
        row_of = {name: i for i, name in enumerate(files)}
        on_disk = {entry.name for entry in image_dir.iterdir()}  # one listing, not 200k stat calls
        partition_path = self.root / PARTITION_FILE
        rows = []
        for number, name, split_id in read_partition_file(partition_path):
            if name not in row_of:
                raise MbtasksError(f"line {number}: image '{name}' is not in {ATTRIBUTE_FILE}", partition_path)
            if name not in on_disk:
                raise MbtasksError(f"line {number}: image '{name}' not found in {image_dir}", partition_path)
            if split == "all" or split_id == SPLITS[split]:
                rows.append(row_of[name])
        self.attribute_names: list[str] = names
        self.files: list[str] = [files[i] for i in rows]
        self.targets: np.ndarray = values[rows].astype(np.float32)
        self.image_dir = image_dir

    def check_files(self) -> None:
        """Before the first step: each image opens (headers only)."""
        check_images(self.image_dir / name for name in self.files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[np.ndarray | torch.Tensor, torch.Tensor]:
        image = read_rgb_image(self.image_dir / self.files[index])
        return apply_transform(self.transform, image), torch.from_numpy(self.targets[index])


def _read_lines(path: str | Path) -> list[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers, stripped (CelebA's files end lines with spaces)."""
    try:
        with open(path, encoding="utf-8") as file:
            return [(number, line.strip()) for number, line in enumerate(file, 1) if line.strip()]
    except FileNotFoundError:
        raise MbtasksError("file not found", path) from None
    except UnicodeDecodeError:
        raise MbtasksError("not a text file", path) from None


@FORMATS.register("celeba")
class CelebAFormat(DataFormat):
    """CelebA's layout, the attributes task's format; its embedded set is the synthetic faces."""

    kind = "attributes"
    layout = f"{IMAGE_FOLDER}/, {ATTRIBUTE_FILE} and {PARTITION_FILE}"
    write_synthetic = staticmethod(write_celeba_faces)

    @classmethod
    def sniff(cls, root: Path) -> bool:
        return (root / ATTRIBUTE_FILE).is_file()

    def dataset(self, split: str, transform: Callable | None) -> CelebA:
        return CelebA(self.root, split, transform)
