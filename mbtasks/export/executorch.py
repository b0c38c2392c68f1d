"""ExecuTorch export of a trained model (fp32, or int8), lowered to XNNPACK, checked against PyTorch in ExecuTorch's
runtime.

The flow: torch.export of the task's graph (`BaseTask.executorch_graph`) -> for int8, XNNPACKQuantizer's symmetric
config with per-channel weights through torchao's prepare_pt2e / convert_pt2e, calibrated on the task's own training
images as the ONNX int8 export is (`graph_inputs("train")`) -> to_edge_transform_and_lower with XnnpackPartitioner ->
to_executorch. The program carries the record and the export settings as the string its `mbtasks_meta` method
returns (io/executorch_runtime.py), so one `.pte` file is all an app needs.

What the program holds: seg, attr, embed, cls the network of the inference copy at the validation images' size, batch
1 (a normalised NCHW image -> logits at the input size, or the embedding); det the whole detector, one [0, 1] image of
any size -> boxes in its pixels, scores, labels, with NMS in fixed-size operators (models/fixed_size_selection.py):
ExecuTorch runs no NonMaxSuppression and no data-dependent loop. Every operator XNNPACK takes runs in its delegate;
the export reports those it does not take (a detector's candidate selection and NMS bookkeeping, which XNNPACK has no
operators for).
"""

import copy
import functools
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from ..errors import MbtasksError
from ..io.executorch_runtime import EXPORT_KEY, META_METHOD, open_program, operator_counts, require
from ..io.outputs import output_file, replaced_atomically
from ..io.records import RECORD_KEY, Record
from ..tasks import TASKS, BaseTask
from . import ExportReport

# ExecuTorch (XNNPACK) against PyTorch, fp32: both do the same float arithmetic in another order; XNNPACK's
# convolutions accumulate in other orders than oneDNN's (measured ~1e-6 of logits of size 10, as ONNX Runtime's).
TOLERANCE = 1e-4
RECIPE = "torch.export -> XnnpackPartitioner (to_edge_transform_and_lower) -> to_executorch"
INT8_RECIPE = (
    "XNNPACKQuantizer, get_symmetric_quantization_config(is_per_channel=True): int8 weights per channel, "
    "int8 activations calibrated (min-max) on training images, torchao prepare_pt2e / convert_pt2e"
)


@dataclass
class ExecutorchReport(ExportReport):
    """What `mbtasks export --format executorch` prints: the file, its size, the check against PyTorch, and what runs
    outside XNNPACK."""

    delegates: int = 0  # XNNPACK subgraphs `forward` calls
    outside: dict[str, int] = field(default_factory=dict)  # operator -> calls outside any delegate

    def summary(self) -> str:
        return super().summary().replace("onnxruntime", "executorch")

    def delegation(self) -> str:
        """One line: how many XNNPACK subgraphs, and every operator left outside them."""
        left = ", ".join(f"{name} x{count}" for name, count in sorted(self.outside.items()))
        return (
            f"XNNPACK: {self.delegates} delegated subgraph{'s' * (self.delegates != 1)}; outside the "
            f"delegate{'s' * (self.delegates != 1)}: {left or 'nothing'}"
        )


def export_executorch(
    model: nn.Module,
    record: Record,
    data: pl.LightningDataModule,
    out: str | Path,
    *,
    int8: bool = False,
    calibration: int = 100,
    samples: int = 4,
) -> ExecutorchReport:
    """Write `model` (the inference copy of the checkpoint's network) to an ExecuTorch program lowered to XNNPACK as
    its task's graph, with the record in it, int8 if asked, and compare ExecuTorch with PyTorch on `samples`
    validation images; fp32 must agree within 1e-4."""
    exir, partitioner = executorch_modules()
    task, out = TASKS.get(record.task), Path(out)
    model = _for_xnnpack(model)
    graph = task.executorch_graph(model).eval()
    data.prepare_data()
    data.setup("fit" if int8 else "validate")
    inputs = [image[None].float().contiguous() for image in _first(data.graph_inputs("val"), samples)]
    dynamic = task.executorch_dynamic_shapes()
    exported = _export(graph, inputs[0], dynamic)
    calibrated = 0
    if int8:
        exported, calibrated = _quantised(exported, task, data.graph_inputs("train"), calibration, inputs[0], dynamic)
    settings = {
        "graph": record.task,
        "format": "executorch",
        "int8": int8,
        "input_size": None if dynamic else list(inputs[0].shape[-2:]),
        "preprocessing": task.graph_preprocessing(),
        "backend": "XNNPACK",
        "recipe": RECIPE + (f"; {INT8_RECIPE} ({calibrated} images)" if int8 else ""),
        **task.graph_settings(graph),
    }
    meta = json.dumps({RECORD_KEY: record.to_dict(), EXPORT_KEY: settings})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        edge = exir.to_edge_transform_and_lower(
            exported,
            partitioner=[partitioner()],
            compile_config=exir.EdgeCompileConfig(_check_ir_validity=False),
            constant_methods={META_METHOD: meta},
        )
        program = edge.to_executorch()
    output_file(out, overwrite=True)  # its folder; an existing file was refused or allowed by the caller (cmd_export)
    with replaced_atomically(out) as temporary:
        Path(temporary).write_bytes(program.buffer)
    counts = operator_counts(out)
    report = ExecutorchReport(
        out,
        out.stat().st_size,
        _compare(task, graph, out, inputs),
        len(inputs),
        int8,
        task.graph_pixel_sides(inputs),
        calibrated,
        delegates=sum(counts["delegates"].values()),
        outside=counts["operators"],
    )
    if not int8 and report.largest_difference > TOLERANCE:
        raise MbtasksError(
            f"fails the check against pytorch (> {TOLERANCE:g}): {report.summary()}; the file is kept for inspection",
            out,
        )
    return report


