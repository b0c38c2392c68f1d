import filecmp
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mbtasks.datasets.celeba import CelebA, read_attribute_file
from mbtasks.datasets.image_transforms import eval_transform, train_transform
from mbtasks.datasets.imagefolder import ImageFolder
from mbtasks.datasets.lfw import LFWIdentities, LFWPairs, read_pairs
from mbtasks.datasets.synthetic.faces import (
    CELEBA_ATTRIBUTES,
    SHAPE_CLASSES,
    VISIBLE_ATTRIBUTES,
    write_celeba_faces,
    write_lfw_identities,
    write_shape_imagefolder,
)
from mbtasks.errors import MbtasksError
from mbtasks.io.images import read_rgb_image

LFW_OPTIONS = dict(
    num_identities=4, images_per_identity=3, num_pair_identities=20, pair_images_per_identity=3, matched_per_fold=2
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("image_data")
    write_celeba_faces(root / "celeba", seed=1, num_images=30)
    write_lfw_identities(root / "faces", seed=1, **LFW_OPTIONS)
    write_shape_imagefolder(root / "shapes", seed=1, num_classes=6, train_per_class=4, val_per_class=2, size=32)
    return root


def _copy(data: Path, name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(data / name, tmp_path / name))


def _edit_line(path: Path, number: int, edit) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = edit(lines[number - 1])
    path.write_text("\n".join(lines) + "\n")


# --- readers on generated data ------------------------------------------------------------------------


def test_celeba_splits_targets_and_names(data):
    splits = {split: CelebA(data / "celeba", split) for split in ("train", "val", "test", "all")}
    assert [len(splits[s]) for s in ("train", "val", "test", "all")] == [24, 3, 3, 30]
    train = splits["train"]
    assert train.attribute_names == CELEBA_ATTRIBUTES and set(VISIBLE_ATTRIBUTES) <= set(CELEBA_ATTRIBUTES)
    image, target = train[0]
    assert image.shape == (218, 178, 3) and image.dtype == np.uint8
    assert target.dtype == torch.float32 and target.shape == (40,)
    assert set(np.unique(train.targets)) <= {0.0, 1.0}
    _, files, values = read_attribute_file(data / "celeba" / "list_attr_celeba.txt")
    np.testing.assert_array_equal(splits["all"].targets, values)
    assert splits["test"].files == files[-3:]
    # Exactly one beard state, and hair colours exclusive: the drawn attributes stay consistent.
    a = {name: splits["all"].targets[:, i] for i, name in enumerate(CELEBA_ATTRIBUTES)}
    assert np.all((a["No_Beard"] == 1) == ((a["Goatee"] == 0) & (a["Mustache"] == 0)))
    assert np.all(a["Black_Hair"] + a["Blond_Hair"] + a["Brown_Hair"] + a["Gray_Hair"] + a["Bald"] <= 1)
    tensor, _ = CelebA(data / "celeba", "val", transform=eval_transform(64, crop_fraction=None))[0]
    assert tensor.shape == (3, 64, 64) and tensor.dtype == torch.float32


def test_lfw_pairs_and_identities(data):
    pairs = LFWPairs(data / "faces", transform=eval_transform(48))
    assert len(pairs) == 40
    assert pairs.same.sum() == 20 and list(np.bincount(pairs.folds)) == [4] * 10
    first, second, same, fold = pairs[0]
    assert first.shape == second.shape == (3, 48, 48) and same is True and fold == 0
    people_by_fold = [
        {p.name1 for p in pairs.pairs if p.fold == f} | {p.name2 for p in pairs.pairs if p.fold == f} for f in range(10)
    ]
    assert all(not (people_by_fold[f] & people_by_fold[g]) for f in range(10) for g in range(f))
    train = LFWIdentities(data / "faces" / "train", transform=train_transform(48, scale=(0.8, 1.0)))
    assert len(train) == 12 and train.identities == sorted(train.identities)
    assert sorted(set(train.targets)) == [0, 1, 2, 3]
    assert not set(train.identities) & set().union(*people_by_fold)
    image, identity = train[5]
    assert image.shape == (3, 48, 48) and identity == 1


def test_imagefolder_classes(data):
    train = ImageFolder(data / "shapes" / "train")
    assert train.classes == sorted(SHAPE_CLASSES[:6]) and len(train) == 24
    val = ImageFolder(data / "shapes" / "val", classes=train.classes)
    assert len(val) == 12 and val.targets == sorted(val.targets)
    image, label = val[3]
    assert image.shape == (32, 32, 3) and label == 1


@pytest.mark.parametrize(
    "writer, options",
    [
        (write_celeba_faces, dict(num_images=12)),
        (write_lfw_identities, LFW_OPTIONS),
        (write_shape_imagefolder, dict(num_classes=3, train_per_class=2, val_per_class=1, size=32)),
    ],
)
def test_synthetic_sets_reproduce_from_seed(tmp_path, writer, options):
    first, again, other = (
        writer(tmp_path / name, seed=seed, **options) for name, seed in (("a", 3), ("b", 3), ("c", 4))
    )
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    _, mismatch, errors = filecmp.cmpfiles(first, again, [str(f) for f in files], shallow=False)
    assert not mismatch and not errors
    _, mismatch, _ = filecmp.cmpfiles(first, other, [str(f) for f in files], shallow=False)
    assert mismatch


# --- bad input ----------------------------------------------------------------------------------------


def test_attribute_file_wrong_column_count(data, tmp_path):
    root = _copy(data, "celeba", tmp_path)
    _edit_line(root / "list_attr_celeba.txt", 7, lambda line: line.rsplit(" ", 1)[0])
    with pytest.raises(MbtasksError, match=r"list_attr_celeba\.txt: line 7: expected 41 columns, found 40"):
        CelebA(root)


def test_attribute_file_value_not_plus_minus_one(data, tmp_path):
    root = _copy(data, "celeba", tmp_path)
    _edit_line(root / "list_attr_celeba.txt", 4, lambda line: line[:-2] + " 0")
    with pytest.raises(MbtasksError, match=r"list_attr_celeba\.txt: line 4: value '0' for Young is not 1 or -1"):
        CelebA(root)


def test_attribute_file_count_disagrees(data, tmp_path):
    root = _copy(data, "celeba", tmp_path)
    _edit_line(root / "list_attr_celeba.txt", 1, lambda line: "31")
    with pytest.raises(MbtasksError, match=r"list_attr_celeba\.txt: line 1: count says 31 images, the file lists 30"):
        CelebA(root)


def test_partition_file_names_a_missing_image(data, tmp_path):
    root = _copy(data, "celeba", tmp_path)
    (root / "img_align_celeba" / "000005.jpg").unlink()
    with pytest.raises(MbtasksError, match=r"list_eval_partition\.txt: line 5: image '000005\.jpg' not found"):
        CelebA(root, "test")
    _edit_line(root / "list_eval_partition.txt", 2, lambda line: "999999.jpg 0")
    with pytest.raises(MbtasksError, match=r"list_eval_partition\.txt: line 2: .*not in list_attr_celeba\.txt"):
        CelebA(root)


def test_pairs_file_names_a_missing_person(data, tmp_path):
    root = _copy(data, "faces", tmp_path)
    _edit_line(root / "pairs.txt", 4, lambda line: "\t".join(["Nobody", *line.split("\t")[1:]]))
    with pytest.raises(MbtasksError, match=r"pairs\.txt: line 4: no person 'Nobody'"):
        LFWPairs(root)


def test_pairs_file_names_a_missing_image(data, tmp_path):
    root = _copy(data, "faces", tmp_path)
    _edit_line(root / "pairs.txt", 2, lambda line: line.rsplit("\t", 1)[0] + "\t9")
    with pytest.raises(MbtasksError, match=r"pairs\.txt: line 2: no image Test_Person_\d+/Test_Person_\d+_0009\.jpg"):
        LFWPairs(root)


def test_pairs_file_malformed_lines(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("1 2\nA 1 2\nB 1 C 2\nA 1 B 2\nC 1 D 2\n")
    with pytest.raises(MbtasksError, match=r"line 3: expected 'name i j', found 4 columns"):
        read_pairs(path)
    path.write_text("1 1\nA 1 x\nB 1 C 2\n")
    with pytest.raises(MbtasksError, match=r"line 2: image number 'x' is not a positive integer"):
        read_pairs(path)
    path.write_text("10 300\nA 1 2\nB 1 C 2\n")
    with pytest.raises(MbtasksError, match=r"line 1: header promises 10 folds of 2 x 300 pairs"):
        read_pairs(path)


def test_pairs_file_variants(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("2\nA 1 2\nB 3 4\nA 1 B 2\nC 1 D 2\n")  # pairsDevTrain.txt style: one fold
    assert [(p.same, p.fold) for p in read_pairs(path)] == [(True, 0), (True, 0), (False, 0), (False, 0)]
    lines = [f"P{k} 1 2" if k % 2 else f"P{k} 1 Q{k} 2" for k in range(20)]
    path.write_text("\n".join(lines) + "\n")  # no header: 10 folds in file order
    pairs = read_pairs(path)
    assert [p.fold for p in pairs] == [k // 2 for k in range(20)]
    assert [p.same for p in pairs] == [bool(k % 2) for k in range(20)]
    assert (pairs[0].name2, pairs[0].number2, pairs[1].name2) == ("Q0", 2, "P1")


def test_imagefolder_empty_class_and_corrupt_image(data, tmp_path):
    root = _copy(data, "shapes", tmp_path)
    (root / "train" / "empty").mkdir()
    with pytest.raises(MbtasksError, match=r"empty: class folder has no images"):
        ImageFolder(root / "train")
    with pytest.raises(MbtasksError, match=r"no folder for class 'empty'"):
        ImageFolder(root / "val", classes=sorted([*SHAPE_CLASSES[:6], "empty"]))
    (root / "train" / "empty").rmdir()
    bad = root / "train" / "circle" / "circle_0000.png"
    bad.write_bytes(b"not an image")
    dataset = ImageFolder(root / "train")
    with pytest.raises(MbtasksError, match=r"circle_0000\.png: cannot decode image"):
        dataset[0]


def test_transforms_output(data):
    image = read_rgb_image(data / "celeba" / "img_align_celeba" / "000001.jpg")
    for transform in (
        train_transform(64),
        train_transform((64, 48), hflip=False, color_jitter=0),
        eval_transform(64),
        eval_transform((64, 48), crop_fraction=None),
    ):
        out = transform(image=image)["image"]
        assert out.dtype == torch.float32 and out.shape[0] == 3 and out.shape[1] == 64
    flat = np.full((80, 80, 3), (124, 116, 104), np.uint8)  # the ImageNet mean colour
    assert eval_transform(32)(image=flat)["image"].abs().max() < 0.02
