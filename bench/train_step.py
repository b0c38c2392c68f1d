"""A full training step (forward, loss, backward, optimiser step), mbtasks against torchvision's reference training
step on the same device, batch and precision: SSDLite320 v3-Large (its MultiBox loss, as torchvision's detection
reference sums the loss dict) and LR-ASPP v3-Large (cross-entropy over the labelled pixels, as torchvision's
segmentation reference, on crops of a Cityscapes-sized image, 19 classes).

    python bench/train_step.py [--device cpu|cuda] [--precision 32|bf16-mixed|16-mixed] [--channels-last]
                               [--compile] [--repeats 5] [--steps 3] [--det-batch 24] [--seg-batch 8]
                               [--crop 512x1024] [--threads N]

Each (model, library) runs in a fresh process (so that one's memory does not inflate the other's): one untimed step
(two with --compile), then --repeats timed repeats of --steps steps; images/s min / median / max over the repeats,
the ratio of medians (and of each repeat's pair), and the peak memory (CUDA: max_memory_allocated; CPU: peak RSS).
Both networks start from the same seed, not the same weights: a step costs the same whatever the weights' values.

Toy size, as tests/test_bench.py runs it: --repeats 1 --steps 1 --det-batch 2 --seg-batch 1 --crop 64x128 --threads 1.
"""

import contextlib
import multiprocessing
import resource
import statistics
import time

import torch
import torchvision
from arguments import BenchParser, at_least, height_by_width  # bench/arguments.py, beside this script
from torch.nn import functional as F

from mbtasks import build_model

DET, SEG = "ssdlite320_mobilenet_v3_large", "lraspp_mobilenet_v3_large"
SEG_CLASSES = 19  # Cityscapes' train ids
IGNORE = 255


def network(name: str, library: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if library == "torchvision":
        if name == DET:
            return torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
        return torchvision.models.segmentation.lraspp_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=SEG_CLASSES
        )
    return build_model(name) if name == DET else build_model(name, num_classes=SEG_CLASSES)


def batch(name: str, size: int, crop: tuple[int, int], device: torch.device, channels_last: bool):
    """A training batch as each library's step takes it: det a list of 320x320 images and their boxes; seg a
    normalised NCHW crop batch and its label masks (a tenth of the pixels unlabelled)."""
    generator = torch.Generator().manual_seed(0)
    if name == DET:
        images = [torch.rand(3, 320, 320, generator=generator).to(device) for _ in range(size)]
        targets = [
            {
                "boxes": torch.tensor([[20.0, 30.0, 150.0, 200.0], [160.0, 40.0, 300.0, 180.0]], device=device),
                "labels": torch.tensor([1, 18], device=device),
            }
            for _ in range(size)
        ]
        return images, targets
    images = torch.randn(size, 3, *crop, generator=generator)
    masks = torch.randint(0, SEG_CLASSES, (size, *crop), generator=generator)
    masks[torch.rand(masks.shape, generator=generator) < 0.1] = IGNORE
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images.to(device), masks.to(device)


def loss_of(name: str, library: str, model: torch.nn.Module, inputs, targets) -> torch.Tensor:
    if name == DET:
        return sum(model(inputs, targets).values())  # both: torchvision's detection reference sums the dict
    outputs = model(inputs)
    if library == "torchvision":
        return F.cross_entropy(outputs["out"], targets, ignore_index=IGNORE)  # its reference's criterion
    return model.loss(outputs, targets, ignore_index=IGNORE)


def _child(name: str, library: str, args, queue) -> None:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = network(name, library).to(device).train()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    size = args.det_batch if name == DET else args.seg_batch
    inputs, targets = batch(name, size, args.crop, device, args.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=4e-5)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(args.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "16-mixed")
    forward = torch.compile(model) if args.compile else model

    def step() -> None:
        autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with autocast:
            loss = loss_of(name, library, forward, inputs, targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def synchronise() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(2 if args.compile else 1):  # untimed: allocator, cuDNN's choices, compilation
        step()
    synchronise()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        synchronise()
        rates.append(size * args.steps / (time.perf_counter() - start))
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    queue.put((rates, peak))


def measure(name: str, library: str, args) -> tuple[list[float], float]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(name, library, args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def spread(values: list[float], digits: int = 1) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main() -> None:
    parser = BenchParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["32", "bf16-mixed", "16-mixed"], default="32")
    parser.add_argument("--channels-last", action="store_true", help="model and segmentation batch channels-last")
    parser.add_argument("--compile", action="store_true", help="torch.compile each model")
    parser.add_argument("--repeats", type=at_least(1), default=5)
    parser.add_argument("--steps", type=at_least(1), default=3, help="training steps timed together in a repeat")
    parser.add_argument("--det-batch", type=at_least(1), default=24)
    parser.add_argument("--seg-batch", type=at_least(1), default=8)
    parser.add_argument("--crop", type=height_by_width, default=(512, 1024), help="segmentation crop HxW")
    parser.add_argument("--threads", type=at_least(1), default=torch.get_num_threads())
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: this machine has no CUDA device")
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, device {device.replace(' ', '_')}, "
        f"{args.threads} threads, precision {args.precision}, channels-last {'on' if args.channels_last else 'off'}, "
        f"compile {'on' if args.compile else 'off'}"
    )
    memory = "max_memory_allocated" if args.device == "cuda" else "peak RSS"
    print(
        f"training step images/s over {args.repeats} repeats of {args.steps} steps: median (min-max); "
        f"peak memory ({memory}) in a fresh process each"
    )
    print("model batch torchvision mbtasks mbtasks/torchvision peak MB torchvision mbtasks")
    for name, shape in ((DET, f"{args.det_batch}x320x320"), (SEG, f"{args.seg_batch}x{args.crop[0]}x{args.crop[1]}")):
        (reference, reference_peak), (ours, ours_peak) = (
            measure(name, lib, args) for lib in ("torchvision", "mbtasks")
        )
        ratios = [a / b for a, b in zip(ours, reference)]
        ratio = statistics.median(ours) / statistics.median(reference)
        print(
            f"{name} {shape} {spread(reference)} {spread(ours)} {ratio:.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) "
            f"{reference_peak:.0f} {ours_peak:.0f}"
        )


if __name__ == "__main__":
    main()
