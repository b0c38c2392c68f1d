"""The record of a trained model: what rebuilds it and what it was trained on, in checkpoints, weights files and
exported ONNX files alike; and loading files from elsewhere safely (torch.load with weights_only=True)."""

import io
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from ..errors import MbtasksError
from .outputs import output_file, replaced_atomically

RECORD_KEY = "mbtasks"  # where a Lightning checkpoint keeps the record
WEIGHTS_FORMAT = "mbtasks.weights/1"


@dataclass
class Record:
    """A model's record. `model` and `options` rebuild the network (`mbtasks.models.build_model`); `task`,
    `class_names`, `category_ids`, `config` (the recipe) and `metrics` (its last validation) say what it was trained
    on. A weights file imported from torchvision or timm has no task."""

    model: str
    backbone: str  # the BACKBONES version the model stands on
    options: dict = field(default_factory=dict)
    task: str = ""
    class_names: list = field(default_factory=list)
    category_ids: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    state_dict: dict = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        """Everything but the weights, as plain data (checkpoint entry, ONNX metadata)."""
        return {k: v for k, v in asdict(self).items() if k != "state_dict"}

    @classmethod
    def from_dict(cls, values: dict, state_dict: dict | None = None) -> "Record":
        known = {f.name for f in fields(cls)} - {"state_dict"}
        return cls(**{k: v for k, v in values.items() if k in known}, state_dict=state_dict or {})


