"""Exported models run by ONNX Runtime, behind the same contract as the PyTorch models in eval mode.

- `OnnxModel`: a normalised NCHW batch -> the network's output tensor, as the task's model (attr, embed, cls; seg's
  task puts it behind the segmenter's {"out": logits}).
- `OnnxDetector`: a list of CHW float images in [0, 1] -> a list of dicts boxes / scores / labels in the pixels
  of each input image (det). The graph holds all of it (resizing, normalisation, network, box decoding, torchvision
  SSD's selection, the boxes scaled back): one image per run.
Which wrapper a file gets is its task's choice (`BaseTask.runtime_model`).

An mbtasks ONNX file carries the checkpoint's record (task, model, options, class names, category ids, config) and the
export settings (opset, int8, the fixed input size of a graph that has one, a detector's selection settings) as JSON
in its metadata, under `mbtasks` and `export`.
"""

import json
from pathlib import Path

import torch
from torch import nn

from ..errors import MbtasksError, missing_package
from .records import RECORD_KEY, Record

EXPORT_KEY = "export"


def create_session(
    path: str | Path, threads: int | None = None, disabled_optimizers: list[str] | None = None, spinning: bool = True
):
    """An ONNX Runtime CPU session with every graph optimisation but `disabled_optimizers` and those the file's export
    settings name (an int8 choice may need one off); `threads` defaults to torch's intra-op threads, so
    OMP_NUM_THREADS and torch.set_num_threads limit both runtimes alike. `spinning`: its worker threads spin between
    operators (ONNX Runtime's default, fastest for one model run over and over)."""
    ort = require("onnxruntime")

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: the optimiser's notes are not the user's business
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    try:
        session = ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled_optimizers
        )
        stored = json.loads(session.get_modelmeta().custom_metadata_map.get(EXPORT_KEY, "{}"))
        wanted = stored.get("disabled_optimizers") if isinstance(stored, dict) else None
        if wanted and not disabled_optimizers:
            session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=wanted
            )
        return session
    except json.JSONDecodeError:
        raise MbtasksError("has export metadata that is not JSON", path) from None
    except Exception as error:  # ORT raises its own types (InvalidProtobuf, Fail, NoSuchFile) for a bad file
        raise MbtasksError(
            f"not an ONNX model ONNX Runtime can load ({str(error).splitlines()[0][:200]})", path
        ) from None


def require(module: str):
    """An optional dependency (the `export` extra), or one clear error naming it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise missing_package(module) from None


def read_metadata(session, path: str | Path) -> tuple[Record, dict]:
    """(the checkpoint's record, the export settings) stored in an mbtasks ONNX file."""
    stored = session.get_modelmeta().custom_metadata_map
    if RECORD_KEY not in stored or EXPORT_KEY not in stored:
        raise MbtasksError("is an ONNX model without mbtasks metadata (write it with `mbtasks export`)", path)
    return Record.from_dict(json.loads(stored[RECORD_KEY])), json.loads(stored[EXPORT_KEY])


def open_onnx_model(
    path: str | Path, task: str | None = None, threads: int | None = None
) -> tuple[object, Record, dict]:
    """(an ONNX Runtime session of an exported model, its record, its export settings); `task`, when given, must be
    the model's. The task's `runtime_model` puts the session behind its model's contract."""
    if not Path(path).is_file():
        raise MbtasksError("no such file", path)
    session = create_session(path, threads)
    record, settings = read_metadata(session, path)
    if task is not None and record.task != task:
        raise MbtasksError(f"is an ONNX model of a {record.task} model, not {task}", path)
    return session, record, settings


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
            raise MbtasksError(
                f"was exported for {h}x{w} inputs only (LR-ASPP pooling: paper follows the input "
                f"size), got {images.shape[-2]}x{images.shape[-1]}",
                self.path,
            )
        array = images.detach().float().cpu().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


class OnnxDetector(nn.Module):
    """An exported SSD, end to end in the graph: each CHW [0, 1] image -> its boxes (its pixels), scores, labels."""

    def __init__(self, session, settings: dict, path: str | Path = "<onnx>"):
        super().__init__()
        self.session, self.path = session, path

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        detections = []
        for image in images:
            outputs = self.session.run(None, {"images": image[None].detach().float().cpu().contiguous().numpy()})
            detections.append(
                {name: torch.from_numpy(array) for name, array in zip(("boxes", "scores", "labels"), outputs)}
            )
        return detections
