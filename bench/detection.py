"""SSDLite320 v3-Large: mbtasks against torchvision with the same weights, measured in one run.

    python bench/detection.py [--runs 50] [--train-steps 5] [--threads 2]

Prints inference latency at batch 1 (eager, and mbtasks' inference path: batch norm folded, channels-last),
training throughput at batch 32, peak memory of each (each in a fresh process, so one does not inflate the other),
and evaluation time against plain pycocotools (bench/coco_eval.py).
"""
import argparse
import multiprocessing
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from mbtasks import build_model
from mbtasks.models.importers import import_weights
from mbtasks.layers.fusion import for_inference

NAME = "ssdlite320_mobilenet_v3_large"


def models(weights_dir: str, prepare=None) -> tuple[torch.nn.Module, torch.nn.Module]:
    """torchvision's model with random weights (changed by `prepare`, if given) and mbtasks' with the same weights
    imported."""
    torch.manual_seed(0)
    reference = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
    if prepare is not None:
        prepare(reference)
    src, dst = Path(weights_dir) / "tv.pth", Path(weights_dir) / "mb.pth"
    torch.save(reference.state_dict(), src)
    import_weights("torchvision", src, NAME, dst)
    return reference, build_model(NAME, weights=dst)


def batch(size: int) -> tuple[list, list]:
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 320, 320, generator=generator) for _ in range(size)]
    targets = [{"boxes": torch.tensor([[20.0, 30.0, 150.0, 200.0], [160.0, 40.0, 300.0, 180.0]]),
                "labels": torch.tensor([1, 18])} for _ in range(size)]
    return images, targets


def latency(named: dict, runs: int) -> dict:
    """Median ms per image at batch 1, models timed in alternation so machine noise falls on all alike."""
    images, _ = batch(1)
    times = {name: [] for name in named}
    with torch.inference_mode():
        for model in named.values():
            model.eval()
            for _ in range(5):
                model(images)
        for _ in range(runs):
            for name, model in named.items():
                start = time.perf_counter()
                model(images)
                times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(t) for name, t in times.items()}


def train_throughput(model: torch.nn.Module, steps: int, batch_size: int = 32) -> float:
    """Images per second of SGD training steps (forward, MultiBox loss, backward, update)."""
    images, targets = batch(batch_size)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    durations = []
    for step in range(steps + 1):
        start = time.perf_counter()
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step:  # the first step warms up the allocator
            durations.append(time.perf_counter() - start)
    return batch_size / statistics.median(durations)


def _child(which: str, steps: int, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        reference, ours = models(tmp)
    model = reference if which == "torchvision" else ours
    throughput = train_throughput(model, steps)
    queue.put((which, throughput, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{NAME}, {args.threads} threads")
    with tempfile.TemporaryDirectory() as tmp:
        reference, ours = models(tmp)
    ms = latency({"torchvision": reference, "mbtasks": ours, "mbtasks inference": for_inference(ours)}, args.runs)
    print(f"inference, batch 1, median of {args.runs}: torchvision {ms['torchvision']:.1f} ms, mbtasks "
          f"{ms['mbtasks']:.1f} ms (ratio {ms['mbtasks'] / ms['torchvision']:.3f}), mbtasks inference path (folded "
          f"BN, channels-last) {ms['mbtasks inference']:.1f} ms (ratio {ms['mbtasks inference'] / ms['torchvision']:.3f})")

    context = multiprocessing.get_context("spawn")
    results = {}
    for which in ("torchvision", "mbtasks"):
        queue = context.Queue()
        process = context.Process(target=_child, args=(which, args.train_steps, args.threads, queue))
        process.start()
        name, throughput, peak = queue.get()
        process.join()
        results[name] = (throughput, peak)
    (tv_ips, tv_mb), (mb_ips, mb_mb) = results["torchvision"], results["mbtasks"]
    print(f"training, batch 32: torchvision {tv_ips:.1f} images/s, mbtasks {mb_ips:.1f} images/s "
          f"(ratio {mb_ips / tv_ips:.3f}); peak memory torchvision {tv_mb:.0f} MB, mbtasks {mb_mb:.0f} MB "
          f"(ratio {mb_mb / tv_mb:.3f})")

    print("evaluation against plain pycocotools (bench/coco_eval.py):")
    subprocess.run([sys.executable, str(Path(__file__).with_name("coco_eval.py")), "--repeats", "1"], check=True)


if __name__ == "__main__":
    main()
