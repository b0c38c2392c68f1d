"""Segmentation data: the synthetic Cityscapes set, the Cityscapes and VOC readers, the albumentations pipelines."""

from __future__ import annotations

import filecmp
import glob
import json
import os
import shutil

import numpy as np
import pytest
import torch
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.helpers.labels import id2label, name2label
from cityscapesscripts.preparation.json2labelImg import createLabelImage
from PIL import Image

from mbtasks.datasets.cityscapes import (
    CLASS_NAMES,
    CityscapesSegmentation,
    label_ids_to_train_ids,
    train_ids_to_label_ids,
)
from mbtasks.datasets.segmentation_transforms import (
    normalise_batch,
    segmentation_eval_transforms,
    segmentation_train_transforms,
)
from mbtasks.datasets.synthetic.streets_cityscapes import PRESENT_CLASSES, write_streets_cityscapes
from mbtasks.datasets.voc import CLASS_NAMES as VOC_CLASSES
from mbtasks.datasets.voc import VOCSegmentation, voc_palette
from mbtasks.errors import MbtasksError
from mbtasks.io.images import read_label_png, read_rgb_image

SIZE = (64, 128)


@pytest.fixture(scope="module")
def streets(tmp_path_factory):
    root = tmp_path_factory.mktemp("streets")
    summary = write_streets_cityscapes(root, seed=0, num_train=6, num_val=3, size=SIZE)
    return root, summary


def relative_files(root) -> list[str]:
    return sorted(os.path.relpath(path, root) for path in glob.glob(os.path.join(root, "**", "*.*"), recursive=True))


# ---- the synthetic set ----


def test_layout_and_summary(streets):
    root, summary = streets
    assert summary["num_images"] == {"train": 6, "val": 3} and summary["size"] == SIZE
    files = relative_files(root)
    assert len(files) == 9 * 5  # image, labelIds, instanceIds, color, polygons
    stems = {os.path.basename(f).rsplit("_", 1)[0] for f in files if f.endswith("_leftImg8bit.png")}
    for stem in stems:
        city = stem.split("_")[0]
        split = "val" if city == "westbrook" else "train"
        for suffix in ("gtFine_labelIds.png", "gtFine_instanceIds.png", "gtFine_color.png", "gtFine_polygons.json"):
            assert os.path.join("gtFine", split, city, f"{stem}_{suffix}") in files
    image = Image.open(glob.glob(str(root / "leftImg8bit" / "train" / "*" / "*.png"))[0])
    assert image.mode == "RGB" and image.size == (SIZE[1], SIZE[0])


def test_reproducible_from_seed(tmp_path, streets):
    root, _ = streets
    write_streets_cityscapes(tmp_path / "again", seed=0, num_train=6, num_val=3, size=SIZE)
    files = relative_files(root)
    assert files == relative_files(tmp_path / "again")
    match, mismatch, errors = filecmp.cmpfiles(root, tmp_path / "again", files, shallow=False)
    assert not mismatch and not errors
    # an image does not depend on how many are written; another seed gives other images
    write_streets_cityscapes(tmp_path / "fewer", seed=0, num_train=2, num_val=1, size=SIZE)
    write_streets_cityscapes(tmp_path / "other", seed=1, num_train=2, num_val=1, size=SIZE)
    some = relative_files(tmp_path / "fewer")
    assert not filecmp.cmpfiles(root, tmp_path / "fewer", some, shallow=False)[1]
    assert len(filecmp.cmpfiles(root, tmp_path / "other", some, shallow=False)[1]) == len(some)


