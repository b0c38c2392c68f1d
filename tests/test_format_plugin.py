"""A segmentation data format added as a plugin: one file outside mbtasks (colour masks, as annotation tools export
them, with a classes.csv of colours) and an installed distribution's `mbtasks.formats` entry point. A photo set
written by hand in that layout is read with its classes and pixels, recognised from its root, and a model trains a
step on it through the console script; nothing in mbtasks changes."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from helpers import MBTASKS, install_plugin
from PIL import Image, ImageDraw
from skimage import data as photos

DEMO = Path(__file__).resolve().parents[1] / "mbtasks/recipes/demo/seg_folder.yaml"
PLUGIN = '''\
"""Colour masks, the layout annotation tools export: each pixel of a mask is its class's colour.

    {split}/images/*.jpg|png    the photos
    {split}/colours/<stem>.png  each pixel its class's colour; a colour of no class means no class is given
    classes.csv                 name,r,g,b per class, in class-index order
"""

import csv
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from mbtasks.datasets.formats import FORMATS, SegmentationFormat
from mbtasks.datasets.segmentation_transforms import segmentation_item
from mbtasks.datasets.voc import voc_palette
from mbtasks.errors import MbtasksError
from mbtasks.io.images import read_rgb_image


def read_classes(root: Path) -> tuple[list[str], np.ndarray]:
    """classes.csv: the class names and their colours."""
    path = root / "classes.csv"
    if not path.is_file():
        raise MbtasksError("no classes.csv (name,r,g,b per class)", root)
    rows = [row for row in csv.reader(path.read_text().splitlines()) if row]
    try:
        return [row[0] for row in rows], np.array([[int(v) for v in row[1:4]] for row in rows], np.uint8)
    except (ValueError, IndexError):
        raise MbtasksError("every line must be name,r,g,b", path) from None


class ColourMasks(Dataset):
    """One split's photos with their masks as class indices (255 where the colour is no class's)."""

    def __init__(self, root: Path, split: str, transform):
        self.names, self.colours = read_classes(root)
        self.images = sorted((root / split / "images").glob("*.*"))
        if not self.images:
            raise MbtasksError("no images", root / split / "images")
        self.masks = [root / split / "colours" / f"{image.stem}.png" for image in self.images]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        colours = read_rgb_image(self.masks[index])
        mask = np.full(colours.shape[:2], 255, np.uint8)
        for label, colour in enumerate(self.colours):
            mask[(colours == colour).all(axis=-1)] = label
        image = read_rgb_image(self.images[index])
        return segmentation_item(self.transform, image, mask, str(self.images[index]), str(self.masks[index]))


@FORMATS.register("colour_masks")
class ColourMasksFormat(SegmentationFormat):
    layout = "{split}/images/, {split}/colours/ and classes.csv"

    @classmethod
    def sniff(cls, root: Path) -> bool:
        return (root / "classes.csv").is_file()

    @property
    def class_names(self) -> list[str]:
        return read_classes(self.root)[0]

    def dataset(self, split: str, transform):
        return ColourMasks(self.root, split, transform)

    def palette(self) -> np.ndarray:
        has_classes = self.root is not None and (self.root / "classes.csv").is_file()
        return read_classes(self.root)[1] if has_classes else voc_palette()
'''
CLASSES = {"sky": (40, 120, 250), "animal": (250, 180, 20), "ground": (30, 160, 60)}
SIZE = (64, 96)  # height, width


def _write_photo_set(root: Path) -> dict[str, np.ndarray]:
    """Real photos with masks drawn by hand in the classes' colours (a stripe of sky, an animal, ground; the rest
    left black: no class); the class indices each mask stands for, by mask file."""
    root.mkdir()
    (root / "classes.csv").write_text("".join(f"{name},{r},{g},{b}\n" for name, (r, g, b) in CLASSES.items()))
    expected = {}
    for split, names in (("train", ["chelsea", "coffee", "astronaut"]), ("val", ["rocket", "cat"])):
        for folder in ("images", "colours"):
            (root / split / folder).mkdir(parents=True)
        for index, name in enumerate(names):
            photo = Image.fromarray(getattr(photos, name)()).convert("RGB").resize(SIZE[::-1])
            photo.save(root / split / "images" / f"{name}.jpg", quality=90)
            mask = Image.new("RGB", SIZE[::-1])
            draw = ImageDraw.Draw(mask)
            draw.rectangle((0, 0, SIZE[1] - 1, 11 + index), fill=CLASSES["sky"])
            draw.ellipse((20 + 4 * index, 20, 60, 50), fill=CLASSES["animal"])
            draw.rectangle((0, 54, SIZE[1] - 1, SIZE[0] - 1), fill=CLASSES["ground"])
            mask.save(root / split / "colours" / f"{name}.png")
            colours = np.asarray(mask)
            labels = np.full(SIZE, 255, np.uint8)
            for label, colour in enumerate(CLASSES.values()):
                labels[(colours == colour).all(axis=-1)] = label
            expected[f"{split}/{name}"] = labels
    return expected


def test_a_format_plugin_reads_hand_drawn_masks_and_trains_a_step_through_the_console_script(tmp_path):
    env = install_plugin(
        tmp_path / "site",
        "colour_masks",
        {"colour_masks": PLUGIN},
        "[mbtasks.formats]\ncolour_masks = colour_masks\n",
        threads=1,
    )
    expected = _write_photo_set(tmp_path / "photos")
    # read through the registry, as a data module does: the plugin is found by its entry point and the root sniffed
    read = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""\
                import json, sys
                import numpy as np
                from pathlib import Path
                from mbtasks.datasets.formats import FORMATS, recognised_format
                root = Path({str(tmp_path / "photos")!r})
                name = recognised_format("segmentation", root, "folder")
                data = FORMATS.get(name)(root)
                items = {{f"{{split}}/{{Path(item['image_path']).stem}}": item
                          for split in ("train", "val") for item in data.dataset(split, None)}}
                np.savez(sys.argv[1], **{{key: item["mask"] for key, item in items.items()}})
                print(json.dumps({{"format": name, "classes": data.class_names,
                                   "shapes": {{k: list(v["image"].shape) for k, v in items.items()}}}}))
                """),
            str(tmp_path / "masks.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert read.returncode == 0, read.stderr[-3000:]
    found = json.loads(read.stdout)
    assert found["format"] == "colour_masks" and found["classes"] == list(CLASSES)
    assert found["shapes"] == {key: [*SIZE, 3] for key in expected}
    masks = np.load(tmp_path / "masks.npz")
    assert sorted(masks.files) == sorted(expected)
    for key, labels in expected.items():
        assert np.array_equal(masks[key], labels), key
        assert set(np.unique(labels)) == {0, 1, 2, 255}

    settings = [
        f"data.root={tmp_path / 'photos'}",
        "data.format=''",  # recognised from the root: only the plugin's format has a classes.csv
        f"data.size=[{SIZE[0]}, {SIZE[1]}]",
        "data.batch_size=2",
        "data.num_workers=0",
        "model.name=lraspp_mobilenet_v3_small",
        "model.options={width_mult: 0.5}",
        "train.epochs=1",
        "train.limit_train_batches=1",
        "train.progress_bar=false",
        f"train.out_dir={tmp_path / 'run'}",
    ]
    sets = [a for s in settings for a in ("--set", s)]
    train = subprocess.run(
        [MBTASKS, "train", "--config", str(DEMO), *sets],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert "best val/mIoU" in train.stdout
    record = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)["mbtasks"]
    assert record["config"]["data"]["format"] == "colour_masks" and record["class_names"] == list(CLASSES)
    # without the plugin, the format the recipe names is unknown in one line
    unknown = subprocess.run(
        [
            MBTASKS,
            "train",
            "--config",
            str(DEMO),
            *sets,
            "--set",
            "data.format=colour_masks",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = unknown.stderr.strip().splitlines()
    assert unknown.returncode == 2 and len(lines) == 1, unknown.stderr[-3000:]
    assert lines[0].startswith("mbtasks: error: unknown data format 'colour_masks'"), lines[0]
