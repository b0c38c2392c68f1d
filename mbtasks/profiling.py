"""Parameters, multiply-adds (convolutions and linear layers, as the papers count) and CPU latency."""

import statistics
import time

import torch
from torch import nn

from .sizes import height_width


def count_parameters(model: nn.Module) -> int:
    """Number of learnable parameters."""
    return sum(p.numel() for p in model.parameters())


def count_madds(model: nn.Module, example: object) -> int:
    """Multiply-adds of one forward pass on `example` (batch 1): conv and linear layers only, as the papers."""
    total = 0

    def conv_hook(module: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += output.numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Linear, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * module.in_features

    hooks = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            hooks.append(module.register_forward_hook(linear_hook))
    try:
        with torch.inference_mode():
            model.eval()(example)
    finally:
        for hook in hooks:
            hook.remove()
    return total


def measure_latency(model: nn.Module, example: object, runs: int = 30, warmup: int = 5) -> float:
    """Median wall time of one forward pass in milliseconds."""
    model.eval()
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            start = time.perf_counter()
            model(example)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def profile(model: nn.Module, example: object, runs: int = 30) -> dict:
    """The three figures of `mbtasks profile`: params and madds of the model as built (batch norm counted, and a
    segmenter's aux head, which its forward runs, as torchvision counts them), latency_ms of the copy that evaluate and
    predict run (for_inference: batch norm folded, no aux head)."""
    from .layers.fusion import for_inference

    return {
        "params": count_parameters(model),
        "madds": count_madds(model, example),
        "latency_ms": round(measure_latency(for_inference(model), example, runs), 3),
    }


def example_input(resolution: int | tuple[int, int]) -> torch.Tensor:
    """A batch-1 input of the given resolution (square for an int)."""
    h, w = height_width(resolution)
    return torch.rand(1, 3, h, w)