def test_labels_follow_cityscapes_encoding(streets):
    root, summary = streets
    present = set()
    for label_file in glob.glob(str(root / "gtFine" / "*" / "*" / "*_gtFine_labelIds.png")):
        instance_file = label_file.replace("labelIds", "instanceIds")
        assert Image.open(label_file).mode == "L" and Image.open(instance_file).mode in ("I;16", "I")
        label_ids, instance_ids = read_label_png(label_file), read_label_png(instance_file).astype(np.int64)
        # instanceIds: id*1000+k for classes with instances, the plain label id elsewhere
        is_instance = instance_ids >= 1000
        assert np.array_equal(np.where(is_instance, instance_ids // 1000, instance_ids), label_ids)
        assert all(id2label[int(i)].hasInstances for i in np.unique(instance_ids[is_instance] // 1000))
        assert np.count_nonzero(np.unique(instance_ids) >= 1000) >= 2  # at least a car and a person
        # the labels are cityscapesscripts' rendering of the polygons file
        annotation = Annotation()
        annotation.fromJsonFile(label_file.replace("labelIds.png", "polygons.json"))
        assert np.array_equal(np.array(createLabelImage(annotation, "ids")), label_ids)
        colors = read_rgb_image(label_file.replace("labelIds", "color"))
        assert np.array_equal(colors[0, 0], id2label[int(label_ids[0, 0])].color)
        present |= {id2label[int(i)].name for i in np.unique(label_ids)}
    assert set(summary["classes"]) == set(PRESENT_CLASSES)
    assert set(PRESENT_CLASSES) <= present
    # void pixels: the ego vehicle along the bottom
    assert "ego vehicle" in present and all(not name2label[n].ignoreInEval for n in PRESENT_CLASSES)
    with open(glob.glob(str(root / "gtFine" / "val" / "*" / "*_polygons.json"))[0]) as file:
        polygons = json.load(file)
    assert (polygons["imgHeight"], polygons["imgWidth"]) == SIZE and polygons["objects"][0]["label"] == "sky"


# ---- Cityscapes reader ----


def test_cityscapes_dataset_items(streets):
    root, _ = streets
    dataset = CityscapesSegmentation(root, "val")
    assert len(dataset) == 3 and dataset.num_classes == 19 and CLASS_NAMES[0] == "road" and CLASS_NAMES[18] == "bicycle"
    item = dataset[0]
    assert item["image"].shape == (*SIZE, 3) and item["image"].dtype == np.uint8
    assert item["mask"].shape == SIZE and item["mask"].dtype == np.uint8
    label_ids = read_label_png(item["label_path"])
    assert np.array_equal(item["mask"], label_ids_to_train_ids(label_ids))
    assert item["mask"][-1, SIZE[1] // 2] == 255  # the ego vehicle is ignored
    assert set(np.unique(item["mask"])) <= {0, 1, 2, 8, 10, 11, 13, 255}
    assert item["image_path"].endswith("_leftImg8bit.png") and os.path.isfile(item["label_path"])
    evaluated = np.arange(19, dtype=np.uint8)
    assert np.array_equal(label_ids_to_train_ids(train_ids_to_label_ids(evaluated)), evaluated)

    with_tensors = CityscapesSegmentation(root, "train", segmentation_eval_transforms())[1]
    assert with_tensors["image"].shape == (3, *SIZE) and with_tensors["image"].dtype == torch.float32
    assert with_tensors["mask"].dtype == torch.uint8  # int64 only on the device (normalise_batch)


def copy_set(root, tmp_path):
    import shutil

    shutil.copytree(root, tmp_path / "cs")
    return tmp_path / "cs"


def test_cityscapes_missing_label_file(streets, tmp_path):
    root = copy_set(streets[0], tmp_path)
    label = sorted(glob.glob(str(root / "gtFine" / "train" / "*" / "*_labelIds.png")))[2]
    os.remove(label)
    with pytest.raises(MbtasksError, match="ground truth file not found") as error:
        CityscapesSegmentation(root, "train")
    assert str(error.value.path) == label


def test_cityscapes_no_images(tmp_path):
    with pytest.raises(MbtasksError, match="no images found"):
        CityscapesSegmentation(tmp_path, "val")


def test_cityscapes_corrupt_image_and_colour_label(streets, tmp_path):
    root = copy_set(streets[0], tmp_path)
    dataset = CityscapesSegmentation(root, "val")
    with open(dataset.image_paths[0], "wb") as file:
        file.write(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(MbtasksError, match="cannot decode image") as error:
        dataset[0]
    assert error.value.path == dataset.image_paths[0]
    # a colour PNG where the labelIds belong (e.g. the _color.png copied over it)
    shutil.copyfile(dataset.label_paths[1].replace("labelIds", "color"), dataset.label_paths[1])
    with pytest.raises(MbtasksError, match="RGBA PNG where a label PNG belongs") as error:
        dataset[1]
    assert error.value.path == dataset.label_paths[1]


# ---- VOC reader ----


def write_voc(root, names=("2007_000032", "2007_000039", "2007_000063")):
    """A tiny VOC2012 folder: JPEGs, palette PNG labels with a 255 boundary, train/val lists."""
    rng = np.random.default_rng(0)
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        mask = np.zeros((30, 40), np.uint8)
        mask[5:20, 8:30] = index + 1
        mask[5, 8:30] = 255
        image = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
        label = Image.fromarray(mask, mode="L").convert("P")
        label.putpalette(voc_palette().ravel().tolist())
        label.save(root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(names[:2]) + "\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text(names[2] + "\n")


def test_voc_reader(tmp_path):
    write_voc(tmp_path / "VOCdevkit" / "VOC2012")
    train = VOCSegmentation(tmp_path, "train")
    assert len(train) == 2 and train.num_classes == 21 and VOC_CLASSES[15] == "person"
    item = train[1]
    assert item["image"].shape == (30, 40, 3) and item["mask"].shape == (30, 40)
    assert set(np.unique(item["mask"])) == {0, 2, 255}
    val = VOCSegmentation(tmp_path / "VOCdevkit" / "VOC2012", "val", segmentation_eval_transforms())
    assert val[0]["mask"].dtype == torch.uint8 and val[0]["image"].shape == (3, 30, 40)
    palette = voc_palette()
    assert palette[1].tolist() == [128, 0, 0] and palette[15].tolist() == [192, 128, 128]
    assert palette[255].tolist() == [224, 224, 192]


def test_voc_errors(tmp_path):
    root = tmp_path / "VOC2012"
    write_voc(root)
    with pytest.raises(MbtasksError, match="not a VOC 2012 folder"):
        VOCSegmentation(tmp_path / "nowhere", "train")
    with pytest.raises(MbtasksError, match="split list not found .*train, val"):
        VOCSegmentation(root, "trainaug")
    os.remove(root / "JPEGImages" / "2007_000039.jpg")
    with pytest.raises(MbtasksError, match="listed in train.txt not found") as error:
        VOCSegmentation(root, "train")
    assert error.value.path.endswith("2007_000039.jpg")
    # an RGB rendering of the palette where the indices belong
    label_file = root / "SegmentationClass" / "2007_000063.png"
    Image.fromarray(read_rgb_image(label_file)).save(label_file)
    with pytest.raises(MbtasksError, match="RGB PNG where a label PNG belongs"):
        VOCSegmentation(root, "val")[0]
    Image.fromarray(np.full((30, 40), 21, np.uint8)).save(label_file)
    with pytest.raises(MbtasksError, match="class index 21 outside 0..20"):
        VOCSegmentation(root, "val")[0]


# ---- pipelines ----


def test_train_pipeline_scales_crops_and_pads_with_ignore():
    image = np.full((40, 80, 3), 200, np.uint8)
    mask = np.full((40, 80), 3, np.uint8)
    transform = segmentation_train_transforms(crop_size=(64, 128), scale_range=(0.5, 0.5), seed=0)
    out = transform(image=image, mask=mask)
    assert out["image"].shape == (64, 128, 3) and out["mask"].shape == (64, 128)
    assert out["image"].dtype == out["mask"].dtype == np.uint8  # normalise_batch finishes them on the device
    # scaled to 20x40 and padded: mask fill 255, image fill 0 before normalisation
    assert (out["mask"] == 3).sum() == 20 * 40 and (out["mask"] == 255).sum() == 64 * 128 - 20 * 40
    assert (out["image"][out["mask"] == 255] == 0).all()
    batch = normalise_batch(torch.utils.data.default_collate([out]))
    expected = -torch.tensor([0.485, 0.456, 0.406]) / torch.tensor([0.229, 0.224, 0.225])
    assert batch["mask"].dtype == torch.int64 and batch["image"].dtype == torch.float32
    padded = torch.from_numpy(out["mask"] == 255)
    assert batch["image"].shape == (1, 3, 64, 128)
    assert torch.allclose(batch["image"][0][:, padded], expected[:, None], atol=1e-5)
    big = segmentation_train_transforms(crop_size=(32, 32), scale_range=(2.0, 2.0), seed=0)(image=image, mask=mask)
    assert big["image"].shape == (32, 32, 3) and set(np.unique(big["mask"]).tolist()) == {3}


def test_eval_pipeline_only_normalises():
    image = np.random.default_rng(0).integers(0, 256, (10, 20, 3), dtype=np.uint8)
    out = segmentation_eval_transforms()(image=image, mask=np.zeros((10, 20), np.uint8))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = (image / 255.0 - mean) / std
    assert np.allclose(out["image"].numpy().transpose(1, 2, 0), expected, atol=1e-5)
