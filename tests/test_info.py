"""`mbtasks info`: the record of a checkpoint, a weights file and an exported ONNX file, with the figures
torchvision's Weights.meta gives (parameters, multiply-adds, file size, sha256)."""

import hashlib
import json

import torch
import torchvision
from helpers import TINY_IMAGE_DATA, write_checkpoint

from mbtasks import build_model
from mbtasks.cli import main
from mbtasks.profiling import count_madds, count_parameters

METRICS = {"mean_accuracy": 0.875, "mean_average_precision": 0.5, "num_images": 30, "per_attribute": {"Bald": {}}}


def _info(capsys, *args: str) -> str:
    assert main(["info", *map(str, args)]) == 0
    return capsys.readouterr().out


def test_checkpoint_record_and_figures(tmp_path, capsys):
    checkpoint = write_checkpoint(tmp_path / "attr.ckpt", "attr", ["Smiling", "Bald"], metrics=METRICS)
    network = build_model("attributes_mobilenet_v3_small", width_mult=0.5, num_attributes=2)
    madds = count_madds(network, torch.rand(1, 3, 40, 32))
    printed = _info(capsys, checkpoint)
    assert printed.splitlines()[:10] == [
        f"file           {checkpoint}: training checkpoint",
        "task           attr",
        "model          attributes_mobilenet_v3_small on mobilenet_v3_small",
        "options        {'width_mult': 0.5, 'num_attributes': 2}",
        "classes        2: Smiling, Bald",
        f"parameters     {count_parameters(network):,}",
        f"multiply-adds  {madds / 1e9:.3f}G at 40x32",
        f"file size      {checkpoint.stat().st_size / 1e6:.2f} MB ({checkpoint.stat().st_size:,} bytes)",
        f"sha256         {hashlib.sha256(checkpoint.read_bytes()).hexdigest()}",
        "metrics        mean_accuracy 0.875, mean_average_precision 0.5, num_images 30 (last validation)",
    ]
    assert "recipe" in printed and "    name: mobilenet_v3_small" in printed and "    epochs: 10" in printed
    info = json.loads(_info(capsys, checkpoint, "--json"))
    assert info["madds"] == madds and info["metrics"] == METRICS and info["recipe"]["task"] == "attr"
    assert info["input_size"] == [40, 32] and info["categories"] == ["Smiling", "Bald"]


def test_weights_file_and_onnx_file(tmp_path, capsys):
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), tmp_path / "tv.pth")
    assert (
        main(
            [
                "weights",
                "import",
                "--from",
                "torchvision",
                str(tmp_path / "tv.pth"),
                "--model",
                "mobilenet_v3_small",
                "--out",
                str(tmp_path / "v3s.pth"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    info = json.loads(_info(capsys, tmp_path / "v3s.pth", "--json"))
    assert info["kind"] == "weights" and info["task"] == "" and info["input_size"] == [224, 224]
    assert info["num_params"] == 2_542_856  # torchvision's Weights.meta["num_params"] for mobilenet_v3_small
    assert abs(info["madds"] / 1e9 - 0.057) < 0.001  # its _ops, 0.057 GFLOPS (multiply-adds)

    checkpoint = write_checkpoint(
        tmp_path / "cls.ckpt",
        "cls",
        ["circle", "square", "triangle"],
        settings=[*TINY_IMAGE_DATA["cls"], f"data.synth_dir={tmp_path / 'data'}", "data.num_workers=0"],
        metrics={"top1": 0.5, "top5": 1.0},
    )
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "cls.onnx"), "--samples", "1"]) == 0
    capsys.readouterr()
    printed = _info(capsys, tmp_path / "cls.onnx").splitlines()
    assert printed[0] == f"file           {tmp_path / 'cls.onnx'}: ONNX model (fp32, opset 17)"
    assert printed[1:5] == [
        "task           cls",
        "model          mobilenet_v3_small on mobilenet_v3_small",
        "options        {'width_mult': 0.5, 'num_classes': 3}",
        "classes        3: circle, square, triangle",
    ]
    assert "metrics        top1 0.5, top5 1 (last validation)" in printed


def test_files_it_cannot_read_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not weights")
    for path, problem in [(tmp_path / "none.ckpt", "no such file"), (tmp_path / "notes.txt", "not a PyTorch weights")]:
        assert main(["info", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"mbtasks: error: {path}: {problem}"), err
