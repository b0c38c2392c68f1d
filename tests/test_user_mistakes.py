"""Every command, given a user's mistake, through the installed console script: exit 2, one line `mbtasks: error:
...` naming the problem, and every input file byte for byte as it was (real COCO and Cityscapes files, a real
checkpoint, a folder of the user's own files)."""

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from helpers import save_checkpoint, task_module, write_voc_folder
from PIL import Image

from mbtasks.cli import main
from mbtasks.datasets.synthetic.faces import write_shape_imagefolder
from mbtasks.datasets.synthetic.shapes_coco import write_shapes_coco
from mbtasks.datasets.synthetic.streets_cityscapes import write_streets_cityscapes
from mbtasks.datasets.synthetic.streets_folder import write_streets_folder
from mbtasks.io import images

MBTASKS = str(Path(sys.executable).with_name("mbtasks"))
# The detector the checkpoint holds, small and on the tiny COCO set; training cases add out_dir and their mistake.
DET = [
    "model.name=ssdlite320_mobilenet_v3_small",
    "model.options={width_mult: 0.25}",
    "data.size=64",
    "data.batch_size=2",
    "data.val_batch_size=2",
    "data.num_workers=0",
    "train.epochs=1",
    "train.accelerator=cpu",
    "train.progress_bar=false",
]
# A stand-in for an optional package that is not installed: importing it fails as a missing one does.
MISSING = 'raise ModuleNotFoundError("No module named {name!r}", name={name!r})\n'


def _sets(*settings: str) -> list[str]:
    return [a for s in settings for a in ("--set", s)]


