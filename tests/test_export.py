"""ONNX export and ONNX Runtime evaluation: every task's graph against PyTorch, the same metrics through both runtimes,
int8, torchvision's detection post-processing reproduced, and one-line errors."""

import json
import re
from types import SimpleNamespace

import onnx
import pytest
import torch
from helpers import TINY_IMAGE_DATA, randomised, save_checkpoint, task_module
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.ssd import SSD

from mbtasks.cli import main
from mbtasks.config import load_config
from mbtasks.export.channel_padding import padded_expansions
from mbtasks.export.int8 import CANDIDATES, CHOICE_RUNS, calibration_reader, choose, prepare, quantize
from mbtasks.io.onnx_runtime import create_session
from mbtasks.io.records import read_checkpoint
from mbtasks.layers.blocks import InvertedResidual
from mbtasks.layers.fusion import for_inference
from mbtasks.models.detection_graph import BoxDecoder, SelectDetections
from mbtasks.tasks import TASKS
from mbtasks.tasks.runtime import load_onnx_model

COMMON = ["data.num_workers=0", "data.val_batch_size=2", "train.accelerator=cpu", "train.progress_bar=false"]
SETTINGS = {
    "det": [
        "model.name=ssdlite320_mobilenet_v3_small",
        "model.options={width_mult: 0.5}",
        "data.size=96",
        "data.synth={seed: 1, num_train: 6, num_val: 5, image_size: 96}",
    ],
    "seg": [
        "model.name=lraspp_mobilenet_v3_small",
        "model.options={width_mult: 0.5}",
        "data.synth={seed: 1, num_train: 4, num_val: 3, size: [64, 128]}",
    ],
    "attr": ["model.name=mobilenet_v1", "model.options={width_mult: 0.25}", *TINY_IMAGE_DATA["attr"]],
    "embed": [
        "model.name=mobilenet_v1",
        "model.options={width_mult: 0.25, embedding_dim: 16}",
        *TINY_IMAGE_DATA["embed"],
    ],
    "cls": ["model.name=mobilenet_v3_small", "model.options={width_mult: 0.5}", *TINY_IMAGE_DATA["cls"]],
}
DIFFERENCE = re.compile(r"largest \|onnxruntime - pytorch\| difference: (\S+)")
CHOICE = re.compile(
    r"int8 chosen by measurement: (?P<chosen>.+) \((?P<ratio>\S+)x of fp32\); median ms of \d+ runs "
    r"on a \d+x\d+ input, \d+ threads: fp32 \S+, "
)


def _make_checkpoint(task: str, folder, extra: list[str] = ()) -> tuple[str, list[str]]:
    """A randomly initialised model (random batch-norm statistics) saved as a training checkpoint, on its tiny
    embedded data set; returns the checkpoint and the --set settings that reach the data."""
    settings = COMMON + SETTINGS[task] + list(extra) + [f"data.synth_dir={folder / 'data'}"]
    module = task_module(task, settings)
    randomised(module.model)
    # Spread the class scores out: near-ties would make the ranking (det) a matter of the last bit, and a random
    # segmenter predicts one class everywhere.
    classifier = {"det": "head.classification_head", "seg": "head.low_classifier"}.get(task)
    if classifier:
        for layer in module.model.get_submodule(classifier).modules():
            if isinstance(layer, torch.nn.Conv2d) and layer.groups == 1:
                layer.weight.data *= 30
    return str(save_checkpoint(module, folder / f"{task}.ckpt")), settings


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """Each task's checkpoint exported to fp32 ONNX: task -> (checkpoint, settings, onnx file, printed lines)."""
    result = {}
    for task in SETTINGS:
        folder = tmp_path_factory.mktemp(task)
        checkpoint, settings = _make_checkpoint(task, folder)
        out = folder / f"{task}.onnx"
        lines = _run(["export", "--checkpoint", checkpoint, "--out", str(out)])
        result[task] = (checkpoint, settings, out, lines)
    return result


