"""The segmentation task end to end on tiny embedded street scenes: train, evaluate, save and score
predictions, DDP, VOC data, configs, and one-line errors for bad prediction folders."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import evaluate_with_one_and_two_processes, write_voc_folder
from PIL import Image

from mbtasks.cli import main
from mbtasks.config import load_config
from mbtasks.datasets.synthetic import SYNTH_MARKER, write_synthetic_once
from mbtasks.datasets.synthetic.streets_cityscapes import write_streets_cityscapes
from mbtasks.errors import MbtasksError
from mbtasks.tasks.segmentation import SegmentationDataModule, SegmentationTask

CONFIGS = Path(__file__).resolve().parents[1] / "mbtasks" / "recipes"
MEANS = ("mean_class_iou", "mean_class_iiou", "mean_category_iou", "mean_category_iiou")


def _args(command: list[str], settings: list[str]) -> list[str]:
    return command + [a for s in settings for a in ("--set", s)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One epoch of training on 8 street scenes (5 for validation) at 64x128; returns the run folder and settings."""
    root = tmp_path_factory.mktemp("seg")
    write_streets_cityscapes(root / "data", seed=1, num_train=8, num_val=5, size=(64, 128))
    settings = [
        f"data.root={root / 'data'}",
        "model.name=lraspp_mobilenet_v3_small",
        "model.options={width_mult: 0.5}",
        "data.size=[64, 128]",
        "data.batch_size=4",
        "data.val_batch_size=2",
        "data.num_workers=0",
        "train.epochs=1",
        "train.accelerator=cpu",
        "train.progress_bar=false",
        "train.optimizer=adamw",
        "train.lr=0.001",
        "train.schedule=poly",
        "train.log_every=1",
        f"train.out_dir={root / 'run'}",
    ]
    assert main(_args(["train", "--task", "seg"], settings)) == 0
    return root, settings


def test_training_writes_checkpoints_and_logs(run):
    root, _ = run
    assert (root / "run/checkpoints/last.ckpt").is_file() and (root / "run/checkpoints/best.ckpt").is_file()
    metrics = (root / "run/logs/version_0/metrics.csv").read_text()
    assert "val/mIoU" in metrics and "val/iIoU" in metrics and "train/loss" in metrics
    assert any((root / "run/tensorboard").rglob("events.out.tfevents.*"))
    record = torch.load(root / "run/checkpoints/last.ckpt", weights_only=True)["mbtasks"]
    assert record["task"] == "seg" and record["backbone"] == "mobilenet_v3_small" and record["category_ids"] == []
    assert record["options"] == {"width_mult": 0.5, "num_classes": 19}
    assert record["class_names"][:2] == ["road", "sidewalk"]