# (what the one line must say, the command line); {in} is the inputs folder, {out} the case's own empty folder.
TRAIN = ["train", "--task", "det", *_sets(*DET, "data.root={in}/coco", "train.out_dir={out}/run")]
EVALUATE = ["evaluate", "--checkpoint", "{in}/det.ckpt", *_sets("train.progress_bar=false")]
CASES = {
    # profile
    "unknown_model": ("unknown model 'resnet50'; known: mobilenet_v1", ["profile", "--model", "resnet50"]),
    "width_zero": (
        "width_mult must be a positive number, got 0.0",
        ["profile", "--model", "mobilenet_v1", "--width", "0", "--runs", "1"],
    ),
    "width_not_a_number": ("argument --width: invalid float value: 'wide'", ["profile", "--width", "wide"]),
    "resolution_zero": (
        "argument --resolution: resolution must be N or HxW (positive integers), got '0'",
        ["profile", "--model", "mobilenet_v1", "--resolution", "0"],
    ),
    "resolution_negative_width": (
        "resolution must be N or HxW (positive integers), got '224x-5'",
        ["profile", "--model", "mobilenet_v1", "--resolution", "224x-5"],
    ),
    "runs_zero": (
        "argument --runs: must be an integer of at least 1, got '0'",
        ["profile", "--model", "mobilenet_v1", "--runs", "0"],
    ),
    # weights import
    "import_text_file": (
        "{in}/user/notes.txt: not a PyTorch weights file",
        [
            "weights",
            "import",
            "--from",
            "torchvision",
            "{in}/user/notes.txt",
            "--model",
            "mobilenet_v2",
            "--out",
            "{out}/w.pth",
        ],
    ),
    "import_out_under_a_file": (
        "{in}/plain.txt: is a file, not a folder to write into",
        [
            "weights",
            "import",
            "--from",
            "torchvision",
            "{in}/det.ckpt",
            "--model",
            "mobilenet_v2",
            "--out",
            "{in}/plain.txt/w.pth",
        ],
    ),
    "import_unknown_source": (
        "argument --from: invalid choice: 'caffe'",
        ["weights", "import", "--from", "caffe", "{in}/det.ckpt", "--model", "mobilenet_v2", "--out", "{out}/w.pth"],
    ),
    # train: values out of range
    "batch_size_zero": ("data.batch_size must be at least 1, got 0", TRAIN + _sets("data.batch_size=0")),
    "size_zero": ("data.size must be a positive integer or [height, width], got 0", TRAIN + _sets("data.size=0")),
    "size_pair_with_zero": (
        "data.size must be a positive integer or [height, width], got [0, 64]",
        TRAIN + _sets("data.size=[0, 64]"),
    ),
    "epochs_negative": ("train.epochs must be at least 1, got -1", TRAIN + _sets("train.epochs=-1")),
    "lr_zero": ("train.lr must be above 0, got 0", TRAIN + _sets("train.lr=0")),
    # train: Lightning's own refusals
    "devices_zero": (
        "train.devices must be auto, a number of devices (-1: all of them) or a list of device indices, got 0",
        TRAIN + _sets("train.devices=0"),
    ),
    "devices_more_than_cpus": (
        f"starts {(os.cpu_count() or 1) + 1} processes on this machine",
        TRAIN + _sets(f"train.devices={(os.cpu_count() or 1) + 1}"),
    ),
    # train: files and folders
    "synth_dir_of_user_files": (
        "{in}/user: holds files but no mbtasks_synth.json",
        TRAIN + _sets("data.root=null", "data.synth_dir={in}/user"),
    ),
    "out_dir_of_an_earlier_run": (
        "{in}/oldrun: holds checkpoints of an earlier run (best.ckpt, last.ckpt)",
        TRAIN + _sets("train.out_dir={in}/oldrun"),
    ),
    "config_not_a_mapping": (
        "{in}/user/notes.txt: a config must be a YAML mapping",
        ["train", "--config", "{in}/user/notes.txt"],
    ),
    "config_unknown_key": ("unknown key train.lrr (did you mean train.lr?)", TRAIN + _sets("train.lrr=1")),
    # evaluate
    "checkpoint_not_torch": (
        "{in}/user/notes.txt: not a PyTorch weights file",
        ["evaluate", "--checkpoint", "{in}/user/notes.txt"],
    ),
    "checkpoint_of_another_task": (
        "{in}/det.ckpt: is a checkpoint of a det model, not seg",
        EVALUATE + ["--task", "seg"],
    ),
    "json_under_a_file": (
        "{in}/plain.txt: is a file, not a folder to write into",
        EVALUATE + ["--json", "{in}/plain.txt/m.json"],
    ),
    "scales_zero": (
        "argument --scales: must be positive numbers separated by commas, got '0,1'",
        EVALUATE + ["--scales", "0,1"],
    ),
    "scales_not_numbers": (
        "argument --scales: must be positive numbers separated by commas, got '1,big'",
        EVALUATE + ["--scales", "1,big"],
    ),
    "val_batch_size_zero": ("data.val_batch_size must be at least 1, got 0", EVALUATE + _sets("data.val_batch_size=0")),
    "detections_not_results": (
        "{in}/user/data.json: not a COCO results file",
        [
            "evaluate",
            "--task",
            "det",
            "--annotations",
            "{in}/coco/annotations/instances_val2017.json",
            "--detections",
            "{in}/user/data.json",
        ],
    ),
    "coco_backend_unknown": (
        "fast: unknown COCO evaluation backend; valid backends: faster-coco-eval, pycocotools",
        [
            "evaluate",
            "--task",
            "det",
            "--annotations",
            "{in}/coco/annotations/instances_val2017.json",
            "--detections",
            "{in}/coco/annotations/instances_val2017.json",
            "--coco-backend",
            "fast",
        ],
    ),
    "coco_backend_unknown_before_the_model_runs": (
        "pycocotool: unknown COCO evaluation backend",
        EVALUATE + ["--coco-backend", "pycocotool"],
    ),
    "annotations_not_coco": (
        "not a COCO annotation file",
        ["evaluate", "--task", "det", "--annotations", "{in}/user/data.json", "--detections", "{in}/user/data.json"],
    ),
    "gt_without_cityscapes": (
        "{in}/user: in no segmentation format known (cityscapes: leftImg8bit/ and gtFine/; voc: ",
        ["evaluate", "--task", "seg", "--gt", "{in}/user", "--predictions", "{in}/cityscapes/gtFine/val"],
    ),
    # export
    "calibration_zero": (
        "argument --calibration: must be an integer of at least 1, got '0'",
        ["export", "--checkpoint", "{in}/det.ckpt", "--out", "{out}/x.onnx", "--int8", "--calibration", "0"],
    ),
    "samples_zero": (
        "argument --samples: must be an integer of at least 1, got '0'",
        ["export", "--checkpoint", "{in}/det.ckpt", "--out", "{out}/x.onnx", "--samples", "0"],
    ),
    "export_not_a_checkpoint": (
        "instances_val2017.json: not a PyTorch weights file",
        ["export", "--checkpoint", "{in}/coco/annotations/instances_val2017.json", "--out", "{out}/x.onnx"],
    ),
    "export_onnx_not_installed": (
        "needs the Python package 'onnx', which is not installed here: pip install 'mbtasks[export]'",
        ["export", "--checkpoint", "{in}/det.ckpt", "--out", "{out}/x.onnx"],
    ),
    # predict
    "predict_not_an_image": (
        "{in}/user/notes.txt: cannot decode image",
        ["predict", "--checkpoint", "{in}/det.ckpt", "{in}/user/notes.txt", "--out", "{out}/p", "--strict"],
    ),
    "score_threshold": (
        "argument --score-threshold: must be a number from 0 to 1, got '2'",
        [
            "predict",
            "--checkpoint",
            "{in}/det.ckpt",
            "{in}/user/photo.png",
            "--out",
            "{out}/p",
            "--score-threshold",
            "2",
        ],
    ),
    "score_threshold_negative": (
        "argument --score-threshold: must be a number from 0 to 1, got '-0.1'",
        [
            "predict",
            "--checkpoint",
            "{in}/det.ckpt",
            "{in}/user/photo.png",
            "--out",
            "{out}/p",
            "--score-threshold=-0.1",
        ],
    ),
    "predict_over_its_input": (
        "{in}/user/photo.png: its drawing would replace an input image",
        ["predict", "--checkpoint", "{in}/det.ckpt", "{in}/user/photo.png", "--out", "{in}/user"],
    ),
    # data synth
    "synth_into_user_files": (
        "{in}/user: holds files but no mbtasks_synth.json",
        ["data", "synth", "--task", "det", "--out", "{in}/user"],
    ),
    "synth_seed_negative": (
        "argument --seed: must be an integer of at least 0, got '-1'",
        ["data", "synth", "--task", "det", "--out", "{out}/s", "--seed", "-1"],
    ),
    # ablate
    "ablate_unknown_backbone": (
        "unknown backbone 'v9' in --backbones",
        ["ablate", "--task", "cls", "--profile-only", "--backbones", "v9", "--out", "{out}/a"],
    ),
    "ablate_runs_negative": (
        "argument --runs: must be an integer of at least 0, got '-1'",
        ["ablate", "--task", "cls", "--profile-only", "--runs", "-1", "--out", "{out}/a"],
    ),
    "momentum_above_1": ("train.momentum must be between 0 and 1, got 1.5", TRAIN + _sets("train.momentum=1.5")),
    "batch_size_not_whole": ("data.batch_size must be int, got 2.5", TRAIN + _sets("data.batch_size=2.5")),
    "size_of_one_side": (
        "data.size must be a positive integer or [height, width], got [64]",
        TRAIN + _sets("data.size=[64]"),
    ),
    "label_smoothing": (
        "train.label_smoothing must be between 0 and 1, got 2",
        TRAIN + _sets("train.label_smoothing=2"),
    ),
    "num_workers_negative": ("data.num_workers must be at least 0, got -1", TRAIN + _sets("data.num_workers=-1")),
    "seed_negative": ("train.seed must be between 0 and 4294967295, got -1", TRAIN + _sets("train.seed=-1")),
}
# More mistakes, run in this process through main(): each costs the console script seconds of imports.
MORE_CASES = {
    "output_stride": (
        "output_stride must be one of (8, 16, 32), got 7",
        ["profile", "--model", "mobilenet_v1", "--option", "output_stride=7", "--runs", "1"],
    ),
    "unknown_option": (
        "unknown option(s) for mobilenet_v1: depth",
        ["profile", "--model", "mobilenet_v1", "--option", "depth=3", "--runs", "1"],
    ),
    "strategy": (
        "train.strategy must be one of auto, ddp, deepspeed, fsdp, xla, ddp_spawn, ..., got 'warp'",
        TRAIN + _sets("train.strategy=warp"),
    ),
    "precision": (
        "train.precision must be one of 32-true, 16-mixed, bf16-mixed, 16-true, bf16-true, 64-true, "
        "transformer-engine, transformer-engine-float16, 32, 16, bf16, 64, got '13-mixed' (did you mean "
        "'16-mixed'?)",
        TRAIN + _sets("train.precision=13-mixed"),
    ),
    "width_negative_in_config": (
        "width_mult must be a positive number, got -0.5",
        TRAIN + _sets("model.options.width_mult=-0.5"),
    ),
    "synth_count_zero": (
        "data.synth.num_train must be a positive integer, got 0",
        TRAIN + _sets("data.root=null", "data.synth_dir={out}/synth", "data.synth.num_train=0"),
    ),
    "synth_unknown_option": (
        "data.synth: write_shapes_coco takes no option 'max_cars'",
        TRAIN + _sets("data.root=null", "data.synth_dir={out}/synth", "data.synth.max_cars=2"),
    ),
    "limit_batches": (
        "train.limit_train_batches must be a number of batches (0 or more) or a fraction of them from "
        "0.0 to 1.0, got -1",
        TRAIN + _sets("train.limit_train_batches=-1"),
    ),
    "root_missing": (
        "{in}/missing/annotations/instances_val2017.json: annotation file not found",
        TRAIN + _sets("data.root={in}/missing"),
    ),
    "out_dir_is_a_file": (
        "{in}/plain.txt: is a file, not a folder to write into",
        TRAIN + _sets("train.out_dir={in}/plain.txt"),
    ),
    "resume_from_a_text_file": (
        "{in}/user/notes.txt: not a PyTorch weights file",
        TRAIN + ["--resume", "{in}/user/notes.txt"],
    ),
    "unknown_task": (
        "unknown task 'pose'; known: det, seg, attr, embed, cls",
        ["train", "--task", "pose", *_sets("train.out_dir={out}/run")],
    ),
    "synth_unknown_task": ("unknown task 'pose'", ["data", "synth", "--task", "pose", "--out", "{out}/s"]),
    "ablate_width_negative": (
        "--widths must be positive numbers separated by commas, got '0.5,-1'",
        ["ablate", "--task", "cls", "--profile-only", "--widths", "0.5,-1", "--out", "{out}/a"],
    ),
    "ablate_out_is_a_file": (
        "{in}/plain.txt: is a file, not a folder to write into",
        ["ablate", "--task", "cls", "--profile-only", "--backbones", "v1", "--out", "{in}/plain.txt"],
    ),
    # an output file or folder of predictions that exists is the user's: replaced only with --overwrite
    "json_exists": (
        "{in}/user/data.json: exists: pass --overwrite to replace it, or choose another path",
        EVALUATE + ["--json", "{in}/user/data.json"],
    ),
    "export_out_exists": (
        "{in}/user/notes.txt: exists: pass --overwrite",
        ["export", "--checkpoint", "{in}/det.ckpt", "--out", "{in}/user/notes.txt"],
    ),
    "import_out_exists": (
        "{in}/user/notes.txt: exists: pass --overwrite",
        [
            "weights",
            "import",
            "--from",
            "torchvision",
            "{in}/det.ckpt",
            "--model",
            "mobilenet_v2",
            "--out",
            "{in}/user/notes.txt",
        ],
    ),
    "predict_over_an_earlier_run": (
        "{in}/earlier: holds 2 of the files this run would write (first: photo.png): "
        "pass --overwrite to replace them, or choose another --out",
        ["predict", "--checkpoint", "{in}/det.ckpt", "{in}/user/photo.png", "--out", "{in}/earlier"],
    ),
}
# Bad data, refused before the first step (datasets/file_checks.py, evaluation/coco.py), and checkpoints that cannot
# be read or resumed: in this process. {in}/bad/<name> is a copy of a data set with one fault (see _write_bad_data).
BAD = "{in}/bad/"
TRAIN_ON = [*TRAIN[:3], *_sets(*DET, "train.out_dir={out}/run")]
IMAGE_TRAIN = ["--set", "train.out_dir={out}/run", "--set", "data.num_workers=0", "--set", "train.accelerator=cpu"]
MORE_CASES |= {
    "duplicate_image_id": (
        "instances_train2017.json: images[0] and images[1] have the same id 1",
        TRAIN_ON + _sets(f"data.root={BAD}duplicate_image_id"),
    ),
    "duplicate_category_id": (
        "instances_train2017.json: categories[0] and categories[1] have the same id 1",
        TRAIN_ON + _sets(f"data.root={BAD}duplicate_category_id"),
    ),
    "category_without_id": (
        "instances_train2017.json: categories[0] lacks one of id, name",
        TRAIN_ON + _sets(f"data.root={BAD}category_without_id"),
    ),
    "duplicate_annotation_id_in_validation": (
        "instances_val2017.json: annotations[0] and annotations[1] have the same id",
        EVALUATE + _sets(f"data.root={BAD}duplicate_annotation_id"),
    ),
    "no_training_annotations": (
        "instances_train2017.json: has no annotations: nothing to train on",
        TRAIN_ON + _sets(f"data.root={BAD}no_training_annotations"),
    ),
    "no_validation_annotations": (
        "instances_val2017.json: has no annotations: nothing to score against",
        EVALUATE + _sets(f"data.root={BAD}no_validation_annotations"),
    ),
    "image_missing": (
        "train2017/000000000003.jpg: image file not found (image id 3)",
        TRAIN_ON + _sets(f"data.root={BAD}image_missing"),
    ),
    "image_of_another_size": (
        "train2017/000000000002.jpg: image is 64x59 but instances_train2017.json says 65x59 (image id 2)",
        TRAIN_ON + _sets(f"data.root={BAD}image_of_another_size"),
    ),
    "image_not_an_image": (
        "train2017/000000000004.jpg: cannot decode image",
        TRAIN_ON + _sets(f"data.root={BAD}image_not_an_image"),
    ),
    "image_empty_in_validation": (
        "val2017/000001000002.jpg: cannot decode image (empty file)",
        EVALUATE + _sets(f"data.root={BAD}image_empty"),
    ),
    "image_over_the_pixel_limit": (
        "over the limit of 1000 pixels: shrink it, or raise the limit (data.max_pixels",
        TRAIN + _sets("data.max_pixels=1000"),
    ),
    "max_pixels_zero": ("data.max_pixels must be at least 1, got 0", TRAIN + _sets("data.max_pixels=0")),
    "seg_mask_of_another_size": (
        "masks/train/northdale_000000_000019.png: mask is 32x16 but its image northdale_000000_000019.jpg is 64x32",
        ["train", "--task", "seg", *IMAGE_TRAIN, *_sets(f"data.root={BAD}folder_mask_size")],
    ),
    "cityscapes_label_of_another_size": (
        "_gtFine_labelIds.png: mask is 64x32 but its image",
        ["train", "--task", "seg", *IMAGE_TRAIN, *_sets(f"data.root={BAD}cityscapes_label_size")],
    ),
    "voc_image_missing_header": (
        "JPEGImages/2007_000001.jpg: cannot decode image",
        ["train", "--task", "seg", *IMAGE_TRAIN, *_sets(f"data.root={BAD}voc_bad_image")],
    ),
    "cls_image_not_an_image": (
        "cannot decode image",
        ["train", "--task", "cls", *IMAGE_TRAIN, *_sets(f"data.root={BAD}imagefolder_bad_image")],
    ),
    "predict_pixel_limit": (
        "{in}/user/photo.png: image of ",
        ["predict", "--checkpoint", "{in}/det.ckpt", "{in}/user/photo.png", "--out", "{out}/p", "--strict"]
        + ["--max-pixels", "100", "--workers", "0"],
    ),
    # checkpoints: empty, cut short, without training state, of another network
    "checkpoint_empty": ("{in}/empty.ckpt: is empty (0 bytes)", ["evaluate", "--checkpoint", "{in}/empty.ckpt"]),
    "checkpoint_truncated": (
        "{in}/truncated.ckpt: not a PyTorch weights file, or a truncated one",
        ["export", "--checkpoint", "{in}/truncated.ckpt", "--out", "{out}/x.onnx"],
    ),
    "resume_empty_checkpoint": ("{in}/empty.ckpt: is empty (0 bytes)", TRAIN + ["--resume", "{in}/empty.ckpt"]),
    "resume_weights_only": (
        "{in}/det.ckpt: holds weights but no training state to resume",
        TRAIN + ["--resume", "{in}/det.ckpt"],
    ),
    "resume_another_width": (
        "not of the network this run builds (ssdlite320_mobilenet_v3_small; backbone.extra.0.0.0.weight: "
        "(64, 96, 1, 1) in the file, (89, 96, 1, 1) here)",
        TRAIN + _sets("model.options={width_mult: 0.35}") + ["--resume", "{in}/resumable.ckpt"],
    ),
    "resume_another_model": (
        "not of the network this run builds (ssdlite320_mobilenet_v2;",
        TRAIN + _sets("model.name=ssdlite320_mobilenet_v2") + ["--resume", "{in}/resumable.ckpt"],
    ),
}
# Cases run with a package made unimportable, as if it were not installed.
BLOCKED = {"export_onnx_not_installed": "onnx"}


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Real files: a COCO set, a Cityscapes set, a detector's training checkpoint on the COCO set, an earlier run's
    checkpoints, a folder of the user's own files (notes, a JSON, a photo), an earlier predict's folder and a plain
    file."""
    root = tmp_path_factory.mktemp("inputs")
    write_shapes_coco(root / "coco", seed=1, num_train=4, num_val=3, image_size=64)
    write_streets_cityscapes(root / "cityscapes", seed=1, num_train=1, num_val=2, size=(64, 128))
    checkpoint = save_checkpoint(task_module("det", DET + [f"data.root={root / 'coco'}"]), root / "det.ckpt")
    (root / "oldrun" / "checkpoints").mkdir(parents=True)
    for name in ("best.ckpt", "last.ckpt"):
        shutil.copy(checkpoint, root / "oldrun" / "checkpoints" / name)
    user = root / "user"
    user.mkdir()
    (user / "notes.txt").write_text("my notes\n")
    (user / "data.json").write_text('{"experiment": 3, "values": [1, 2]}\n')
    Image.open(next((root / "coco" / "val2017").glob("*.jpg"))).save(user / "photo.png")
    (root / "earlier").mkdir()
    shutil.copy(user / "photo.png", root / "earlier" / "photo.png")  # stands for its drawing of the photo
    (root / "earlier" / "detections.json").write_text("[]\n")
    (root / "plain.txt").write_text("a file where a folder is expected\n")
    _write_bad_data(root)
    (root / "empty.ckpt").write_bytes(b"")
    (root / "truncated.ckpt").write_bytes(checkpoint.read_bytes()[:5000])
    # what `--resume` reads of a run's checkpoint besides the weights (its values are not reached)
    state = torch.load(checkpoint, weights_only=True)
    torch.save(
        {**state, "pytorch-lightning_version": "2", "optimizer_states": [], "loops": {}}, root / "resumable.ckpt"
    )
    for name, package in BLOCKED.items():
        (root / "blocked" / name / package).mkdir(parents=True)
        (root / "blocked" / name / package / "__init__.py").write_text(MISSING.format(name=package))
    return root


def _write_bad_data(root: Path) -> None:
    """Copies of the inputs' data sets, each with one fault, under root/bad/."""
    bad = root / "bad"

    def coco_copy(name: str, split: str, change) -> None:
        shutil.copytree(root / "coco", bad / name)
        path = bad / name / "annotations" / f"instances_{split}.json"
        values = json.loads(path.read_text())
        change(values)
        path.write_text(json.dumps(values))

    def same_id(key: str):
        return lambda values: values[key][1].update(id=values[key][0]["id"])

    coco_copy("duplicate_image_id", "train2017", same_id("images"))
    coco_copy("duplicate_category_id", "train2017", same_id("categories"))
    coco_copy("duplicate_annotation_id", "val2017", same_id("annotations"))
    coco_copy("category_without_id", "train2017", lambda values: values["categories"][0].pop("id"))
    coco_copy("no_training_annotations", "train2017", lambda values: values.update(annotations=[]))
    coco_copy("no_validation_annotations", "val2017", lambda values: values.update(annotations=[]))
    coco_copy("image_of_another_size", "train2017", lambda values: values["images"][1].update(width=65))
    for name, file, data in (
        ("image_missing", "train2017/000000000003.jpg", None),
        ("image_not_an_image", "train2017/000000000004.jpg", b"not a picture"),
        ("image_empty", "val2017/000001000002.jpg", b""),
    ):
        shutil.copytree(root / "coco", bad / name)
        if data is None:
            (bad / name / file).unlink()
        else:
            (bad / name / file).write_bytes(data)

    write_streets_folder(bad / "folder_mask_size", seed=1, num_train=2, num_val=1, size=(32, 64))
    mask = bad / "folder_mask_size" / "masks" / "train" / "northdale_000000_000019.png"
    Image.open(mask).resize((32, 16)).save(mask)
    shutil.copytree(root / "cityscapes", bad / "cityscapes_label_size")
    label = next((bad / "cityscapes_label_size" / "gtFine" / "train").rglob("*_labelIds.png"))
    Image.open(label).resize((64, 32)).save(label)
    write_voc_folder(bad / "voc_bad_image", count=6, size=(32, 48))
    (bad / "voc_bad_image" / "JPEGImages" / "2007_000001.jpg").write_bytes(b"\xff\xd8\xff")
    write_shape_imagefolder(bad / "imagefolder_bad_image", seed=1, num_classes=2, train_per_class=2, val_per_class=1)
    next((bad / "imagefolder_bad_image" / "val").rglob("*.png")).write_bytes(b"GIF89a")