def _run(args: list[str]) -> list[str]:
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(args) == 0, args
    return printed.getvalue().splitlines()


def _torch_model(checkpoint: str, task: str) -> torch.nn.Module:
    record = read_checkpoint(checkpoint, task)
    return for_inference(TASKS.get(task).from_record(record, source=checkpoint).model)


@pytest.mark.parametrize("task", list(SETTINGS))
def test_export_prints_the_file_and_a_difference_under_1e4(exported, task):
    _, _, out, lines = exported[task]
    assert lines[0].startswith(f"wrote {out}: ") and " MB, " in lines[0] and lines[0].endswith("fp32")
    difference = float(DIFFERENCE.match(lines[1]).group(1))
    assert 0 <= difference < 1e-4, lines
    if task == "det":
        assert "pixels of the 96-pixel input" in lines[1]
    model = onnx.load(str(out))
    record = json.loads({p.key: p.value for p in model.metadata_props}["mbtasks"])
    assert record["task"] == task and record["config"]["task"] == task and "state_dict" not in record
    # The inference copy: batch norm folded into the convolutions (the embedding head's 1-d one after its linear
    # layer is not a conv's, and stays).
    norms = [node for node in model.graph.node if node.op_type == "BatchNormalization"]
    assert len(norms) == (1 if task == "embed" else 0)


@pytest.mark.parametrize("task", ["seg", "attr", "embed", "cls"])
def test_onnxruntime_model_matches_pytorch(exported, task):
    checkpoint, _, out, _ = exported[task]
    model, record = load_onnx_model(out)
    reference = _torch_model(checkpoint, task)
    assert record.task == task
    torch.manual_seed(1)
    # Batch, height and width are dynamic: two batch sizes at two sizes.
    for shape in ((2, 3, 64, 128), (1, 3, 48, 80)) if task == "seg" else ((3, 3, 32, 32), (1, 3, 40, 32)):
        x = torch.randn(shape)
        with torch.no_grad():
            want = reference(x)
        got = model(x)
        if task == "seg":  # the segmenter contract, torchvision's, behind ONNX Runtime too
            assert got.keys() == want.keys() == {"out"}
            got, want = got["out"], want["out"]
        assert got.shape == want.shape
        assert (got - want).abs().max() < 1e-4


def test_onnxruntime_detector_matches_torchvision_ssd(exported):
    checkpoint, _, out, _ = exported["det"]
    model, record = load_onnx_model(out, "det")
    reference = _torch_model(checkpoint, "det")
    torch.manual_seed(1)
    images = [torch.rand(3, 96, 96), torch.rand(3, 120, 70)]  # resized to 96x96, boxes scaled back
    with torch.no_grad():
        want = reference(images)
    got = model(images)
    for a, b in zip(want, got):
        assert len(a["labels"]) > 10 and len(a["labels"]) == len(b["labels"])
        assert (a["scores"] - b["scores"]).abs().max() < 1e-5  # both sorted by score
        # Each detection has its twin: the order of two that tie to the last bits may differ between the runtimes.
        close = (a["boxes"][:, None] - b["boxes"][None]).abs().amax(-1) < 1e-4
        same_label = a["labels"][:, None] == b["labels"][None]
        assert (close & same_label).any(1).all() and (close & same_label).any(0).all()


@pytest.mark.parametrize("task", ["det", "seg"])
def test_evaluate_with_onnxruntime_gives_the_checkpoint_metrics(exported, task, tmp_path):
    checkpoint, settings, out, _ = exported[task]
    common = [a for s in COMMON for a in ("--set", s)]
    lines = _run(["evaluate", "--checkpoint", checkpoint, "--json", str(tmp_path / "torch.json")] + common)
    onnx_lines = _run(
        ["evaluate", "--runtime", "onnxruntime", "--model", str(out), "--json", str(tmp_path / "onnx.json")] + common
    )
    assert lines[0] == onnx_lines[0] and re.match(r"evaluated [35] images", lines[0])
    figures = json.loads((tmp_path / "torch.json").read_text())
    assert json.loads((tmp_path / "onnx.json").read_text()) == figures
    assert figures["AR100" if task == "det" else "mean_category_iou"] > 0  # not a model that finds nothing


