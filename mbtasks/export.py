"""ONNX export of a trained model (fp32, or int8 by static QDQ quantisation), checked against PyTorch in ONNX Runtime.

What the graph holds (onnx_runtime.py runs it behind the PyTorch model's contract):
- seg, attr, embed, cls: the network of the inference copy (batch norm folded): a normalised NCHW batch `images` ->
  `logits` (seg: at the input resolution; attr: one per attribute; cls: one per class) or unit `embeddings` (embed).
  Batch, height and width are dynamic, except for LR-ASPP with `pooling: paper`, whose window follows the input
  size: that graph is fixed to the validation images' size.
- det: the whole detector, end to end: one [0, 1] image `images` (1, 3, H, W) of any size -> `boxes` (xyxy in its
  pixels), `scores`, `labels`: torchvision's resize to the detector's size and normalisation, the network, softmax
  and box decoding, torchvision SSD's selection (scores above the threshold, top-k per class, NMS per class by
  ONNX's NonMaxSuppression, the best N), the boxes scaled back. In one graph ONNX Runtime runs it all on one thread
  pool: with the selection in Python beside it, the two runtimes' threads contended and the end-to-end time doubled.

The exporter is torch.onnx's TorchScript one (dynamo=False): the dynamo exporter gives the same ORT latency but, with a
dynamic height and width, exported LR-ASPP's upsampling for the example's size only (logits off by 0.5 elsewhere).

int8: quantize_static in QDQ format, per-channel int8 weights, uint8 activations calibrated (MinMax) on training
images pre-processed as at evaluation; h-swish rewritten to int8 arithmetic (int8_hard_sigmoid); all of a detector but
its network, and the segmentation logits' final upsampling, stay float.
"""
import json
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssd import SSD
from torchvision.ops import batched_nms

from .errors import MbtasksError
from .heads.lraspp import PaperPool
from .io.records import Record
from .onnx_runtime import EXPORT_KEY, RECORD_KEY, create_session, require
from .tasks import TASKS

OPSET = 17
# ONNX Runtime against PyTorch, fp32: probabilities, logits and embeddings in their own units, boxes as a fraction of
# the image's side (1e-4 of 320 pixels is 0.03 pixels; float32 itself steps 3e-5 pixels there). Both
# runtimes do the same float arithmetic in another order: differences are ~1e-6.
TOLERANCE = 1e-4
# The detection graph's box decoding and softmax, and its selection: their nodes are named /decode/..., /select/...
# (int8 leaves every node of a detector outside /backbone/ and /head/ float).
DECODER, SELECT = "decode", "select"


@dataclass
class ExportReport:
    """What `mbtasks export` prints: the file, its size and the check against PyTorch."""

    path: Path
    size_bytes: int
    differences: dict[str, float]  # output name -> largest |onnxruntime - pytorch| over the samples, in its units
    num_samples: int
    int8: bool
    box_side: int | None = None  # det: the longest image side boxes are measured against
    calibration_images: int = 0  # int8: how many training images set the ranges

    @property
    def largest_difference(self) -> float:
        """The largest difference with boxes as a fraction of the image side: what is held to 1e-4 (fp32)."""
        return max(v / self.box_side if k == "boxes" else v for k, v in self.differences.items())

    def summary(self) -> str:
        parts = [f"{k} {v:.3g} pixels of the {self.box_side}-pixel input" if k == "boxes" else f"{k} {v:.3g}"
                 for k, v in self.differences.items()]
        return (f"largest |onnxruntime - pytorch| difference: {self.largest_difference:.3g} ({', '.join(parts)}; "
                f"{self.num_samples} validation images{'; int8 is not held to 1e-4' if self.int8 else ''})")


