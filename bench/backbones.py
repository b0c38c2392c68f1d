"""Latency of mbtasks' backbones against torchvision's, same weights, batch 1, measured in one run.

mbtasks is timed as built (eager) and as its inference path runs it (batch norm folded into the convolutions,
channels-last weights: `mbtasks.layers.fusion.for_inference`).

    python bench/backbones.py [--runs 200] [--resolution 224] [--threads N]

Toy size, as tests/test_bench.py runs it: --runs 1 --resolution 32 --threads 1.
"""

import statistics
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from arguments import BenchParser, at_least  # bench/arguments.py, beside this script

from mbtasks import build_model
from mbtasks.layers.fusion import for_inference
from mbtasks.models.importers import import_weights


def interleaved_latency(models: list[torch.nn.Module], x: torch.Tensor, runs: int) -> list[list[float]]:
    """ms of each model's runs, timed in alternation so that machine noise falls on all alike."""
    times = [[] for _ in models]
    with torch.inference_mode():
        for _ in range(10):
            for model in models:
                model(x)
        for _ in range(runs):
            for i, model in enumerate(models):
                start = time.perf_counter()
                model(x)
                times[i].append((time.perf_counter() - start) * 1000)
    return times


def main() -> None:
    parser = BenchParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=at_least(1), default=200)
    parser.add_argument("--resolution", type=at_least(1), default=224)
    parser.add_argument("--threads", type=at_least(1), default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(1, 3, args.resolution, args.resolution)
    print(
        f"batch 1, {args.resolution}x{args.resolution}, {args.threads} threads, {args.runs} runs in alternation: "
        "median ms (min-max), ratio of medians to torchvision"
    )
    print(f"{'model':<22}{'torchvision ms':>22}{'mbtasks ms':>22}{'ratio':>8}{'inference ms':>22}{'ratio':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"):
            reference = getattr(torchvision.models, name)().eval()
            torch.save(reference.state_dict(), Path(tmp) / "tv.pth")
            import_weights("torchvision", Path(tmp) / "tv.pth", name, Path(tmp) / "mb.pth")
            ours = build_model(name, weights=Path(tmp) / "mb.pth").eval()
            tv, mb, fold = interleaved_latency([reference, ours, for_inference(ours)], x, args.runs)
            tv_ms, mb_ms, fold_ms = map(statistics.median, (tv, mb, fold))
            # a space before each column: on a slow machine a value wider than its column stays apart
            print(
                f"{name:<22} {spread(tv):>21} {spread(mb):>21} {mb_ms / tv_ms:>7.3f} {spread(fold):>21}"
                f" {fold_ms / tv_ms:>7.3f}"
            )


def spread(ms: list[float]) -> str:
    """median (min-max)"""
    return f"{statistics.median(ms):.2f} ({min(ms):.2f}-{max(ms):.2f})"


if __name__ == "__main__":
    main()