def test_evaluate_prints_the_official_table_and_saved_predictions_score_the_same(run, tmp_path, capsys):
    root, _ = run
    checkpoint, predictions = str(root / "run/checkpoints/best.ckpt"), tmp_path / "pred"
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                checkpoint,
                "--save-predictions",
                str(predictions),
                "--json",
                str(tmp_path / "model.json"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "evaluated 5 images" in printed and printed.count("Score Average") == 2
    assert "classes          IoU      nIoU" in printed and "categories       IoU      nIoU" in printed
    from_model = json.loads((tmp_path / "model.json").read_text())
    assert set(MEANS) <= set(from_model) and len(from_model["class_iou"]) == 19

    label_pngs = sorted((predictions / "labelIds").rglob("*.png"))
    assert len(label_pngs) == 5 and len(list((predictions / "color").rglob("*.png"))) == 5
    image = Image.open(label_pngs[0])
    assert image.mode == "L" and image.size == (128, 64)
    assert Image.open(sorted((predictions / "color").rglob("*.png"))[0]).mode == "RGB"

    assert (
        main(
            [
                "evaluate",
                "--task",
                "seg",
                "--gt",
                str(root / "data"),
                "--predictions",
                str(predictions / "labelIds"),
                "--json",
                str(tmp_path / "files.json"),
            ]
        )
        == 0
    )
    from_files = json.loads((tmp_path / "files.json").read_text())
    assert from_files == from_model

    capsys.readouterr()  # a second run into the same folder would replace them: refused before the model runs
    assert main(["evaluate", "--checkpoint", checkpoint, "--save-predictions", str(predictions)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"mbtasks: error: {predictions}: holds 10 files where this run writes its predictions (first: "
        f"{label_pngs[0].relative_to(predictions)}): pass --overwrite to replace them, or choose another "
        "--save-predictions folder"
    ]


def test_multi_scale_and_flip_inference(run, tmp_path, capsys):
    root, _ = run
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(root / "run/checkpoints/best.ckpt"),
                "--scales",
                "0.75,1.25",
                "--flip",
                "--json",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    assert "evaluated 5 images" in capsys.readouterr().out
    assert set(MEANS) <= set(json.loads((tmp_path / "m.json").read_text()))


def test_two_processes_give_the_same_miou_as_one(run, tmp_path):
    root, _ = run
    figures = evaluate_with_one_and_two_processes(root / "run/checkpoints/best.ckpt", tmp_path, 1, 5)
    assert figures[0] == figures[1]


def test_voc_data_gets_miou(tmp_path, capsys):
    write_voc_folder(tmp_path / "VOC2012")
    settings = [
        f"data.root={tmp_path}",
        "model.name=deeplabv3_mobilenet_v2",
        "model.options={width_mult: 0.35}",
        "data.size=[48, 64]",
        "data.batch_size=2",
        "data.val_batch_size=2",
        "data.num_workers=0",
        "train.epochs=1",
        "train.accelerator=cpu",
        "train.progress_bar=false",
        "train.schedule=poly",
        "train.log_every=1",
        f"train.out_dir={tmp_path / 'run'}",
    ]
    assert main(_args(["train", "--task", "seg"], settings)) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(tmp_path / "run/checkpoints/last.ckpt"),
                "--save-predictions",
                str(tmp_path / "pred"),
                "--json",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "evaluated 2 images" in printed and "mIoU" in printed and "aeroplane" in printed
    figures = json.loads((tmp_path / "m.json").read_text())
    assert {"iou", "mean_iou", "pixel_accuracy"} <= set(figures) and len(figures["iou"]) == 21
    saved = sorted((tmp_path / "pred").glob("*.png"))
    assert [p.stem for p in saved] == ["2007_000004", "2007_000005"] and Image.open(saved[0]).mode == "P"
    saved[0].write_bytes(b"stale")
    command = [
        "evaluate",
        "--checkpoint",
        str(tmp_path / "run/checkpoints/last.ckpt"),
        "--save-predictions",
        str(tmp_path / "pred"),
    ]
    assert main(command) == 2
    refusal = capsys.readouterr().err
    assert "pred: holds 2 files where this run writes its predictions (first: 2007_000004.png)" in refusal
    assert saved[0].read_bytes() == b"stale"
    assert main([*command, "--overwrite"]) == 0  # replaced, and no temporary left
    assert Image.open(saved[0]).mode == "P" and sorted((tmp_path / "pred").iterdir()) == saved


def test_synthetic_set_is_written_once_and_a_folder_it_did_not_write_is_left_alone(tmp_path):
    out, options = tmp_path / "streets", {"seed": 0, "num_train": 2, "num_val": 1, "size": [32, 64]}
    (out / "leftImg8bit" / "train").mkdir(parents=True)
    (out / "leftImg8bit" / "train" / "mine.png").write_bytes(b"the user's file")  # no marker: not ours
    with pytest.raises(MbtasksError, match="no mbtasks_synth.json"):
        write_synthetic_once(out, write_streets_cityscapes, options)
    assert (out / "leftImg8bit" / "train" / "mine.png").read_bytes() == b"the user's file"
    out = tmp_path / "empty"
    out.mkdir()  # an empty folder is written into
    write_synthetic_once(out, write_streets_cityscapes, options)
    assert (out / SYNTH_MARKER).is_file() and len(list((out / "leftImg8bit").rglob("*.png"))) == 3
    marker_time = (out / SYNTH_MARKER).stat().st_mtime_ns
    write_synthetic_once(out, write_streets_cityscapes, options)
    assert (out / SYNTH_MARKER).stat().st_mtime_ns == marker_time  # complete: left alone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "streets"]  # no staging folders left behind


SEG_CONFIGS = sorted((CONFIGS / "seg").glob("*.yaml")) + [CONFIGS / "demo/seg_cityscapes_synth.yaml"]


@pytest.mark.parametrize("path", SEG_CONFIGS, ids=lambda p: p.name)
def test_configs_build_their_models(path):
    config = load_config(path)
    assert config.task == "seg" and config.train.schedule == "poly"
    classes = 21 if "voc" in path.name else 19
    task = SegmentationTask(config.to_dict(), [str(i) for i in range(classes)], [])
    with torch.no_grad():
        assert task.model.eval()(torch.zeros(1, 3, 64, 96))["out"].shape == (1, classes, 64, 96)
    if config.data.root is None:
        assert SegmentationDataModule(config).format.name == "cityscapes" == config.data.format


# ---- scoring a prediction folder with bad input: one line naming the file, exit 2 ----


def _case(tmp_path: Path, pred) -> tuple[Path, Path, Path, Path]:
    """One val image of 'testcity' and its prediction (array, or None for no file)."""
    gt = np.full((8, 16), 7, np.uint8)
    gt[4:, 10:] = 26
    instances = gt.astype(np.uint16)
    instances[4:, 10:] = 26000
    gt_dir, pred_dir = tmp_path / "cs/gtFine/val/testcity", tmp_path / "pred"
    gt_dir.mkdir(parents=True)
    pred_dir.mkdir()
    gt_file = gt_dir / "testcity_000000_000019_gtFine_labelIds.png"
    Image.fromarray(gt).save(gt_file)
    Image.fromarray(instances).save(str(gt_file).replace("labelIds", "instanceIds"))
    pred_file = pred_dir / "testcity_000000_000019_leftImg8bit.png"
    if pred is not None:
        Image.fromarray(pred).save(pred_file)
    return tmp_path / "cs", pred_dir, pred_file, gt_file


def _corrupt(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _remove_instance_ids(path: Path) -> None:
    os.remove(str(path).replace("labelIds", "instanceIds"))


ok = np.full((8, 16), 7, np.uint8)
unknown_id = ok.copy()
unknown_id[2, 3] = 40
BAD_INPUTS = {
    # name: (prediction, damage to apply (to the prediction file, or the gt file), file named, problem)
    "another size": (np.full((4, 8), 7, np.uint8), None, "pred", "prediction is 4x8 but its ground truth"),
    "unknown label id": (unknown_id, None, "pred", "unknown label id 40"),
    "missing ground truth": (ok, ("gt", _remove_instance_ids), "instances", "file not found"),
    "rgb png": (np.full((8, 16, 3), 7, np.uint8), None, "pred", "RGB PNG where a label PNG belongs"),
    "corrupt png": (ok, ("pred", _corrupt), "pred", "corrupt PNG"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_scoring_bad_predictions_is_a_one_line_error(tmp_path, capsys, name):
    pred, damage, named, problem = BAD_INPUTS[name]
    gt_root, pred_dir, pred_file, gt_file = _case(tmp_path, pred)
    if damage:
        damage[1](pred_file if damage[0] == "pred" else gt_file)
    assert main(["evaluate", "--task", "seg", "--gt", str(gt_root), "--predictions", str(pred_dir)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mbtasks: error: "), captured.err
    file = {"pred": pred_file, "gt": gt_file, "instances": Path(str(gt_file).replace("labelIds", "instanceIds"))}[named]
    assert str(file) in lines[0] and problem in lines[0], lines[0]


def test_scoring_without_a_ground_truth_folder_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "pred").mkdir()
    assert (
        main(["evaluate", "--task", "seg", "--gt", str(tmp_path / "nothing"), "--predictions", str(tmp_path / "pred")])
        == 2
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mbtasks: error: ") and "no ground truth found" in lines[0]
