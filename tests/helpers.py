"""Shared test helpers."""
import torch


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
