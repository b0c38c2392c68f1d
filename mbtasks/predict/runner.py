"""A trained model (a checkpoint, or an exported ONNX file or ExecuTorch program) applied to photos: Lightning's
predict loop streams them from the DataLoader onto the device, and the task writes each answer as it comes (a
BasePredictionWriter)."""

import re
import sys
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader

from ..errors import MbtasksError
from ..io.records import Record, read_checkpoint
from ..layers.fusion import for_inference
from ..tasks import TASKS
from ..tasks.base import BaseTask, loader_worker_setup
from ..tasks.runtime import load_executorch_model, load_onnx_model
from .inputs import PhotoFiles, find_images, keep_list, picture_names


def load_predictor(model_file: str | Path, task: str | None = None) -> tuple[BaseTask, Record, str]:
    """(the task module with the file's network, as evaluate runs it; its record; the runtime: torch, onnxruntime
    or executorch). The task, its classes and its recipe come from the file (`task`, when given, must be its)."""
    path = Path(model_file)
    onnx_model, runtime = None, {".onnx": "onnxruntime", ".pte": "executorch"}.get(path.suffix.lower(), "torch")
    if runtime != "torch":
        onnx_model, record = (load_onnx_model if runtime == "onnxruntime" else load_executorch_model)(path, task)
    else:
        record = read_checkpoint(path, task)
    if record.task not in TASKS:
        raise MbtasksError(
            f"is a model of task {record.task!r}, which predict does not know (it knows {', '.join(TASKS.names())})",
            path,
        )
    module = TASKS.get(record.task).from_record(record, source=path)  # an ONNX file's record holds no weights
    module.model = for_inference(module.model) if onnx_model is None else onnx_model
    return module, record, runtime


def accelerator(device: str, runtime: str) -> tuple[str, int | list[int]]:
    """Lightning's (accelerator, devices) for --device auto | cpu | cuda | cuda:N."""
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if device not in ("auto", "cpu") and not match:
        raise MbtasksError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if runtime != "torch":
        if match:
            raise MbtasksError(f"an exported file runs in {runtime} on the CPU: drop --device or give --device cpu")
        return "cpu", 1
    if not match:
        return device, 1
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise MbtasksError(
            f"--device {device}: {torch.cuda.device_count()} CUDA devices here "
            f"(torch.cuda.is_available() is {torch.cuda.is_available()})"
        )
    return "gpu", [index]


class PhotoWriter(BasePredictionWriter):
    """Each batch's answers written as they come; unreadable files reported (one line each) and counted."""

    def __init__(self, out: Path):
        super().__init__(write_interval="batch")
        self.out = out
        self.entries: list[dict] = []
        self.skipped = 0

    def write_on_batch_end(self, trainer, task, answers, batch_indices, batch, batch_index, dataloader_index):
        readable = [item for item in batch if "error" not in item]
        for item in batch:
            if "error" in item:
                self.skipped += 1
                print(f"mbtasks: warning: {item['error']}; skipped", file=sys.stderr)
        for item, answer in zip(readable, answers, strict=True):
            self.entries.append(task.write_prediction(self.out, item, answer))


def refuse_writing_over_inputs(files: list, paths: list[str], out: Path) -> None:
    """No answer may replace a photo it was read from: an --out inside the inputs' folders could (photo.png's
    drawing is OUT/photo.png; seg writes under overlay/ and labels/, Cityscapes under labels/labelIds/ too).
    `paths`: what the run writes under `out` (`BaseTask.prediction_paths`)."""
    inputs = {Path(file).resolve(): file for file in files}
    for path in paths:
        written = (out / path).resolve()
        if written in inputs:
            raise MbtasksError("its drawing would replace an input image (choose another --out)", inputs[written])


def refuse_replacing_predictions(paths: list[str], out: Path) -> None:
    """An earlier run's answers under `out` (of `paths`) are replaced only with --overwrite; other files there are no
    concern."""
    existing = [path for path in paths if (out / path).exists()]
    if existing:
        raise MbtasksError(
            f"holds {len(existing)} of the files this run would write (first: {existing[0]}): pass "
            "--overwrite to replace them, or choose another --out",
            out,
        )


def predict(
    model_file: str | Path,
    inputs: list[str],
    out: str | Path,
    *,
    task: str | None = None,
    options: dict | None = None,
    batch_size: int = 8,
    workers: int = 2,
    device: str = "auto",
    strict: bool = False,
    overwrite: bool = False,
    progress_bar: bool = True,
    picture_format: str = "auto",
) -> list[str]:
    """Apply a checkpoint or exported ONNX file to the photos of `inputs` (files, folders, globs), writing under
    `out` what its task writes (`BaseTask.write_prediction` / `write_predictions`); returns the lines to print.

    `options` are the task's (`prediction_defaults`: det score_threshold, keep_threshold; seg scales, flip; attr
    threshold; embed threshold, pairs); pictures are drawn in `picture_format` (auto: JPEG for JPEG photos, else
    PNG; png; jpg). A file that is not an image is skipped with a warning, or stops the run with `strict`. Files
    of an earlier run under `out` are refused before any photo is read, or replaced with `overwrite`.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MbtasksError("is a file, not a folder for the predictions", out)
    if batch_size < 1 or workers < 0:
        raise MbtasksError("--batch-size must be at least 1 and --workers at least 0")
    module, record, runtime = load_predictor(model_file, task)
    for key, value in (options or {}).items():
        if key not in module.prediction_defaults:
            raise MbtasksError(f"--{key.replace('_', '-')} does not apply to a {record.task} model", model_file)
        module.prediction_options[key] = value
    files, names = find_images(inputs)
    names = picture_names(files, names, picture_format)
    paths = module.prediction_paths(names)
    refuse_writing_over_inputs(files, paths, out)
    if not overwrite:
        refuse_replacing_predictions(paths, out)
    module.prepare_predictions(files)
    hardware, devices = accelerator(device, runtime)
    transform = TASKS.get(record.task).data_module.predict_transform(module.config)
    loader = DataLoader(
        PhotoFiles(files, names, transform, strict),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=keep_list,
        worker_init_fn=loader_worker_setup,
    )
    out.mkdir(parents=True, exist_ok=True)
    writer = PhotoWriter(out)
    trainer = pl.Trainer(
        accelerator=hardware,
        devices=devices,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress_bar,
        callbacks=[writer],
        default_root_dir=out,
    )
    with warnings.catch_warnings():
        # the worker count is the user's choice (--workers), not something for Lightning to advise on
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.predict(module, dataloaders=loader, return_predictions=False)
    lines = module.write_predictions(out, writer.entries)
    skipped = f", {writer.skipped} skipped (not images)" if writer.skipped else ""
    return [
        f"predicted {len(writer.entries)} images{skipped} with {record.task} model {record.model} ({runtime}, "
        f"{trainer.strategy.root_device}) into {out}",
        *lines,
    ]
