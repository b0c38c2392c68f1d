"""Batch norm with the whole batch's statistics across processes on any backend.

torch's SyncBatchNorm (what Lightning's sync_batchnorm uses) runs on GPUs only; this one reduces the per-channel
sums with torch.distributed.nn's differentiable all_reduce, which gloo runs on CPUs too. Without a process group it
is batch norm on the local batch, with the same arithmetic.
"""

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .process_sums import sum_over_processes


class AllReduceBatchNorm(_BatchNorm):
    """Training statistics over every process's batch: sum, sum of squares and count, all-reduced."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        dims, channels = [0, *range(2, x.dim())], self.num_features
        shape = [1, channels] + [1] * (x.dim() - 2)
        # Statistics in float32 at least (half-precision sums overflow), in float64 for float64 training.
        wide = x if x.dtype == torch.float64 else x.float()
        count = torch.full((1,), x.numel() / channels, dtype=wide.dtype, device=x.device)
        sums = sum_over_processes(torch.cat([wide.sum(dims), count]))
        total = sums[-1]
        mean = sums[:channels] / total
        # Two passes, as batch norm itself: the variance from squared deviations, not E[x^2] - E[x]^2, which loses
        # float32 digits when the mean is large.
        var = sum_over_processes((wide - mean.view(shape)).pow(2).sum(dims)) / total
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                unbiased = var * total / (total - 1).clamp(min=1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module, to_sync: bool = True) -> nn.Module:
    """Every batch norm of `module` as AllReduceBatchNorm (or back to BatchNorm1d/2d), weights and statistics kept."""
    if isinstance(module, _BatchNorm) and (to_sync != isinstance(module, AllReduceBatchNorm)):
        kind = AllReduceBatchNorm if to_sync else module.original_kind
        converted = kind(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if to_sync:
            converted.original_kind = type(module)
        converted.load_state_dict(module.state_dict())
        converted.train(module.training)
        module = converted
    for name, child in module.named_children():
        module.add_module(name, convert_batchnorm(child, to_sync))
    return module
