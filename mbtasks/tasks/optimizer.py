"""The optimiser and the per-step learning-rate schedule every task trains with."""
import math

import pytorch_lightning as pl
import torch

from ..config import TrainConfig
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
