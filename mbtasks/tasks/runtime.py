"""An exported model behind its task's model contract, in ONNX Runtime or ExecuTorch."""

from pathlib import Path

from torch import nn

from ..io.executorch_runtime import open_program
from ..io.onnx_runtime import open_onnx_model
from ..io.records import Record
from .registry import TASKS


def load_onnx_model(path: str | Path, task: str | None = None, threads: int | None = None) -> tuple[nn.Module, Record]:
    """The ORT wrapper of an exported model, as its task chooses it, and its record; `task`, when given, must be the
    model's."""
    session, record, settings = open_onnx_model(path, task, threads)
    return TASKS.get(record.task).runtime_model(session, settings, path), record


def load_executorch_model(
    path: str | Path, task: str | None = None, threads: int | None = None
) -> tuple[nn.Module, Record]:
    """The ExecuTorch wrapper of an exported program, as its task chooses it, and its record; `task`, when given, must
    be the model's."""
    program, record, settings = open_program(path, task, threads)
    return TASKS.get(record.task).runtime_model(program, settings, path, runtime="executorch"), record