@pytest.mark.parametrize("task", ["det", "seg"])
def test_int8_export_quantises_the_network_and_evaluates(exported, task, tmp_path):
    checkpoint, _, fp32, _ = exported[task]
    out = tmp_path / f"{task}_int8.onnx"
    lines = _run(["export", "--checkpoint", checkpoint, "--out", str(out), "--int8", "--calibration", "3"])
    choice = CHOICE.match(lines[2])
    assert choice and f"int8 ({choice['chosen']}, calibrated on 3 training images)" in lines[0], lines
    assert DIFFERENCE.match(lines[1])
    # The export settings keep the choice and every time measured; the choice is the fastest of them.
    settings = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["export"])["int8_choice"]
    ms = settings["ms"]
    assert set(ms) == {"fp32", *(c.name for c in CANDIDATES)} and all(v > 0 for v in ms.values())
    assert settings["chosen"] == choice["chosen"] == min((c.name for c in CANDIDATES), key=ms.get)
    assert settings["threads"] == torch.get_num_threads() and settings["runs"] == CHOICE_RUNS
    candidate = next(c for c in CANDIDATES if c.name == choice["chosen"])
    graph = onnx.load(str(out)).graph
    quantised = [node for node in graph.node if node.op_type in ("DequantizeLinear", "QLinearConv")]
    if candidate.quant_format == "QDQ":
        weights = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
        convs = [node for node in graph.node if node.op_type == "Conv"]
        assert convs and all(
            node.input[1] in weights for node in convs if not (candidate.float_depthwise and _group(node) > 1)
        )  # int8 weights
        assert not any(node.op_type == "HardSigmoid" for node in graph.node)  # h-swish rewritten to int8 arithmetic
    else:
        assert any(node.op_type == "QLinearConv" for node in graph.node)
    if task == "det":  # box decoding and softmax stay float
        decoder = [node for node in graph.node if node.name.startswith("/decode/")]
        assert decoder and not any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in decoder)
    else:  # so does the upsampling of the logits to the input size
        producer = {output: node for node in graph.node for output in node.output}
        upsampling = producer["logits"]
        assert upsampling.op_type == "Resize" and producer[upsampling.input[0]].op_type == "DequantizeLinear"
        # and the sizes it reads come from the quantised tensors, not from float copies kept for them alone
        shapes = [node for node in graph.node if node.op_type == "Shape"]
        assert shapes and not any(
            node.input[0] in producer and producer[node.input[0]].op_type == "DequantizeLinear" for node in shapes
        )
    # int8 weights take a quarter of the bytes (the tiny demo networks keep scales and float parts: measured 0.43 to
    # 0.57 of fp32; 0.62 with the depthwise weights left fp32)
    assert quantised and out.stat().st_size < (0.67 if candidate.float_depthwise else 0.6) * fp32.stat().st_size
    # `mbtasks info` tells the choice too
    info = _run(["info", str(out)])
    assert info[1] == (
        f"int8 choice    {choice['chosen']}: {ms[choice['chosen']] / ms['fp32']:.2f}x of fp32 when "
        f"exported (median of {CHOICE_RUNS} runs, {settings['threads']} threads, "
        f"{'x'.join(map(str, settings['input']))} input)"
    ), info
    lines = _run(
        ["evaluate", "--runtime", "onnxruntime", "--model", str(out), "--json", str(tmp_path / "m.json")]
        + [a for s in COMMON for a in ("--set", s)]
    )
    assert re.match(r"evaluated [35] images", lines[0])
    figures = json.loads((tmp_path / "m.json").read_text())
    assert 0 <= figures["AP" if task == "det" else "mean_class_iou"] <= 1


