"""ExecuTorch export (XNNPACK, fp32 and int8) and the ExecuTorch runtime: every task's program evaluated and applied
to photos with the same evaluators and writers as its checkpoint; the demo models' figures held; the fixed-size NMS
against torchvision's on real detections; one-line errors."""

import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY_IMAGE_DATA, randomised, save_checkpoint, task_module
from torchvision.models.detection.ssd import SSD
from torchvision.ops import batched_nms
from torchvision.ops import boxes as box_ops

from mbtasks.cli import main
from mbtasks.io.records import read_checkpoint
from mbtasks.layers.fusion import for_inference
from mbtasks.models.fixed_size_selection import ITERATIONS, FixedSizeSelection, greedy_keep, greedy_nms
from mbtasks.tasks import TASKS

COMMON = ["data.num_workers=0", "train.accelerator=cpu", "train.progress_bar=false"]
# The image tasks on MobileNetV1 at width 0.25: the shallowest network, the fastest to lower.
TINY = {
    task: [
        "model.name=mobilenet_v1",
        "model.options={width_mult: 0.25" + (", embedding_dim: 16}" if task == "embed" else "}"),
        *TINY_IMAGE_DATA[task],
    ]
    for task in ("attr", "embed", "cls")
}
DIFFERENCE = re.compile(r"largest \|executorch - pytorch\| difference: (\S+)")
DELEGATION = re.compile(r"XNNPACK: (?P<count>\d+) delegated subgraphs?; outside the delegates?: (?P<outside>.+)")


def _run(args: list[str]) -> list[str]:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(args) == 0, args
    return printed.getvalue().splitlines()


def _sets(settings: list[str]) -> list[str]:
    return [a for s in settings for a in ("--set", s)]


def _export(checkpoint: str, out: Path, *extra: str) -> list[str]:
    return _run(["export", "--format", "executorch", "--checkpoint", checkpoint, "--out", str(out), *extra])