def _command(command: list[str], root: Path, out: Path) -> list[str]:
    return [arg.replace("{in}", str(root)).replace("{out}", str(out)) for arg in command]


def _run(root: Path, scratch: Path, name: str) -> tuple[int, str]:
    out = scratch / name
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if name in BLOCKED:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root / "blocked" / name), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [MBTASKS, *_command(CASES[name][1], root, out)], capture_output=True, text=True, timeout=300, cwd=out, env=env
    )
    return result.returncode, result.stderr


def _command_name(command: list[str]) -> str:
    return command[0] if command[0] not in ("weights", "data") else " ".join(command[:2])


def _through_the_console() -> set[str]:
    """The cases the console script runs: the first of each command, and those that need another environment; the
    rest run in this process through the same entry point (most of a console run is starting Python and importing
    torch)."""
    first: dict[str, str] = {}
    for name, (_, command) in CASES.items():
        first.setdefault(_command_name(command), name)
    return {*first.values(), *BLOCKED}


THROUGH_THE_CONSOLE = _through_the_console()


def _run_in_process(root: Path, scratch: Path, name: str) -> tuple[int, str]:
    out = scratch / name
    out.mkdir()
    stderr, cwd = io.StringIO(), os.getcwd()
    os.chdir(out)
    try:
        with contextlib.redirect_stderr(stderr):
            code = main(_command(CASES[name][1], root, out))
    except SystemExit as exit:  # argparse's refusals exit, as from the console
        code = exit.code
    finally:
        os.chdir(cwd)
    return code, stderr.getvalue()


