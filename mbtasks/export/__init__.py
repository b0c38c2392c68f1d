"""ONNX export of a trained model (fp32, or int8 by static QDQ quantisation), checked against PyTorch in ONNX Runtime.

What the graph holds (io/onnx_runtime.py runs it behind the PyTorch model's contract):
- seg, attr, embed, cls: the network of the inference copy (batch norm folded): a normalised NCHW batch `images` ->
  `logits` (seg: at the input resolution; attr: one per attribute; cls: one per class) or unit `embeddings` (embed).
  Batch, height and width are dynamic, except for LR-ASPP with `pooling: paper`, whose window follows the input
  size: that graph is fixed to the validation images' size.
- det: the whole detector, end to end: one [0, 1] image of any size -> `boxes`, `scores`, `labels`
  (models/detection_graph.py).
Each task says what its graph is (`BaseTask.graph` and the other `graph_*` hooks): this file names no task.

The exporter is torch.onnx's TorchScript one (dynamo=False): the dynamo exporter gives the same ORT latency but, with a
dynamic height and width, exported LR-ASPP's upsampling for the example's size only (logits off by 0.5 elsewhere).
int8 quantises that fp32 graph, or that of the network with its expansions padded to 16 channels
(channel_padding.py), whichever way ONNX Runtime runs fastest here (int8.py). The data module gives the images, as
the graph takes them: its validation images for the check, its training images for int8 calibration
(`graph_inputs`).
"""

import json
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn

from ..errors import MbtasksError
from ..heads.lraspp import PaperPool
from ..io.onnx_runtime import EXPORT_KEY, create_session, require
from ..io.outputs import output_file, replaced_atomically, writing_to
from ..io.records import RECORD_KEY, Record
from ..tasks import TASKS, BaseTask
from .channel_padding import padded_expansions
from .int8 import CHOICE_RUNS, calibration_reader, choose, prepare, quantize, saturating_int8_kernels

OPSET = 17
# ONNX Runtime against PyTorch, fp32: probabilities, logits and embeddings in their own units, boxes as a fraction of
# the image's side (1e-4 of 320 pixels is 0.03 pixels; float32 itself steps 3e-5 pixels there). Both
# runtimes do the same float arithmetic in another order: differences are ~1e-6.
TOLERANCE = 1e-4


@dataclass
class ExportReport:
    """What `mbtasks export` prints: the file, its size and the check against PyTorch."""

    path: Path
    size_bytes: int
    differences: dict[str, float]  # output name -> largest |onnxruntime - pytorch| over the samples, in its units
    num_samples: int
    int8: bool
    pixel_sides: dict[str, int] = field(default_factory=dict)  # outputs in pixels -> the input side they are held to
    calibration_images: int = 0  # int8: how many training images set the ranges
    int8_choice: dict | None = None  # int8: the way chosen and the median ms of each way tried (`choose`)

    @property
    def largest_difference(self) -> float:
        """The largest difference with pixel outputs (boxes) as a fraction of the image side: what is held to 1e-4
        (fp32)."""
        return max(v / self.pixel_sides.get(k, 1) for k, v in self.differences.items())

    def summary(self) -> str:
        parts = [
            f"{k} {v:.3g} pixels of the {self.pixel_sides[k]}-pixel input" if k in self.pixel_sides else f"{k} {v:.3g}"
            for k, v in self.differences.items()
        ]
        return (
            f"largest |onnxruntime - pytorch| difference: {self.largest_difference:.3g} ({', '.join(parts)}; "
            f"{self.num_samples} validation images{'; int8 is not held to 1e-4' if self.int8 else ''})"
        )

    def choice_summary(self) -> str:
        """int8: the way chosen and what each way tried measured, as one line."""
        choice, ms = self.int8_choice, self.int8_choice["ms"]
        times = ", ".join(f"{name} {value:.3g}" for name, value in ms.items())
        return (
            f"int8 chosen by measurement: {choice['chosen']} ({ms[choice['chosen']] / ms['fp32']:.2f}x of fp32); "
            f"median ms of {choice['runs']} runs on a {'x'.join(map(str, choice['input']))} input, "
            f"{choice['threads']} threads: {times}"
        )