def _figures(folder: Path, name: str, args: list[str], settings: list[str]) -> dict:
    """`mbtasks evaluate ARGS` -> its figures (--json)."""
    lines = _run(["evaluate", *args, "--json", str(folder / f"{name}.json"), *_sets(settings)])
    assert re.match(r"evaluated \d+ images", lines[0]) or "evaluated" not in lines[0], lines
    return json.loads((folder / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def programs(tmp_path_factory, demo_detector, demo_segmenter) -> dict:
    """task -> (checkpoint, fp32 program, the export's printed lines, the --set settings that reach its data): the
    demo detector and segmenter, and a tiny random model of each image task."""
    result = {}
    for task, checkpoint in (("det", demo_detector), ("seg", demo_segmenter)):
        out = Path(checkpoint).parents[2] / f"{task}.pte"
        result[task] = (checkpoint, out, _export(checkpoint, out), ["train.progress_bar=false"])
    for task, settings in TINY.items():
        folder = tmp_path_factory.mktemp(task)
        settings = COMMON + settings + [f"data.synth_dir={folder / 'data'}"]
        module = task_module(task, settings)
        randomised(module.model)
        checkpoint = str(save_checkpoint(module, folder / f"{task}.ckpt"))
        out = folder / f"{task}.pte"
        result[task] = (checkpoint, out, _export(checkpoint, out), COMMON)
    return result


@pytest.mark.parametrize("task", ["det", "seg", "attr", "embed", "cls"])
def test_export_writes_one_program_checked_against_pytorch_and_tells_what_xnnpack_runs(programs, task):
    checkpoint, out, lines, _ = programs[task]
    assert lines[0].startswith(f"wrote {out}: ") and lines[0].endswith("fp32"), lines
    assert 0 <= float(DIFFERENCE.match(lines[1]).group(1)) < 1e-4, lines
    delegation = DELEGATION.fullmatch(lines[2])
    assert delegation, lines
    outside = {call.split(" x")[0] for call in delegation["outside"].split(", ")}
    if task == "det":
        # Three subgraphs: the network (resize, normalisation, backbone, head, box decoding), the NMS matrix and its
        # iterations, the scaling back; between them what XNNPACK has no operators for: choosing the candidates
        # (topk, index_select) and the kept ones (nonzero).
        assert int(delegation["count"]) <= 3 and {"aten::topk.values", "aten::nonzero.out"} <= outside, lines
        assert not any("conv" in call or "hardswish" in call or "bmm" in call for call in outside), lines
    elif task == "embed":  # the network in one subgraph; the embedding's L2 normalisation partly outside
        assert outside <= {"aten::pow.Tensor_Scalar_out", "aten::sum.IntList_out", "aten::expand_copy.out"}, lines
    else:
        assert lines[2] == "XNNPACK: 1 delegated subgraph; outside the delegate: nothing", lines
    assert sorted(path.name for path in out.parent.iterdir() if path.name.startswith(task)) in (
        [f"{task}.ckpt", f"{task}.pte"],
        [f"{task}.pte"],
    )  # one file: no sidecar
    # `mbtasks info`: the record and the export settings from inside the program, and its operator counts
    info = _run(["info", str(out), "--json"])
    described = json.loads("\n".join(info))
    assert described["kind"] == "executorch" and described["task"] == task
    assert described["categories"] == read_checkpoint(checkpoint, task).class_names
    export = described["export"]
    assert export["int8"] is False and export["backend"] == "XNNPACK" and export["recipe"].startswith("torch.export")
    assert described["operators"]["delegates"] == {"XnnpackBackend": int(delegation["count"])}
    shown = _run(["info", str(out)])
    assert shown[0] == f"file           {out}: ExecuTorch program (fp32, XNNPACK)"
    assert shown[1].startswith("input          layout NCHW")
    assert shown[3].startswith(f"operators      delegated: XnnpackBackend x{delegation['count']}")


@pytest.fixture(scope="module")
def checkpoint_figures(programs, tmp_path_factory) -> dict:
    """task -> `mbtasks evaluate --checkpoint`'s figures, once for the fp32 and the int8 tests."""
    folder = tmp_path_factory.mktemp("checkpoint_figures")
    return {
        task: _figures(folder, task, ["--checkpoint", checkpoint], settings)
        for task, (checkpoint, _, _, settings) in programs.items()
    }


@pytest.mark.parametrize("task", ["det", "seg", "attr", "embed", "cls"])
def test_evaluate_the_program_gives_the_checkpoint_figures(programs, checkpoint_figures, task, tmp_path):
    """The demo detector and segmenter within 0.001 of mAP / class mIoU (the issue's bound; measured: equal), the
    image tasks' headline figures as well."""
    _, out, _, settings = programs[task]
    want = checkpoint_figures[task]
    got = _figures(tmp_path, "pte", ["--runtime", "executorch", "--model", str(out)], settings)
    assert got.keys() == want.keys()
    headline = TASKS.get(task).headline_metrics[0]
    if task == "embed":
        # A random embedding model maps every face within 1e-7 of one direction: the verification thresholds fall
        # among ties that the last bit decides (the export held the embeddings to PyTorch's within 1e-4).
        assert got["num_pairs"] == want["num_pairs"] and abs(got[headline] - want[headline]) <= 0.1, (got, want)
    else:
        headline = "mean_accuracy" if task == "attr" else headline  # the random model's AP is as tied
        assert abs(got[headline] - want[headline]) <= 0.001, (got, want)
    if task == "det":
        assert want["AP"] > 0.3  # it detects: a difference would show
    if task == "seg":
        assert want["mean_class_iou"] > 0.5


@pytest.mark.parametrize("task", ["det", "seg", "attr", "embed", "cls"])
def test_predict_applies_the_program_as_the_checkpoint(programs, task, tmp_path):
    checkpoint, out, _, _ = programs[task]
    record = read_checkpoint(checkpoint, task)
    data = Path(record.config["data"]["synth_dir"])
    photos = sorted(p for p in data.rglob("*") if p.suffix in (".jpg", ".png") and "gtFine" not in str(p))[:3]
    lines = {}
    for name, model in (("torch", checkpoint), ("pte", str(out))):
        lines[name] = _run(
            [
                "predict",
                "--checkpoint",
                model,
                *map(str, photos),
                "--out",
                str(tmp_path / name),
                "--workers",
                "0",
                "--task",
                task,
            ]
        )
    told = [line for line in lines["pte"] if line.startswith("predicted ")]
    assert len(told) == 1 and told[0].startswith("predicted 3 images") and "(executorch, cpu)" in told[0], lines
    written = {
        name: sorted(str(p.relative_to(tmp_path / name)) for p in (tmp_path / name).rglob("*") if p.is_file())
        for name in lines
    }
    assert written["pte"] == written["torch"] and len(written["pte"]) >= 2
    json_file = TASKS.get(task).prediction_file
    if json_file.endswith(".json") and (tmp_path / "torch" / json_file).exists():
        want, got = (json.loads((tmp_path / name / json_file).read_text()) for name in ("torch", "pte"))
        assert len(got) == len(want)
        if task == "det":  # the same detections above the drawing threshold, each within a pixel
            for a, b in zip(want, got):
                assert [d["label"] for d in a["detections"]] == [d["label"] for d in b["detections"]]
                assert all(
                    abs(x - y) <= 1
                    for d, e in zip(a["detections"], b["detections"])
                    for x, y in zip(d["box_xyxy"], e["box_xyxy"])
                )


def test_a_program_of_one_task_given_to_another_is_one_line(programs, tmp_path, capsys):
    det = str(programs["det"][1])
    (tmp_path / "text.pte").write_text("not a program")
    cases = {
        "is an ExecuTorch program of a det model, not seg": [
            "evaluate",
            "--task",
            "seg",
            "--runtime",
            "executorch",
            "--model",
            det,
        ],
        "is an ExecuTorch program of a det model, not cls": [
            "predict",
            "--task",
            "cls",
            "--checkpoint",
            det,
            det,
            "--out",
            str(tmp_path / "p"),
        ],
        "not an ExecuTorch program the runtime can load": [
            "evaluate",
            "--runtime",
            "executorch",
            "--model",
            str(tmp_path / "text.pte"),
        ],
        "--runtime executorch evaluates --model FILE.pte": [
            "evaluate",
            "--runtime",
            "executorch",
            "--checkpoint",
            programs["det"][0],
        ],
        "runs in executorch on the CPU": [
            "predict",
            "--checkpoint",
            det,
            det,
            "--out",
            str(tmp_path / "q"),
            "--device",
            "cuda",
        ],
    }
    for expected, args in cases.items():
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("mbtasks: error:") and expected in err[0], err


# Python without the mobile extra: executorch and torchao cannot be imported, as where they are not installed.
WITHOUT_MOBILE_EXTRA = """
import sys

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("executorch", "torchao"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NotInstalled())
from mbtasks.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_without_the_mobile_extra_export_is_one_line_naming_it(programs, tmp_path):
    out = tmp_path / "x.pte"
    args = ["export", "--format", "executorch", "--checkpoint", programs["cls"][0], "--out", str(out)]
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_MOBILE_EXTRA, *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2, result
    assert result.stderr.strip().splitlines() == [
        "mbtasks: error: this needs the Python package 'executorch', which is not installed here: "
        "pip install 'mbtasks[mobile]'"
    ], result.stderr
    assert not out.exists()


# ---- int8 ----


# The segmenter's int8 program is one run's figure (README): its export alone took 224 s of the suite's CPU, and the
# detector's program takes the same int8 path (quantiser, calibration, lowering) with its decoding besides.
@pytest.mark.parametrize("task, metric, tolerance", [("det", "AP", 0.02)])
def test_int8_program_costs_the_demo_model_little(programs, checkpoint_figures, task, metric, tolerance, tmp_path):
    """int8 (XNNPACK's symmetric quantiser, per-channel weights, calibrated on 32 training images): the demo detector
    loses at most 2 points of mAP (measured: see the README)."""
    checkpoint, fp32, _, settings = programs[task]
    out = tmp_path / f"{task}_int8.pte"
    lines = _export(checkpoint, out, "--int8", "--calibration", "32")
    assert lines[0].endswith("int8 (XNNPACK symmetric, calibrated on 32 training images)"), lines
    assert DELEGATION.fullmatch(lines[2]), lines
    # int8 weights take a quarter of the bytes (scales and the float parts besides)
    assert out.stat().st_size < 0.45 * fp32.stat().st_size
    want = checkpoint_figures[task][metric]
    got = _figures(tmp_path, "int8", ["--runtime", "executorch", "--model", str(out)], settings)[metric]
    print(f"{task} {metric}: pytorch {want:.4f}, executorch int8 {got:.4f}")
    assert want - got <= tolerance, (want, got)


@pytest.mark.parametrize("task, metric", [("seg", "mean_class_iou"), ("det", "AP")])
def test_int8_in_onnxruntime_costs_the_demo_model_at_most_1_point(programs, checkpoint_figures, task, metric, tmp_path):
    """What the README's int8 table says of the demo models (class mIoU, COCO mAP; `mbtasks export --int8` in ONNX
    Runtime against PyTorch), beside the ExecuTorch figures of the same models."""
    checkpoint, _, _, settings = programs[task]
    _run(["export", "--checkpoint", checkpoint, "--out", str(tmp_path / "int8.onnx"), "--int8", "--calibration", "32"])
    model = ["--runtime", "onnxruntime", "--model", str(tmp_path / "int8.onnx")]
    fp32, int8 = checkpoint_figures[task][metric], _figures(tmp_path, "int8", model, settings)[metric]
    assert fp32 > (0.3 if task == "det" else 0.5)  # it detects / segments: a loss of a point means something
    assert fp32 - int8 <= 0.01, (fp32, int8)


# ---- the fixed-size NMS against torchvision's, on real detections ----


def _candidates(model: SSD, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What torchvision's SSD.postprocess_detections hands batched_nms for one image (boxes, scores, labels), and the
    decoded boxes and class probabilities it selects them from."""
    images, _ = model.transform([image])
    features = list(model.backbone(images.tensors).values())
    head = model.head(features)
    anchors = model.anchor_generator(images, features)[0]
    boxes = box_ops.clip_boxes_to_image(
        model.box_coder.decode_single(head["bbox_regression"][0], anchors), images.image_sizes[0]
    )
    probabilities = head["cls_logits"][0].softmax(-1)
    picked = []
    for label in range(1, probabilities.shape[1]):
        score = probabilities[:, label]
        keep = (score > model.score_thresh).nonzero()[:, 0]
        score, order = score[keep].topk(min(model.topk_candidates, len(keep)))
        picked.append((boxes[keep[order]], score, torch.full_like(order, label)))
    return (*(torch.cat(parts) for parts in zip(*picked)), boxes, probabilities)


def _chain(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, threshold: float) -> int:
    """Iterations until greedy_keep stops changing on these candidates: the longest chain of boxes each suppressing
    the next."""
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes, labels, valid, previous = boxes[order], labels[order].float(), torch.ones(len(order)), None
    for iterations in range(1, 100):
        kept = greedy_keep(boxes, labels, valid, threshold, iterations)
        if previous is not None and torch.equal(kept, previous):
            return iterations - 1
        previous = kept
    return 100


def test_fixed_size_nms_keeps_what_batched_nms_keeps_on_real_detections(demo_detector):
    """The demo detector's candidates on its validation images, as torchvision hands them to batched_nms; with every
    candidate duplicated (ties: the same box and score twice); none; and the whole selection against torchvision's
    postprocess_detections (the export holds the program to this PyTorch selection within 1e-4)."""
    record = read_checkpoint(demo_detector, "det")
    model = for_inference(TASKS.get("det").from_record(record, source=demo_detector).model)
    data = TASKS.get("det").data_module(TASKS.get("det").from_record(record, source=demo_detector).config)
    data.prepare_data()
    data.setup("validate")
    images = [data.val_set[i][0] for i in range(0, len(data.val_set), 10)]
    selection = FixedSizeSelection(
        model.score_thresh, model.nms_thresh, model.detections_per_img, model.topk_candidates
    )
    longest, counts, whole = 0, [], 0
    with torch.no_grad():
        for image in images:
            boxes, scores, labels, decoded, probabilities = _candidates(model, image)
            want = batched_nms(boxes, scores, labels, model.nms_thresh)
            got = greedy_nms(boxes, scores, labels, model.nms_thresh)
            assert torch.equal(got, want), (len(got), len(want))
            counts.append((len(boxes), len(want)))
            twice = [torch.cat([t, t]) for t in (boxes, scores, labels)]
            kept = greedy_nms(*twice, model.nms_thresh)
            assert torch.equal(twice[0][kept], boxes[want]) and torch.equal(twice[1][kept], scores[want])
            assert torch.equal(batched_nms(*twice, model.nms_thresh) % len(boxes), want)
            longest = max(longest, _chain(boxes, scores, labels, model.nms_thresh))
            # The whole selection: torchvision's answer, or the first of it: NMS over the best `candidates` decides
            # each of them as over all (a box's fate depends only on better ones), so what it keeps is torchvision's
            # answer down to the first box it never looked at; all of it when it keeps detections_per_img boxes or
            # fewer boxes pass the threshold than it looks at.
            ours = selection(decoded[None], probabilities[None])
            keep = want[: len(ours[0])]
            assert torch.equal(ours[0], boxes[keep]) and torch.equal(ours[1], scores[keep])
            assert torch.equal(ours[2], labels[keep])
            if len(boxes) <= selection.candidates:
                assert len(ours[0]) == min(len(want), model.detections_per_img)
            whole += len(ours[0]) == min(len(want), model.detections_per_img)
        empty = greedy_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5)
        assert empty.shape == (0,) and batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0), 0.5).shape == (0,)
        nothing = selection(
            decoded[None],
            torch.nn.functional.one_hot(torch.zeros(len(decoded), dtype=torch.long), probabilities.shape[1]).float()[
                None
            ],
        )
        assert all(len(t) == 0 for t in nothing)
    assert sum(n for n, _ in counts) > 100 and any(kept > 1 for _, kept in counts)  # real work for NMS
    assert longest < ITERATIONS, longest  # the iterations cover the longest chain, with room
    print(
        f"candidates and kept per image {counts}; longest chain {longest} of {ITERATIONS} iterations; torchvision's "
        f"whole answer on {whole} of {len(images)} images"
    )
