"""The optimiser and the per-step learning-rate schedule every task trains with: torch's schedulers, as torchvision's
reference recipes compose them (a LinearLR warm-up, then the main schedule, in a SequentialLR)."""

import pytorch_lightning as pl
import torch
from torch.optim import lr_scheduler

from ..config import OPTIMIZERS, SCHEDULES, TrainConfig


def build_schedule(
    optimizer: torch.optim.Optimizer, train: TrainConfig, total_steps: int, warmup_steps: int, steps_per_epoch: float
) -> lr_scheduler.LRScheduler:
    """Linear warm-up from train.warmup_factor over `warmup_steps`, then cosine or poly decay to zero over the rest,
    step decay (x lr_gamma every lr_step_epochs), multistep (x lr_gamma at each of lr_milestones, in epochs), or
    constant. Its lengths live in its state: a resumed run keeps
    the schedule it started with."""
    decay_steps = max(1, total_steps - warmup_steps)
    if train.schedule == "cosine":
        main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=decay_steps)
    elif train.schedule == "poly":
        main = lr_scheduler.PolynomialLR(optimizer, total_iters=decay_steps, power=train.poly_power)
    elif train.schedule == "step":
        main = lr_scheduler.StepLR(
            optimizer, step_size=max(1, int(train.lr_step_epochs * steps_per_epoch)), gamma=train.lr_gamma
        )
    elif train.schedule == "multistep":
        # Counted from the end of the warm-up, which SequentialLR hands over at.
        milestones = [max(1, int(epoch * steps_per_epoch) - warmup_steps) for epoch in train.lr_milestones]
        main = lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=train.lr_gamma)
    elif train.schedule == "constant":
        main = lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    else:  # a name config.SCHEDULES allows that is not built here: a bug of mbtasks, not the user's mistake
        raise ValueError(f"no schedule {train.schedule!r} is built of {', '.join(SCHEDULES)}")
    if warmup_steps <= 0:
        return main
    warmup = lr_scheduler.LinearLR(optimizer, start_factor=train.warmup_factor, total_iters=warmup_steps)
    return lr_scheduler.SequentialLR(optimizer, [warmup, main], milestones=[warmup_steps])


def configure_optimizer(module: pl.LightningModule, train: TrainConfig) -> dict:
    """SGD (momentum, optional Nesterov), RMSprop or AdamW, and the per-step schedule (names and values were checked
    when the recipe was loaded: config.py)."""
    # No weight decay on batch-norm and bias parameters, as torchvision's reference recipes (norm_weight_decay=0).
    decay = [p for p in module.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in module.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if train.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum, nesterov=train.nesterov)
    elif train.optimizer == "rmsprop":
        # torchvision's MobileNetV3 recipe (TF's RMSprop: alpha 0.9, eps 0.0316).
        optimizer = torch.optim.RMSprop(groups, lr=train.lr, alpha=0.9, eps=0.0316, momentum=train.momentum)
    elif train.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=train.lr)
    else:  # as for the schedules: config.OPTIMIZERS and this function disagree
        raise ValueError(f"no optimizer {train.optimizer!r} is built of {', '.join(OPTIMIZERS)}")
    total = max(1, int(module.trainer.estimated_stepping_batches))
    steps_per_epoch = total / max(1, module.trainer.max_epochs or 1)
    schedule = build_schedule(optimizer, train, total, module.warmup_steps(steps_per_epoch), steps_per_epoch)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
