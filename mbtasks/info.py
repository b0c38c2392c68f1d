"""`mbtasks info FILE`: what a checkpoint, weights file, exported ONNX file or ExecuTorch program holds, as
torchvision's `Weights.meta` tells of its own weights: task, model, options, classes, the recipe, the last validation
metrics, parameters, multiply-adds, file size and sha256; for a program also its input and its operators."""

import hashlib
from pathlib import Path

import yaml
from torch import nn

from .config import config_from_dict
from .errors import MbtasksError
from .io.executorch_runtime import open_program, operator_counts
from .io.onnx_runtime import create_session, read_metadata
from .io.records import Record, read_record
from .models import MODELS
from .profiling import count_madds, count_parameters, example_input
from .tasks import TASKS


def describe(path: str | Path) -> dict:
    """The file's record and figures as plain data (what `mbtasks info --json` prints)."""
    path = Path(path)
    if not path.is_file():
        raise MbtasksError("no such file", path)
    export, operators = None, None
    if path.suffix.lower() == ".onnx":
        record, export = read_metadata(create_session(path), path)
        kind = "onnx"
    elif path.suffix.lower() == ".pte":
        record, export = open_program(path)[1:]
        kind, operators = "executorch", operator_counts(path)
    else:
        record, kind = read_record(path)
    if record.model not in MODELS:
        raise MbtasksError(f"holds a model mbtasks does not know ({record.model!r})", path)
    network = MODELS.get(record.model).build(**record.options)
    return {
        "file": str(path),
        "kind": kind,
        "task": record.task,
        "model": record.model,
        "backbone": record.backbone,
        "options": record.options,
        "categories": record.class_names,
        "category_ids": record.category_ids,
        "recipe": record.config,
        "metrics": record.metrics,
        "export": export,
        "operators": operators,
        **network_figures(record, network),
        "file_size": path.stat().st_size,
        "sha256": _sha256(path),
    }


def network_figures(record: Record, network: nn.Module) -> dict:
    """num_params and madds of the record's network (as built: a segmenter's aux head counted, as torchvision counts
    it) and the input_size [height, width] they are counted at (`_profile_resolution`)."""
    resolution = _profile_resolution(record, network)
    return {
        "num_params": count_parameters(network),
        "madds": count_madds(network, example_input(resolution)),
        "input_size": list(resolution) if isinstance(resolution, tuple) else [resolution, resolution],
    }


def _profile_resolution(record: Record, network: nn.Module) -> int | tuple[int, int]:
    """The input multiply-adds are counted at: a detector's own size; else the recipe's input size; else the model's
    default size (224, 520 for segmenters: the size torchvision's segmentation metadata counts at)."""
    if MODELS.get(record.model).kind == "detector":
        return tuple(network.transform.fixed_size[::-1])  # torchvision keeps (width, height)
    if record.config and record.task in TASKS:
        size = TASKS.get(record.task).data_module.input_size(config_from_dict(record.config))
        if size is not None:
            return size if isinstance(size, int) else (int(size[0]), int(size[1]))
    return MODELS.get(record.model).size


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


KINDS = {
    "checkpoint": "training checkpoint",
    "weights": "mbtasks weights file",
    "onnx": "ONNX model",
    "executorch": "ExecuTorch program",
}


def format_info(info: dict) -> str:
    """The record as `mbtasks info` prints it: one field a line, the recipe as YAML."""
    names = info["categories"]
    shown = ", ".join(names if len(names) <= 12 else [*names[:10], "..."])
    export = info["export"]
    if export:  # an ONNX file names its opset, an ExecuTorch program its backend
        runs_on = export["backend"] if "backend" in export else f"opset {export['opset']}"
        kind = KINDS[info["kind"]] + f" ({'int8' if export['int8'] else 'fp32'}, {runs_on})"
    else:
        kind = KINDS[info["kind"]]
    h, w = info["input_size"]
    scalars = {k: v for k, v in info["metrics"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    lines = [
        f"file           {info['file']}: {kind}",
        f"task           {info['task'] or '(none: imported weights)'}",
        f"model          {info['model']} on {info['backbone']}",
        f"options        {info['options']}",
        f"classes        {len(names)}{': ' + shown if names else ''}",
        f"parameters     {info['num_params']:,}",
        f"multiply-adds  {info['madds'] / 1e9:.3f}G at {h}x{w}",
        f"file size      {info['file_size'] / 1e6:.2f} MB ({info['file_size']:,} bytes)",
        f"sha256         {info['sha256']}",
        "metrics        "
        + (", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in scalars.items()) or "(none)")
        + " (last validation)" * bool(scalars),
    ]
    if info.get("operators"):  # an ExecuTorch program: its delegates and what runs outside them
        calls = info["operators"]
        delegated = ", ".join(f"{name} x{count}" for name, count in calls["delegates"].items()) or "none"
        outside = ", ".join(f"{name} x{count}" for name, count in sorted(calls["operators"].items())) or "nothing"
        lines.insert(1, f"operators      delegated: {delegated}; outside the delegates: {outside}")
        lines.insert(1, f"export         {export['recipe']}")
        size = f", {'x'.join(map(str, export['input_size']))}" if export.get("input_size") else ""
        preprocessing = ", ".join(f"{key} {value}" for key, value in export["preprocessing"].items())
        lines.insert(1, f"input          {preprocessing}{size}")
    choice = (export or {}).get("int8_choice")
    if choice:  # what the export measured when it chose how to quantise (mbtasks.export.int8.choose)
        ms = choice["ms"]
        lines.insert(
            1,
            f"int8 choice    {choice['chosen']}: {ms[choice['chosen']] / ms['fp32']:.2f}x of fp32 when "
            f"exported (median of {choice['runs']} runs, {choice['threads']} threads, "
            f"{'x'.join(map(str, choice['input']))} input)",
        )
    if info["recipe"]:
        recipe = yaml.safe_dump(info["recipe"], sort_keys=False, default_flow_style=False)
        lines += ["recipe", *("  " + line for line in recipe.rstrip().splitlines())]
    return "\n".join(lines)
