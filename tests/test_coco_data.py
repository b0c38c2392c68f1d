"""The synthetic COCO writer and the COCO detection data set, including every bad input it must name."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from mbtasks.datasets.coco import CocoDetection
from mbtasks.datasets.samplers import SeededAugmentation
from mbtasks.datasets.synthetic.shapes_coco import write_shapes_coco
from mbtasks.datasets.transforms import detection_transforms
from mbtasks.errors import MbtasksError
from mbtasks.io.images import read_rgb_image

SMALL = {"num_train": 16, "num_val": 40, "image_size": 96}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_shapes_coco(tmp_path_factory.mktemp("shapes"), seed=0, **SMALL)


@pytest.fixture
def copy_of(shapes: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """A private copy of the val split, for tests that break it."""
    root = tmp_path / "copy"
    shutil.copytree(shapes["val_images"], root / "val2017")
    (root / "annotations").mkdir()
    shutil.copy(shapes["val_annotations"], root / "annotations")
    return {"images": root / "val2017", "annotations": root / "annotations" / shapes["val_annotations"].name}


def _val(shapes: dict[str, Path], train: bool = False, **kwargs) -> CocoDetection:
    return CocoDetection(shapes["val_images"], shapes["val_annotations"], train=train, **kwargs)


def _rewrite(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.*"))}


# --- the synthetic writer --------------------------------------------------------------------------------------


def test_synthetic_set_is_reproducible_from_its_seed(tmp_path: Path) -> None:
    first = _digests(write_shapes_coco(tmp_path / "a", seed=3, **SMALL)["root"])
    second = _digests(write_shapes_coco(tmp_path / "b", seed=3, **SMALL)["root"])
    other = _digests(write_shapes_coco(tmp_path / "c", seed=4, **SMALL)["root"])
    assert len(first) == SMALL["num_train"] + SMALL["num_val"] + 2
    assert first == second
    assert first["annotations/instances_val2017.json"] != other["annotations/instances_val2017.json"]


# pycocotools' mask decoding trips a numpy 2 deprecation inside pycocotools itself.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_synthetic_set_is_valid_coco(shapes: dict[str, Path]) -> None:
    for split in ("train", "val"):
        coco = COCO(str(shapes[f"{split}_annotations"]))
        assert [c["id"] for c in coco.loadCats(coco.getCatIds())] == [1, 3, 5, 7]
        assert all(c["name"] and c["supercategory"] == "shape" for c in coco.cats.values())
        for image in coco.imgs.values():
            pixels = read_rgb_image(shapes[f"{split}_images"] / image["file_name"])
            assert pixels.shape == (image["height"], image["width"], 3)
        for ann in coco.anns.values():
            assert ann["area"] > 0 and ann["bbox"][2] > 0 and ann["bbox"][3] > 0
            assert coco.annToMask(ann).sum() > 0
    val = COCO(str(shapes["val_annotations"]))
    assert any(not val.imgToAnns[i] for i in val.imgs), "val has no image without annotations"
    crowds = [a for a in val.anns.values() if a["iscrowd"]]
    assert crowds, "val has no crowd region"
    for ann in crowds:
        # A crowd region is an RLE mask whose extent is its box.
        rle = val.annToRLE(ann)
        assert list(mask_utils.toBbox(rle)) == ann["bbox"]
        assert mask_utils.area(rle) == ann["area"]
    train_ids, val_ids = set(COCO(str(shapes["train_annotations"])).imgs), set(val.imgs)
    assert not train_ids & val_ids


def test_synthetic_boxes_are_tight_around_the_drawn_shapes(shapes: dict[str, Path]) -> None:
    coco = COCO(str(shapes["val_annotations"]))
    checked = 0
    for ann in coco.anns.values():
        if ann["iscrowd"]:
            continue
        image = read_rgb_image(shapes["val_images"] / coco.imgs[ann["image_id"]]["file_name"]).astype(int)
        x, y, w, h = ann["bbox"]
        colour = np.median(image[y + h // 2 - 1 : y + h // 2 + 2, x + w // 2 - 1 : x + w // 2 + 2], axis=(0, 1))
        is_shape = np.abs(image - colour).max(axis=2) < 40
        rows, cols = slice(y, y + h), slice(x, x + w)
        inside_edges = [is_shape[rows, x], is_shape[rows, x + w - 1], is_shape[y, cols], is_shape[y + h - 1, cols]]
        outside_edges = [is_shape[rows, x - 1], is_shape[rows, x + w], is_shape[y - 1, cols], is_shape[y + h, cols]]
        assert all(edge.any() for edge in inside_edges), f"annotation {ann['id']}: box larger than the shape"
        assert not any(edge.any() for edge in outside_edges), f"annotation {ann['id']}: shape leaks out of its box"
        checked += 1
    assert checked >= 40


# --- the data set ----------------------------------------------------------------------------------------------


def test_class_mapping_is_contiguous_over_sorted_category_ids(shapes: dict[str, Path]) -> None:
    ds = _val(shapes)
    assert ds.class_names == ["__background__", "circle", "square", "triangle", "star"]
    assert ds.category_ids == [0, 1, 3, 5, 7]
    for index in range(len(ds)):
        _, target = ds[index]
        anns = ds.coco.imgToAnns[target["image_id"]]
        assert sorted(ds.category_ids[label] for label in target["labels"].tolist()) == sorted(
            a["category_id"] for a in anns
        )


def test_item_is_the_image_and_its_boxes_in_pixels(shapes: dict[str, Path]) -> None:
    ds = _val(shapes)
    image, target = ds[3]
    info = ds.coco.imgs[target["image_id"]]
    assert image.dtype == np.uint8 and image.shape == (info["height"], info["width"], 3)
    assert np.array_equal(image, read_rgb_image(shapes["val_images"] / info["file_name"]))
    assert target["orig_size"] == (info["height"], info["width"])
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    expected = sorted(
        [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
        for a in ds.coco.imgToAnns[target["image_id"]]
    )
    assert sorted(target["boxes"].tolist()) == expected


def test_eval_transforms_give_a_float_tensor_and_the_same_boxes(shapes: dict[str, Path]) -> None:
    plain = _val(shapes)
    ds = _val(shapes, transforms=detection_transforms("ssdlite", (64, 64), train=False))
    image, target = ds[3]
    raw, raw_target = plain[3]
    assert image.dtype == torch.float32 and image.shape == (3, *raw.shape[:2])
    assert torch.allclose(image, torch.from_numpy(raw).permute(2, 0, 1).float() / 255)
    assert torch.equal(target["boxes"], raw_target["boxes"]) and torch.equal(target["labels"], raw_target["labels"])


def test_crowd_regions_are_left_out_for_training_and_flagged_for_evaluation(shapes: dict[str, Path]) -> None:
    train, evaluation = _val(shapes, train=True), _val(shapes, train=False)
    crowd_images = {a["image_id"] for a in evaluation.coco.anns.values() if a["iscrowd"]}
    assert crowd_images
    for image_id in crowd_images:
        index = evaluation.image_ids.index(image_id)
        anns = evaluation.coco.imgToAnns[image_id]
        _, for_eval = evaluation[index]
        _, for_train = train[index]
        assert len(for_eval["boxes"]) == len(anns)
        assert for_eval["iscrowd"].tolist().count(1) == sum(a["iscrowd"] for a in anns) >= 1
        assert len(for_train["boxes"]) == sum(1 - a["iscrowd"] for a in anns)
        assert for_train["iscrowd"].sum() == 0


def test_images_without_annotations_are_kept(shapes: dict[str, Path]) -> None:
    for train in (True, False):
        ds = _val(shapes, train=train)
        assert len(ds) == SMALL["num_val"]
        empty = [i for i, image_id in enumerate(ds.image_ids) if not ds.coco.imgToAnns[image_id]]
        assert empty
        _, target = ds[empty[0]]
        assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


def test_augmentations_are_seeded_per_sample_in_any_worker(shapes: dict[str, Path]) -> None:
    """Training items go through SeededAugmentation: an (epoch, index) key gives the same augmentation in any loader
    worker (what an exact resume needs), and the same image differs between epochs."""
    transforms = detection_transforms("ssd", (64, 64), train=True, seed=0)
    ds = _val(shapes, train=True, transforms=transforms)
    index = next(i for i, image_id in enumerate(ds.image_ids) if ds.coco.imgToAnns[image_id])
    keys = [(0, index), (1, index), (0, index), (1, index)]
    loader = torch.utils.data.DataLoader(
        SeededAugmentation(ds, transforms, seed=0), sampler=keys, batch_size=None, num_workers=2, collate_fn=lambda x: x
    )
    images = [image for image, _ in loader]  # worker 0 makes items 0 and 2, worker 1 items 1 and 3
    assert np.array_equal(images[0], images[2]) and np.array_equal(images[1], images[3])
    assert not np.array_equal(images[0], images[1])


# --- bad inputs: one error that names the file -----------------------------------------------------------------


def test_missing_image_file_is_named(copy_of: dict[str, Path]) -> None:
    ds = CocoDetection(copy_of["images"], copy_of["annotations"], train=False)
    victim = ds.image_path(ds.image_ids[5])
    victim.unlink()
    with pytest.raises(MbtasksError, match=victim.name):
        ds[5]
    with pytest.raises(MbtasksError, match=victim.name) as err:
        ds.check_files()
    assert "not found" in str(err.value)
    ds.image_path(ds.image_ids[7]).unlink()
    with pytest.raises(MbtasksError, match="1 more missing"):
        ds.check_files()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_is_named(copy_of: dict[str, Path], damage: str) -> None:
    ds = CocoDetection(copy_of["images"], copy_of["annotations"], train=False)
    victim = ds.image_path(ds.image_ids[2])
    data = victim.read_bytes()
    victim.write_bytes(b"not an image at all" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(MbtasksError, match=f"{victim.name}: cannot decode image"):
        ds[2]


def test_image_of_another_size_than_the_json_says_is_named(copy_of: dict[str, Path]) -> None:
    ds = CocoDetection(copy_of["images"], copy_of["annotations"], train=False)
    victim = ds.image_path(ds.image_ids[1])
    Image.new("RGB", (17, 13)).save(victim)
    with pytest.raises(MbtasksError, match=f"{victim.name}: image is 17x13"):
        ds[1]


def _first_plain_annotations(data: dict, count: int) -> list[dict]:
    return [a for a in data["annotations"] if not a["iscrowd"]][:count]


def test_degenerate_boxes_are_skipped_with_one_warning(copy_of: dict[str, Path]) -> None:
    path = copy_of["annotations"]
    broken: list[int] = []

    def edit(data: dict) -> None:
        first, second = _first_plain_annotations(data, 2)
        first["bbox"][2] = -5
        second["bbox"][3] = 0
        broken.extend([first["id"], second["id"]])

    _rewrite(path, edit)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoDetection(copy_of["images"], path, train=True)
    messages = [str(w.message) for w in caught if "zero or negative" in str(w.message)]
    assert len(messages) == 1
    assert path.name in messages[0] and "skipped 2 boxes" in messages[0]
    kept = sum(len(ds[i][1]["boxes"]) for i in range(len(ds)))
    assert kept == sum(1 for a in ds.coco.anns.values() if not a["iscrowd"]) - 2


def test_box_slightly_outside_is_clipped(copy_of: dict[str, Path]) -> None:
    path = copy_of["annotations"]
    target_id: list[int] = []

    def edit(data: dict) -> None:
        (ann,) = _first_plain_annotations(data, 1)
        ann["bbox"] = [-3.0, -2.0, 20.0, 10.0]
        target_id.append(ann["image_id"])

    _rewrite(path, edit)
    ds = CocoDetection(copy_of["images"], path, train=False)
    _, target = ds[ds.image_ids.index(target_id[0])]
    assert [0.0, 0.0, 17.0, 8.0] in target["boxes"].tolist()


def test_box_outside_the_image_names_the_annotation(copy_of: dict[str, Path]) -> None:
    path = copy_of["annotations"]
    ann_id: list[int] = []

    def edit(data: dict) -> None:
        (ann,) = _first_plain_annotations(data, 1)
        ann["bbox"] = [500.0, 10.0, 20.0, 10.0]
        ann_id.append(ann["id"])

    _rewrite(path, edit)
    with pytest.raises(MbtasksError, match=f"{path.name}: annotation {ann_id[0]} has a box .* outside"):
        CocoDetection(copy_of["images"], path, train=False)


def test_unknown_category_names_the_annotation(copy_of: dict[str, Path]) -> None:
    path = copy_of["annotations"]
    ann_id: list[int] = []

    def edit(data: dict) -> None:
        data["annotations"][4]["category_id"] = 2
        ann_id.append(data["annotations"][4]["id"])

    _rewrite(path, edit)
    with pytest.raises(MbtasksError, match=f"{path.name}: annotation {ann_id[0]} has unknown category id 2"):
        CocoDetection(copy_of["images"], path, train=False)


@pytest.mark.parametrize(
    "content, problem",
    [
        ('{"images": [], "categories": []}', "not a COCO annotation file: no 'annotations'"),
        ("[1, 2, 3]", "not a COCO annotation file"),
        ('{"images": [], "annotations": [], "categories": [{"id": 1}]}', "categories\\[0\\] lacks"),
        ("this is not json {", "not a JSON file"),
    ],
)
def test_file_that_is_not_coco_is_named(copy_of: dict[str, Path], content: str, problem: str) -> None:
    path = copy_of["annotations"]
    path.write_text(content)
    with pytest.raises(MbtasksError, match=f"{path.name}: {problem}"):
        CocoDetection(copy_of["images"], path, train=False)


def test_missing_annotation_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(MbtasksError, match="nowhere.json: annotation file not found"):
        CocoDetection(tmp_path, tmp_path / "nowhere.json", train=False)
