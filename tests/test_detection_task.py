"""The detection task end to end on a tiny embedded data set: train, evaluate, DDP, predict, errors."""

import json
import shutil

import pytest
from helpers import evaluate_with_one_and_two_processes, spy_on_coco_backends

from mbtasks.cli import main
from mbtasks.datasets.synthetic.shapes_coco import write_shapes_coco


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One epoch of training on 24 images; returns the run folder and the settings used."""
    root = tmp_path_factory.mktemp("det")
    write_shapes_coco(root / "data", seed=1, num_train=24, num_val=9, image_size=128)
    settings = [
        f"data.root={root / 'data'}",
        "model.name=ssdlite320_mobilenet_v3_small",
        "model.options={width_mult: 0.5}",
        "data.size=128",
        "data.batch_size=8",
        "data.val_batch_size=2",
        "data.num_workers=0",
        "train.epochs=1",
        "train.accelerator=cpu",
        "train.progress_bar=false",
        "train.optimizer=adamw",
        "train.lr=0.001",
        "train.log_every=1",
        f"train.out_dir={root / 'run'}",
    ]
    args = ["train", "--task", "det"] + [a for s in settings for a in ("--set", s)]
    assert main(args) == 0
    return root, settings


def test_training_writes_checkpoints_and_logs(run):
    root, _ = run
    assert (root / "run/checkpoints/last.ckpt").is_file() and (root / "run/checkpoints/best.ckpt").is_file()
    metrics = (root / "run/logs/version_0/metrics.csv").read_text()
    assert "val/mAP" in metrics and "train/loss" in metrics
    assert any((root / "run/tensorboard").rglob("events.out.tfevents.*"))


def test_backbone_loads_from_a_detection_checkpoint(run):
    import torch

    from mbtasks import build_backbone

    root, _ = run
    checkpoint = root / "run/checkpoints/last.ckpt"
    backbone = build_backbone("mobilenet_v3_small", weights=checkpoint, reduced_tail=True)
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    stem = next(k for k in state if k.endswith("layers.0.0.weight"))
    assert torch.equal(backbone.state_dict()["layers.0.0.weight"], state[stem])


def test_evaluate_checkpoint_prints_12_figures(run, tmp_path, capsys):
    root, _ = run
    out = tmp_path / "figures" / "m.json"  # its folder is created
    assert main(["evaluate", "--checkpoint", str(root / "run/checkpoints/best.ckpt"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "evaluated 9 images" in printed and printed.count("Average Precision") == 6
    assert len(json.loads(out.read_text())) == 12


def test_evaluate_checkpoint_with_either_coco_backend(run, tmp_path, monkeypatch):
    root, _ = run
    calls = spy_on_coco_backends(monkeypatch)
    figures = {}
    for backend in ("pycocotools", "faster-coco-eval"):
        out = tmp_path / f"{backend}.json"
        assert (
            main(
                [
                    "evaluate",
                    "--checkpoint",
                    str(root / "run/checkpoints/best.ckpt"),
                    "--coco-backend",
                    backend,
                    "--json",
                    str(out),
                ]
            )
            == 0
        )
        figures[backend] = json.loads(out.read_text())
    assert calls == ["pycocotools", "faster-coco-eval"]
    assert figures["faster-coco-eval"] == pytest.approx(figures["pycocotools"], abs=1e-12, rel=0)


def test_a_second_train_into_the_same_out_dir_needs_overwrite(run, tmp_path, capsys):
    root, settings = run
    out = tmp_path / "run"
    shutil.copytree(root / "run", out)
    before = {p: p.read_bytes() for p in (out / "checkpoints").iterdir()}
    args = ["train", "--task", "det"] + [a for s in settings + [f"train.out_dir={out}"] for a in ("--set", s)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds checkpoints of an earlier run (best.ckpt, last.ckpt): pass --resume" in err[0]
    assert {p: p.read_bytes() for p in (out / "checkpoints").iterdir()} == before
    assert not (out / "logs/version_1").exists()
    # --overwrite: the new run's best.ckpt and last.ckpt, no best-v1.ckpt beside the old ones.
    assert main(args + ["--overwrite", "--set", "train.seed=1"]) == 0
    after = {p: p.read_bytes() for p in (out / "checkpoints").iterdir()}
    assert sorted(p.name for p in after) == ["best.ckpt", "last.ckpt"]
    assert all(after[p] != before[p] for p in after)


def test_two_processes_give_the_same_map_as_one(run, tmp_path):
    root, _ = run
    figures = evaluate_with_one_and_two_processes(root / "run/checkpoints/best.ckpt", tmp_path, 2, 9)
    assert figures[0] == figures[1]


def test_score_a_results_file_without_a_model(run, tmp_path, capsys):
    root, _ = run
    gt = json.loads((root / "data/annotations/instances_val2017.json").read_text())
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in gt["annotations"]
        if not a["iscrowd"]
    ]
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert (
        main(
            [
                "evaluate",
                "--task",
                "det",
                "--annotations",
                str(root / "data/annotations/instances_val2017.json"),
                "--detections",
                str(tmp_path / "results.json"),
            ]
        )
        == 0
    )
    assert "maxDets=100 ] = 1.000" in capsys.readouterr().out


def test_predict_draws_and_writes_json(run, tmp_path, capsys):
    root, _ = run
    image = sorted((root / "data/val2017").iterdir())[0]
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(root / "run/checkpoints/last.ckpt"),
                str(image),
                "--out",
                str(tmp_path),
                "--score-threshold",
                "0",
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "detections.json").read_text())
    assert report[0]["file"] == str(image) and len(report[0]["detections"]) > 0
    assert {"box_xyxy", "score", "label", "category_id"} <= set(report[0]["detections"][0])
    assert (tmp_path / image.name).read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG in, JPEG out


def test_user_mistakes_are_one_line_errors(run, tmp_path, capsys):
    root, settings = run
    cases = [
        ["evaluate", "--checkpoint", str(tmp_path / "missing.ckpt")],
        ["evaluate", "--task", "seg", "--checkpoint", str(root / "run/checkpoints/last.ckpt")],
        ["train", "--task", "det", "--set", "train.lrr=0.1"],
        [
            "predict",
            "--checkpoint",
            str(root / "run/checkpoints/last.ckpt"),
            str(tmp_path / "nope.jpg"),
            "--out",
            str(tmp_path),
        ],
    ]
    for args in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("mbtasks: error:"), err