def executorch_modules():
    """(executorch.exir, XnnpackPartitioner): the `mobile` extra, or one line naming what to install."""
    exir = require("executorch.exir")
    return exir, require("executorch.backends.xnnpack.partition.xnnpack_partitioner").XnnpackPartitioner


class Hardsigmoid(nn.Module):
    """h-sigmoid as clamp(x + 3, 0, 6) / 6, PyTorch's own arithmetic, in operators XNNPACK has (it has no
    hardsigmoid: decomposed, its constants stayed outside the delegate and cut the network into pieces)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.hardtanh(x + 3.0, 0.0, 6.0) / 6.0


def _for_xnnpack(model: nn.Module) -> nn.Module:
    """A copy of `model` with weights in PyTorch's default layout (the inference copy keeps them channels-last, which
    XNNPACK's lowering refuses) and its h-sigmoids in XNNPACK's operators."""
    model = copy.deepcopy(model).eval().to(memory_format=torch.contiguous_format)
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.Hardsigmoid):
                setattr(module, name, Hardsigmoid())
    return model


def _first(dataset, count: int) -> list:
    return [dataset[i] for i in range(min(count, len(dataset)))]


def _export(graph: nn.Module, example: torch.Tensor, dynamic: dict | None):
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.export.export(graph, (example,), dynamic_shapes=(dynamic,) if dynamic else None)


def _quantised(exported, task: type[BaseTask], images, count: int, example: torch.Tensor, dynamic: dict | None):
    """(the int8 program of `exported`, how many training images calibrated it): the task's quantised modules
    (`executorch_quantised_modules`, else all) get XNNPACK's symmetric int8 config with per-channel weights."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    modules = task.executorch_quantised_modules()
    if modules:
        quantizer.set_filter_function(functools.partial(_inside, modules=set(modules)))
    # Spread over the whole set (which may be sorted by class), as the ONNX int8 export reads it.
    indices = np.unique(np.linspace(0, len(images) - 1, min(count, len(images))).round().astype(int)).tolist()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        prepared = prepare_pt2e(exported.module(), quantizer)
        for index in indices:
            prepared(images[index][None].float().contiguous())
        converted = convert_pt2e(prepared)
    return _export(converted, example, dynamic), len(indices)


def _inside(node, modules: set[str]) -> bool:
    """Whether a node of the graph belongs to one of the top-level `modules`. Weights and biases (get_attr nodes) carry
    no module stack and pass: the quantiser asks about a convolution's weight too (set_module_name refuses every
    convolution for that)."""
    if node.op == "get_attr":
        return True
    return any(name.split(".")[0] in modules for name, _ in node.meta.get("nn_module_stack", {}).values())


def _compare(task: type[BaseTask], graph: nn.Module, path: Path, inputs: list[torch.Tensor]) -> dict[str, float]:
    """Largest |executorch - pytorch| per output over the inputs, as the task compares its outputs."""
    method, names = open_program(path)[0].load_method("forward"), list(task.graph_outputs)
    largest = dict.fromkeys(names, 0.0)
    for x in inputs:
        with torch.no_grad():
            expected = graph(x)
        expected = [e.numpy() for e in (expected if isinstance(expected, tuple) else (expected,))]
        got = [g.numpy() for g in method.execute([x])]
        for name, difference in zip(names, task.graph_differences(expected, got)):
            largest[name] = max(largest[name], difference)
    return largest
