"""Sums over the processes of a multi-process (DDP) run, so that a step on N processes x b images computes what one
process computes on N x b: batch statistics (sync_batchnorm) and the normalisers of losses that average over what a
batch holds (foreground anchors, labelled pixels). DDP averages gradients; a loss divided by its own process's count
would weigh a process with few foreground anchors as much as one with many."""

import torch
import torch.distributed as dist
import torch.distributed.nn as dist_nn


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def sum_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over processes (differentiable), or the tensor itself in a single process."""
    return dist_nn.all_reduce(tensor) if _world_size() > 1 else tensor


def share_of_global_mean(total: torch.Tensor, count: torch.Tensor | int) -> torch.Tensor:
    """This process's `total` (a sum over its batch) as its share of the mean over every process's `count`s: after
    DDP averages the gradients over W processes,
    W * total / (sum of counts, at least 1) gives the whole batch's mean."""
    world = _world_size()
    count = torch.as_tensor(count, dtype=total.dtype, device=total.device).detach()
    if world > 1:
        count = count.clone()
        dist.all_reduce(count)
    return total * world / count.clamp(min=1)
