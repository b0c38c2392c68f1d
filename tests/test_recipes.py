"""Every packaged recipe runs: its data module on a small fixture in its data set's real format, its model, one
training step and one validation step, on this CPU instead of the recipe's GPUs. And a detector's classes come
from its data, except weights that label by COCO category id, which keep theirs through an explicit label map."""

from pathlib import Path

import pytest
import torch
from helpers import coco_category_names, write_coco_folder, write_voc_folder
from photo_sets import write_folder_photos, write_yolo_photos

from mbtasks.cli import main
from mbtasks.config import load_config
from mbtasks.datasets.coco import CocoDetection
from mbtasks.datasets.synthetic.faces import write_celeba_faces, write_lfw_identities, write_shape_imagefolder
from mbtasks.datasets.synthetic.streets_cityscapes import write_streets_cityscapes
from mbtasks.io.records import RECORD_KEY, Record, save_weights
from mbtasks.models import MODELS, build_model
from mbtasks.recipe_files import recipe_listing

CONFIGS = Path(__file__).resolve().parents[1] / "mbtasks" / "recipes"
# A base (settings other recipes share, no model of its own) runs through the recipes that extend it.
RECIPES = [Path(entry.path) for entry in recipe_listing() if not entry.is_base]
COCO_IDS = [i for i, name in enumerate(coco_category_names()) if i and name != "N/A"]
ON_THIS_CPU = [
    "data.batch_size=2",
    "data.val_batch_size=2",
    "data.num_workers=0",
    "train.epochs=1",
    "train.accelerator=cpu",
    "train.devices=1",
    "train.strategy=auto",
    "train.num_nodes=1",
    "train.limit_train_batches=1",
    "train.limit_val_batches=1",
    "train.progress_bar=false",
]


def _write_data(kind: str, root: Path) -> Path:
    """A small data set in the real layout of `kind`; returns its data.root."""
    if kind == "coco":
        return write_coco_folder(root)
    if kind == "cityscapes":
        write_streets_cityscapes(root, seed=0, num_train=2, num_val=2, size=(256, 512))
    elif kind == "voc":
        write_voc_folder(root / "VOC2012", count=6, size=(120, 160))
    elif kind == "folder":
        write_folder_photos(root)
    elif kind == "yolo":
        write_yolo_photos(root)
    elif kind == "celeba":
        write_celeba_faces(root, seed=0, num_images=20)
    elif kind == "lfw":
        write_lfw_identities(
            root,
            seed=0,
            num_identities=4,
            images_per_identity=3,
            num_pair_identities=20,
            pair_images_per_identity=3,
            matched_per_fold=2,
            size=(125, 125),
        )
    elif kind == "imagefolder":
        write_shape_imagefolder(root, seed=0, num_classes=3, train_per_class=2, val_per_class=2, size=64)
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """kind -> a data root of that kind, written on first use."""
    written: dict[str, Path] = {}

    def root_of(kind: str) -> Path:
        if kind not in written:
            written[kind] = _write_data(kind, tmp_path_factory.mktemp(kind))
        return written[kind]

    return root_of


def _kind(config) -> str:
    if config.data.format:
        return config.data.format
    if config.task == "seg":
        return "voc" if "voc" in str(config.data.root).lower() else "cityscapes"
    return {"det": "coco", "attr": "celeba", "embed": "lfw", "cls": "imagefolder"}[config.task]


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory) -> Path:
    """An ImageNet-style mobilenet_v1 weights file, as the face recipes start from (random weights)."""
    path = tmp_path_factory.mktemp("weights") / "mobilenet_v1.pt"
    save_weights(
        path,
        Record(
            "mobilenet_v1",
            MODELS.get("mobilenet_v1").backbone,
            {"num_classes": 1000},
            state_dict=build_model("mobilenet_v1", num_classes=1000).state_dict(),
        ),
    )
    return path


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_recipe_trains_a_step_and_validates_on_its_data_format(
    recipe, data_root, backbone_file, tmp_path, capsys
):
    config = load_config(recipe)
    settings = [*ON_THIS_CPU, f"data.root={data_root(_kind(config))}", f"train.out_dir={tmp_path / 'run'}"]
    if config.model.backbone_weights:
        settings.append(f"model.backbone_weights={backbone_file}")
    assert main(["train", "--config", str(recipe), *(a for s in settings for a in ("--set", s))]) == 0, (
        capsys.readouterr().err
    )
    checkpoint = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 1
    record = checkpoint[RECORD_KEY]
    assert record["model"] == (
        config.model.name
        if config.task in ("det", "seg", "cls")
        else f"{'attributes' if config.task == 'attr' else 'embedding'}_{config.model.name}"
    )
    if _kind(config) == "coco":  # COCO's 80 categories + background, labelled 1..80 in id order
        assert record["options"]["num_classes"] == 81 and record["category_ids"] == [0, *COCO_IDS]


def _coco_id_weights(path: Path) -> Path:
    """Whole-model weights of a detector answering in COCO's 91 category ids (as torchvision's COCO weights)."""
    options = {"num_classes": 91, "width_mult": 0.5}
    model = build_model("ssdlite320_mobilenet_v3_small", **options)
    save_weights(
        path,
        Record(
            "ssdlite320_mobilenet_v3_small",
            "mobilenet_v3_small",
            options,
            class_names=coco_category_names(),
            category_ids=list(range(91)),
            state_dict=model.state_dict(),
        ),
    )
    return path


def test_weights_labelling_by_coco_category_id_train_and_evaluate_through_the_label_map(data_root, tmp_path, capsys):
    root = data_root("coco")
    val = CocoDetection(
        root / "val2017",
        root / "annotations/instances_val2017.json",
        train=False,
        num_classes=91,
        names_by_id=coco_category_names(),
    )
    image, target = val[0]
    ids = {a["category_id"] for a in val.coco.imgToAnns[val.image_ids[0]]}
    assert set(target["labels"].tolist()) == ids and 90 in ids  # label = COCO category id, 90 (toothbrush) included
    assert val.class_names == coco_category_names() and val.category_ids == list(range(91))

    weights = _coco_id_weights(tmp_path / "coco91.pt")
    recipe = CONFIGS / "det/ssdlite320_mobilenet_v3_small_coco.yaml"
    settings = [
        *ON_THIS_CPU,
        f"data.root={root}",
        f"model.weights={weights}",
        "data.size=128",
        f"train.out_dir={tmp_path / 'run'}",
    ]
    assert main(["train", "--config", str(recipe), *(a for s in settings for a in ("--set", s))]) == 0
    record = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)[RECORD_KEY]
    assert record["options"]["num_classes"] == 91 and record["category_ids"] == list(range(91))
    assert record["class_names"] == coco_category_names()
    capsys.readouterr()
    # evaluated without the weights file: the label map comes back from the checkpoint's recipe
    weights.unlink()
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run/checkpoints/last.ckpt")]) == 0
    assert "evaluated 2 images" in capsys.readouterr().out


def test_a_class_count_that_fits_neither_labelling_is_one_line_naming_both(data_root, tmp_path, capsys):
    recipe = CONFIGS / "det/ssdlite320_mobilenet_v3_small_coco.yaml"
    settings = [
        *ON_THIS_CPU,
        f"data.root={data_root('coco')}",
        "model.options={num_classes: 50}",
        f"train.out_dir={tmp_path / 'run'}",
    ]
    assert main(["train", "--config", str(recipe), *(a for s in settings for a in ("--set", s))]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "instances_val2017.json" in error
    assert "50 classes" in error and "(81)" in error and "90: 91" in error
    assert not (tmp_path / "run").exists()  # nothing written
