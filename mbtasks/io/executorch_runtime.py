"""ExecuTorch programs (`.pte`, from `mbtasks export --format executorch`) run by ExecuTorch's runtime, behind the same
contract as the PyTorch models in eval mode.

- `ExecutorchModel`: a normalised NCHW batch -> the network's output tensor (attr, embed, cls; seg's task puts it
  behind the segmenter's {"out": logits}), one image per run at the size the program was exported for.
- `ExecutorchDetector`: a list of CHW float images in [0, 1] -> a list of dicts boxes / scores / labels in the pixels
  of each input image (det): the program holds all of it, selection and NMS included.
Which wrapper a file gets is its task's choice (`BaseTask.runtime_model(..., runtime="executorch")`).

The program carries, beside `forward`, a method `mbtasks_meta` that returns one string: JSON of the checkpoint's record
(under `mbtasks`) and the export settings (under `export`): one file, which an app reads with the same runtime
(`Module.execute("mbtasks_meta")`).
"""

import contextlib
import importlib
import io
import json
import logging
import os
import sys
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from ..errors import MbtasksError, missing_package
from .records import RECORD_KEY, Record

META_METHOD = "mbtasks_meta"
EXPORT_KEY = "export"


def require(module: str):
    """A module of ExecuTorch or torchao (the `mobile` extra), or one clear error naming what to install. Imported
    without the warning torchao logs on import (its enum registration, deprecated by this torch): not the user's
    business."""
    logger = logging.getLogger("torch.utils._pytree")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise missing_package(error.name or module) from None
    finally:
        logger.setLevel(level)


def runtime():
    """ExecuTorch's runtime (the `mobile` extra), or one clear error naming what to install."""
    return require("executorch.runtime").Runtime.get()


@contextlib.contextmanager
def native_logs_hidden():
    """Standard error closed to the runtime's C++ logs while it starts its thread pool: it logs the CPU files it
    reads and fails to read (/sys/devices/soc0/...), none of which is the user's business."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(io.StringIO()):
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def set_threads(threads: int | None = None) -> None:
    """ExecuTorch's thread pool (XNNPACK's threads) at `threads`, by default torch's intra-op threads, so
    OMP_NUM_THREADS and torch.set_num_threads limit every runtime alike."""
    from executorch.extension.pybindings import portable_lib

    wanted = threads or torch.get_num_threads()
    with native_logs_hidden():
        if portable_lib._threadpool_get_thread_count() != wanted:
            portable_lib._unsafe_reset_threadpool(wanted)


def read_meta(program, path: str | Path) -> tuple[Record, dict]:
    """(the checkpoint's record, the export settings) stored in an mbtasks ExecuTorch program."""
    if META_METHOD not in program.method_names:
        raise MbtasksError(
            "is an ExecuTorch program without mbtasks metadata (write it with `mbtasks export --format executorch`)",
            path,
        )
    try:
        meta = json.loads(program.load_method(META_METHOD).execute([])[0])
        return Record.from_dict(meta[RECORD_KEY]), meta[EXPORT_KEY]
    except (json.JSONDecodeError, KeyError, TypeError, IndexError):
        raise MbtasksError(f"has a {META_METHOD} method that is not mbtasks metadata", path) from None


def open_program(path: str | Path, task: str | None = None, threads: int | None = None) -> tuple[object, Record, dict]:
    """(the loaded ExecuTorch program, its record, its export settings); `task`, when given, must be the model's."""
    if not Path(path).is_file():
        raise MbtasksError("no such file", path)
    loader = runtime()
    set_threads(threads)
    try:
        with native_logs_hidden():  # the runtime logs its reasons in C++ too: the error below says them once
            program = loader.load_program(Path(path))
    except Exception as error:  # the runtime raises RuntimeError (and logs) for a file that is not a program
        raise MbtasksError(
            f"not an ExecuTorch program the runtime can load ({str(error).splitlines()[0][:200]})", path
        ) from None
    record, settings = read_meta(program, path)
    if task is not None and record.task != task:
        raise MbtasksError(f"is an ExecuTorch program of a {record.task} model, not {task}", path)
    return program, record, settings


def operator_counts(path: str | Path) -> dict[str, dict[str, int]]:
    """How often `forward` calls each operator outside a delegate, and each delegate (by backend), from the file."""
    program = require("executorch.exir._serialize._program").deserialize_pte_binary(Path(path).read_bytes())
    program = getattr(program, "program", program)  # newer releases wrap it with its named data
    plan = next(plan for plan in program.execution_plan if plan.name == "forward")
    operators, delegates = Counter(), Counter()
    for chain in plan.chains:
        for instruction in chain.instructions:
            call = instruction.instr_args
            if hasattr(call, "op_index"):
                operator = plan.operators[call.op_index]
                operators[operator.name + (f".{operator.overload}" if operator.overload else "")] += 1
            elif hasattr(call, "delegate_index"):
                delegates[plan.delegates[call.delegate_index].id] += 1
    return {"delegates": dict(delegates), "operators": dict(operators)}


class ExecutorchModel(nn.Module):
    """An exported network: a normalised NCHW batch in, the program's one output out (logits or embeddings), one image
    per run at the exported size."""

    def __init__(self, program, settings: dict, path: str | Path = "<pte>"):
        super().__init__()
        self.method, self.path = program.load_method("forward"), path
        self.size = tuple(settings["input_size"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[-2:]) != self.size:
            h, w = self.size
            raise MbtasksError(
                f"was exported for {h}x{w} inputs only, got {images.shape[-2]}x{images.shape[-1]}", self.path
            )
        batch = images.detach().float().cpu().contiguous()
        return torch.cat([self.method.execute([image[None]])[0] for image in batch])


class ExecutorchDetector(nn.Module):
    """An exported SSD, end to end in the program: each CHW [0, 1] image -> its boxes (its pixels), scores, labels."""

    def __init__(self, program, settings: dict, path: str | Path = "<pte>"):
        super().__init__()
        self.method, self.path = program.load_method("forward"), path

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return [
            dict(
                zip(
                    ("boxes", "scores", "labels"),
                    self.method.execute([image[None].detach().float().cpu().contiguous()]),
                )
            )
            for image in images
        ]