@pytest.mark.parametrize("spinning, entry", [(True, "1"), (False, "0")])
def test_sessions_spin_between_operators_unless_told_not_to(exported, spinning, entry):
    session = create_session(exported["cls"][2], spinning=spinning)
    assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == entry


def _group(node) -> int:
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)


def test_choose_quantises_each_candidate_as_it_says_and_keeps_the_fastest(tmp_path, monkeypatch):
    """A tiny inverted residual (1x1 to 12 channels, h-swish, 3x3 depthwise, h-swish, 1x1), as it is and with its
    expansion padded to 16 channels: each candidate's graph, and the choice, timed with threads that do not spin."""
    import mbtasks.export.int8 as int8

    spinning = []
    monkeypatch.setattr(
        int8,
        "create_session",
        lambda *args, **kwargs: spinning.append(kwargs["spinning"]) or create_session(*args, **kwargs),
    )
    torch.manual_seed(0)
    block = for_inference(
        InvertedResidual(
            3,
            12,
            8,
            kernel=3,
            stride=1,
            dilation=1,
            se=False,
            activation=torch.nn.Hardswish,
            norm=torch.nn.BatchNorm2d,
            use_residual=False,
        )
    )
    padded_block, changed = padded_expansions(block)
    example = torch.rand(3, 24, 32)
    for network, name in ((block, "fp32"), (padded_block, "padded")):
        with torch.no_grad():
            torch.onnx.export(
                network,
                (example[None],),
                str(tmp_path / f"{name}.onnx"),
                input_names=["images"],
                opset_version=17,
                dynamo=False,
            )
    fp32 = tmp_path / "fp32.onnx"
    chosen, ms = choose(fp32, prepare(fp32), example, tmp_path, runs=2, padded=prepare(tmp_path / "padded.onnx"))
    assert changed == 1 and set(ms) == {"fp32", *(c.name for c in CANDIDATES)}
    assert spinning == [False] * (1 + len(CANDIDATES))
    assert chosen.name == min((c.name for c in CANDIDATES), key=ms.get)
    for index, candidate in enumerate(CANDIDATES):
        graph = onnx.load(str(tmp_path / f"candidate{index}.onnx")).graph
        initializers = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
        if candidate.quant_format == "QOperator":
            convs = [node for node in graph.node if node.op_type == "QLinearConv"]
            assert len(convs) == 3 and not any(node.op_type == "Conv" for node in graph.node)
            assert _group(convs[1]) == 12
            weight_scales = [initializers[node.input[4]] for node in convs]
        else:
            convs = {_group(node): node for node in graph.node if node.op_type == "Conv"}
            dequantise = {node.output[0]: node for node in graph.node if node.op_type == "DequantizeLinear"}
            depthwise = convs[16 if candidate.padded else 12]  # KeyError: not the graph the candidate says
            # Depthwise fp32: its weights stay float (and ONNX Runtime is told not to quantise them itself).
            assert (depthwise.input[1] in initializers) == candidate.float_depthwise
            assert candidate.disabled_optimizers == (["WeightBiasQuantization"] if candidate.float_depthwise else [])
            weight_scales = [
                initializers[dequantise[node.input[1]].input[1]]
                for node in graph.node
                if node.op_type == "Conv" and node.input[1] in dequantise
            ]
            assert not any(node.op_type == "HardSigmoid" for node in graph.node)
        assert weight_scales and all((scale.size > 1) == candidate.per_channel for scale in weight_scales)
        session = create_session(tmp_path / f"candidate{index}.onnx", disabled_optimizers=candidate.disabled_optimizers)
        with torch.no_grad():
            want = block(example[None]).numpy()
        got = session.run(None, {"images": example[None].numpy()})[0]
        assert abs(got - want).max() < 0.05 * abs(want).max()  # int8, calibrated on this very input


class NormalisedConv(torch.nn.Module):
    """(x - mean) / std and a convolution, as the detector graph normalises its resized image."""

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv((x - self.mean) / self.std)


