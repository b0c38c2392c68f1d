"""Shared test helpers."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

MBTASKS = str(Path(sys.executable).with_name("mbtasks"))
# The image tasks' embedded sets, kept tiny (--set settings); the classification set has 9 validation images (odd,
# for the DDP tests).
TINY_IMAGE_DATA = {
    "attr": ["data.size=[40, 32]", "data.synth={seed: 1, num_images: 30, size: [54, 44]}"],
    "embed": ["data.size=32", "data.synth={seed: 1, num_identities: 4, images_per_identity: 3, num_pair_identities: 20, "
              "pair_images_per_identity: 3, matched_per_fold: 2, size: [40, 40]}"],
    "cls": ["data.size=32", "data.synth={seed: 1, num_classes: 3, train_per_class: 4, val_per_class: 3, size: 32}"],
}


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Random batch-norm statistics and affine parameters (eval mode), so a mis-mapped tensor shows in outputs."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def task_module(task: str, settings: list[str]):
    """The task's LightningModule (untrained, seed 0) for these --set settings, on its data set's classes."""
    from mbtasks.config import load_config
    from mbtasks.tasks import TASKS

    config = load_config(None, settings, task=task)
    data = TASKS.get(task).data_module(config)
    data.prepare_data()
    data.setup("validate")
    torch.manual_seed(0)
    return TASKS.get(task).module(config.to_dict(), data.class_names, data.category_ids)


def save_checkpoint(module, path: Path) -> Path:
    """The module saved as a training checkpoint: its state and its record, as `mbtasks train` writes them."""
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


def evaluate_with_one_and_two_processes(checkpoint: Path, out_dir: Path, val_batch_size: int,
                                        images: int) -> list[dict]:
    """The checkpoint's figures from `mbtasks evaluate` on one process and on two (DDP, gloo). Each run must report
    `images` evaluated images: with an odd count the sampler pads a duplicate, which must not be counted twice."""
    figures = []
    for devices in (1, 2):
        out = out_dir / f"ddp{devices}.json"
        result = subprocess.run(
            [MBTASKS, "evaluate", "--checkpoint", str(checkpoint), "--json", str(out),
             "--set", "train.accelerator=cpu", "--set", f"train.devices={devices}", "--set",
             f"train.strategy={'ddp' if devices > 1 else 'auto'}", "--set", f"data.val_batch_size={val_batch_size}",
             "--set", "data.num_workers=0"],
            capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr[-2000:]
        assert f"evaluated {images} images" in result.stdout
        figures.append(json.loads(out.read_text()))
    return figures


# Tiny settings of each task's demo recipe for checkpoints written without training (write_checkpoint).
TINY_MODELS = {
    "det": ["model.name=ssdlite320_mobilenet_v3_small", "model.options={width_mult: 0.5}", "data.size=128"],
    "seg": ["model.name=lraspp_mobilenet_v3_small", "model.options={width_mult: 0.5}"],
    "attr": ["model.options={width_mult: 0.5}", "data.size=[40, 32]"],
    "embed": ["model.options={width_mult: 0.5, embedding_dim: 16}", "data.size=32"],
    "cls": ["model.options={width_mult: 0.5}", "data.size=32"],
}


def write_checkpoint(path: Path, task: str, class_names: list, category_ids: list = (), settings: list[str] = (),
                     metrics: dict | None = None) -> Path:
    """A checkpoint as training writes it (the record, the task's `model.` weights), of an untrained tiny network on
    the task's demo recipe, with random batch-norm statistics so that a wrong input shows in the outputs."""
    from mbtasks.config import load_config
    from mbtasks.io.records import RECORD_KEY
    from mbtasks.tasks import TASKS

    spec = TASKS.get(task)
    config = load_config(Path(__file__).resolve().parents[1] / "configs/demo" / spec.demo_config,
                         [*TINY_MODELS[task], *settings])
    module = spec.module(config.to_dict(), list(class_names), list(category_ids))
    randomised(module.model)
    module.metrics = metrics or {}
    torch.save({RECORD_KEY: module.record().to_dict(),
                "state_dict": {f"model.{k}": v for k, v in module.model.state_dict().items()}}, path)
    return path


def spy_on_coco_backends(monkeypatch) -> list[str]:
    """The names of the COCO backends that run from now on, in order."""
    import mbtasks.evaluation.coco as coco

    calls = []
    for name, backend in list(coco.BACKENDS.items()):
        monkeypatch.setitem(coco.BACKENDS, name,
                            lambda *args, name=name, backend=backend: calls.append(name) or backend(*args))
    return calls