def export_onnx(
    model: nn.Module,
    record: Record,
    data: pl.LightningDataModule,
    out: str | Path,
    *,
    int8: bool = False,
    calibration: int = 100,
    samples: int = 4,
) -> ExportReport:
    """Write `model` (the inference copy of the checkpoint's network) to ONNX as its task's graph, with the record
    in its metadata, int8 if asked, and compare ONNX Runtime with PyTorch on `samples` validation images; fp32 must
    agree within 1e-4."""
    onnx = require("onnx")
    task, out = TASKS.get(record.task), Path(out)
    model = model.eval()
    graph = task.graph(model)
    data.prepare_data()
    data.setup("fit" if int8 else "validate")
    inputs = [image[None].float().contiguous() for image in _first(data.graph_inputs("val"), samples)]
    fixed = any(isinstance(m, PaperPool) for m in model.modules())
    settings = {
        "graph": record.task,
        "opset": OPSET,
        "int8": int8,
        "input_size": list(inputs[0].shape[-2:]) if fixed else None,
        **task.graph_settings(graph),
    }
    output_file(out, overwrite=True)  # its folder; an existing file was refused or allowed by the caller (cmd_export)
    calibrated, choice = 0, None
    # the intermediate graphs beside the output, not in $TMPDIR (a small one would fail an export that has room),
    # removed however the export ends; a full disk or a read-only place is one line
    with writing_to(out), tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as scratch:
        fp32, quantised = Path(scratch) / "fp32.onnx", Path(scratch) / "int8.onnx"
        _torch_export(graph, inputs[0], fp32, task, dynamic_size=not fixed)
        if int8:
            images = data.graph_inputs("train")
            prepared, padded = prepare(fp32), _padded_graph(model, task, inputs[0], Path(scratch), fixed)
            # Chosen on the first calibration image, at the threads the file will run with here.
            chosen, times = choose(fp32, prepared, images[0], Path(scratch), padded=padded)
            reader = calibration_reader(images, calibration)
            quantize(padded if chosen.padded else prepared, quantised, reader, chosen)
            calibrated = len(reader)
            choice = {
                "chosen": chosen.name,
                "ms": times,
                "runs": CHOICE_RUNS,
                "threads": torch.get_num_threads(),
                "input": list(images[0].shape[-2:]),
                "weight_bits": 7 if saturating_int8_kernels() else 8,
            }
            settings["int8_choice"] = choice
            if chosen.disabled_optimizers:
                settings["disabled_optimizers"] = chosen.disabled_optimizers
        proto = onnx.load(str(quantised if int8 else fp32))
    for key, value in ((RECORD_KEY, json.dumps(record.to_dict())), (EXPORT_KEY, json.dumps(settings))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    with replaced_atomically(out) as temporary:
        onnx.save(proto, str(temporary))
    report = ExportReport(
        out,
        out.stat().st_size,
        _compare(task, graph, out, inputs),
        len(inputs),
        int8,
        task.graph_pixel_sides(inputs),
        calibrated,
        choice,
    )
    if not int8 and report.largest_difference > TOLERANCE:
        raise MbtasksError(
            f"fails the check against pytorch (> {TOLERANCE:g}): {report.summary()}; the file is kept for inspection",
            out,
        )
    return report


def _first(dataset, count: int) -> list:
    return [dataset[i] for i in range(min(count, len(dataset)))]


def _padded_graph(
    model: nn.Module, task: type[BaseTask], example: torch.Tensor, scratch: Path, fixed: bool
) -> Path | None:
    """The graph of `model` with its expansions padded to 16 channels (channel_padding.py), prepared for int8; None
    when there is nothing to pad."""
    padded, changed = padded_expansions(model)
    if not changed:
        return None
    path = scratch / "fp32_padded.onnx"
    _torch_export(task.graph(padded), example, path, task, dynamic_size=not fixed)
    return prepare(path)


def _torch_export(
    graph: nn.Module, example: torch.Tensor, path: Path, task: type[BaseTask], dynamic_size: bool
) -> None:
    """torch.onnx's TorchScript exporter, with the task's dynamic axes: height and width where asked."""
    dynamic = task.graph_dynamic_axes({2: "height", 3: "width"} if dynamic_size else {})
    with warnings.catch_warnings(), torch.no_grad():
        # TracerWarnings about shapes turned into constants: they are the fixed sizes the graph is exported at.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            input_names=["images"],
            output_names=list(task.graph_outputs),
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
        )


def _compare(task: type[BaseTask], graph: nn.Module, path: Path, inputs: list[torch.Tensor]) -> dict[str, float]:
    """Largest |onnxruntime - pytorch| per output over the inputs, as the task compares its outputs."""
    session, names = create_session(path), list(task.graph_outputs)
    largest = dict.fromkeys(names, 0.0)
    for x in inputs:
        with torch.no_grad():
            expected = graph(x)
        expected = [e.numpy() for e in (expected if isinstance(expected, tuple) else (expected,))]
        got = session.run(names, {"images": x.numpy()})
        for name, difference in zip(names, task.graph_differences(expected, got)):
            largest[name] = max(largest[name], difference)
    return largest