def load_file(path: str | Path) -> object:
    """torch.load with weights_only=True, any failure turned into one clear error naming the file."""
    if not Path(path).is_file():
        raise MbtasksError("no such file", path)
    if Path(path).stat().st_size == 0:
        raise MbtasksError(
            "is empty (0 bytes): not a PyTorch weights file (a copy or a save that did not finish?)", path
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file; all mean the same to a user
        # the first sentence of torch's reason (its zip reader's runs on about why files get corrupted)
        reason = (str(error).strip().splitlines() or [""])[0].split(". ")[0]
        raise MbtasksError(
            f"not a PyTorch weights file, or a truncated one ({type(error).__name__}{': ' if reason else ''}{reason})",
            path,
        ) from None


def read_state_dict(path: str | Path) -> dict:
    """A plain state dict from a file saved by torch.save (a `state_dict` / `model` wrapper is unwrapped)."""
    data = load_file(path)
    for key in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise MbtasksError("does not hold a state dict of tensors", path)
    return data


def _from_loaded(data: object, path: str | Path) -> Record:
    if isinstance(data, dict) and isinstance(data.get(RECORD_KEY), dict):
        # A Lightning checkpoint of an mbtasks task: the network sits under the task's `model.` prefix.
        state = {k[len("model.") :]: v for k, v in data.get("state_dict", {}).items() if k.startswith("model.")}
        return Record.from_dict(data[RECORD_KEY], state)
    if not isinstance(data, dict) or not isinstance(data.get("model"), str) or "state_dict" not in data:
        raise MbtasksError("not an mbtasks weights file (convert it with `mbtasks weights import`)", path)
    return Record(
        data["model"],
        data.get("backbone", data["model"]),
        dict(data.get("options", {})),
        class_names=list(data.get("class_names", [])),
        category_ids=list(data.get("category_ids", [])),
        state_dict=data["state_dict"],
    )


def read_weights(path: str | Path) -> Record:
    """The record and weights of an mbtasks weights file or training checkpoint."""
    return read_record(path)[0]


def read_record(path: str | Path) -> tuple[Record, str]:
    """The record and weights of an mbtasks weights file or training checkpoint, and which it is: "checkpoint" or
    "weights"."""
    data = load_file(path)
    kind = "checkpoint" if isinstance(data, dict) and isinstance(data.get(RECORD_KEY), dict) else "weights"
    return _from_loaded(data, path), kind


def read_checkpoint(path: str | Path, task: str | None = None) -> Record:
    """A training checkpoint's record and weights; `task`, when given, must be the checkpoint's; weights that are not
    finite (of a run that diverged, written before mbtasks stopped such runs) are refused."""
    return _checkpoint_record(load_file(path), path, task)


def read_resumable(path: str | Path, task: str) -> Record:
    """read_checkpoint of a checkpoint that `--resume` can continue: one `mbtasks train` wrote, with its training
    state (optimiser, loops), not only weights."""
    data = load_file(path)
    record = _checkpoint_record(data, path, task)
    if not all(key in data for key in ("pytorch-lightning_version", "optimizer_states", "loops")):
        raise MbtasksError(
            "holds weights but no training state to resume (the optimiser's, the loops'): resume from a checkpoint "
            "a run wrote (OUT/checkpoints/last.ckpt), or start a new run from these weights with "
            f"--set model.weights={path}",
            path,
        )
    return record


def _checkpoint_record(data: object, path: str | Path, task: str | None) -> Record:
    if not isinstance(data, dict) or not isinstance(data.get(RECORD_KEY), dict):
        raise MbtasksError("is not an mbtasks training checkpoint", path)
    record = _from_loaded(data, path)
    if task is not None and record.task != task:
        raise MbtasksError(f"is a checkpoint of a {record.task} model, not {task}", path)
    if bad := non_finite_tensors(data.get("state_dict", {})):
        raise MbtasksError(
            f"holds weights that are not finite (NaN or inf) in {len(bad)} tensors, first {bad[0]}: the run that "
            "wrote it had diverged; use an earlier checkpoint of it",
            path,
        )
    return record


def non_finite_tensors(state_dict: dict) -> list[str]:
    """The names of the floating-point tensors of a state dict that hold a NaN or an infinity."""
    return [
        name
        for name, tensor in state_dict.items()
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all()
    ]


def save_weights(path: str | Path, record: Record) -> None:
    """Write a weights file: the network's state, what rebuilds it, and the classes it answers in (if known). An
    existing file is replaced: whether it may be is the caller's to decide (`weights import` asks before the work)."""
    write_torch_file(
        {
            "format": WEIGHTS_FORMAT,
            "model": record.model,
            "backbone": record.backbone,
            "options": record.options,
            "class_names": record.class_names,
            "category_ids": record.category_ids,
            "state_dict": record.state_dict,
        },
        output_file(path, overwrite=True),
    )


def write_torch_file(values: object, path: str | Path) -> None:
    """torch.save through replaced_atomically. Serialised in memory first (as Lightning's own saving does) and written
    by Python: a full disk is then an OSError naming the reason, one line (torch's file writer reports a bare position
    mismatch after a short write), and the temporary file beside `path` is removed."""
    buffer = io.BytesIO()
    torch.save(values, buffer)
    with replaced_atomically(path) as temporary:
        temporary.write_bytes(buffer.getbuffer())


def check_same_network(record: Record, name: str, module: nn.Module, path: str | Path) -> None:
    """The checkpoint being resumed holds the network this run builds (model `name`, the same shapes): another model
    or width is one line, not Lightning's hundreds of lines of size mismatches."""
    own = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    saved = {k: tuple(v.shape) for k, v in record.state_dict.items()}
    differs = next((k for k in [*own, *saved] if own.get(k) != saved.get(k)), None)  # the first in order
    if record.model == name and differs is None:
        return
    detail = (
        f"{differs}: {saved.get(differs, 'absent')} in the file, {own.get(differs, 'absent')} here"
        if differs is not None
        else "the same shapes"
    )
    raise MbtasksError(
        f"is a checkpoint of {record.model} {record.options}, not of the network this run builds ({name}; {detail}): "
        "resume with the settings it was trained with, or start a new run",
        path,
    )


def load_into(module: nn.Module, state_dict: dict, path: str | Path) -> None:
    """load_state_dict with one clear error naming the keys and shapes that do not fit."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shapes file vs model", wrong)):
        if items:
            problems.append(f"{label}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''} ({len(items)})")
    if problems:
        raise MbtasksError("does not fit the model: " + "; ".join(problems), path)
    module.load_state_dict(state_dict)