@pytest.mark.parametrize(
    "mean, std, image_itself", [([0.5] * 3, [0.5] * 3, True), ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225], False)]
)
def test_int8_quantises_the_image_itself_where_one_mean_and_std_normalise_it(mean, std, image_itself, tmp_path):
    """SSDLite's (x - 0.5) / 0.5: the quantiser reads the [0, 1] image and its uint8 values are round(254 x), which
    dequantise to the normalised image; per-channel ImageNet statistics keep their Sub and Div."""
    torch.manual_seed(0)
    network, example = NormalisedConv(mean, std).eval(), torch.rand(3, 24, 32)
    fp32 = tmp_path / "fp32.onnx"
    with torch.no_grad():
        torch.onnx.export(network, (example[None],), str(fp32), input_names=["images"], opset_version=17, dynamo=False)
        want = network(example[None]).numpy()
    out = tmp_path / "int8.onnx"
    quantize(prepare(fp32), out, calibration_reader([example], 1))
    model = onnx.load(str(out))
    assert any(node.op_type in ("Sub", "Div") for node in model.graph.node) != image_itself
    got = create_session(out).run(None, {"images": example[None].numpy()})[0]
    assert abs(got - want).max() < 0.05 * abs(want).max()
    if image_itself:
        quantise = next(node for node in model.graph.node if node.op_type == "QuantizeLinear")
        assert quantise.input[0] == "images"
        model.graph.output.append(onnx.helper.make_tensor_value_info(quantise.output[0], onnx.TensorProto.UINT8, None))
        image = torch.randint(0, 256, (1, 3, 24, 32)).float() / 255  # a photo's values
        onnx.save(model, str(tmp_path / "tapped.onnx"))
        quantised = create_session(tmp_path / "tapped.onnx").run([quantise.output[0]], {"images": image.numpy()})[0]
        assert (quantised == (254 * image).round().numpy()).all()
        initializers = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
        dequantise = next(node for node in model.graph.node if node.input[0] == quantise.output[0])
        scale, zero_point = initializers[dequantise.input[1]], initializers[dequantise.input[2]]
        assert abs((quantised.astype(float) - zero_point) * scale - (image.numpy() - 0.5) / 0.5).max() <= 1 / 254


@pytest.mark.parametrize("task", list(SETTINGS))
def test_data_modules_give_the_images_the_graph_takes_as_at_evaluation(task, tmp_path):
    """What calibration and the check read: one CHW float image per item, training images without augmentation
    (the same tensor each time, at the evaluation size: seg's training crops would be 512x1024; det: the file's)."""
    config = load_config(None, COMMON + SETTINGS[task] + [f"data.synth_dir={tmp_path}"], task=task)
    data = TASKS.get(task).data_module(config)
    data.prepare_data()
    data.setup("fit")
    train, val = data.graph_inputs("train"), data.graph_inputs("val")
    assert len(train) == len(data.train_set) and len(val) == len(data.val_set)
    assert train[0].dtype == val[0].dtype == torch.float32 and train[0].ndim == val[0].ndim == 3
    assert all(torch.equal(train[i], train[i]) for i in range(len(train)))
    if task == "det":  # the graph resizes and normalises a detector's images itself
        first = data.train_set.coco.imgs[data.train_set.image_ids[0]]
        assert train[0].shape[-2:] == (first["height"], first["width"])
        assert 0 <= float(train[0].min()) and float(train[0].max()) <= 1
    else:
        assert train[0].shape == val[0].shape
    with pytest.raises(ValueError, match="split must be train or val"):
        data.graph_inputs("test")


def test_paper_pooling_is_exported_at_the_validation_size(tmp_path):
    checkpoint, _ = _make_checkpoint("seg", tmp_path, ["model.options={width_mult: 0.5, pooling: paper}"])
    _run(["export", "--checkpoint", checkpoint, "--out", str(tmp_path / "paper.onnx")])
    model, _ = load_onnx_model(tmp_path / "paper.onnx")
    assert model(torch.zeros(1, 3, 64, 128))["out"].shape == (1, 19, 64, 128)
    with pytest.raises(Exception, match="exported for 64x128 inputs only"):
        model(torch.zeros(1, 3, 32, 64))


