"""Data formats as registered objects: the folder segmentation format and YOLO detection labels read real photos
written by hand in their layouts (right classes, mask pixels, boxes to the pixel), their recipes train and evaluate on
their embedded sets, data.format is checked (closest name, kind), bad input is one line naming the file, and a
checkpoint from before data.format keeps its format."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import in_process
from photo_sets import (
    FOLDER_CLASSES,
    FOLDER_IGNORE,
    FOLDER_PALETTE,
    FOLDER_SPLITS,
    YOLO_CLASSES,
    YOLO_SPLITS,
    folder_mask,
    folder_photo,
    write_folder_photos,
    write_yolo_photos,
    yolo_boxes,
)
from PIL import Image

from mbtasks.cli import main
from mbtasks.config import load_config
from mbtasks.datasets.formats import FORMATS, data_format, formats_of, recognised_format
from mbtasks.errors import MbtasksError
from mbtasks.evaluation.coco import coco_metrics
from mbtasks.tasks import TASKS
from mbtasks.tasks.segmentation import SegmentationTask

DEMO = Path(__file__).resolve().parents[1] / "mbtasks" / "recipes" / "demo"
ON_THIS_CPU = [
    "data.num_workers=0",
    "train.epochs=1",
    "train.accelerator=cpu",
    "train.progress_bar=false",
    "train.limit_train_batches=1",
]


def _sets(settings: list[str]) -> list[str]:
    return [a for s in settings for a in ("--set", s)]


@pytest.fixture(scope="module")
def folder_photos(tmp_path_factory) -> Path:
    return write_folder_photos(tmp_path_factory.mktemp("folder"))


@pytest.fixture(scope="module")
def yolo_photos(tmp_path_factory) -> Path:
    return write_yolo_photos(tmp_path_factory.mktemp("yolo"))


def test_every_task_reads_its_data_through_a_format_of_its_kind():
    kinds = {name: FORMATS[name].kind for name in FORMATS}
    assert {
        "cityscapes": "segmentation",
        "voc": "segmentation",
        "folder": "segmentation",
        "coco": "detection",
        "yolo": "detection",
        "celeba": "attributes",
        "lfw": "embeddings",
        "imagefolder": "classification",
    }.items() <= kinds.items()
    for name in TASKS:
        data = TASKS[name].data_module
        assert FORMATS[data.default_format].kind == data.format_kind  # the embedded set is one of its own
    assert formats_of("segmentation")[:3] == ["cityscapes", "voc", "folder"]


# ---- the folder format on real photos ----


def test_folder_photos_are_read_with_their_classes_and_mask_pixels(folder_photos):
    assert recognised_format("segmentation", folder_photos, "cityscapes") == "folder"
    folder = data_format("segmentation", "folder", folder_photos)
    assert folder.class_names == FOLDER_CLASSES
    assert folder.palette().tolist() == FOLDER_PALETTE
    for split, photos in FOLDER_SPLITS.items():
        items = folder.dataset(split, None)
        assert [Path(p).name for p in items.image_paths] == sorted(f"{name}{suffix}" for name, suffix, _ in photos)
        for index in range(len(items)):
            item = items[index]
            name = Path(item["image_path"]).stem
            expected = folder_mask(name)
            expected[expected == FOLDER_IGNORE] = 255  # the file's ignore index becomes the task's
            assert item["mask"].dtype == np.uint8 and np.array_equal(item["mask"], expected), name
            assert set(np.unique(item["mask"])) <= {0, 1, 2, 3, 255}
            photo = folder_photo(name)
            if item["image_path"].endswith(".png"):
                assert np.array_equal(item["image"], photo), name
            else:  # JPEG's loss
                assert item["image"].shape == photo.shape and np.abs(item["image"].astype(int) - photo).mean() < 5


def _copy_folder(source: Path, target: Path) -> Path:
    for path in source.rglob("*"):
        if path.is_file():
            (target / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            (target / path.relative_to(source)).write_bytes(path.read_bytes())
    return target


def test_folder_bad_input_is_one_line_naming_the_file(folder_photos, tmp_path):
    root = _copy_folder(folder_photos, tmp_path / "copy")
    folder = data_format("segmentation", "folder", root)
    mask = root / "masks/train/chelsea.png"
    Image.fromarray(np.full((10, 10), 1, np.uint8)).save(mask)  # another size than its photo's
    chelsea = folder.dataset("train", None).label_paths.index(str(mask))
    with pytest.raises(MbtasksError, match="label is 10x10 but its image is 150x225") as error:
        folder.dataset("train", None)[chelsea]
    assert str(mask) in str(error.value)
    Image.fromarray(np.full((150, 225), 7, np.uint8)).save(mask)  # a class beyond the four
    with pytest.raises(MbtasksError, match=r"class index 7 beyond the 4 classes of classes.json \(0..3, and 200"):
        folder.dataset("train", None)[chelsea]
    mask.unlink()
    with pytest.raises(MbtasksError, match="no mask for this image: expected .*masks/train/chelsea.png") as error:
        folder.dataset("train", None)
    assert str(error.value).startswith(str(root / "images/train/chelsea.jpg"))
    (root / "classes.json").write_text(json.dumps({"classes": ["a", "b", "a"]}))
    with pytest.raises(MbtasksError, match="classes.json: classes names 'a' twice"):
        data_format("segmentation", "folder", root).class_names


# ---- YOLO labels on real photos ----


def test_yolo_photos_are_read_with_their_classes_and_boxes_to_the_pixel(yolo_photos):
    assert recognised_format("detection", yolo_photos, "coco") == "yolo"
    yolo = data_format("detection", "yolo", yolo_photos)
    assert list(yolo.class_names) == YOLO_CLASSES  # data.yaml's names by class id
    for split, photos in YOLO_SPLITS.items():
        items = yolo.dataset(split, None, train=False)
        assert items.class_names == ["__background__", *YOLO_CLASSES]
        assert items.category_ids == list(range(len(YOLO_CLASSES) + 1))  # class id i is label and category i + 1
        files = [items.coco.imgs[i]["file_name"] for i in items.image_ids]
        assert files == sorted(f"{name}{'.png' if name == 'chelsea' else '.jpg'}" for name in photos)
        for index, file in enumerate(files):
            image, target = items[index]
            drawn = yolo_boxes(Path(file).stem)
            assert image.shape == (480, 640, 3) and target["orig_size"] == (480, 640)
            assert target["labels"].tolist() == [c + 1 for c, _ in drawn]
            assert np.allclose(target["boxes"].numpy(), np.array([b for _, b in drawn]).reshape(-1, 4), atol=1e-3)
    # rocket, without a label file, was an image without boxes. The same COCOeval scores the set: its own boxes as
    # detections are a perfect score
    val = yolo.dataset("val", None, train=False)
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in val.coco.dataset["annotations"]
    ]
    assert coco_metrics(val.ground_truth, results)["AP"] == pytest.approx(1.0)


def test_yolo_boxes_refer_to_the_upright_photo(yolo_photos, tmp_path):
    root = tmp_path / "turned"
    for folder in ("images/val", "labels/val"):
        (root / folder).mkdir(parents=True)
    (root / "classes.yaml").write_text("classes: [person, airplane]\n")
    upright = np.asarray(Image.open(yolo_photos / "images/train/astronaut.jpg"))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned anticlockwise: shown turned back clockwise
    Image.fromarray(np.rot90(upright)).save(root / "images/val/turned.jpg", quality=95, exif=exif)
    (root / "labels/val/turned.txt").write_text("0 0.25 0.5 0.25 0.5\n")  # x 80..240, y 120..360 of the 640x480
    image, target = data_format("detection", "yolo", root).dataset("val", None, train=False)[0]
    assert image.shape == (480, 640, 3) and np.abs(image.astype(int) - upright).mean() < 3
    assert np.allclose(target["boxes"].numpy(), [[80, 120, 240, 360]])


@pytest.mark.parametrize(
    "line, problem",
    [
        ("0 0.5 0.5 0.2", "line 2: expected `class cx cy w h` (a class id and 4 numbers), found '0 0.5 0.5 0.2'"),
        ("12 0.5 0.5 0.2 0.2", "line 2: class 12 is not one of the 10 classes (0..9)"),
        ("1 0.5 0.5 1.2 0.2", "line 2: cx cy w h must be normalised to 0..1, found 0.5 0.5 1.2 0.2"),
    ],
)
def test_a_bad_yolo_line_is_one_line_naming_file_and_line(yolo_photos, tmp_path, line, problem):
    root = _copy_folder(yolo_photos, tmp_path / "copy")
    labels = root / "labels/train/coffee.txt"
    labels.write_text(labels.read_text().splitlines()[0] + "\n" + line + "\n")
    with pytest.raises(MbtasksError) as error:
        data_format("detection", "yolo", root).dataset("train", None, train=False)
    assert str(error.value) == f"{labels}: {problem}"


# ---- data.format in recipes ----


def test_a_mistyped_or_foreign_data_format_is_one_line(tmp_path, capsys):
    command = ["train", "--config", str(DEMO / "seg_folder.yaml"), *_sets([f"train.out_dir={tmp_path / 'run'}"])]
    assert main([*command, "--set", "data.format=foldr"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "unknown data format 'foldr' (did you mean 'folder'?)" in error[0]
    assert main([*command, "--set", "data.format=coco"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "mbtasks: error: data.format 'coco' is a detection format; this task reads segmentation formats: "
        "cityscapes, voc, folder"
    ]
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_from_before_data_format_keeps_the_format_its_classes_told():
    from mbtasks.datasets.cityscapes import CLASS_NAMES as CITYSCAPES
    from mbtasks.datasets.voc import CLASS_NAMES as VOC

    config = load_config(
        None, ["model.name=lraspp_mobilenet_v3_small", "model.options={width_mult: 0.5}"], task="seg"
    ).to_dict()
    del config["data"]["format"]  # a recipe written before the key
    for classes, name in ((CITYSCAPES, "cityscapes"), (VOC, "voc"), (["sky", "ground"], "voc")):
        assert SegmentationTask(config, list(classes), []).format.name == name
    config["data"]["format"] = "folder"
    assert SegmentationTask(config, ["sky", "ground"], []).format.name == "folder"


def _train(recipe: str, out: Path, settings: list[str]) -> subprocess.CompletedProcess:
    """`mbtasks train` of a demo recipe (in this process), on its embedded set written small under out."""
    settings = [*ON_THIS_CPU, f"data.synth_dir={out / 'data'}", f"train.out_dir={out / 'run'}", *settings]
    result = in_process(["train", "--config", str(DEMO / recipe), *_sets(settings)])
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_the_folder_recipe_trains_and_evaluates_on_its_embedded_set(tmp_path, capsys):
    result = _train(
        "seg_folder.yaml",
        tmp_path,
        [
            "data.synth={seed: 0, num_train: 4, num_val: 3, size: [64, 128]}",
            "data.size=[64, 128]",
            "data.batch_size=2",
            "model.name=lraspp_mobilenet_v3_small",
            "model.options={width_mult: 0.5}",
        ],
    )
    assert "best val/mIoU" in result.stdout
    data = tmp_path / "data"
    assert sorted(p.name for p in data.iterdir()) == ["classes.yaml", "images", "masks", "mbtasks_synth.json"]
    assert len(list((data / "masks/val").glob("*.png"))) == 3
    checkpoint = tmp_path / "run/checkpoints/last.ckpt"
    record = torch.load(checkpoint, weights_only=True)["mbtasks"]
    assert record["config"]["data"]["format"] == "folder" and len(record["class_names"]) == 7
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(checkpoint),
                "--save-predictions",
                str(tmp_path / "pred"),
                "--json",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "wrote 3 palette PNGs of class indices" in printed and "evaluated 3 images" in printed
    assert "mIoU" in printed and "sidewalk" in printed
    saved = sorted((tmp_path / "pred").glob("*.png"))
    assert [p.name for p in saved] == sorted(p.name for p in (data / "masks/val").glob("*.png"))
    assert Image.open(saved[0]).mode == "P"  # class indices, in classes.yaml's colours
    assert (
        main(
            [
                "evaluate",
                "--task",
                "seg",
                "--gt",
                str(data),
                "--predictions",
                str(tmp_path / "pred"),
                "--json",
                str(tmp_path / "f.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "f.json").read_text()) == json.loads((tmp_path / "m.json").read_text())


def test_the_yolo_recipe_trains_and_evaluates_on_its_embedded_set(tmp_path, capsys):
    result = _train(
        "det_yolo.yaml",
        tmp_path,
        [
            "data.synth={seed: 0, num_train: 4, num_val: 3, image_size: 96}",
            "data.size=96",
            "data.batch_size=2",
            "model.options={width_mult: 0.5}",
        ],
    )
    assert "best val/mAP" in result.stdout
    data = tmp_path / "data"
    assert (data / "data.yaml").is_file() and len(list((data / "labels/val").glob("*.txt"))) == 3
    checkpoint = tmp_path / "run/checkpoints/last.ckpt"
    record = torch.load(checkpoint, weights_only=True)["mbtasks"]
    assert record["config"]["data"]["format"] == "yolo"
    assert record["class_names"] == ["__background__", "circle", "square", "triangle", "star"]
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--json", str(tmp_path / "m.json")]) == 0
    assert "evaluated 3 images" in capsys.readouterr().out
    assert set(json.loads((tmp_path / "m.json").read_text())) >= {"AP", "AP50"}
