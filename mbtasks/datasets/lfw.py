"""LFW: `lfw/<name>/<name>_<4-digit>.jpg` images, `pairs.txt` verification pairs, identity training folders.

pairs.txt starts with `folds pairs_per_half` (e.g. `10 300`; a single number means one fold, as in
pairsDevTrain.txt), then per fold that many matched lines `name i j` followed by as many mismatched lines
`name1 i name2 j`. Without the header line, the pairs split in file order into 10 equal folds and each
line's kind follows from its column count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mbtasks.datasets.file_checks import check_images
from mbtasks.datasets.formats import FORMATS, DataFormat
from mbtasks.datasets.imagefolder import ImageFolder, apply_transform
from mbtasks.datasets.synthetic.faces import write_lfw_identities
from mbtasks.errors import MbtasksError
from mbtasks.io.images import read_rgb_image

HEADERLESS_FOLDS = 10


@dataclass(frozen=True)
class Pair:
    """One line of pairs.txt: two images (person name, 1-based image number), same person or not, fold."""

    line: int
    name1: str
    number1: int
    name2: str
    number2: int
    same: bool
    fold: int


def image_path(images_dir: str | Path, name: str, number: int) -> Path:
    """Where LFW keeps image `number` of person `name`."""
    return Path(images_dir) / name / f"{name}_{number:04d}.jpg"


def read_pairs(path: str | Path) -> list[Pair]:
    """All pairs of a pairs.txt, with their line numbers and folds; malformed lines raise MbtasksError."""
    try:
        with open(path, encoding="utf-8") as file:
            lines = [(n, line.split()) for n, line in enumerate(file, 1) if line.strip()]
    except FileNotFoundError:
        raise MbtasksError("file not found", path) from None
    except UnicodeDecodeError:
        raise MbtasksError("not a text file", path) from None
    if not lines:
        raise MbtasksError("no pairs", path)
    header_number, header = lines[0]
    if len(header) in (1, 2) and all(field.isdigit() for field in header):
        folds, per_half = (1, int(header[0])) if len(header) == 1 else map(int, header)
        lines = lines[1:]
        if folds < 1 or per_half < 1 or len(lines) != 2 * folds * per_half:
            raise MbtasksError(
                f"line {header_number}: header promises {folds} folds of 2 x {per_half} pairs "
                f"({2 * folds * per_half} lines), the file has {len(lines)} pair lines",
                path,
            )
    else:
        folds, per_half = HEADERLESS_FOLDS, None
    pairs = []
    for position, (number, fields) in enumerate(lines):
        if per_half is None:
            fold, expect_same = position * folds // len(lines), None
        else:
            fold, expect_same = position // (2 * per_half), position % (2 * per_half) < per_half
        pairs.append(_parse_pair(path, number, fields, fold, expect_same))
    return pairs


def _parse_pair(path: str | Path, number: int, fields: list[str], fold: int, expect_same: bool | None) -> Pair:
    if len(fields) not in (3, 4) or (expect_same is not None and len(fields) != (3 if expect_same else 4)):
        expected = {True: "'name i j'", False: "'name1 i name2 j'", None: "'name i j' or 'name1 i name2 j'"}
        raise MbtasksError(f"line {number}: expected {expected[expect_same]}, found {len(fields)} columns", path)
    same = len(fields) == 3
    if same:
        fields = [fields[0], fields[1], fields[0], fields[2]]
    elif fields[0] == fields[2]:
        raise MbtasksError(f"line {number}: a mismatched pair names '{fields[0]}' twice", path)
    numbers = []
    for field in (fields[1], fields[3]):
        if not field.isdigit() or int(field) < 1:
            raise MbtasksError(f"line {number}: image number '{field}' is not a positive integer", path)
        numbers.append(int(field))
    return Pair(number, fields[0], numbers[0], fields[2], numbers[1], same, fold)


class LFWPairs(torch.utils.data.Dataset):
    """LFW verification pairs under `root` (`lfw/` and `pairs.txt`); yields (image1, image2, same, fold)."""

    def __init__(
        self,
        root: str | Path,
        transform: Callable | None = None,
        pairs_file: str = "pairs.txt",
        images_dir: str = "lfw",
    ):
        self.root = Path(root)
        self.transform = transform
        self.images_dir = self.root / images_dir
        if not self.images_dir.is_dir():
            raise MbtasksError("image folder not found", self.images_dir)
        pairs_path = self.root / pairs_file
        self.pairs: list[Pair] = read_pairs(pairs_path)
        listings: dict[str, set[str] | None] = {}
        for pair in self.pairs:
            for name, number in ((pair.name1, pair.number1), (pair.name2, pair.number2)):
                if name not in listings:
                    person = self.images_dir / name
                    listings[name] = {p.name for p in person.iterdir()} if person.is_dir() else None
                if listings[name] is None:
                    raise MbtasksError(f"line {pair.line}: no person '{name}' in {self.images_dir}", pairs_path)
                file_name = image_path(self.images_dir, name, number).name
                if file_name not in listings[name]:
                    raise MbtasksError(f"line {pair.line}: no image {name}/{file_name}", pairs_path)

    def image_keys(self) -> list[tuple[str, int]]:
        """The distinct images of the pairs, each once, as sorted (person, number)."""
        return sorted({(p.name1, p.number1) for p in self.pairs} | {(p.name2, p.number2) for p in self.pairs})

    def check_files(self) -> None:
        """Before the first step: each image of the pairs opens (headers only), once."""
        check_images(image_path(self.images_dir, name, number) for name, number in self.image_keys())

    @property
    def same(self) -> np.ndarray:
        """Same-person flags of all pairs, in order (for the evaluator)."""
        return np.array([pair.same for pair in self.pairs])

    @property
    def folds(self) -> np.ndarray:
        """Fold index of every pair, in order."""
        return np.array([pair.fold for pair in self.pairs])

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor, bool, int]:
        pair = self.pairs[index]
        images = (
            apply_transform(self.transform, read_rgb_image(image_path(self.images_dir, name, number)))
            for name, number in ((pair.name1, pair.number1), (pair.name2, pair.number2))
        )
        return (*images, pair.same, pair.fold)


class LFWIdentities(ImageFolder):
    """Identity-labelled training images `<folder>/<name>/*.jpg`; yields (image, identity id), ids by sorted name."""

    @property
    def identities(self) -> list[str]:
        """Identity names; position = identity id."""
        return self.classes


@FORMATS.register("lfw")
class LFWFormat(DataFormat):
    """Identity folders for training and LFW's images and pairs file for verification, the embeddings task's format;
    its splits are the identity folder's name and the pairs file's; its embedded set is the synthetic identities."""

    kind = "embeddings"
    layout = "train/<identity>/ images, lfw/<name>/ images and pairs.txt"
    splits = ("train", "pairs.txt")
    write_synthetic = staticmethod(write_lfw_identities)

    @classmethod
    def sniff(cls, root: Path) -> bool:
        return (root / "lfw").is_dir()

    def identities(self, split: str, transform: Callable | None) -> LFWIdentities:
        return LFWIdentities(self.root / split, transform)

    def pairs(self, pairs_file: str, transform: Callable | None) -> LFWPairs:
        return LFWPairs(self.root, transform, pairs_file=pairs_file)
