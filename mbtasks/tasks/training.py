"""What every task shares: optimiser and schedule, the Lightning trainer, checkpoints, distributed gathering."""

import math
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from ..config import Config, TrainConfig
from ..errors import MbtasksError

SCHEDULES = ("cosine", "poly", "step", "constant")
OPTIMIZERS = ("sgd", "adamw", "rmsprop")


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, poly_power: float = 0.9,
              decay_every: int = 1, gamma: float = 1.0) -> float:
    """Linear warm-up, then cosine / poly decay to zero, step decay (x gamma every `decay_every` steps), or
    constant; a factor of the base learning rate."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "step":
        return gamma ** ((step - warmup_steps) // max(1, decay_every))
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "poly":
        return (1 - progress) ** poly_power
    return 1.0


def configure_optimizer(module: pl.LightningModule, train: TrainConfig) -> dict:
    """SGD (momentum, optional Nesterov) or AdamW, and a per-step warm-up + decay schedule."""
    if train.optimizer not in OPTIMIZERS:
        raise MbtasksError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got {train.optimizer!r}")
    if train.schedule not in SCHEDULES:
        raise MbtasksError(f"train.schedule must be one of {', '.join(SCHEDULES)}, got {train.schedule!r}")
    # No weight decay on batch-norm and bias parameters, as torchvision's reference recipes (norm_weight_decay=0).
    decay = [p for p in module.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in module.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if train.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum, nesterov=train.nesterov)
    elif train.optimizer == "rmsprop":
        # torchvision's MobileNetV3 recipe (TF's RMSprop: alpha 0.9, eps 0.0316).
        optimizer = torch.optim.RMSprop(groups, lr=train.lr, alpha=0.9, eps=0.0316, momentum=train.momentum)
    else:
        optimizer = torch.optim.AdamW(groups, lr=train.lr)
    total = max(1, int(module.trainer.estimated_stepping_batches))
    steps_per_epoch = total / max(1, module.trainer.max_epochs or 1)
    warmup = int(train.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warmup, train.schedule, train.poly_power,
                                          int(train.lr_step_epochs * steps_per_epoch), train.lr_gamma))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def build_trainer(config: Config, monitor: str, for_fit: bool = True) -> pl.Trainer:
    """A Lightning trainer with last + best checkpoints, CSV and TensorBoard logs and a progress bar."""
    train = config.train
    out = Path(train.out_dir)
    callbacks, loggers = [], False
    if for_fit:
        callbacks = [
            ModelCheckpoint(
                dirpath=out / "checkpoints",
                filename="best",
                monitor=monitor,
                mode="max",
                save_last=True,
                auto_insert_metric_name=False,
            ),
            LearningRateMonitor(logging_interval="step"),
        ]
        loggers = [CSVLogger(out, name="logs"), TensorBoardLogger(out, name="tensorboard")]
    extra = {}
    if train.limit_train_batches is not None:
        extra["limit_train_batches"] = train.limit_train_batches
    if train.limit_val_batches is not None:
        extra["limit_val_batches"] = train.limit_val_batches
    return pl.Trainer(
        max_epochs=train.epochs,
        accelerator=train.accelerator,
        devices=train.devices,
        num_nodes=train.num_nodes,
        strategy=train.strategy,
        precision=train.precision,
        check_val_every_n_epoch=train.val_every,
        gradient_clip_val=train.gradient_clip,
        log_every_n_steps=train.log_every,
        callbacks=callbacks,
        logger=loggers,
        enable_progress_bar=train.progress_bar,
        enable_model_summary=for_fit,
        default_root_dir=out,
        **extra,
    )


def gather_by_key(items: dict, module: pl.LightningModule) -> dict:
    """Merge a per-process dict (image id -> result) over all processes; a key seen twice is kept once.

    A DistributedSampler pads the last batch with repeated images, so the same image id can come from two
    processes: keeping each id once counts every image exactly once.
    """
    if module.trainer is None or module.trainer.world_size == 1:
        return items
    gathered = [None] * module.trainer.world_size
    torch.distributed.all_gather_object(gathered, items)
    merged = {}
    for part in gathered:
        for key, value in part.items():
            merged.setdefault(key, value)
    return merged


def read_checkpoint(path: str | Path, task: str) -> dict:
    """A training checkpoint's mbtasks record (task, model, options, class names, config) and its weights."""
    from ..backbones.weights import load_file, weights_from

    data = load_file(path)
    if not isinstance(data, dict) or not isinstance(data.get("mbtasks"), dict):
        raise MbtasksError("is not an mbtasks training checkpoint", path)
    record = dict(data["mbtasks"])
    if record.get("task") != task:
        raise MbtasksError(f"is a checkpoint of a {record.get('task')} model, not {task}", path)
    record["state_dict"] = weights_from(data, path).state_dict
    return record