@pytest.fixture(scope="module")
def outcomes(inputs, tmp_path_factory) -> dict:
    """Every case run once (the console ones three at a time), with the inputs' digests taken before and after."""
    scratch = tmp_path_factory.mktemp("cases")
    before = _digest(inputs)
    console = [name for name in CASES if name in THROUGH_THE_CONSOLE]
    with ThreadPoolExecutor(3) as pool:
        results = dict(zip(console, pool.map(lambda name: _run(inputs, scratch, name), console)))
    results.update({name: _run_in_process(inputs, scratch, name) for name in CASES if name not in results})
    return {"cases": results, "before": before, "after": _digest(inputs)}


def _assert_one_line(code: int, stderr: str, expected: str) -> None:
    lines = stderr.strip().splitlines()
    assert code == 2, stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("mbtasks: error: "), stderr[-3000:]
    assert expected in lines[0], lines[0]


def test_there_are_at_least_70_cases_across_every_command():
    commands = {_command_name(command) for _, command in CASES.values()}
    assert (
        len(CASES) >= 40
        and len(CASES) + len(MORE_CASES) >= 70
        and {_command_name(CASES[name][1]) for name in THROUGH_THE_CONSOLE} == commands
    )
    assert commands == {"profile", "weights import", "train", "evaluate", "export", "predict", "data synth", "ablate"}


