"""An exported model behind its task's model contract, in ONNX Runtime."""

from pathlib import Path

from torch import nn

from ..io.onnx_runtime import open_onnx_model
from ..io.records import Record
from .registry import TASKS


def load_onnx_model(path: str | Path, task: str | None = None, threads: int | None = None) -> tuple[nn.Module, Record]:
    """The ORT wrapper of an exported model, as its task chooses it, and its record; `task`, when given, must be the
    model's."""
    session, record, settings = open_onnx_model(path, task, threads)
    return TASKS.get(record.task).runtime_model(session, settings, path), record
