"""Exported models run by ONNX Runtime, behind the same contract as the PyTorch models in eval mode.

- `OnnxModel` (seg, attr, embed, cls): a normalised NCHW batch -> the network's output tensor, as the task's model.
- `OnnxDetector` (det): a list of CHW float images in [0, 1] -> a list of dicts boxes / scores / labels in the pixels
  of each input image. The graph holds normalisation, network, softmax and box decoding at the detector's fixed size;
  this wrapper resizes each image to that size before it and, after it, makes torchvision SSD's selection (scores
  above score_thresh, top `topk_candidates` per class, NMS per class, `detections_per_img`) without a loop over
  classes, with ONNX Runtime's NonMaxSuppression.

An mbtasks ONNX file carries the checkpoint's record (task, model, options, class names, category ids, config) and
what the wrapper needs (input size, post-processing settings) as JSON in its metadata, under `mbtasks` and `export`.
"""
import functools
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .errors import MbtasksError

RECORD_KEY, EXPORT_KEY = "mbtasks", "export"


def create_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session with every graph optimisation; `threads` defaults to torch's intra-op threads, so
    OMP_NUM_THREADS and torch.set_num_threads limit both runtimes alike."""
    ort = require("onnxruntime")

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: the optimiser's notes are not the user's business
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT raises its own types (InvalidProtobuf, Fail, NoSuchFile) for a bad file
        raise MbtasksError(f"not an ONNX model ONNX Runtime can load ({str(error).splitlines()[0][:200]})",
                           path) from None


def require(module: str):
    """An optional dependency (the `export` extra), or one clear error."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MbtasksError(f"ONNX export and ONNX Runtime need {module}: pip install 'mbtasks[export]'") from None


def read_metadata(session, path: str | Path) -> tuple[dict, dict]:
    """(the checkpoint's record, the export settings) stored in an mbtasks ONNX file."""
    stored = session.get_modelmeta().custom_metadata_map
    if RECORD_KEY not in stored or EXPORT_KEY not in stored:
        raise MbtasksError("is an ONNX model without mbtasks metadata (write it with `mbtasks export`)", path)
    return json.loads(stored[RECORD_KEY]), json.loads(stored[EXPORT_KEY])


def load_onnx_model(path: str | Path, task: str | None = None, threads: int | None = None) -> tuple[nn.Module, dict]:
    """The ORT wrapper of an exported model and its record; `task`, when given, must be the model's."""
    if not Path(path).is_file():
        raise MbtasksError("no such file", path)
    session = create_session(path, threads)
    record, settings = read_metadata(session, path)
    if task is not None and record["task"] != task:
        raise MbtasksError(f"is an ONNX model of a {record['task']} model, not {task}", path)
    wrapper = OnnxDetector if record["task"] == "det" else OnnxModel
    return wrapper(session, settings, path), record


class OnnxModel(nn.Module):
    """An exported network: a normalised NCHW batch in, the graph's one output out (logits or embeddings)."""

    def __init__(self, session, settings: dict, path: str | Path = "<onnx>"):
        super().__init__()
        self.session, self.path = session, path
        self.input_name = session.get_inputs()[0].name
        self.fixed_size = tuple(settings["input_size"]) if settings.get("input_size") else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.fixed_size is not None and tuple(images.shape[-2:]) != self.fixed_size:
            h, w = self.fixed_size
            raise MbtasksError(f"was exported for {h}x{w} inputs only (LR-ASPP pooling: paper follows the input "
                               f"size), got {images.shape[-2]}x{images.shape[-1]}", self.path)
        array = images.detach().float().cpu().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