@pytest.mark.parametrize("name", list(CASES))
def test_mistake_is_one_line_and_exit_2(outcomes, inputs, name):
    code, stderr = outcomes["cases"][name]
    _assert_one_line(code, stderr, CASES[name][0].replace("{in}", str(inputs)))


def test_no_input_file_changed(outcomes):
    assert outcomes["after"] == outcomes["before"]


@pytest.mark.parametrize("name", list(MORE_CASES))
def test_more_mistakes_in_process(inputs, name, tmp_path, capsys, monkeypatch):
    expected, command = MORE_CASES[name]
    monkeypatch.setattr(images, "_max_pixels", images.max_pixels())  # a case's data.max_pixels ends with it
    before = _digest(inputs)
    code = main(_command(command, inputs, tmp_path))
    _assert_one_line(code, capsys.readouterr().err, expected.replace("{in}", str(inputs)))
    assert _digest(inputs) == before


def test_an_internal_error_keeps_its_traceback_and_exits_1(inputs, tmp_path):
    # A mistake of mbtasks itself, not of the user: an evaluator that is broken (here: made to raise).
    (tmp_path / "sitecustomize.py").write_text(
        "import mbtasks.evaluation.coco as coco\n"
        "def broken(*args, **kwargs):\n"
        "    raise RuntimeError('a bug')\n"
        "coco.coco_metrics = broken\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    annotations = str(inputs / "coco" / "annotations" / "instances_val2017.json")
    result = subprocess.run(
        [MBTASKS, "evaluate", "--task", "det", "--annotations", annotations, "--detections", annotations],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr and "RuntimeError: a bug" in result.stderr