class BoxDecoder(nn.Module):
    """SSD's box decoding (torchvision's BoxCoder, weights 10, 10, 5, 5), clipping and softmax, over a batch."""

    def __init__(self, anchors: torch.Tensor, weights: tuple[float, ...], clip: float, size: tuple[int, int]):
        super().__init__()
        sizes = anchors[:, 2:] - anchors[:, :2]
        self.register_buffer("centres", (anchors[:, :2] + 0.5 * sizes)[None])
        self.register_buffer("sizes", sizes[None])
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32))
        self.register_buffer("upper", torch.tensor([size[1], size[0]] * 2, dtype=torch.float32))
        self.clip = clip

    def forward(self, deltas: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        deltas = deltas / self.weights
        centres = deltas[..., :2] * self.sizes + self.centres
        halves = 0.5 * (torch.exp(deltas[..., 2:].clamp(max=self.clip)) * self.sizes)
        boxes = torch.cat([centres - halves, centres + halves], dim=-1)
        boxes = torch.minimum(boxes.clamp(min=0), self.upper)
        return boxes, torch.softmax(logits, dim=-1)


class ClassNMS(torch.autograd.Function):
    """NMS within each class: ONNX's NonMaxSuppression in the graph, torchvision's batched_nms when run in PyTorch.
    boxes (1, anchors, 4), scores (1, classes, anchors) -> (kept, 3) rows of (0, class, anchor)."""

    @staticmethod
    def forward(ctx, boxes: torch.Tensor, scores: torch.Tensor, iou: float, score_thresh: float) -> torch.Tensor:
        classes, anchors = (scores[0] > score_thresh).nonzero(as_tuple=True)
        keep = batched_nms(boxes[0][anchors], scores[0][classes, anchors], classes, iou)
        return torch.stack([torch.zeros_like(keep), classes[keep], anchors[keep]], 1)

    @staticmethod
    def symbolic(g, boxes, scores, iou: float, score_thresh: float):
        def constant(value, dtype):
            return g.op("Constant", value_t=torch.tensor([value], dtype=dtype))

        return g.op("NonMaxSuppression", boxes, scores, constant(1 << 30, torch.int64),
                    constant(iou, torch.float32), constant(score_thresh, torch.float32))


class SelectDetections(nn.Module):
    """torchvision SSD's postprocess_detections for one image, vectorised over classes: scores above score_thresh, at
    most topk_candidates per class, NMS per class, the best detections_per_img."""

    def __init__(self, score_thresh: float, nms_thresh: float, detections_per_img: int, topk_candidates: int):
        super().__init__()
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_img, self.topk_candidates = detections_per_img, topk_candidates

    def forward(self, boxes: torch.Tensor, probabilities: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """boxes (1, anchors, 4), probabilities (1, anchors, classes), class 0 the background -> boxes, scores, labels."""
        scores = probabilities[0, :, 1:].t()  # (classes - 1, anchors)
        k = min(self.topk_candidates, scores.shape[1])
        # torchvision runs NMS on each class's top k candidates. Greedy NMS over all of them keeps the same boxes
        # among those k (a box is only suppressed by a better one, which is among them too), so the top-k rule can
        # wait until after NMS, on the few survivors: masking the whole score matrix cost 0.6 ms of ONNX Runtime's
        # 15. Only a class with more than k candidates has a k-th score to meet (TopK over every class cost 4 ms).
        crowded = ((scores > self.score_thresh).sum(1) > k).nonzero()[:, 0]
        kth = torch.zeros_like(scores[:, 0]).index_put((crowded,), scores[crowded].topk(k, dim=1).values[:, -1])
        kept = ClassNMS.apply(boxes, scores[None], self.nms_thresh, self.score_thresh)
        classes, anchors = kept[:, 1], kept[:, 2]
        survivor_scores = scores[classes, anchors]
        among_top_k = (survivor_scores >= kth[classes]).nonzero()[:, 0]
        classes, anchors = classes[among_top_k], anchors[among_top_k]
        best, order = survivor_scores[among_top_k].sort(descending=True)
        order = order[:self.detections_per_img]
        return boxes[0][anchors[order]], best[:self.detections_per_img], classes[order] + 1


class DetectionGraph(nn.Module):
    """An SSD end to end, as exported: one [0, 1] image (1, 3, H, W) of any size -> its detections (boxes xyxy in its
    pixels, scores, labels), as torchvision's SSD returns them."""

    def __init__(self, ssd: SSD):
        super().__init__()
        width, height = ssd.transform.fixed_size
        self.size = (height, width)
        self.register_buffer("mean", torch.tensor(ssd.transform.image_mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(ssd.transform.image_std).view(1, -1, 1, 1))
        self.backbone, self.head = ssd.backbone, ssd.head
        coder = ssd.box_coder
        setattr(self, DECODER, BoxDecoder(_anchors(ssd, self.size), coder.weights, coder.bbox_xform_clip, self.size))
        self.postprocess = {"score_thresh": ssd.score_thresh, "nms_thresh": ssd.nms_thresh,
                            "detections_per_img": ssd.detections_per_img, "topk_candidates": ssd.topk_candidates}
        setattr(self, SELECT, SelectDetections(**self.postprocess))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # As torchvision's GeneralizedRCNNTransform: bilinear resize to the fixed size, normalise; boxes scaled back.
        x = F.interpolate(image, size=self.size, mode="bilinear", align_corners=False)
        features = list(self.backbone((x - self.mean) / self.std).values())
        outputs = self.head(features)
        boxes, scores, labels = getattr(self, SELECT)(*getattr(self, DECODER)(outputs["bbox_regression"],
                                                                             outputs["cls_logits"]))
        image_size = torch._shape_as_tensor(image)[2:].to(boxes.dtype)  # a Shape node: any input size
        scale = (image_size / torch.tensor(self.size, dtype=boxes.dtype)).flip(0).repeat(2)
        return boxes * scale, scores, labels


def _anchors(ssd: SSD, size: tuple[int, int]) -> torch.Tensor:
    """The default boxes of an image of `size`, in its pixels (they depend on the size alone)."""
    images = torch.zeros(1, 3, *size)
    with torch.no_grad():
        features = list(ssd.backbone(images).values())
        return ssd.anchor_generator(ImageList(images, [size]), features)[0]


def export_onnx(model: nn.Module, record: Record, data: pl.LightningDataModule, out: str | Path, *, int8: bool = False,
                calibration: int = 100, samples: int = 4) -> ExportReport:
    """Write `model` (the inference copy of the checkpoint's network) to ONNX with the record in its metadata, int8
    if asked, and compare ONNX Runtime with PyTorch on `samples` validation images; fp32 must agree within 1e-4."""
    onnx = require("onnx")
    task, out = record.task, Path(out)
    model = model.eval()
    graph = DetectionGraph(model) if task == "det" else model
    data.prepare_data()
    data.setup("fit" if int8 else "validate")
    inputs = [_graph_input(task, item) for item in _first(data.val_set, samples)]
    fixed = any(isinstance(m, PaperPool) for m in model.modules())
    settings = {"graph": task, "opset": OPSET, "int8": int8,
                "input_size": list(inputs[0].shape[-2:]) if fixed else None}
    if task == "det":
        settings["postprocess"] = graph.postprocess
    out.parent.mkdir(parents=True, exist_ok=True)
    calibrated = 0
    with tempfile.TemporaryDirectory() as scratch:
        fp32 = Path(scratch) / "fp32.onnx"
        _torch_export(graph, inputs[0], fp32, task, dynamic_size=not fixed)
        if int8:
            reader = _calibration_reader(task, data, calibration)
            _quantize(fp32, out, reader)
            calibrated = len(reader)
        proto = onnx.load(str(out if int8 else fp32))
    for key, value in ((RECORD_KEY, json.dumps(record.to_dict())), (EXPORT_KEY, json.dumps(settings))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(out))
    box_side = max(max(x.shape[-2:]) for x in inputs) if task == "det" else None
    report = ExportReport(out, out.stat().st_size, _compare(graph, out, inputs, output_names(task)), len(inputs),
                          int8, box_side, calibrated)
    if not int8 and report.largest_difference > TOLERANCE:
        raise MbtasksError(f"fails the check against pytorch (> {TOLERANCE:g}): {report.summary()}; the file is kept "
                           "for inspection", out)
    return report


def output_names(task: str) -> list[str]:
    """The exported graph's outputs for a task."""
    return list(TASKS.get(task).graph_outputs)


def _first(dataset, count: int) -> list:
    return [dataset[i] for i in range(min(count, len(dataset)))]


def _graph_input(task: str, item) -> torch.Tensor:
    """A batch of one graph input from a data set item pre-processed as at evaluation."""
    if isinstance(item, dict):  # segmentation
        image = item["image"]
    elif task == "det":  # (image, target): the graph resizes it itself
        image = item[0]
    else:  # (index, image, ...) from the image tasks' validation sets, (image, target) from their training sets
        image = item[1] if isinstance(item[0], int) else item[0]
    return image[None].float().contiguous()


def _torch_export(graph: nn.Module, example: torch.Tensor, path: Path, task: str, dynamic_size: bool) -> None:
    """torch.onnx's TorchScript exporter, batch dynamic and, where asked, height and width (seg: of the logits too);
    det: one image of any size in, any number of detections out."""
    size = {2: "height", 3: "width"} if dynamic_size else {}
    if task == "det":
        dynamic = {"images": size, **{name: {0: "detections"} for name in output_names(task)}}
    else:
        dynamic = {"images": {0: "batch", **size}, **{name: {0: "batch"} for name in output_names(task)}}
    if task == "seg":
        dynamic["logits"].update(size)
    with warnings.catch_warnings(), torch.no_grad():
        # TracerWarnings about shapes turned into constants: they are the fixed sizes the graph is exported at.
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (example,), str(path), input_names=["images"], output_names=output_names(task),
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)


def _compare(graph: nn.Module, path: Path, inputs: list[torch.Tensor], names: list[str]) -> dict[str, float]:
    """Largest |onnxruntime - pytorch| per output over the inputs (det: between each detection and its twin)."""
    session = create_session(path)
    largest = dict.fromkeys(names, 0.0)
    for x in inputs:
        with torch.no_grad():
            expected = graph(x)
        expected = [e.numpy() for e in (expected if isinstance(expected, tuple) else (expected,))]
        got = session.run(names, {"images": x.numpy()})
        differences = _detection_differences(expected, got) if names == output_names("det") else [
            float(np.abs(want - have).max()) for want, have in zip(expected, got)]
        for name, difference in zip(names, differences):
            largest[name] = max(largest[name], difference)
    return largest


def _detection_differences(expected: list[np.ndarray], got: list[np.ndarray]) -> list[float]:
    """Boxes, scores, labels of two lists of detections. Scores are compared sorted. Each detection is paired with
    the one of the same label whose box is nearest in the other list; boxes are compared over the pairs within a
    pixel, and `labels` is the share of detections left without such a twin and without a score tie (within 1e-6) to
    explain it: which of two tied boxes NMS keeps, or which comes last in the top N, is a matter of the last bit
    (flat image regions give many anchors the same score). A different count is an infinite difference."""
    (want_boxes, want_scores, want_labels), (boxes, scores, labels) = expected, got
    if len(boxes) != len(want_boxes):
        return [float("inf")] * 3
    if len(boxes) == 0:
        return [0.0] * 3
    distance = np.abs(boxes[:, None] - want_boxes[None]).max(-1)
    distance[labels[:, None] != want_labels[None]] = np.inf
    nearest = distance.min(1)
    paired = nearest <= 1.0
    # An unpaired detection's score met in the other list, or twice in its own, is a tie between two detections.
    gaps = np.abs(scores[:, None] - scores[None])
    np.fill_diagonal(gaps, np.inf)
    tied = (gaps.min(1) <= 1e-6) | (np.abs(scores[:, None] - want_scores[None]).min(1) <= 1e-6)
    unexplained = (~paired & ~tied).mean()  # a detection without a twin, and without a tie to explain it
    return [float(nearest[paired].max()) if paired.any() else float("inf"),
            float(np.abs(np.sort(scores) - np.sort(want_scores)).max()), float(unexplained)]


# ---- int8 ----


def calibration_set(task: str, data: pl.LightningDataModule):
    """The training images through the evaluation pre-processing (no augmentation): what the int8 ranges are set on."""
    import copy

    from .datasets.segmentation_transforms import segmentation_eval_transforms

    if data.train_set is None:
        raise MbtasksError("int8 calibration needs the training set; set data.root / data.train_split")
    if task == "det":
        dataset = copy.copy(data.train_set)
        dataset.transforms = data.val_set.transforms
    elif task == "seg":
        dataset = copy.copy(data.train_set)
        dataset.transform = segmentation_eval_transforms()
    else:
        dataset = copy.copy(data.train_set.dataset)  # the image tasks wrap theirs in Indexed
        dataset.transform = data.transform(False)
    return dataset


def _calibration_reader(task: str, data: pl.LightningDataModule, count: int):
    """`count` training images spread over the whole set (which may be sorted by class), read one at a time."""
    from onnxruntime.quantization import CalibrationDataReader

    dataset = calibration_set(task, data)
    indices = np.unique(np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int)).tolist()

    class Reader(CalibrationDataReader):
        # __len__ and set_range: ONNX Runtime's strided MinMax calibrates a slice at a time (CalibStridedMinMax).
        def __init__(self):
            self.items = iter(indices)

        def __len__(self) -> int:
            return len(indices)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.items = iter(indices[start_index:end_index])

        def get_next(self) -> dict | None:
            index = next(self.items, None)
            return None if index is None else {"images": _graph_input(task, dataset[index]).numpy()}

    return Reader()


def _quantize(fp32: Path, out: Path, reader) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = fp32.with_name("prepared.onnx")
    quant_pre_process(str(fp32), str(prepared))  # shape inference and ORT's basic fusions before quantising
    graph = onnx.load(str(prepared)).graph
    outputs = {output.name for output in graph.output}
    # Left float: everything of a detector but its network (resizing, normalisation, box decoding, softmax, selection,
    # scaling), and the upsampling of segmentation logits to the input
    # size (in uint8 it needs a dequantisation at full resolution: LR-ASPP v3-Large at 1024x2048 took 0.69x of fp32's
    # time instead of 0.86x).
    detector = any(node.name.startswith(f"/{DECODER}/") for node in graph.node)
    excluded = [node.name for node in graph.node
                if (detector and node.name.startswith("/") and not node.name.startswith(("/backbone/", "/head/")))
                or (node.op_type == "Resize" and node.output[0] in outputs)]
    # uint8 activations, int8 weights per output channel: ONNX Runtime's fast path on x86 (int8 activations were
    # 2.6x slower here); MinMax ranges cost the demos 0.01 points or less.
    quantize_static(str(prepared), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=excluded,
                    # One image at a time, ranges merged: a whole set's intermediate tensors would not fit in memory.
                    extra_options={"CalibStridedMinMax": 1})
    model = onnx.load(str(out))
    int8_hard_sigmoid(model)
    onnx.save(model, str(out))


def int8_hard_sigmoid(model) -> int:
    """Rewrite each quantised HardSigmoid (h-swish and squeeze-excitation gates) as int8 arithmetic; returns how many.

    ONNX Runtime has no int8 HardSigmoid: it runs it in float between a dequantise and a quantise, which made int8
    MobileNetV3 no faster than fp32. hardsigmoid(x) = clip(x + 3, 0, 6) / 6: an Add quantised to [0, 6] (uint8 scale
    6/255, so saturation is the clip) read back with scale 1/255 (the / 6) is the same function at the same 1/255
    resolution, and ONNX Runtime fuses it into QLinearAdd.
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    initializers = {init.name: init for init in graph.initializer}

    def uint8_quantise(node) -> bool:
        zero_point = initializers.get(node.input[2]) if len(node.input) > 2 else None
        return (node.op_type == "QuantizeLinear" and zero_point is not None
                and zero_point.data_type == onnx.TensorProto.UINT8)

    rewritten = 0
    for node in graph.node:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "HardSigmoid" or abs(attributes.get("alpha", 0.2) - 1 / 6) > 1e-6
                or abs(attributes.get("beta", 0.5) - 0.5) > 1e-6):
            continue
        quantise = consumers.get(node.output[0], [])
        if len(quantise) != 1 or not uint8_quantise(quantise[0]):
            continue
        dequantise = consumers.get(quantise[0].output[0], [])
        if not dequantise or any(d.op_type != "DequantizeLinear" for d in dequantise):
            continue
        node.op_type = "Add"
        del node.attribute[:]
        node.input.append("hardsigmoid_three")
        quantise[0].input[1:] = ["hardsigmoid_six_scale", "hardsigmoid_zero"]
        for d in dequantise:
            d.input[1:] = ["hardsigmoid_one_scale", "hardsigmoid_zero"]
        rewritten += 1
    if rewritten:
        constants = {"hardsigmoid_three_q": np.array(255, np.uint8), "hardsigmoid_three_scale": np.float32(3 / 255),
                     "hardsigmoid_six_scale": np.float32(6 / 255), "hardsigmoid_one_scale": np.float32(1 / 255),
                     "hardsigmoid_zero": np.array(0, np.uint8)}
        graph.initializer.extend(numpy_helper.from_array(np.asarray(v), k) for k, v in constants.items())
        graph.node.insert(0, helper.make_node("DequantizeLinear", ["hardsigmoid_three_q", "hardsigmoid_three_scale",
                                                                   "hardsigmoid_zero"], ["hardsigmoid_three"]))
        used = {name for node in graph.node for name in node.input}
        unused = [init for init in graph.initializer if init.name not in used]
        for init in unused:
            graph.initializer.remove(init)
    return rewritten