class OnnxDetector(nn.Module):
    """An exported SSD: resize to its size, the graph (network and box decoding), then torchvision's selection."""

    def __init__(self, session, settings: dict, path: str | Path = "<onnx>"):
        super().__init__()
        self.session, self.path = session, path
        self.size = tuple(settings["input_size"])  # (height, width)
        self.postprocess = dict(settings["postprocess"])

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        batch = torch.stack([resize_image(image.cpu(), self.size) for image in images])
        boxes, scores = self.session.run(None, {"images": batch.contiguous().numpy()})
        detections = []
        for image, image_boxes, image_scores in zip(images, torch.from_numpy(boxes), torch.from_numpy(scores)):
            found = select_detections(image_boxes, image_scores, **self.postprocess)
            found["boxes"] = scale_boxes(found["boxes"], self.size, tuple(image.shape[-2:]))
            detections.append(found)
        return detections


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A CHW [0, 1] image at the detector's size, resized as torchvision's GeneralizedRCNNTransform does."""
    return F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)[0]


def select_detections(boxes: torch.Tensor, scores: torch.Tensor, score_thresh: float, nms_thresh: float,
                      detections_per_img: int, topk_candidates: int) -> dict[str, torch.Tensor]:
    """torchvision SSD's `postprocess_detections` for one image, without its loop over classes.

    boxes (anchors, 4) decoded and clipped, scores (anchors, classes) softmax with class 0 the background. Per class:
    scores above score_thresh, at most topk_candidates of them; then NMS per class and the best detections_per_img.
    """
    scores = scores[:, 1:].T.contiguous()  # (classes - 1, anchors)
    if scores.numel() and int((scores > score_thresh).sum(1).max()) > topk_candidates:
        # Only a class's top-k may pass the threshold: the others' scores become 0.
        top, anchors = scores.topk(topk_candidates, dim=1)
        scores = torch.zeros_like(scores).scatter_(1, anchors, top)
    classes, anchors = class_nms(boxes, scores, nms_thresh, score_thresh)
    kept, order = scores[classes, anchors].topk(min(detections_per_img, len(classes)))
    return {"boxes": boxes[anchors[order]], "scores": kept, "labels": classes[order] + 1}


def class_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
              score_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """NMS within each class: boxes (anchors, 4), scores (classes, anchors) -> (class, anchor) of the boxes kept.

    ONNX Runtime's NonMaxSuppression keeps the boxes torchvision's batched_nms keeps (scores above the threshold,
    IoU above iou_threshold suppresses) and is faster on a CPU: 1.6 vs 7.7 ms for 5,500 candidates in 90 classes,
    22 vs 65 ms for 27,000 (one thread).
    """
    if scores.numel() == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty
    selected = _nms_session().run(None, {
        "boxes": boxes[None].float().contiguous().numpy(), "scores": scores[None].float().numpy(),
        "max_per_class": np.array([scores.shape[1]], np.int64), "iou_threshold": np.array([iou_threshold], np.float32),
        "score_threshold": np.array([score_threshold], np.float32)})[0]
    selected = torch.from_numpy(selected)
    return selected[:, 1], selected[:, 2]


@functools.cache
def _nms_session():
    import onnxruntime as ort
    from onnx import TensorProto, helper

    inputs = [("boxes", TensorProto.FLOAT, [1, "anchors", 4]), ("scores", TensorProto.FLOAT, [1, "classes", "anchors"]),
              ("max_per_class", TensorProto.INT64, [1]), ("iou_threshold", TensorProto.FLOAT, [1]),
              ("score_threshold", TensorProto.FLOAT, [1])]
    node = helper.make_node("NonMaxSuppression", [name for name, _, _ in inputs], ["selected"])
    graph = helper.make_graph([node], "class_nms", [helper.make_tensor_value_info(*spec) for spec in inputs],
                              [helper.make_tensor_value_info("selected", TensorProto.INT64, ["kept", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # NonMaxSuppression runs on one thread
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def scale_boxes(boxes: torch.Tensor, size: tuple[int, int], image_size: tuple[int, int]) -> torch.Tensor:
    """Boxes in the pixels of `size` -> in the pixels of the image (torchvision's resize_boxes, same arithmetic)."""
    ratio_h, ratio_w = (torch.tensor(s, dtype=torch.float32) / torch.tensor(s_in, dtype=torch.float32)
                        for s, s_in in zip(image_size, size))
    return boxes * torch.stack([ratio_w, ratio_h, ratio_w, ratio_h])