def test_selection_is_torchvisions_ssd_postprocessing_in_pytorch_and_onnxruntime(tmp_path):
    """Against torchvision's own code, with the top-k per class binding and many classes; then the same module as an
    ONNX graph (NonMaxSuppression) in ONNX Runtime."""
    torch.manual_seed(0)
    anchors = torch.rand(500, 2) * 80
    anchors = torch.cat([anchors, anchors + 5 + torch.rand(500, 2) * 30], 1)
    deltas, logits = torch.randn(1, 500, 4), torch.randn(1, 500, 12) * 3
    # What SSD.postprocess_detections reads of its model: torchvision's settings, top-k binding, 12 classes.
    ssd = SimpleNamespace(
        score_thresh=0.02,
        nms_thresh=0.5,
        detections_per_img=40,
        topk_candidates=25,
        box_coder=BoxCoder((10.0, 10.0, 5.0, 5.0)),
    )
    want = SSD.postprocess_detections(ssd, {"bbox_regression": deltas, "cls_logits": logits}, [anchors], [(100, 90)])[0]
    boxes, scores = BoxDecoder(anchors, ssd.box_coder.weights, ssd.box_coder.bbox_xform_clip, (100, 90))(deltas, logits)
    select = SelectDetections(ssd.score_thresh, ssd.nms_thresh, ssd.detections_per_img, ssd.topk_candidates)
    with torch.no_grad():
        torch.onnx.export(
            select,
            (boxes, scores),
            str(tmp_path / "select.onnx"),
            input_names=["boxes", "scores"],
            output_names=["boxes_kept", "scores_kept", "labels"],
            opset_version=17,
            dynamo=False,
        )
        session = create_session(tmp_path / "select.onnx")
        for got in (select(boxes, scores), session.run(None, {"boxes": boxes.numpy(), "scores": scores.numpy()})):
            got_boxes, got_scores, got_labels = (torch.as_tensor(v) for v in got)
            assert len(want["labels"]) == 40 and torch.equal(got_labels, want["labels"])
            assert torch.allclose(got_boxes, want["boxes"], atol=1e-4)
            assert torch.allclose(got_scores, want["scores"])
        empty = session.run(None, {"boxes": boxes.numpy(), "scores": (scores * 0).numpy()})
        assert all(len(v) == 0 for v in [*select(boxes, scores * 0), *empty])


def test_user_mistakes_are_one_line_errors(exported, tmp_path, capsys):
    checkpoint, _, det_onnx, _ = exported["det"]
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    (tmp_path / "text.onnx").write_text("not a model")
    identity = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "bare",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    onnx.save(onnx.helper.make_model(identity), str(tmp_path / "bare.onnx"))
    cases = {
        "not an mbtasks training checkpoint": [
            "export",
            "--checkpoint",
            str(tmp_path / "plain.pt"),
            "--out",
            str(tmp_path / "x.onnx"),
        ],
        "not an ONNX model": ["evaluate", "--runtime", "onnxruntime", "--model", str(tmp_path / "text.onnx")],
        "without mbtasks metadata": ["evaluate", "--runtime", "onnxruntime", "--model", str(tmp_path / "bare.onnx")],
        "--runtime onnxruntime evaluates --model": ["evaluate", "--runtime", "onnxruntime", "--checkpoint", checkpoint],
        "--model is an exported file for --runtime onnxruntime or executorch": ["evaluate", "--model", str(det_onnx)],
        "is an ONNX model of a det model, not seg": [
            "evaluate",
            "--task",
            "seg",
            "--runtime",
            "onnxruntime",
            "--model",
            str(det_onnx),
        ],
        "no such file": ["evaluate", "--runtime", "onnxruntime", "--model", str(tmp_path / "missing.onnx")],
    }
    for expected, args in cases.items():
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("mbtasks: error:") and expected in err[0], err
