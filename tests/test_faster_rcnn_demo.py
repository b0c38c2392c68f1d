"""The Faster R-CNN demo recipe learns (a floor its brief training reaches), and its ONNX export, scored by
`evaluate --runtime onnxruntime`, gives the checkpoint's mAP."""

import contextlib
import io
import json

from mbtasks.cli import main

COMMON = ["--set", "data.num_workers=0", "--set", "train.progress_bar=false"]
FLOOR = 0.02  # the brief training (conftest.FASTER_RCNN_DEMO) measured 0.044 mAP once; the README quotes it


def _run(args: list[str]) -> list[str]:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(args) == 0, args
    return printed.getvalue().splitlines()


def test_demo_learns_and_its_onnx_export_scores_the_same(demo_faster_rcnn, tmp_path):
    _run(["evaluate", "--checkpoint", demo_faster_rcnn, "--json", str(tmp_path / "torch.json"), *COMMON])
    figures = json.loads((tmp_path / "torch.json").read_text())
    out = tmp_path / "frcnn.onnx"
    lines = _run(["export", "--checkpoint", demo_faster_rcnn, "--out", str(out)])
    assert "largest |onnxruntime - pytorch| difference" in "\n".join(lines)
    onnx_json = tmp_path / "onnx.json"
    _run(["evaluate", "--runtime", "onnxruntime", "--model", str(out), "--json", str(onnx_json), *COMMON])
    assert abs(json.loads(onnx_json.read_text())["AP"] - figures["AP"]) <= 0.001
    assert figures["AP"] >= FLOOR
